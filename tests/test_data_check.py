"""The data-root dry run (issue 16, item 4): counts, rejects with reasons, duplicates and leakage,
and clear errors for a wrong or empty root. Synthetic roots are built in ``tmp_path`` with the
image builders of ``test_bad_input`` (random grey PNGs) and ``test_manifest`` (smooth textures and
re-encoded copies); one test runs on the shipped ``shared/data``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from test_bad_input import grey
from test_manifest import _reencoded, _texture

from uslib.data.check import check_data_root, main
from uslib.data.validation import LayoutError


def _counts(report) -> dict[tuple[str, str], tuple]:
    cols = ["n_items", "n_groups", "n_folds", "n_rejected"]
    return {
        (r["dataset"], r["class"]): tuple(r[c] for c in cols) for _, r in report.counts.iterrows()
    }


def _class_root(tmp_path: Path) -> Path:
    """``cls/<class>/*.png``: 3 + 2 good images, a corrupt and an empty PNG, a loose text file."""
    root = tmp_path / "cls"
    for k in range(3):
        grey(root / "benign" / f"b{k}.png", seed=k)
    for k in range(2):
        grey(root / "malignant" / f"m{k}.png", seed=10 + k)
    good = (root / "benign" / "b0.png").read_bytes()
    (root / "malignant" / "corrupt.png").write_bytes(good[: len(good) // 2])
    (root / "benign" / "empty.png").write_bytes(b"")
    (root / "benign" / "notes.txt").write_text("not an image\n")
    return root


def test_class_folders_count_and_reject_with_reasons(tmp_path):
    report = check_data_root(_class_root(tmp_path), layout="class-folders")
    rej = {Path(r["file"]).name: (r["stage"], r["reason"]) for _, r in report.rejects.iterrows()}
    assert rej == {
        "corrupt.png": ("decode", "truncated"),
        "empty.png": ("decode", "empty file"),
        "notes.txt": ("listing", "extension .txt is not one of ['.bmp', '.jpeg', '.jpg', '.png', "
                      "'.tif', '.tiff', '.webp']"),
    }  # fmt: skip
    n = _counts(report)
    assert n[("cls", "benign")][:2] == (3, 3) and n[("cls", "benign")][3] == 1
    assert n[("cls", "malignant")][:2] == (2, 2) and n[("cls", "malignant")][3] == 1
    assert n[("cls", "(all)")][0] == 5 and n[("cls", "(all)")][2] is pd.NA  # no folds shipped
    assert report.usable and report.ok and report.leakage.empty  # random images: no duplicates
    text = report.summary()
    assert "truncated" in text and "empty file" in text and "verdict: OK" in text


def test_reencoded_copy_in_another_class_is_a_leak_across_groups(tmp_path):
    root = tmp_path / "cls"
    for k, cls in enumerate(["a", "a", "b"]):
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_texture(k)).save(root / cls / f"img{k}.png")
    Image.fromarray(_reencoded(_texture(0))).save(root / "b" / "copy0.png")
    report = check_data_root(root, layout="class-folders")
    assert len(report.duplicates) == 1
    (leak,) = report.leakage.to_dict("records")
    assert leak["kind"] == "near-duplicate across groups"
    assert {Path(leak["path_a"]).name, Path(leak["path_b"]).name} == {"img0.png", "copy0.png"}
    assert report.usable and not report.ok and "USABLE; review the leakage" in report.summary()


def _pocus(
    root: Path, rows: list[tuple[str, str, int]], copy: dict[int, int] | None = None
) -> Path:
    """A POCUS-shaped layout: ``frames.csv`` rows (label, patient, fold), one frame per clip;
    ``copy`` = {row: row whose frame it duplicates byte for byte}."""
    root.mkdir(parents=True)
    (root / "samples.csv").write_text("sample_id,file,kind\n")  # find_real_sets needs it
    lines = ["frame_file,sample_id,frame_index,label,label_uncertain,probe,patient_id,fold"]
    for k, (label, patient, fold) in enumerate(rows):
        frame = grey(root / "frames" / label / f"clip{k}_frame0.png", seed=100 + k)
        lines.append(f"{frame.relative_to(root)},clip{k},0,{label},0,convex,{patient},{fold}")
    for k, src in (copy or {}).items():
        shutil.copy(root / lines[src + 1].split(",")[0], root / lines[k + 1].split(",")[0])
    (root / "frames.csv").write_text("\n".join(lines) + "\n")
    return root


def _hc18(root: Path, n: int) -> Path:
    """An HC18-shaped layout: ``labels.csv`` with ``n`` images, 2 per subject, 2 folds."""
    (root / "masks").mkdir(parents=True)
    lines = ["image,mask,subject_id,fold,pixel_size_mm,head_circumference_mm"]
    for k in range(n):
        grey(root / "images" / f"{k:03d}_HC.png", seed=200 + k)
        Image.new("L", (40, 48), 0).save(root / "masks" / f"{k:03d}_HC_Mask.png")
        lines.append(f"images/{k:03d}_HC.png,masks/{k:03d}_HC_Mask.png,{k // 2},{k // 4},0.1,150")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


POCUS_ROWS = [("covid", "1", 0), ("covid", "1", 0), ("covid", "2", 1), ("pneumonia", "3", 1),
              ("regular", "4", 2), ("regular", "5", 0)]  # fmt: skip


def test_pocus_and_hc18_layouts_count_classes_groups_and_folds(tmp_path):
    _pocus(tmp_path / "data" / "pocus_lung", POCUS_ROWS)
    _hc18(tmp_path / "data" / "hc18_subset", 8)
    report = check_data_root(tmp_path / "data")
    n = _counts(report)
    assert n[("pocus", "covid")] == (3, 2, 2, 0)  # 3 frames of patients 1, 2 in folds 0, 1
    assert n[("pocus", "pneumonia")] == (1, 1, 1, 0)
    assert n[("pocus", "regular")] == (2, 2, 2, 0)
    assert n[("pocus", "(all)")] == (6, 5, 3, 0)
    assert n[("hc18", "(unlabelled)")] == (8, 4, 2, 0)
    assert ("hc18", "(all)") not in n  # one class: no total row
    assert set(report.sets["dataset"]) == {"pocus", "hc18"} and report.rejects.empty
    assert report.ok, report.summary()


def test_duplicate_frame_in_another_fold_and_a_patient_in_two_folds_leak(tmp_path):
    rows = [*POCUS_ROWS, ("pneumonia", "3", 2)]  # patient 3 now in folds 1 and 2
    root = _pocus(tmp_path / "pocus_lung", rows, copy={4: 0})  # fold-2 frame = fold-0 frame
    report = check_data_root(root)
    kinds = report.leakage.groupby("kind").size().to_dict()
    assert kinds == {"near-duplicate across folds": 1, "group in several folds": 1}
    near = report.leakage[report.leakage["kind"] == "near-duplicate across folds"].iloc[0]
    assert near["distance"] == 0 and {near["fold_a"], near["fold_b"]} == {0, 2}
    group = report.leakage[report.leakage["kind"] == "group in several folds"].iloc[0]
    assert group["group_a"] == "pocus:3" and (group["fold_a"], group["fold_b"]) == (1, 2)
    assert not report.ok and report.usable and "By pair of groups (2;" in report.summary()


def test_missing_root_names_the_path(tmp_path):
    missing = tmp_path / "no_such_root"
    for layout in ("auto", "class-folders"):
        with pytest.raises(FileNotFoundError, match=str(missing)):
            check_data_root(missing, layout=layout)


def test_empty_root_is_a_layout_error_listing_the_layouts(tmp_path):
    with pytest.raises(LayoutError) as err:
        check_data_root(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "samples.csv" in msg and "head_circumference_mm" in msg
    assert "--layout class-folders|pairs|videos|dicom" in msg
    with pytest.raises(LayoutError, match="no class folders.*Layouts looked for"):
        check_data_root(tmp_path, layout="class-folders")


def test_cli_exit_codes_and_json(tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main([str(_class_root(tmp_path)), "--layout", "class-folders", "--json", str(out)]) == 0
    assert "## Counts" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["usable"] and len(saved["rejects"]) == 3 and saved["counts"][0]["n_folds"] is None
    assert main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("check-data: ") and "missing" in err[0]
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    bad = tmp_path / "allbad" / "x"
    bad.mkdir(parents=True)
    (bad / "empty.png").write_bytes(b"")
    assert main([str(tmp_path / "allbad"), "--layout", "class-folders"]) == 1  # nothing valid


@pytest.mark.realdata
def test_shared_data_pocus_classes_and_hc18_items(shared_data):
    report = check_data_root(shared_data, max_items=200)
    n = _counts(report)
    pocus = [c for d, c in n if d == "pocus" and c != "(all)"]
    assert len(pocus) >= 3 and n[("pocus", "(all)")][2] >= 2
    assert n[("hc18", "(unlabelled)")][0] == 200 and report.usable

"""Issue 18: bad input never passes silently. The matrix of odd images, masks, folders, links, CSVs,
checkpoints and NaN/Inf pixels, each asserting its exact outcome: an error whose text names the
file (or value / key / row), a skip logged on ``uslib.data`` with its reason, or a documented
acceptance, and in every case the good items next to the bad one still load.

Each row of ``CASES`` is ``(id, outcome, what is fed, paths)``; its check is the function of the
same name. Every bad file is built in ``tmp_path`` with PIL / numpy / torch. The acceptance test
that ``load_encoder`` + ``extract_features`` give notebook 07's features is
``tests/test_runs.py::test_load_encoder_applies_input_norm_like_notebook_07`` (not repeated here);
row ``load_encoder_input_norm`` checks the normalisation against its definition.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import time
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from uslib import runs
from uslib.data.assembly import AssemblyConfig, assemble_items, write_records
from uslib.data.items import class_folder_items, make_item, media_file_items, paired_items
from uslib.data.manifest import build_manifest
from uslib.data.media import read_dicom, read_image, read_mask
from uslib.data.records import REJECT_FILE, RecordDataset, TooManyRejectsError, load_record
from uslib.data.sources import hc18_items
from uslib.data.validation import LayoutError, MediaError, Rules
from uslib.models.checkpoints import CheckpointError, read_state_dict

LOG = "uslib.data"
RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------
# builders


def grey(path: Path, h: int = 48, w: int = 40, seed: int = 0) -> Path:
    """A random 8-bit grey PNG (a good image)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def float_tiff(path: Path, arr: np.ndarray) -> Path:
    Image.fromarray(arr.astype(np.float32), mode="F").save(path)
    return path


def item(path: Path, **kw) -> dict:
    return make_item(path, dataset="t", **kw)


def rejects_of(items: list[dict]) -> dict[str, tuple[str, str]]:
    """``build_manifest`` rejects as ``{path: (reason, detail)}``; asserts the good ones stayed."""
    man = build_manifest(items)
    bad = {r["path"]: (r["reason"], r["detail"]) for r in man.rejects.to_dict("records")}
    assert len(man) + len(bad) == len(items)
    return bad


def logged(caplog, level: int = logging.WARNING) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == LOG and r.levelno >= level)


def forge_png_size(path: Path, width: int, height: int) -> Path:
    """A small valid PNG whose IHDR claims ``width x height`` (CRC fixed): only the header lies."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def encoder_dir(tmp_path: Path, spec: dict | str | None = None, weights: bytes | None = None):
    """``encoder.yaml`` (+ ``encoder.safetensors``: real resnet18_smoke weights, or ``weights``)."""
    from safetensors.torch import save_file

    from uslib.models import create_backbone

    d = tmp_path / "checkpoints"
    d.mkdir(parents=True, exist_ok=True)
    spec = {"backbone": "resnet18_smoke", "kwargs": {"in_chans": 1}} if spec is None else spec
    (d / "encoder.yaml").write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec))
    w = d / "encoder.safetensors"
    if weights is None:
        torch.manual_seed(0)
        state = create_backbone("resnet18_smoke", in_chans=1).state_dict()
        save_file({k: v.contiguous() for k, v in state.items()}, str(w))
    else:
        w.write_bytes(weights)
    return d / "encoder.yaml", w


# ---------------------------------------------------------------------------------------------
# the matrix: (id, outcome, input, paths); outcome is "error" (names the file / value),
# "skip" (logged with its reason), or "accepted" (documented behaviour)

CASES: list[tuple[str, str, str, str]] = [
    # accepted as documented (uslib.data.media)
    ("accepted_16bit", "accepted", "16-bit PNG, values 1000..4000", "read_image, manifest"),
    ("accepted_rgba", "accepted", "RGBA PNG, alpha 0 and 255", "read_image"),
    ("accepted_cmyk", "accepted", "CMYK JPEG", "read_image, manifest"),
    (
        "accepted_non_ascii",
        "accepted",
        "class folder / file names in non-ASCII",
        "layouts, dataset",
    ),
    # clean errors / rejects
    ("text_as_png", "error", "a text file named .png", "read_image, manifest, RecordDataset"),
    ("zero_byte_png", "error", "an empty .png", "read_image, manifest"),
    ("truncated_png", "error", "a PNG cut in half", "read_image, manifest"),
    ("missing_file", "error", "an item whose file is gone", "manifest, RecordDataset"),
    ("huge_header", "error", "PNG header claiming 12000x12000", "read_image (header only)"),
    ("malicious_pickle", "error", "a .pth whose pickle runs code", "read_state_dict"),
    ("one_px_manifest", "error", "1x1 image", "manifest"),
    ("mask_wrong_size", "error", "mask smaller than its image", "manifest, load_record"),
    ("mask_not_image", "error", "a text file as mask", "read_mask, manifest"),
    ("all_nan_tiff", "error", "float TIFF of NaN only", "read_image, even with repair"),
    ("not_dicom", "error", "a text file named .dcm", "read_dicom"),
    ("missing_weights", "error", "encoder.yaml without its safetensors", "load_encoder"),
    ("csv_missing_column", "error", "labels.csv without pixel_size_mm", "hc18_items"),
    # the defects of the issue, now errors or logged skips
    ("nan_tiff", "error", "float TIFF with one NaN pixel", "read_image, manifest, repair"),
    ("posinf_tiff", "error", "float TIFF with one +Inf pixel", "read_image, repair"),
    ("write_records_nan", "error", "a record with a NaN pixel", "write_records"),
    ("exif_orientation", "accepted", "EXIF-rotated image + masks", "read_image, load_record"),
    ("mask_0_128_255", "error", "mask with values 0/128/255", "read_mask, threshold, label map"),
    ("one_px_record", "error", "1x1 image", "RecordDataset raise / skip"),
    ("gif_in_class_folder", "skip", "a GIF among stills", "class_folder_items"),
    ("dangling_symlink", "skip", "a link to a deleted file", "class_folder_items"),
    ("symlink_loop", "skip", "a self-link and a link to a parent", "class_folder_items"),
    ("empty_class_folder", "skip", "a class folder with no images", "class_folder_items"),
    ("no_layout", "error", "roots with no recognised layout", "layouts"),
    ("assemble_class_root", "error", "data_root = a class-folder root", "assemble_items"),
    ("dataloader_one_bad", "skip", "15 items, one text.png", "DataLoader over RecordDataset"),
    ("reject_share", "error", "3 bad of 15, max_reject_share 0.1", "RecordDataset"),
    ("bad_safetensors", "error", "truncated / zero-byte / random safetensors", "load_encoder"),
    ("wrong_shape_state", "error", "3-channel weights for a 1-channel spec", "load_encoder"),
    ("empty_encoder_yaml", "error", "empty encoder.yaml", "load_encoder"),
    ("yaml_no_backbone", "error", "encoder.yaml without backbone", "load_encoder"),
    ("hc18_bad_pixel_size", "skip", "labels.csv, pixel_size_mm = 'n/a'", "hc18_items"),
    ("load_encoder_input_norm", "accepted", "encoder.yaml with input_norm", "load_encoder"),
]


# ---------------------------------------------------------------------------------------------
# accepted as documented


def accepted_16bit(tmp_path, caplog):
    arr = np.linspace(1000, 4000, 48 * 40).reshape(48, 40).astype(np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(arr).save(p)
    img, info = read_image(p)
    np.testing.assert_allclose(img, (arr - 1000.0) / 3000.0, atol=1e-6)  # real range, not /65535
    assert info["mode"].startswith("I") and not rejects_of([item(p)])


def accepted_rgba(tmp_path, caplog):
    rgb = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    alpha = np.zeros((40, 40), np.uint8)
    alpha[:, 20:] = 255
    p = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(p)
    img, _ = read_image(p)
    want = np.asarray(Image.fromarray(rgb).convert("L"), np.float32) / 255.0  # BT.601
    np.testing.assert_allclose(img[:, 20:], want[:, 20:], atol=1e-6)
    assert np.all(img[:, :20] == 0)  # composited over black


def accepted_cmyk(tmp_path, caplog):
    p = tmp_path / "cmyk.jpg"
    cmyk = np.random.default_rng(2).integers(0, 256, (40, 40, 4), dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(p, quality=95)
    img, info = read_image(p)
    with Image.open(p) as im:
        want = np.asarray(im.convert("RGB").convert("L"), np.float32) / 255.0
    assert info["mode"] == "CMYK" and img.shape == (40, 40)
    np.testing.assert_allclose(img, want, atol=1e-6)
    assert not rejects_of([item(p)])


def accepted_non_ascii(tmp_path, caplog):
    p = grey(tmp_path / "Überschall" / "écho_α 1.png")
    grey(tmp_path / "正常" / "图像.png", seed=1)
    items = class_folder_items(tmp_path)
    assert [(it["path"], it["label_name"]) for it in items][0] == (str(p), "Überschall")
    assert not rejects_of(items)
    assert RecordDataset(items, img_size=32, on_error="raise")[1]["meta"]["path"].endswith(
        "图像.png"
    )


# ---------------------------------------------------------------------------------------------
# clean errors


def _bad_everywhere(tmp_path, bad: Path, reason: str) -> None:
    """``bad`` fails with ``reason`` naming it on read_image, the manifest and RecordDataset;
    the good image next to it still loads."""
    good = grey(tmp_path / "good.png")
    with pytest.raises(MediaError, match=reason) as err:
        read_image(bad)
    assert str(bad) in str(err.value) and err.value.reason == reason
    rej = rejects_of([item(good), item(bad)])
    assert list(rej) == [str(bad)] and rej[str(bad)][0] == reason and str(bad) in rej[str(bad)][1]
    with pytest.raises(MediaError, match=reason) as err:
        RecordDataset([item(good), item(bad)], img_size=32, on_error="raise")[1]
    assert str(bad) in str(err.value)


def text_as_png(tmp_path, caplog):
    bad = tmp_path / "text.png"
    bad.write_text("this is not an image\n")
    _bad_everywhere(tmp_path, bad, "not an image")


def zero_byte_png(tmp_path, caplog):
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    _bad_everywhere(tmp_path, bad, "empty file")


def truncated_png(tmp_path, caplog):
    full = grey(tmp_path / "full.png", 64, 64).read_bytes()
    bad = tmp_path / "cut.png"
    bad.write_bytes(full[: len(full) // 2])
    _bad_everywhere(tmp_path, bad, "truncated")


def missing_file(tmp_path, caplog):
    _bad_everywhere(tmp_path, tmp_path / "gone.png", "missing file")


def huge_header(tmp_path, caplog):
    bad = forge_png_size(tmp_path / "huge.png", 12000, 12000)
    t0 = time.perf_counter()
    with pytest.raises(MediaError, match=r"too large \(12000x12000") as err:
        read_image(bad)
    assert time.perf_counter() - t0 < 0.5  # from the header: 144 M pixels never decoded
    assert str(bad) in str(err.value)
    assert rejects_of([item(bad)])[str(bad)][0] == "too large"


class _Payload:
    """Pickles to a call that writes a marker file: code execution on load."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def malicious_pickle(tmp_path, caplog):
    marker, bad = tmp_path / "pwned.txt", tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "x": _Payload(marker)}, bad)
    with pytest.raises(CheckpointError, match="trusted=True") as err:
        read_state_dict(bad)
    assert str(bad) in str(err.value) and not marker.exists()  # refused, nothing ran


def one_px_manifest(tmp_path, caplog):
    bad = grey(tmp_path / "dot.png", 1, 1)
    good = grey(tmp_path / "good.png")
    rej = rejects_of([item(good), item(bad)])
    assert list(rej) == [str(bad)] and rej[str(bad)][0] == "too small"
    assert "1x1 < 32 px" in rej[str(bad)][1]


def mask_wrong_size(tmp_path, caplog):
    img = grey(tmp_path / "a.png", 48, 40)
    mask = tmp_path / "a_mask.png"
    Image.fromarray(np.zeros((24, 20), np.uint8)).save(mask)
    rej = rejects_of([item(img, mask_paths=[mask]), item(grey(tmp_path / "b.png"))])
    assert rej[str(img)][0] == "mask size differs" and str(mask) in rej[str(img)][1]
    with pytest.raises(MediaError, match="mask size differs"):
        load_record(item(img, mask_paths=[mask]))


def mask_not_image(tmp_path, caplog):
    img = grey(tmp_path / "a.png")
    mask = tmp_path / "a_mask.png"
    mask.write_text("no pixels here")
    with pytest.raises(MediaError, match="unreadable mask") as err:
        read_mask([mask])
    assert str(mask) in str(err.value)
    assert str(mask) in rejects_of([item(img, mask_paths=[mask])])[str(img)][1]


def all_nan_tiff(tmp_path, caplog):
    bad = float_tiff(tmp_path / "nan.tif", np.full((40, 40), np.nan))
    for rules in (Rules(), Rules(nonfinite="repair")):  # nothing finite to repair from
        with pytest.raises(MediaError, match=r"non-finite pixels \(1600 NaN, 0 Inf") as err:
            read_image(bad, rules=rules)
        assert str(bad) in str(err.value)


def not_dicom(tmp_path, caplog):
    bad = tmp_path / "scan.dcm"
    bad.write_text("not a dicom file at all")
    with pytest.raises(MediaError, match="DICOM") as err:
        read_dicom(bad)
    assert str(bad) in str(err.value)


def missing_weights(tmp_path, caplog):
    spec, w = encoder_dir(tmp_path)
    w.unlink()
    with pytest.raises(FileNotFoundError, match="encoder weights not found") as err:
        runs.load_encoder(spec)
    assert str(w) in str(err.value)


def csv_missing_column(tmp_path, caplog):
    (tmp_path / "labels.csv").write_text("image,mask,subject_id,fold,head_circumference_mm\n")
    with pytest.raises(ValueError, match=r"missing columns \['pixel_size_mm'\]") as err:
        hc18_items(tmp_path)
    assert str(tmp_path / "labels.csv") in str(err.value)


# ---------------------------------------------------------------------------------------------
# the defects of the issue


def nan_tiff(tmp_path, caplog):
    arr = np.random.default_rng(3).uniform(0.2, 0.8, (40, 40))
    arr[5, 7] = np.nan
    bad = float_tiff(tmp_path / "one_nan.tif", arr)
    good = grey(tmp_path / "good.png")
    with pytest.raises(MediaError, match=r"non-finite pixels \(1 NaN, 0 Inf of 1600") as err:
        read_image(bad)
    assert str(bad) in str(err.value)
    rej = rejects_of([item(good), item(bad)])  # no all-NaN phash in the manifest any more
    assert list(rej) == [str(bad)] and rej[str(bad)][0] == "non-finite pixels"
    with pytest.warns(UserWarning, match="repaired non-finite pixels"):
        img, _ = read_image(bad, rules=Rules(nonfinite="repair"))
    finite = arr[np.isfinite(arr)].astype(np.float32)
    lo, hi = finite.min(), finite.max()
    assert np.isfinite(img).all() and img[5, 7] == 0.0  # NaN -> the finite minimum
    np.testing.assert_allclose(img[0, 0], (np.float32(arr[0, 0]) - lo) / (hi - lo), rtol=1e-5)
    assert "1 NaN" in logged(caplog)


def posinf_tiff(tmp_path, caplog):
    arr = np.random.default_rng(4).uniform(0.2, 0.8, (40, 40))
    arr[0, 0] = np.inf
    bad = float_tiff(tmp_path / "inf.tif", arr)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no bare numpy divide warning
        with pytest.raises(MediaError, match=r"\(0 NaN, 1 Inf of 1600") as err:
            read_image(bad)
    assert str(bad) in str(err.value)
    with pytest.warns(UserWarning, match="repaired"):
        img, _ = read_image(bad, rules=Rules(nonfinite="repair"))
    assert img[0, 0] == 1.0 and np.isfinite(img).all() and img.min() == 0.0  # +Inf -> max


def write_records_nan(tmp_path, caplog):
    good = torch.rand(1, 32, 32)
    bad = good.clone()
    bad[0, 3, 3] = float("nan")
    rec = {"dataset": "syn", "label": 0, "has_mask": False}
    with pytest.raises(MediaError, match=r"non-finite pixels .*1 NaN/Inf of 1024") as err:
        write_records([{**rec, "image": good}, {**rec, "image": bad}], tmp_path)
    assert str(tmp_path / "syn" / "00001.png") in str(err.value)
    assert not (tmp_path / "syn" / "00001.png").exists()  # never stored as 0
    [it] = write_records([{**rec, "image": good}], tmp_path / "ok")
    np.testing.assert_allclose(read_image(it["path"])[0], good[0].numpy(), atol=0.5 / 255 + 1e-6)


def _with_orientation(arr: np.ndarray, path: Path, orientation: int) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, exif=exif)
    return path


def exif_orientation(tmp_path, caplog):
    stored = np.random.default_rng(5).integers(0, 256, (40, 64), dtype=np.uint8)  # H=40, W=64
    img_p = _with_orientation(stored, tmp_path / "rot.png", 6)  # 6: rotate 90 deg clockwise
    shown = np.rot90(stored, k=-1)  # what a viewer displays: 64 high, 40 wide
    img, info = read_image(img_p)
    np.testing.assert_array_equal(img, shown / np.float32(255.0))
    assert (info["height"], info["width"]) == (64, 40)
    drawn = np.zeros(shown.shape, np.uint8)  # a mask drawn on the displayed image
    drawn[10:30, 5:15] = 255
    plain = tmp_path / "rot_mask.png"
    Image.fromarray(drawn).save(plain)
    tagged = _with_orientation(np.rot90(drawn, k=1).copy(), tmp_path / "rot_mask_1.png", 6)
    for m in (plain, tagged):  # both fit the upright image and agree
        rec = load_record(item(img_p, mask_paths=[m]))
        np.testing.assert_array_equal(rec["mask"].numpy(), drawn > 0)
    assert not rejects_of([item(img_p, mask_paths=[plain, tagged])])


def mask_0_128_255(tmp_path, caplog):
    m = np.zeros((40, 40), np.uint8)
    m[:10] = 128
    m[30:] = 255
    mp = tmp_path / "grey_mask.png"
    Image.fromarray(m).save(mp)
    with pytest.raises(MediaError, match=r"mask values.*\[0, 128, 255\]") as err:
        read_mask([mp])
    assert str(mp) in str(err.value)
    img = grey(tmp_path / "a.png", 40, 40)
    assert rejects_of([item(img, mask_paths=[mp])])[str(img)][0] == "mask values"
    with pytest.warns(UserWarning, match=r"400 pixels were neither 0 nor 255"):
        fg = read_mask([mp], rules=Rules(mask_threshold=127))
    np.testing.assert_array_equal(fg, m > 127)
    labels = read_mask([mp], rules=Rules(mask_values=(128, 255)))  # a declared label map
    np.testing.assert_array_equal(labels, m.astype(np.int64))


def one_px_record(tmp_path, caplog):
    bad, good = grey(tmp_path / "dot.png", 1, 1), grey(tmp_path / "good.png")
    with pytest.raises(MediaError, match=r"too small \(1x1 < 32 px\)") as err:
        RecordDataset([item(bad)], img_size=32, on_error="raise")[0]
    assert str(bad) in str(err.value)
    ds = RecordDataset([item(bad), item(good)], img_size=32, max_reject_share=0.5)
    with caplog.at_level(logging.WARNING, LOG):
        rec = ds[0]
    assert rec["meta"]["path"] == str(good)  # served by the good item, not a constant image
    assert f"{bad}: too small" in logged(caplog) and ds.reject_count == 1


def _layout_with_odd_entries(tmp_path: Path) -> Path:
    root = tmp_path / "set"
    grey(root / "a" / "1.png")
    grey(root / "b" / "2.png", seed=1)
    return root


def gif_in_class_folder(tmp_path, caplog):
    root = _layout_with_odd_entries(tmp_path)
    gif = root / "a" / "clip.gif"
    Image.new("L", (40, 40)).save(gif)
    with caplog.at_level(logging.INFO, LOG):
        items = class_folder_items(root)
    assert [Path(it["path"]).name for it in items] == ["1.png", "2.png"]
    assert f"skipped {gif}: a GIF is read as a clip" in logged(caplog)
    assert [Path(it["path"]).name for it in media_file_items(root)] == ["clip.gif"]  # the way in


def dangling_symlink(tmp_path, caplog):
    root = _layout_with_odd_entries(tmp_path)
    target = grey(tmp_path / "elsewhere.png")
    link = root / "a" / "link.png"
    os.symlink(target, link)
    target.unlink()
    with caplog.at_level(logging.INFO, LOG):
        items = class_folder_items(root)
    assert len(items) == 2 and f"skipped {link}: dangling link" in logged(caplog)
    assert not rejects_of(items)


def symlink_loop(tmp_path, caplog):
    root = _layout_with_odd_entries(tmp_path)
    self_link = root / "a" / "self.png"
    os.symlink(self_link.name, self_link)  # points at itself: ELOOP
    up = root / "b" / "up"
    os.symlink("..", up)  # a folder link back to the root
    with caplog.at_level(logging.INFO, LOG):
        items = class_folder_items(root)
    assert sorted(Path(it["path"]).name for it in items) == ["1.png", "2.png"]
    text = logged(caplog)
    assert f"skipped {self_link}: link loop" in text
    assert f"skipped {up}: link loop" in text  # a link above the class folder, not a repeat


def empty_class_folder(tmp_path, caplog):
    root = _layout_with_odd_entries(tmp_path)
    (root / "c_empty").mkdir()
    (root / "c_empty" / "notes.txt").write_text("x")
    with caplog.at_level(logging.INFO, LOG), pytest.warns(UserWarning, match="c_empty"):
        items = class_folder_items(root)
    assert "class folders with no images: c_empty (label 2)" in logged(caplog)
    assert [it["label"] for it in items] == [0, 1]


def no_layout(tmp_path, caplog):
    flat = tmp_path / "flat"
    grey(flat / "loose.png")
    with pytest.raises(LayoutError, match="no class folders") as err:
        class_folder_items(flat)
    msg = str(err.value)
    assert str(flat) in msg and all(k in msg for k in ("class folders", "image + mask pairs"))
    (tmp_path / "pairs" / "images").mkdir(parents=True)
    (tmp_path / "pairs" / "masks").mkdir()
    with pytest.raises(LayoutError, match="images/ holds no images"):
        paired_items(tmp_path / "pairs")
    with pytest.raises(LayoutError, match="no video files.*Layouts looked for"):
        media_file_items(flat)


def assemble_class_root(tmp_path, caplog):
    root = _layout_with_odd_entries(tmp_path)
    cfg = AssemblyConfig(tasks=("lung",), n_per_class=1, img_size=32)
    out = tmp_path / "out"
    with pytest.raises(LayoutError, match="no real data set found") as err:
        assemble_items(cfg, out, data_root=root)
    msg = str(err.value)
    assert str(root) in msg and "samples.csv" in msg and "labels.csv" in msg
    assert "class_folder_items" in msg and not out.exists()  # failed before writing anything


def _fifteen(tmp_path: Path, n_bad: int) -> tuple[list[dict], list[Path]]:
    items, bad = [], []
    for k in range(15):
        p = tmp_path / "set" / f"{k:02d}.png"
        if k in (3, 8, 12)[:n_bad]:
            p.parent.mkdir(parents=True, exist_ok=True)
            p = p.with_name(f"text{k}.png")
            p.write_text("not an image")
            bad.append(p)
        else:
            grey(p, seed=k)
        items.append(item(p, video_id=f"v{k}"))
    return items, bad


def dataloader_one_bad(tmp_path, caplog):
    items, [bad] = _fifteen(tmp_path, 1)
    ds = RecordDataset(items, img_size=32, reject_dir=tmp_path / "run")
    seen = []
    with caplog.at_level(logging.WARNING, LOG):
        for batch in torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False):
            assert torch.isfinite(batch["image"]).all()
            seen += batch["meta"]["path"]
    assert len(seen) == 15  # the epoch finished, batches kept their size
    good = {it["path"] for it in items} - {str(bad)}
    assert str(bad) not in seen and good <= set(seen)  # every good item served
    assert f"{bad}: not an image" in logged(caplog)
    rows = (tmp_path / "run" / REJECT_FILE).read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith(f"{bad},-1,t,not an image")
    assert ds.reject_count == 1


def reject_share(tmp_path, caplog):
    items, bad = _fifteen(tmp_path, 3)
    ds = RecordDataset(items, img_size=32, max_reject_share=0.1)
    with pytest.raises(TooManyRejectsError, match=r"2 of 15 records rejected") as err:
        for i in range(len(ds)):
            ds[i]
    assert str(bad[0]) in str(err.value) and str(bad[1]) in str(err.value)


def bad_safetensors(tmp_path, caplog):
    _, w = encoder_dir(tmp_path / "ok")
    full = w.read_bytes()
    noise = RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    for name, payload in [("truncated", full[: len(full) // 2]), ("zero", b""), ("random", noise)]:
        spec, w = encoder_dir(tmp_path / name, weights=payload)
        with pytest.raises(CheckpointError) as err:
            runs.load_encoder(spec)
        assert str(w) in str(err.value), name


def wrong_shape_state(tmp_path, caplog):
    from safetensors.torch import save_file

    from uslib.models import create_backbone

    spec, w = encoder_dir(tmp_path)
    state = create_backbone("resnet18_smoke", in_chans=3).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(w))
    with pytest.raises(CheckpointError) as err:
        runs.load_encoder(spec)
    assert str(w) in str(err.value) and "conv1.weight" in str(err.value)


def empty_encoder_yaml(tmp_path, caplog):
    spec, _ = encoder_dir(tmp_path, spec="")
    with pytest.raises(ValueError, match="expected a mapping with a 'backbone' field") as err:
        runs.load_encoder(spec)
    assert str(spec) in str(err.value)


def yaml_no_backbone(tmp_path, caplog):
    spec, _ = encoder_dir(tmp_path, spec={"kwargs": {"in_chans": 1}})
    with pytest.raises(ValueError, match="missing field 'backbone'") as err:
        runs.load_encoder(spec)
    assert str(spec) in str(err.value)


def hc18_bad_pixel_size(tmp_path, caplog):
    lines = ["image,mask,subject_id,fold,pixel_size_mm,head_circumference_mm"]
    for k, px in enumerate(["0.1", "n/a", "0.2"]):
        grey(tmp_path / f"{k}_HC.png")
        Image.fromarray(np.zeros((48, 40), np.uint8)).save(tmp_path / f"{k}_mask.png")
        lines.append(f"{k}_HC.png,{k}_mask.png,s{k},0,{px},150.0")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, LOG), pytest.warns(UserWarning, match="skipped 1 of 3"):
        items = hc18_items(tmp_path)
    assert f"{tmp_path / 'labels.csv'}: skipped 1 of 3 rows" in logged(caplog)
    assert "line 3, column 'pixel_size_mm': 'n/a'" in logged(caplog)
    assert [it["spacing"] for it in items] == [0.1, 0.2]  # the rest of the set is kept
    assert not rejects_of(items)


def load_encoder_input_norm(tmp_path, caplog):
    norm = {"backbone": "resnet18_smoke", "kwargs": {"in_chans": 1}, "input_norm": [0.5, 0.25]}
    spec, _ = encoder_dir(tmp_path, spec=norm)
    enc, got = runs.load_encoder(spec)
    raw, _ = runs.load_encoder(spec, raw=True)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(enc.eval()(x), raw.eval()((x - 0.5) / 0.25), atol=1e-5)
        assert not torch.allclose(enc(x), raw(x), atol=1e-3)  # the norm is applied, not a no-op
    assert got["input_norm"] == [0.5, 0.25]


# ---------------------------------------------------------------------------------------------

CHECKS: dict[str, Callable] = {c[0]: globals()[c[0]] for c in CASES}


def test_matrix_is_complete() -> None:
    """Every row has a check, ids are unique, and the issue's 31 inputs are all there."""
    ids = [c[0] for c in CASES]
    assert len(set(ids)) == len(ids) >= 31
    assert {c[1] for c in CASES} == {"error", "skip", "accepted"}


@pytest.mark.parametrize(("case", "outcome", "what", "paths"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(case: str, outcome: str, what: str, paths: str, tmp_path, caplog) -> None:
    caplog.set_level(logging.INFO, LOG)
    CHECKS[case](tmp_path, caplog)

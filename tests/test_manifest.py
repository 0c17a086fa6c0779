"""Manifest building: validation and rejects, odd modes, ROI, cache, save/load; pHash duplicates
and pretraining/evaluation contamination."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import ndimage

from uslib.data.dedup import (
    contamination,
    duplicate_summary,
    hamming_distances,
    near_duplicates,
    phash,
)
from uslib.data.manifest import (
    AssemblyConfig,
    Manifest,
    build_manifest,
    find_real_sets,
    load_manifest,
    manifest_dir,
    real_items,
    save_manifest,
    write_records,
)
from uslib.data.media import detect_fan_roi
from uslib.data.sources import RecordDataset, make_item, paired_items

SHARED = Path(
    os.environ.get("USLIB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
HC18 = SHARED / "hc18_subset"


def _texture(seed: int, shape=(96, 128)) -> np.ndarray:
    """A smooth random grey image (uint8); different seeds give unrelated images."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 6)
    return ((field - field.min()) / np.ptp(field) * 255).astype(np.uint8)


def _reencoded(img: np.ndarray, scale: float = 0.6, quality: int = 50) -> np.ndarray:
    """A resized, JPEG re-encoded copy."""
    small = Image.fromarray(img).resize((int(img.shape[1] * scale), int(img.shape[0] * scale)))
    buf = io.BytesIO()
    small.save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("L"))


@pytest.fixture
def small_set(tmp_path) -> Path:
    """``images/`` + ``masks/``: 6 HC18 images (or textures without shared data)."""
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    if HC18.is_dir():
        for p in sorted((HC18 / "images").glob("*.png"))[:6]:
            shutil.copy(p, root / "images" / p.name)
            shutil.copy(HC18 / "masks" / f"{p.stem}_Mask.png", root / "masks")
    else:
        for k in range(6):
            Image.fromarray(_texture(k)).save(root / "images" / f"{k:03d}_HC.png")
            Image.fromarray(_texture(k) > 128).save(root / "masks" / f"{k:03d}_HC_Mask.png")
    return root


def _add_bad_files(images: Path, masks: Path) -> dict[str, str]:
    real = sorted(images.glob("*.png"))[0].read_bytes()
    (images / "trunc.png").write_bytes(real[: len(real) // 2])
    (images / "empty.png").write_bytes(b"")
    (images / "text.png").write_text("this is not an image\n")
    Image.new("L", (1, 1), 7).save(images / "tiny.png")
    Image.new("L", (40, 40), 7).save(images / "mm.png")
    Image.new("L", (30, 30), 255).save(masks / "mm_mask.png")
    return {"trunc": "truncated", "empty": "empty file", "text": "not an image",
            "tiny": "too small", "mm": "mask size differs"}  # fmt: skip


def _add_odd_modes(images: Path) -> None:
    deep = np.linspace(1000, 3000, 64 * 48).reshape(48, 64).astype(np.uint16)
    Image.fromarray(deep).save(images / "deep16.png")
    Image.fromarray(_texture(9, (48, 64))).convert("RGBA").save(images / "rgba.png")
    Image.fromarray(_texture(8, (48, 64))).convert("RGB").convert("P").save(images / "pal.png")
    Image.fromarray(_texture(7, (48, 64))).convert("CMYK").save(images / "cmyk.tiff")


def test_bad_files_become_rejects_and_the_rest_is_valid(small_set):
    expected = _add_bad_files(small_set / "images", small_set / "masks")
    _add_odd_modes(small_set / "images")
    items = paired_items(small_set, dataset="small")
    m = build_manifest(items)
    got = {Path(p).stem: r for p, r in zip(m.rejects["path"], m.rejects["reason"])}
    assert got == expected
    assert (m.rejects["detail"].str.len() > 0).all() and set(m.rejects["dataset"]) == {"small"}
    df = m.to_pandas()
    assert len(df) == len(items) - len(expected) == 6 + 4
    modes = dict(zip(df["path"].map(lambda p: Path(p).stem), df["mode"]))
    assert modes["rgba"] == "RGBA" and modes["pal"] == "P" and modes["cmyk"] == "CMYK"
    assert modes["deep16"].startswith("I")
    records = RecordDataset(m.items(), img_size=32)
    native = RecordDataset(m.items())
    deep = next(r for r in native if r["meta"]["path"].endswith("deep16.png"))
    assert deep["image"].min() == 0.0 and deep["image"].max() == 1.0  # real range, not /65535
    assert all(torch.isfinite(r["image"]).all() for r in records)


def test_huge_images_are_rejected(tmp_path):
    Image.new("L", (200, 100), 9).save(tmp_path / "big.png")
    m = build_manifest([make_item(tmp_path / "big.png", dataset="x")], max_pixels=10_000)
    assert m.rejects["reason"].tolist() == ["too large"] and len(m) == 0


def test_save_load_roundtrip(small_set, tmp_path):
    m = build_manifest(paired_items(small_set, dataset="small"), roi_crop=True)
    out = save_manifest(m, tmp_path / "manifest")
    for name in ("arrow", "manifest.parquet", "rejects.csv", "info.json"):
        assert (out / name).exists(), name
    back = load_manifest(out)
    assert isinstance(back, Manifest) and len(back) == len(m)
    assert back.items() == m.items()
    assert (
        pd.read_parquet(out / "manifest.parquet")["path"].tolist() == m.to_pandas()["path"].tolist()
    )
    by_split = back.with_columns(split=["a", "b"] * (len(back) // 2)).items_by("split")
    assert [len(v) for v in by_split.values()] == [len(back) // 2] * 2
    assert manifest_dir("smoke").parts[-3:] == ("smoke", "01_dataset_assembly", "manifest")
    with pytest.raises(FileNotFoundError, match="no manifest"):
        load_manifest(tmp_path / "nothing")


def _scan_like(h: int = 200, w: int = 300) -> np.ndarray:
    """Black frame, speckled fan in rows 20-179 / cols 60-239, text top-left, thin bar right."""
    rng = np.random.default_rng(0)
    img = np.zeros((h, w), np.float32)
    yy, xx = np.mgrid[:h, :w]
    fan = (yy >= 20) & (yy < 180) & (np.abs(xx - 150) <= 30 + (yy - 20) * 60 / 160)
    img[fan] = rng.uniform(0.2, 0.9, fan.sum())
    img[4:12, 4:40] = 1.0  # burned-in text
    img[40:140, 285:291] = np.linspace(0, 1, 100)[:, None]  # calibration bar, 6 px wide
    return img


def test_fan_roi_skips_borders_text_and_bars():
    y0, y1, x0, x1 = detect_fan_roi(_scan_like())
    assert abs(y0 - 20) <= 2 and abs(y1 - 180) <= 2
    assert abs(x0 - 60) <= 2 and abs(x1 - 240) <= 2
    flat = np.full((50, 50), 0.5, np.float32)
    assert detect_fan_roi(np.zeros((50, 50), np.float32)) == (0, 50, 0, 50)
    assert detect_fan_roi(flat) == (0, 50, 0, 50)


def test_roi_crop_and_cache_are_used_by_records(tmp_path):
    img = (_scan_like() * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "scan.png")
    item = make_item(tmp_path / "scan.png", dataset="x")
    m = build_manifest([item], roi_crop=True, cache_dir=tmp_path / "cache", cache_size=32)
    row = m.to_pandas().iloc[0]
    assert (row["roi_y0"], row["roi_x1"]) == detect_fan_roi(img / 255.0)[::3]
    assert Image.open(row["cache_path"]).size == (32, 32)
    native = RecordDataset(m.items())[0]  # ROI-cropped source (cache is used only at its size)
    assert native["image"].shape[1:] == (
        row["roi_y1"] - row["roi_y0"],
        row["roi_x1"] - row["roi_x0"],
    )
    (tmp_path / "scan.png").unlink()  # now only the cache can serve the pixels
    assert RecordDataset(m.items(), img_size=32)[0]["image"].shape == (1, 32, 32)


def test_write_records_roundtrip(tmp_path):
    recs = []
    for k in range(3):
        mask = torch.zeros(32, 32, dtype=torch.int64)
        mask[4:10, 5:20] = 1
        recs.append({"image": torch.rand(1, 32, 32), "mask": mask, "has_mask": k > 0, "label": k,
                     "dataset": "syn", "organ": "lung", "patient_id": "", "video_id": "",
                     "frame_idx": -1, "spacing": 0.3, "meta": {"label_name": f"c{k}"}})  # fmt: skip
    items = write_records(recs, tmp_path, prefix="train_")
    m = build_manifest(items)
    assert len(m) == 3 and m.rejects.empty
    back = RecordDataset(m.items())
    for rec, got in zip(recs, back):
        assert torch.allclose(got["image"], rec["image"], atol=0.5 / 255 + 1e-6)
        assert got["has_mask"] == rec["has_mask"] and got["label"] == rec["label"]
        if rec["has_mask"]:
            assert torch.equal(got["mask"], rec["mask"])
    assert len({it["video_id"] for it in items}) == 3 and items[1]["label_name"] == "c1"


def test_assembly_presets():
    assert AssemblyConfig.preset("smoke") == AssemblyConfig()
    paper = AssemblyConfig.preset("paper")
    assert paper.img_size == 224 and paper.real_limit == 0


@pytest.mark.realdata
@pytest.mark.skipif(not SHARED.is_dir(), reason="shared data absent")
def test_real_sets_are_found_and_capped_by_group():
    found = find_real_sets(SHARED)
    assert set(found) == {"pocus", "hc18"}
    items = real_items(SHARED, limit=40, seed=1)
    for ds in ("pocus", "hc18"):
        sub = [it for it in items if it["dataset"] == ds]
        assert 0 < len(sub) <= 60  # whole patients only, so the cap is approximate
    frames = pd.read_csv(SHARED / "pocus_lung" / "frames.csv")
    per_patient = frames.groupby("patient_id").size()
    kept = pd.Series([it["patient_id"] for it in items if it["dataset"] == "pocus"]).value_counts()
    for pid, n in kept.items():
        assert n == per_patient[int(pid.split(":")[1])]  # every frame of a kept patient


# ---------------------------------------------------------------- pHash and contamination


def _dct_matrix(n: int) -> np.ndarray:
    k, x = np.mgrid[:n, :n]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * x + 1) * k / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


def test_phash_matches_the_dct_definition():
    img = _texture(3).astype(np.float32) / 255.0
    small = np.asarray(Image.fromarray(img).resize((32, 32), Image.Resampling.BOX), np.float64)
    c = _dct_matrix(32)
    low = (c @ small @ c.T)[:8, :8].ravel()
    bits = low > np.median(low[1:])
    assert phash(img) == int("".join("1" if b else "0" for b in bits), 2)
    assert phash(img) == phash(img * 0.5 + 0.2)  # gain and offset do not matter


def _images() -> list[np.ndarray]:
    """Unrelated grey images: frames of different POCUS patients, or textures."""
    frames = SHARED / "pocus_lung" / "frames.csv"
    if not frames.is_file():
        return [_texture(k) for k in range(6)]
    df = pd.read_csv(frames).groupby("patient_id").head(1).iloc[::9].head(6)
    return [np.asarray(Image.open(SHARED / "pocus_lung" / f).convert("L")) for f in df.frame_file]


def _manifest_of(tmp: Path, arrays: dict[str, np.ndarray], dataset: str) -> pd.DataFrame:
    items = []
    for name, arr in arrays.items():
        Image.fromarray(arr).save(tmp / f"{name}.png")
        items.append(make_item(tmp / f"{name}.png", dataset=dataset, video_id=name))
    return build_manifest(items).to_pandas()


def test_reencoded_copy_is_a_duplicate_distinct_images_are_not(tmp_path):
    imgs = _images()
    arrays = {f"img{k}": a for k, a in enumerate(imgs)} | {"copy0": _reencoded(imgs[0])}
    df = _manifest_of(tmp_path, arrays, "mix")
    pairs = near_duplicates(df, max_distance=8)
    assert {(Path(a).stem, Path(b).stem) for a, b in zip(pairs["path_a"], pairs["path_b"])} == {
        ("img0", "copy0")
    }
    assert pairs["relation"].tolist() == ["same dataset"]
    d = hamming_distances(df["phash"], df["phash"])
    assert d[np.triu_indices(len(imgs), 1)].min() > 8  # the originals are far apart
    df["split"] = ["train"] * len(imgs) + ["test"]
    leaks = near_duplicates(df, split_col="split")
    assert leaks["crosses_split"].tolist() == [True]
    assert duplicate_summary(pairs)["n_pairs"].tolist() == [1]


def test_contamination_flags_eval_image_in_pretraining(tmp_path):
    imgs = _images()
    (tmp_path / "pre").mkdir()
    (tmp_path / "ev").mkdir()
    corpus = {"p1": imgs[1], "p2": imgs[2], "leak": _reencoded(imgs[3])}
    pre = _manifest_of(tmp_path / "pre", corpus, "corpus")
    ev = _manifest_of(tmp_path / "ev", {"e3": imgs[3], "e4": imgs[4], "e5": imgs[5]}, "busi")
    flagged = contamination(pre, ev)
    assert flagged["eval_path"].map(lambda p: Path(p).stem).tolist() == ["e3"]
    assert Path(flagged["pretrain_path"].iloc[0]).stem == "leak"
    assert flagged["distance"].iloc[0] <= 8 and flagged["n_matches"].iloc[0] == 1
    assert contamination(pre, ev.iloc[1:]).empty

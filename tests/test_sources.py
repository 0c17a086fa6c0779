"""Loaders: layouts, image modes, videos, DICOM, records; POCUS and HC18 on the real sample data."""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import ndimage

from uslib.data.media import (
    MediaError,
    Rules,
    fit_image,
    pil_to_grey,
    read_dicom,
    read_image,
    read_mask,
    read_video,
    read_video_frame,
    video_info,
)
from uslib.data.sources import (
    POCUS_CLASSES,
    UNLABELLED,
    ClipCollection,
    FrameArray,
    RecordDataset,
    class_folder_items,
    hc18_items,
    load_record,
    make_item,
    media_file_items,
    paired_items,
    pocus_items,
    pocus_videos,
)

SHARED = Path(
    os.environ.get("USLIB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
POCUS, HC18 = SHARED / "pocus_lung", SHARED / "hc18_subset"
needs_pocus = pytest.mark.skipif(not POCUS.is_dir(), reason="shared/data/pocus_lung absent")
needs_hc18 = pytest.mark.skipif(not HC18.is_dir(), reason="shared/data/hc18_subset absent")


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _smooth_frames(t: int = 10, h: int = 48, w: int = 64) -> np.ndarray:
    """A moving grey ramp: compresses well, so lossy codecs stay close."""
    x = np.linspace(0, 1, w)[None, None, :] + np.linspace(0, 0.5, t)[:, None, None]
    return np.repeat((np.sin(4 * x) * 0.4 + 0.5) * 255, h, axis=1).astype(np.uint8)


# ---------------------------------------------------------------- layouts (no data needed)


def test_class_folders_labels_in_sorted_order(tmp_path):
    for cls in ("b", "a"):
        for n in range(2):
            _png(tmp_path / cls / f"{n}.png", np.full((40, 40), 100, np.uint8))
    _png(tmp_path / "a" / "0_mask.png", np.zeros((40, 40), np.uint8))
    items = class_folder_items(tmp_path, dataset="toy")
    assert [(it["label"], it["label_name"]) for it in items] == [(0, "a")] * 2 + [(1, "b")] * 2
    assert len({it["video_id"] for it in items}) == 4  # each still is its own group


def test_busi_layout_merges_extra_masks(tmp_path):
    img = np.full((40, 50), 90, np.uint8)
    m0, m1 = np.zeros((40, 50), np.uint8), np.zeros((40, 50), np.uint8)
    m0[5:10, 5:10], m1[20:30, 30:40] = 255, 255
    _png(tmp_path / "benign" / "benign (1).png", img)
    _png(tmp_path / "benign" / "benign (1)_mask.png", m0)
    _png(tmp_path / "benign" / "benign (1)_mask_1.png", m1)
    _png(tmp_path / "normal" / "normal (1).png", img)
    _png(tmp_path / "normal" / "normal (1)_mask.png", np.zeros((40, 50), np.uint8))
    items = paired_items(tmp_path, dataset="busi", organ="breast")
    assert [it["label_name"] for it in items] == ["benign", "normal"]
    assert len(items[0]["mask_paths"]) == 2
    rec = load_record(items[0])
    assert rec["has_mask"] and rec["mask"].sum() == 25 + 100  # logical OR of both masks
    assert load_record(items[1])["mask"].sum() == 0


def test_images_masks_layout_matches_mask_suffix(tmp_path):
    _png(tmp_path / "images" / "001_HC.png", np.full((40, 40), 50, np.uint8))
    _png(tmp_path / "images" / "002_HC.png", np.full((40, 40), 50, np.uint8))
    _png(tmp_path / "masks" / "001_HC_Mask.png", np.full((40, 40), 255, np.uint8))
    items = paired_items(tmp_path)
    assert [len(it["mask_paths"]) for it in items] == [1, 0]


def test_mask_size_mismatch_is_named(tmp_path):
    m = _png(tmp_path / "m.png", np.zeros((10, 12), np.uint8))
    with pytest.raises(MediaError, match="m.png: mask size differs"):
        read_mask([str(m)], shape=(12, 10))
    label_map = _png(tmp_path / "l.png", np.array([[0, 1], [2, 0]], np.uint8))
    with pytest.raises(MediaError, match=r"l.png: mask values \(values \[0, 1, 2\]"):
        read_mask([str(label_map)])  # a label map needs its values declared
    declared = read_mask([str(label_map)], rules=Rules(mask_values=(1, 2)))
    np.testing.assert_array_equal(declared, [[0, 1], [2, 0]])


# ---------------------------------------------------------------- image modes


def test_modes_to_grey():
    rgba = Image.new("RGBA", (4, 4), (200, 200, 200, 128))
    assert np.allclose(pil_to_grey(rgba), 200 / 255 * 128 / 255, atol=1e-3)  # over black
    pal = Image.new("RGB", (4, 4), (255, 0, 0)).convert("P")
    assert np.allclose(pil_to_grey(pal), round(0.299 * 255) / 255, atol=2e-3)
    cmyk = Image.new("CMYK", (4, 4), (0, 0, 0, 0))  # no ink = white
    assert np.allclose(pil_to_grey(cmyk), 1.0)


def test_16bit_png_uses_real_range(tmp_path):
    arr = np.linspace(1000, 3000, 64 * 48).reshape(48, 64).astype(np.uint16)
    p = tmp_path / "a16.png"
    Image.fromarray(arr).save(p)
    img, info = read_image(p)
    assert info["mode"].startswith("I")
    assert img.min() == 0.0 and img.max() == 1.0  # not arr / 65535 (max 0.046), not clipped
    np.testing.assert_allclose(img, (arr - 1000.0) / 2000.0, atol=1e-6)


# ---------------------------------------------------------------- videos and DICOM


@pytest.mark.parametrize(
    "ext,kw",
    [("mp4", {"codec": "libx264"}), ("avi", {"codec": "mpeg4"}), ("mov", {"codec": "mpeg4"}),
     ("mpeg", {"codec": "mpeg1video", "fps": 25}), ("gif", None)],
)  # fmt: skip
def test_video_formats_decode(tmp_path, ext, kw):
    frames = _smooth_frames()
    p = tmp_path / f"clip.{ext}"
    rgb = np.repeat(frames[..., None], 3, -1)
    if kw is None:
        iio.imwrite(p, rgb, plugin="pillow", duration=100, loop=0)
    else:
        iio.imwrite(p, rgb, plugin="pyav", **kw)
    clip = read_video(p)
    assert clip.shape == frames.shape and clip.dtype == np.uint8
    assert np.abs(clip.astype(float) - frames).mean() < 6
    assert video_info(p)["n_frames"] == len(frames)
    np.testing.assert_array_equal(read_video_frame(p, 7), clip[7])
    coll = ClipCollection(media_file_items(tmp_path, dataset="toy"), img_size=32, max_frames=4)
    v = coll.video(0)
    assert v["frames"].shape == (4, 32, 32) and v["frame_indices"].tolist() == [0, 3, 6, 9]


def _write_dicom(path: Path, arr: np.ndarray, photometric: str = "MONOCHROME2", **tags) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Modality = "US"
    rgb = photometric == "RGB"
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = photometric
    if rgb:
        ds.PlanarConfiguration = 0
    n_frames = arr.shape[0] if arr.ndim == (4 if rgb else 3) else 1
    if n_frames > 1:
        ds.NumberOfFrames = n_frames
    ds.Rows, ds.Columns = arr.shape[-3:-1] if rgb else arr.shape[-2:]
    ds.BitsAllocated = ds.BitsStored = arr.dtype.itemsize * 8
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_single_frame_16bit_with_rescale_and_spacing(tmp_path):
    arr = (np.arange(40 * 36).reshape(40, 36) % 700 + 100).astype(np.uint16)
    p = _write_dicom(tmp_path / "a.dcm", arr, RescaleSlope=2, RescaleIntercept=-5,
                     PixelSpacing=[0.2, 0.25])  # fmt: skip
    frames, info = read_dicom(p)
    assert frames.shape == (1, 40, 36) and info["spacing"] == 0.25
    np.testing.assert_allclose(frames[0], (arr - 100.0) / 699.0, atol=1e-6)
    inv, _ = read_dicom(_write_dicom(tmp_path / "b.dcm", arr, photometric="MONOCHROME1"))
    np.testing.assert_allclose(inv[0], 1 - (arr - 100.0) / 699.0, atol=1e-6)


def test_dicom_multiframe_and_rgb(tmp_path):
    clip = _smooth_frames(t=5, h=32, w=40)
    frames, info = read_dicom(_write_dicom(tmp_path / "clip.dcm", clip))
    assert info["n_frames"] == 5
    np.testing.assert_allclose(frames, clip / 255.0, atol=1e-6)  # plain 8-bit: no rescale
    rgb = np.repeat(clip[..., None], 3, -1)
    frames, _ = read_dicom(_write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    np.testing.assert_allclose(frames, clip / 255.0, atol=1e-5)
    items = media_file_items(tmp_path, kinds=("dicom",))
    assert [it["kind"] for it in items] == ["dicom"] * 2
    assert load_record(items[0] | {"frame_idx": 4}, img_size=16)["image"].shape == (1, 16, 16)
    Image.fromarray(clip[0]).save(tmp_path / "x.dcm", format="PNG")  # a PNG named .dcm
    with pytest.raises(MediaError, match="x.dcm: not a DICOM"):
        read_dicom(tmp_path / "x.dcm")


# ---------------------------------------------------------------- records and datasets


def test_pad_resize_keeps_aspect_and_aligns_mask(tmp_path):
    img = np.zeros((40, 80), np.uint8)  # >= 32 px a side (smaller images are rejected)
    img[10:30, 20:60] = 255
    p = _png(tmp_path / "images" / "a.png", img)
    _png(tmp_path / "masks" / "a_mask.png", img)
    item = paired_items(tmp_path)[0] | {"spacing": 0.5}
    rec = load_record(item, img_size=32)
    assert rec["image"].shape == (1, 32, 32) and rec["mask"].shape == (32, 32)
    assert rec["spacing"] == pytest.approx(0.5 * 80 / 32)  # mm per output pixel
    assert rec["image"][0, :8].abs().sum() == 0 and rec["image"][0, 24:].abs().sum() == 0
    np.testing.assert_array_equal(rec["mask"].numpy(), (rec["image"][0].numpy() > 0.5))
    stretched = load_record(item, img_size=32, resize="stretch")
    assert stretched["mask"].sum() == 16 * 16
    assert str(p) == rec["meta"]["path"]


def test_fit_image_nearest_keeps_labels():
    m = np.zeros((10, 30), np.int64)
    m[:, 10:20] = 2
    assert set(np.unique(fit_image(m, 12, nearest=True))) == {0, 2}


def test_record_dataset_collates_mixed_meta(tmp_path):
    a = _png(tmp_path / "a.png", np.full((40, 40), 10, np.uint8))
    items = [
        make_item(a, dataset="x", meta={"fold": 1}),
        make_item(a, dataset="y", meta={"s": "q"}),
    ]
    ds = RecordDataset(items, img_size=24)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["image"].shape == (2, 1, 24, 24) and batch["image"].dtype == torch.float32
    assert batch["mask"].dtype == torch.int64 and batch["dataset"] == ["x", "y"]
    assert torch.isnan(batch["meta"]["fold"][1]) and batch["meta"]["s"] == ["", "q"]
    assert ds.subset([1]).items == [items[1]] and ds.labels.tolist() == [-1, -1]


def test_make_item_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown fields"):
        make_item("a.png", dataset="x", lable=1)


# ---------------------------------------------------------------- real data: POCUS


@pytest.mark.realdata
@needs_pocus
def test_every_pocus_frame_and_still_loads():
    frames = pd.read_csv(POCUS / "frames.csv")
    for f in frames["frame_file"]:
        img, _ = read_image(POCUS / f)
        assert img.ndim == 2 and min(img.shape) >= 100
    samples = pd.read_csv(POCUS / "samples.csv")
    for r in samples[samples["kind"] == "image"].itertuples():
        img, _ = read_image(POCUS / r.file)
        assert img.shape == (r.height, r.width)


@pytest.mark.realdata
@needs_pocus
def test_every_pocus_clip_decodes_first_frame_and_count():
    samples = pd.read_csv(POCUS / "samples.csv")
    clips = samples[samples["kind"] == "video"]
    assert len(clips) == 124
    for r in clips.itertuples():
        info = video_info(POCUS / r.file)
        assert info["n_frames"] == r.n_frames, r.file
        assert read_video_frame(POCUS / r.file, 0).shape == (r.height, r.width), r.file


@pytest.mark.realdata
@needs_pocus
def test_pocus_items_class_map_and_exclusions():
    frames = pd.read_csv(POCUS / "frames.csv")
    default = pocus_items(POCUS)
    assert len(default) == int(((frames.label != "viral") & (frames.label_uncertain == 0)).sum())
    assert {it["label"] for it in default} == {0, 1, 2}
    assert all(it["label"] == POCUS_CLASSES[it["label_name"]] for it in default)
    everything = pocus_items(POCUS, include_viral=True, include_uncertain=True)
    assert len(everything) == len(frames) and {it["label"] for it in everything} == {0, 1, 2, 3}
    assert len(pocus_items(POCUS, "stills")) == 31
    assert {it["meta"]["fold"] for it in pocus_items(POCUS, folds=[2])} == {2}


@pytest.mark.realdata
@needs_pocus
def test_pocus_video_collection():
    coll = pocus_videos(POCUS)
    assert len(coll) == 118  # 124 clips minus 6 viral (one of them label-uncertain)
    assert len(pocus_videos(POCUS, include_viral=True, include_uncertain=True)) == 124
    v = coll.video(0)
    assert v["frames"].dtype == np.uint8 and v["frames"].ndim == 3
    assert set(v) >= {"frames", "label", "video_id", "patient_id", "dataset", "organ"}
    n_extracted = pd.read_csv(POCUS / "samples.csv").set_index("sample_id")["n_extracted"]
    assert len(v["frames"]) == n_extracted[v["meta"]["sample_id"]]
    assert v["dataset"] == "pocus" and v["organ"] == "lung" and v["label"] in (0, 1, 2)


@pytest.mark.realdata
@needs_pocus
def test_raw_frame_indices_match_extracted_frames():
    raw = pocus_videos(POCUS, source="raw")
    frames = pocus_videos(POCUS)
    i = next(k for k, c in enumerate(raw.clips) if c["path"].endswith(".gif"))
    r, f = raw.video(i), frames.video(i)
    assert len(r["frames"]) == raw.clips[i]["meta"]["n_frames"]
    for img, idx in zip(f["frames"][:3], f["frame_indices"][:3]):
        err = [np.abs(r["frames"][k].astype(float) - img).mean() for k in range(idx, idx + 2)]
        assert err[0] < err[1] and err[0] < 4  # frame N of the clip is frame N on disk


# ---------------------------------------------------------------- real data: HC18


def fit_ellipse_perimeter(mask: np.ndarray) -> float:
    """Perimeter (pixels) of the direct least-squares ellipse (Fitzgibbon et al. 1999) through
    the mask's boundary pixels, by Ramanujan's second approximation."""
    m = mask.astype(bool)
    edge = m & ~ndimage.binary_erosion(m)
    ys, xs = np.nonzero(edge)
    x0, y0, s = xs.mean(), ys.mean(), max(xs.std(), ys.std())
    x, y = (xs - x0) / s, (ys - y0) / s
    d = np.stack([x * x, x * y, y * y, x, y, np.ones_like(x)], 1)
    c = np.zeros((6, 6))
    c[0, 2] = c[2, 0] = 2  # constraint 4ac - b^2 = 1
    c[1, 1] = -1
    w, v = np.linalg.eig(np.linalg.solve(d.T @ d, c))
    cand = [np.real(v[:, k]) for k in range(6) if np.isfinite(w[k])]
    a, b, cc, dd, e, f = max(cand, key=lambda q: 4 * q[0] * q[2] - q[1] ** 2)
    quad = np.array([[a, b / 2], [b / 2, cc]])
    ctr = np.linalg.solve(2 * quad, [-dd, -e])
    f_ctr = f + 0.5 * (dd * ctr[0] + e * ctr[1])
    ax = np.sqrt(-f_ctr / np.linalg.eigvalsh(quad)) * s
    p, q = ax.max(), ax.min()
    h = ((p - q) / (p + q)) ** 2
    return float(np.pi * (p + q) * (1 + 3 * h / (10 + np.sqrt(4 - 3 * h))))


def test_ellipse_fit_on_a_drawn_ellipse():
    yy, xx = np.mgrid[:200, :300]
    mask = ((xx - 150) / 100.0) ** 2 + ((yy - 100) / 60.0) ** 2 <= 1
    h = (40 / 160) ** 2
    expected = np.pi * 160 * (1 + 3 * h / (10 + np.sqrt(4 - 3 * h)))
    assert abs(fit_ellipse_perimeter(mask) - expected) < 0.01 * expected


@pytest.mark.realdata
@needs_hc18
def test_hc18_masks_align_and_give_published_hc():
    items = hc18_items(HC18)
    assert len(items) == 200 and all(it["spacing"] > 0 for it in items)
    errors = []
    for it in items:
        rec = load_record(it, img_size=256)  # raises if the mask does not fit its image
        assert rec["mask"].shape == rec["image"].shape[1:] and rec["has_mask"]
        hc = fit_ellipse_perimeter(rec["mask"].numpy()) * rec["spacing"]
        errors.append(abs(hc - it["meta"]["hc_mm"]))
    assert max(errors) < 2.0, max(errors)


def test_frame_array_records_and_bad_input() -> None:
    """The one dataset of unlabelled POCUS frames (TinyUSFM's pool, SPAD-ViT's depth-1 stills):
    uint8 -> [0, 1] float, schema fields, the index; a wrong array is named."""
    frames = np.stack([np.full((6, 6), v, np.uint8) for v in (0, 51, 255)])
    ds = FrameArray(frames, "pocus")
    rec = ds[1]
    assert len(ds) == 3 and rec["index"] == 1 and rec["dataset"] == "pocus"
    assert rec["image"].shape == (1, 6, 6) and torch.allclose(
        rec["image"], torch.full((1, 6, 6), 0.2)
    )
    assert rec["label"] == UNLABELLED and rec["mask"].shape == (6, 6) and not rec["mask"].any()
    with pytest.raises(ValueError, match=r"\(3, 6\) float32"):
        FrameArray(np.zeros((3, 6), np.float32))

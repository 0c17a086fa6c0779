"""Tests of the synthetic B-mode generator (uslib.data.synthetic).

Physics is checked against its definitions (Rayleigh envelope, PSF-sized speckle, Gaussian
elevation decorrelation), masks against the rendered structures, and the datasets against the
record schema. Sizes are 64-128 px and counts small so the file runs in well under a minute.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.data import default_collate

from uslib.config import ConfigError
from uslib.data.schema import RECORD_KEYS
from uslib.data.synthetic import (
    CONVEX_PROBE,
    LINEAR_PROBE,
    PHASED_PROBE,
    TASKS,
    Probe,
    SyntheticConfig,
    SyntheticStills,
    SyntheticVideos,
    class_names,
    draw_scene,
    render_frame,
    render_still,
    render_video,
    speckle_phantom,
)
from uslib.data.synthetic.config import sample_acquisition, sample_pose
from uslib.data.synthetic.psf import convolve_psf, lateral_transfer
from uslib.data.synthetic.scenes.fetal import ellipse_perimeter

RAYLEIGH_SNR = math.sqrt(math.pi / (4.0 - math.pi))  # 1.913


def _fwhm(intensity: np.ndarray, axis: int) -> float:
    """FWHM (samples) of the mean intensity autocorrelation along ``axis`` of a 2-D array."""
    x = intensity - intensity.mean()
    n = x.shape[axis]
    spec = np.fft.rfft(x, n=2 * n, axis=axis)
    acf = np.fft.irfft(np.abs(spec) ** 2, axis=axis).mean(axis=1 - axis)[:n]
    acf = acf / acf[0]
    k = int(np.argmax(acf < 0.5))
    return 2.0 * (k - 1 + (acf[k - 1] - 0.5) / (acf[k - 1] - acf[k]))


@pytest.fixture(scope="module")
def cells_phantoms() -> list[dict]:
    return [speckle_phantom(128, seed=s) for s in range(4)]


# --- physics ----------------------------------------------------------------------------------


def test_psf_sigmas_match_closed_form() -> None:
    # design table: fc 7.6 MHz, B 0.77, F# 1 -> ACF FWHM 0.116 / 0.200 mm = 2.355 sigma
    p = Probe("linear", fc=7.6, bw=0.77, fnum=1.0, focus=20.0)
    assert p.sigma_axial() * 2.355 == pytest.approx(0.116, rel=0.01)
    assert float(p.sigma_lateral(np.array(20.0))) * 2.355 == pytest.approx(0.200, rel=0.01)


def test_psf_kernels_have_unit_energy() -> None:
    s = np.array([0.3, 1.0, 2.5, 6.0], np.float32)
    h = lateral_transfer(s, 128, clutter=0.03)
    np.testing.assert_allclose(np.mean(h**2, axis=1), 1.0, rtol=1e-5)
    rng = np.random.default_rng(0)
    g = (rng.standard_normal((256, 256)) + 1j * rng.standard_normal((256, 256))) / math.sqrt(2)
    iq = convolve_psf(g.astype(np.complex64), 1.7, np.full(256, 2.0, np.float32))
    assert np.mean(np.abs(iq[40:-40, 40:-40]) ** 2) == pytest.approx(1.0, abs=0.08)


def test_envelope_is_rayleigh(cells_phantoms: list[dict]) -> None:
    env = np.concatenate([p["envelopes"][0, 40:216, 8:-8].ravel() for p in cells_phantoms])
    assert env.mean() / env.std() == pytest.approx(RAYLEIGH_SNR, abs=0.05)
    assert np.mean(env**2) == pytest.approx(1.0, abs=0.06)  # E|IQ|^2 = echo = 1


def test_speckle_size_follows_psf(cells_phantoms: list[dict]) -> None:
    ax, lat = [], []
    for p in cells_phantoms:
        intensity = p["envelopes"][0, 40:216, 8:-8] ** 2
        ax.append(_fwhm(intensity, 0) / (2.355 * p["sigma_axial_px"]))
        lat.append(_fwhm(intensity, 1) / (2.355 * float(np.median(p["sigma_lateral_px"]))))
    assert np.mean(ax) == pytest.approx(1.0, abs=0.1)
    assert np.mean(lat) == pytest.approx(1.0, abs=0.1)


def test_elevation_decorrelation_scatterers() -> None:
    shifts = (0.0, 0.4, 0.8)
    corr = np.zeros((2, 2))
    for seed in range(2):
        out = speckle_phantom(128, mode="scatterers", elevation_shifts=shifts, seed=seed)
        i = out["envelopes"][:, 40:216, 8:-8] ** 2
        corr[seed] = [np.corrcoef(i[0].ravel(), i[k].ravel())[0, 1] for k in (1, 2)]
        env = out["envelopes"][0, 40:216, 8:-8]
        assert env.mean() / env.std() > 1.8  # >= 10 unit-amplitude points per cell
    sigma = out["sigma_elev_mm"]
    theory = np.exp(-(np.array(shifts[1:]) ** 2) / (2 * sigma**2))
    np.testing.assert_allclose(corr.mean(axis=0), theory, rtol=0.1)


@pytest.mark.parametrize("probe", [LINEAR_PROBE, CONVEX_PROBE, PHASED_PROBE])
def test_probe_coordinates_roundtrip(probe: Probe) -> None:
    r = np.linspace(1, probe.depth, 7)[:, None]
    lat = np.linspace(*probe.lateral_extent(), 5)[None, :]
    u, w = probe.beam_to_probe(r, lat)
    r2, l2 = probe.probe_to_beam(u, w)
    np.testing.assert_allclose(r2, np.broadcast_to(r, r2.shape), atol=1e-6)
    np.testing.assert_allclose(l2, np.broadcast_to(lat, l2.shape), atol=1e-9)


# --- rendering: every task and class, determinism -----------------------------------------------


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_class_renders(task: str) -> None:
    cfg = SyntheticConfig(img_size=64)
    for label in range(len(class_names(task))):
        out = render_still(task, label, [1, label], cfg)
        img, mask, meta = out["image"], out["mask"], out["meta"]
        assert img.shape == (64, 64) and img.dtype == np.uint8 and img.std() > 5
        assert mask.shape == (64, 64) and mask.dtype == np.uint8
        assert meta["spacing_mm"] > 0 and meta["probe"] in TASKS[task].probes
        assert set(np.unique(mask)) <= {0, *TASKS[task].masks} or task == "organ"
    if task == "fetal_head":
        assert 50 < meta["hc_mm"] < 350
    if task == "cardiac":
        assert 0.1 < meta["ef"] < 0.75


@pytest.mark.parametrize("task", ["breast", "thyroid", "liver", "lung", "fetal_head", "cardiac"])
def test_float_frames_are_finite(task: str) -> None:
    cfg = SyntheticConfig(img_size=48)
    rng = np.random.default_rng(0)
    scene, _, _ = draw_scene(task, 0, rng, cfg)
    frame = render_frame(scene, sample_pose(cfg, rng), sample_acquisition(cfg, rng), 48, rng)
    assert np.isfinite(frame.envelope).all() and np.isfinite(frame.image).all()
    assert 0.0 <= frame.image.min() and frame.image.max() <= 1.0
    assert not frame.image[~frame.inside].any()  # black outside the field of view


def test_render_is_deterministic_and_index_dependent() -> None:
    cfg = SyntheticConfig(img_size=64)
    a = render_still("breast", 2, [0, 0, 5], cfg)
    b = render_still("breast", 2, [0, 0, 5], cfg)
    c = render_still("breast", 2, [0, 0, 6], cfg)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
    assert a["meta"] == b["meta"]
    assert not np.array_equal(a["image"], c["image"])
    v1 = render_video("lung", 1, 3, 7, cfg)
    v2 = render_video("lung", 1, 3, 7, cfg)
    np.testing.assert_array_equal(v1["frames"], v2["frames"])


def test_bad_inputs_raise() -> None:
    with pytest.raises(KeyError, match="valid"):
        render_still("kidney", 0)
    with pytest.raises(ValueError, match="out of range"):
        render_still("lung", 3)
    with pytest.raises(ConfigError):
        SyntheticConfig(p_atypical=1.5)
    with pytest.raises(ConfigError):
        SyntheticConfig(gain_db=(3.0, -3.0))
    with pytest.raises(ValueError, match="probe kind"):
        Probe("annular")


def test_config_presets_and_yaml() -> None:
    cfg = SyntheticConfig.preset("cpu", label_noise=0.05)
    assert cfg.img_size == 128 and cfg.label_noise == 0.05
    assert SyntheticConfig.from_yaml(cfg.to_yaml()) == cfg
    assert cfg.clean().gain_db == (0.0, 0.0)


# --- masks align with the rendered structures ----------------------------------------------------


def _ring(mask: np.ndarray, width: int = 3) -> np.ndarray:
    return ndimage.binary_dilation(mask, iterations=width) & ~mask


def test_lesion_and_cyst_darker_than_surroundings() -> None:
    cfg = SyntheticConfig(img_size=96).clean().replace(lesion_contrast_db=(-15.0, -10.0))
    cysts = 0
    for i in range(8):
        out = render_still("breast", 1 + i % 2, [3, i], cfg)
        m = out["mask"] == 1
        img = out["image"].astype(float)
        assert img[m].mean() < img[_ring(m)].mean() - 10
        cysts += bool(out["meta"]["lesion_cystic"])
    assert cysts >= 1  # anechoic cysts are folded into the benign class
    out = render_still("thyroid", 2, 11, cfg)
    m = out["mask"] == 1
    assert out["image"][m].mean() < out["image"][_ring(m)].mean()


def test_consolidation_brighter_than_aerated_lung() -> None:
    cfg = SyntheticConfig(img_size=96).clean()
    for i in range(4):
        out = render_still("lung", 2, [5, i], cfg)
        m = out["mask"] == 1
        assert m.sum() > 10
        img = out["image"].astype(float)
        rows = np.nonzero(m)[0]
        deep = _ring(m, 4) & (np.arange(96)[:, None] > rows.mean())  # air below and beside
        assert img[m].mean() > img[deep].mean()


def test_liver_vessels_and_cardiac_cavity_are_dark() -> None:
    cfg = SyntheticConfig(img_size=96).clean()
    out = render_still("liver", 0, 4, cfg)
    img, mask = out["image"].astype(float), out["mask"]
    assert (mask == 2).sum() > 0 and img[mask == 2].mean() < img[mask == 1].mean()
    out = render_still("cardiac", 0, 4, cfg)
    img, mask = out["image"].astype(float), out["mask"]
    assert img[mask == 1].mean() < img[mask == 2].mean()


def test_fetal_head_mask_covers_skull_and_matches_hc() -> None:
    cfg = SyntheticConfig(img_size=128).clean()
    checked = 0
    for i in range(6):
        out = render_still("fetal_head", 0, [8, i], cfg)
        meta, m = out["meta"], out["mask"] == 1
        if not meta["head_in_view"]:
            continue
        img = out["image"].astype(float)
        band = m & ~ndimage.binary_erosion(m, iterations=2)
        assert img[band].mean() > img[ndimage.binary_erosion(m, iterations=5)].mean() + 20
        # HC of the ellipse fitted to the mask (second moments) vs meta
        rr, cc = np.nonzero(m)
        lam = np.linalg.eigvalsh(np.cov(np.stack([rr, cc])))
        a, b = 2 * np.sqrt(lam[1]), 2 * np.sqrt(lam[0])
        hc_mask = ellipse_perimeter(a, b) * meta["spacing_mm"]
        assert hc_mask == pytest.approx(meta["hc_mm"], rel=0.03)
        assert a == pytest.approx(max(meta["head_a_px"], meta["head_b_px"]), rel=0.03)
        assert np.hypot(rr.mean() - meta["head_row_px"], cc.mean() - meta["head_col_px"]) < 1.5
        checked += 1
    assert checked >= 3


# --- datasets ----------------------------------------------------------------------------------


def test_stills_dataset_schema_balance_and_ids() -> None:
    ds = SyntheticStills("lung", "train", n_per_class=3, cfg=SyntheticConfig(img_size=64))
    assert len(ds) == 9 and np.bincount(ds.labels).tolist() == [3, 3, 3]
    recs = [ds[i] for i in range(len(ds))]
    assert set(RECORD_KEYS) <= set(recs[0])
    assert [r["label"] for r in recs] == ds.labels
    assert len({r["patient_id"] for r in recs}) == len(ds)
    r = recs[0]
    assert r["image"].shape == (1, 64, 64) and r["image"].dtype == torch.float32
    assert 0.0 <= float(r["image"].min()) and float(r["image"].max()) <= 1.0
    assert r["mask"].dtype == torch.int64 and r["spacing"] > 0 and r["organ"] == "lung"
    batch = default_collate(recs)
    assert batch["image"].shape == (9, 1, 64, 64)
    other = SyntheticStills("lung", "val", n_per_class=3, cfg=SyntheticConfig(img_size=64))
    assert not torch.equal(other[0]["image"], r["image"])


def test_organ_task_and_meta_collate() -> None:
    ds = SyntheticStills("organ", n_per_class=1, cfg=SyntheticConfig(img_size=64))
    recs = [ds[i] for i in range(len(ds))]
    assert [r["organ"] for r in recs] == list(class_names("organ"))
    default_collate(recs)  # meta keys agree across organs
    fetal = SyntheticStills("fetal_head", n_per_class=2, cfg=SyntheticConfig(img_size=64))
    assert default_collate([fetal[0], fetal[1]])["meta"]["hc_mm"].shape == (2,)


def test_label_noise_keeps_true_label() -> None:
    cfg = SyntheticConfig(img_size=32, label_noise=0.5)
    ds = SyntheticStills("breast", n_per_class=8, cfg=cfg)
    recs = [ds[i] for i in range(len(ds))]
    flipped = [r["label"] != r["meta"]["true_label"] for r in recs]
    assert 3 <= sum(flipped) <= 21
    assert [r["meta"]["true_label"] for r in recs] == ds.labels


def test_cache_roundtrip(tmp_path: Path) -> None:
    cfg = SyntheticConfig(img_size=48)
    ds = SyntheticStills("breast", "test", n_per_class=1, cfg=cfg, cache_dir=tmp_path)
    first = ds[2]
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    again = SyntheticStills("breast", "test", n_per_class=1, cfg=cfg, cache_dir=tmp_path)[2]
    assert torch.equal(first["image"], again["image"]) and first["meta"] == again["meta"]
    other = SyntheticStills("breast", "test", 1, cfg.replace(gain_db=(1.0, 1.0)), 0, tmp_path)
    other[2]
    assert len(list(tmp_path.glob("*.npz"))) == 2 and not list(tmp_path.glob("*.tmp"))


def test_videos_collection_interface(tmp_path: Path) -> None:
    ds = SyntheticVideos("lung", "train", n_videos=3, n_frames=4, seed=1, cache_dir=tmp_path)
    assert len(ds) == 3
    v = ds.video(1)
    assert v["frames"].shape == (4, 64, 64) and v["frames"].dtype == np.uint8
    assert v["label"] == 1 and v["video_id"] == v["patient_id"]
    assert v["dataset"] == "synthetic_lung" and v["organ"] == "lung"
    rec = ds[1]
    assert rec["frame_idx"] == 2 and rec["video_id"] == v["video_id"]
    np.testing.assert_allclose(rec["image"][0].numpy() * 255, v["frames"][2], atol=1e-3)
    cold = SyntheticVideos("lung", "train", 3, 4, seed=1, cache_dir=tmp_path)
    np.testing.assert_array_equal(cold.video(1)["frames"], v["frames"])


# --- videos ------------------------------------------------------------------------------------


@pytest.mark.parametrize("task,label", [("breast", 2), ("liver", 1), ("lung", 0)])
def test_video_frames_correlated_and_decorrelating(task: str, label: int) -> None:
    out = render_video(task, label, 12, [2, label], SyntheticConfig(img_size=64))
    f = out["frames"].reshape(12, -1).astype(float)
    c = np.corrcoef(f)
    assert np.diag(c, 1).min() > 0.7
    assert c[0, 1] > c[0, 4] > c[0, 11]


def test_cardiac_lv_area_oscillates_with_ef() -> None:
    out = render_video("cardiac", 0, 16, 3, SyntheticConfig(img_size=96).clean())
    meta = out["meta"]
    area = (out["masks"] == 1).sum(axis=(1, 2)).astype(float)
    assert meta["ed_frames"] and meta["es_frames"]
    eda, esa = area[meta["ed_frames"]].mean(), area[meta["es_frames"]].mean()
    assert area.max() == pytest.approx(eda, rel=0.02) and area.min() == pytest.approx(esa, rel=0.02)
    assert (eda - esa) / eda == pytest.approx(meta["ef"], abs=0.03)  # area-EF definition


# --- difficulty guard ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task,labels", [("lung", (0, 1, 2)), ("breast", (0, 1, 2)), ("thyroid", (0, 1, 2)),
                    ("liver", (0, 2, 4))],
)  # fmt: skip
def test_histogram_baseline_is_not_trivial(task: str, labels: tuple[int, ...]) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cfg = SyntheticConfig(img_size=64)
    ys = np.array([labels[i % 3] for i in range(120)])
    xs = np.array([
        np.histogram(render_still(task, int(y), [77, i], cfg)["image"], 32, (0, 256))[0]
        for i, y in enumerate(ys)
    ]) / 64**2  # fmt: skip
    assert np.bincount(ys)[list(labels)].tolist() == [40, 40, 40]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    acc = cross_val_score(clf, xs, ys, cv=StratifiedKFold(3, shuffle=True, random_state=0))
    assert acc.mean() < 0.8


def test_stills_kept_in_memory_are_the_same_items_rendered_once(monkeypatch) -> None:
    from uslib.data.synthetic import SyntheticStills, datasets

    plain = SyntheticStills("breast", "train", 2, seed=3)
    kept = SyntheticStills("breast", "train", 2, seed=3, keep_in_memory=True)
    calls = []
    real = datasets.render_still
    monkeypatch.setattr(datasets, "render_still", lambda *a: calls.append(a) or real(*a))
    for _ in range(2):
        for i in range(len(kept)):
            a, b = plain[i], kept[i]
            assert torch.equal(a["image"], b["image"]) and a["label"] == b["label"]
            b["image"].mul_(0)  # a caller's in-place edit must not reach the kept render
    assert len(calls) == 2 * len(plain) + len(kept)  # plain renders every time, kept once

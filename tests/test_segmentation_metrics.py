"""Dice / IoU / HD95 against hand-computed masks (including the empty cases) and the ellipse HC."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from uslib.evaluation.seg_metrics import (
    dice_iou,
    ellipse_perimeter,
    fit_ellipse,
    hd95,
    head_circumference,
    score_masks,
    segmentation_scores,
)

SHARED = Path(
    os.environ.get("USLIB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def _square(top: int, left: int, size: int, shape=(12, 12)) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[top : top + size, left : left + size] = True
    return m


def test_dice_iou_hand_computed():
    p = _square(0, 0, 4)  # 16 px
    g = _square(2, 0, 4)  # 16 px, overlap rows 2-3 -> 8 px
    d, i = dice_iou(p, g)
    assert d == pytest.approx(2 * 8 / 32)
    assert i == pytest.approx(8 / 24)
    assert dice_iou(p, p) == (1.0, 1.0)
    assert dice_iou(p, _square(8, 8, 4)) == (0.0, 0.0)


def test_hd95_hand_computed_shift():
    # a 4x4 square shifted down by 2 px: each surface pixel of one is at most 2 px from the other's
    # surface, and the directed distances are {0, 1, 2}-valued -> HD (percentile 100) = 2
    p, g = _square(0, 0, 4), _square(2, 0, 4)
    assert hd95(p, g, percentile=100) == pytest.approx(2.0)
    assert hd95(p, g, percentile=100, spacing=0.5) == pytest.approx(1.0)
    assert hd95(p, p) == 0.0
    # single pixels 3 and 4 px apart (3-4-5 triangle): every distance is 5
    a, b = np.zeros((10, 10), bool), np.zeros((10, 10), bool)
    a[1, 1], b[4, 5] = True, True
    assert hd95(a, b) == pytest.approx(5.0)


def test_hd95_percentile_max_vs_pooled():
    # a 3x3 square (8 surface px) vs the same plus one far outlier pixel at distance D:
    # P->G = 8 zeros + D -> p95 = 0.6 D (linear interpolation); G->P = 8 zeros;
    # pooled = 16 zeros + D -> p95 = 0.2 D
    g = _square(2, 2, 3, shape=(40, 40))
    p = g.copy()
    p[35, 35] = True
    dist = math.hypot(35 - 4, 35 - 4)
    assert hd95(p, g, percentile=100) == pytest.approx(dist)
    assert hd95(p, g, symmetric="max") == pytest.approx(0.6 * dist)
    assert hd95(p, g, symmetric="pooled") == pytest.approx(0.2 * dist)


def test_hd_matches_torchmetrics_hausdorff():
    from torchmetrics.functional.segmentation import hausdorff_distance

    rng = np.random.default_rng(0)
    for _ in range(3):
        p = _square(*rng.integers(0, 6, 2), 5, shape=(16, 16))
        g = _square(*rng.integers(0, 6, 2), 6, shape=(16, 16))
        ours = hd95(p, g, percentile=100)
        ref = hausdorff_distance(
            torch.from_numpy(p)[None].long(),
            torch.from_numpy(g)[None].long(),
            num_classes=2,
            input_format="index",
        )
        assert ours == pytest.approx(float(ref.squeeze()), abs=1e-5)


def test_dice_iou_match_torchmetrics():
    from torchmetrics.functional.segmentation import dice_score, mean_iou

    p, g = _square(1, 1, 5), _square(3, 2, 6)
    pt, gt = torch.from_numpy(p)[None].long(), torch.from_numpy(g)[None].long()
    d_ref = dice_score(pt, gt, num_classes=2, include_background=False, input_format="index")
    i_ref = mean_iou(pt, gt, num_classes=2, include_background=False, input_format="index")
    d, i = dice_iou(p, g)
    assert d == pytest.approx(float(d_ref)) and i == pytest.approx(float(i_ref))


def test_empty_mask_conventions():
    z, m = np.zeros((8, 8), bool), _square(2, 2, 3, shape=(8, 8))
    # default "tinyusfm": both empty -> perfect; one empty -> 0 and HD = image size (pixels)
    assert dice_iou(z, z) == (1.0, 1.0) and hd95(z, z) == 0.0
    assert dice_iou(z, m) == (0.0, 0.0) and dice_iou(m, z) == (0.0, 0.0)
    assert hd95(z, m) == 8.0 and hd95(m, z, spacing=0.5) == 4.0
    # "monai": empty ground truth -> NaN; empty prediction only -> Dice 0, HD inf
    assert all(math.isnan(v) for v in dice_iou(z, z, empty="monai"))
    assert all(math.isnan(v) for v in dice_iou(m, z, empty="monai"))
    assert dice_iou(z, m, empty="monai") == (0.0, 0.0)
    assert hd95(z, m, empty="monai") == math.inf
    with pytest.raises(ValueError, match="convention"):
        dice_iou(z, z, empty="other")


def test_multiclass_scores_mean_over_foreground():
    g = np.zeros((12, 12), int)
    g[:4, :4], g[6:10, 6:10] = 1, 2
    p = g.copy()
    p[6:10, 6:10] = 0  # class 2 missed entirely
    s = segmentation_scores(p, g, num_classes=3)
    assert s["dice"] == pytest.approx(0.5) and s["iou"] == pytest.approx(0.5)
    assert s["hd95"] == pytest.approx((0.0 + 12.0) / 2)  # class 2: one empty -> image size
    df = score_masks(np.stack([p, g]), np.stack([g, g]), 3, spacing=[0.0, 2.0])
    assert list(df.columns) == ["dice", "iou", "hd95", "spacing"]
    assert df["dice"].tolist() == pytest.approx([0.5, 1.0])
    assert df["spacing"].tolist() == [1.0, 2.0]  # 0 (unknown) falls back to pixels


def test_ellipse_fit_and_head_circumference_on_raster():
    yy, xx = np.mgrid[0:200, 0:300]
    a, b, th = 90.0, 50.0, 0.4
    u = (xx - 150) * np.cos(th) + (yy - 100) * np.sin(th)
    v = -(xx - 150) * np.sin(th) + (yy - 100) * np.cos(th)
    mask = (u / a) ** 2 + (v / b) ** 2 <= 1
    cx, cy, fa, fb, angle = fit_ellipse(mask, spacing=0.1)
    assert (cx, cy) == pytest.approx((150, 100), abs=0.1)
    assert fa == pytest.approx(9.0, rel=0.01) and fb == pytest.approx(5.0, rel=0.01)
    assert math.cos(angle - th) ** 2 == pytest.approx(1.0, abs=1e-3)
    assert head_circumference(mask, 0.1) == pytest.approx(ellipse_perimeter(9.0, 5.0), rel=0.01)
    assert ellipse_perimeter(1.0, 1.0) == pytest.approx(2 * math.pi)


@pytest.mark.realdata
def test_head_circumference_on_hc18_masks():
    root = SHARED / "hc18_subset"
    if not (root / "labels.csv").is_file():
        pytest.skip(f"HC18 subset not found under {root}")
    from PIL import Image

    rows = pd.read_csv(root / "labels.csv").head(10)
    errs = []
    for _, r in rows.iterrows():
        mask = np.asarray(Image.open(root / r["mask"])) > 127
        errs.append(abs(head_circumference(mask, r["pixel_size_mm"]) - r["head_circumference_mm"]))
    assert np.mean(errs) < 2.0, errs  # the README's contour fit: 0.83 mm mean error

"""Segmentation metrics: Dice, IoU and HD95 with explicit empty-mask conventions, and head
circumference from an ellipse fit.

Definitions (per image, per foreground class, binary masks P = prediction, G = ground truth):

* Dice = 2|P ∩ G| / (|P| + |G|), IoU = |P ∩ G| / |P ∪ G| (no smoothing term);
* surfaces are the mask pixels removed by one binary erosion with the 4-connected cross (MONAI's
  ``get_mask_edges``, medpy's ``__surface_distances``); d(P->G) are the Euclidean distances (in mm
  with ``spacing``) from each surface pixel of P to the nearest surface pixel of G, computed with
  ``scipy.ndimage.distance_transform_edt``;
* HD95 = max(p95(d(P->G)), p95(d(G->P))) (MONAI ``compute_hausdorff_distance(percentile=95)``, the
  default ``symmetric="max"``), or p95 of both sets pooled (medpy ``hd95``, ``symmetric="pooled"``).
  With ``percentile=100`` and ``symmetric="max"`` it is the Hausdorff distance of torchmetrics.

Empty masks are where the papers differ; the convention is a named parameter (``empty``):

==============  ====================  ================================  ==========================
convention      P and G both empty    exactly one empty                 source
==============  ====================  ================================  ==========================
``"tinyusfm"``  Dice 1, IoU 1, HD 0   Dice 0, IoU 0, HD = max(H, W) px  TinyUSFM ``train_seg.py``
(default)                                                               (notes §2.4; HD "224 if
                                                                        one side is empty")
``"monai"``     all NaN               G empty: all NaN; P empty only:   MONAI ``ignore_empty=True``
                                      Dice 0, IoU 0, HD inf
==============  ====================  ================================  ==========================

TinyUSFM's binary path scores both-empty Dice as 0 (medpy ``dc``) while its multi-class path scores
1 (notes §2.7.6); we take 1, which is also OpenUS's "empty ∪ empty ⇒ IoU = 1, Dice ≈ 1" (§1.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

_CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class EmptyConvention:
    """Scores used when the prediction and/or the ground truth mask is empty."""

    both_empty: tuple[float, float, float]  # (dice, iou, hd)
    gt_empty: tuple[float, float, float] | None  # None -> "one empty" rule below
    one_empty_hd: str | float  # "size" = max(H, W) pixels (times spacing), or a number


EMPTY_CONVENTIONS: dict[str, EmptyConvention] = {
    "tinyusfm": EmptyConvention((1.0, 1.0, 0.0), None, "size"),
    "monai": EmptyConvention((math.nan,) * 3, (math.nan,) * 3, math.inf),
}
"""Named empty-mask conventions (see the module docstring)."""

DEFAULT_EMPTY = "tinyusfm"


def _binary(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D mask (H, W), got shape {a.shape}")
    return a.astype(bool)


def _convention(empty: str) -> EmptyConvention:
    if empty not in EMPTY_CONVENTIONS:
        raise ValueError(
            f"unknown empty-mask convention {empty!r}; valid: {list(EMPTY_CONVENTIONS)}"
        )
    return EMPTY_CONVENTIONS[empty]


def _empty_case(
    p: np.ndarray, g: np.ndarray, spacing: float, conv: EmptyConvention
) -> tuple[float, float, float] | None:
    """(dice, iou, hd) for an empty case, or None when both masks are non-empty."""
    if p.any() and g.any():
        return None
    if not p.any() and not g.any():
        return conv.both_empty
    if not g.any() and conv.gt_empty is not None:
        return conv.gt_empty
    hd = max(p.shape) * spacing if conv.one_empty_hd == "size" else float(conv.one_empty_hd)
    return (0.0, 0.0, hd)


def dice_iou(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    *,
    empty: str = DEFAULT_EMPTY,
) -> tuple[float, float]:
    """Dice and IoU of two binary masks.

    Args:
        pred: (H, W) predicted mask (non-zero = foreground).
        target: (H, W) ground-truth mask.
        empty: empty-mask convention name (``EMPTY_CONVENTIONS``).

    Returns:
        ``(dice, iou)`` in [0, 1] (or NaN under the ``"monai"`` convention).
    """
    p, g = _binary(pred, "pred"), _binary(target, "target")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and target {g.shape} differ in shape")
    case = _empty_case(p, g, 1.0, _convention(empty))
    if case is not None:
        return case[0], case[1]
    inter = float(np.count_nonzero(p & g))
    return 2 * inter / (p.sum() + g.sum()), inter / float(np.count_nonzero(p | g))


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS, border_value=0)


def hd95(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    *,
    spacing: float = 1.0,
    percentile: float = 95.0,
    symmetric: str = "max",
    empty: str = DEFAULT_EMPTY,
) -> float:
    """95th-percentile Hausdorff distance between the surfaces of two binary masks.

    Args:
        pred: (H, W) predicted mask.
        target: (H, W) ground-truth mask.
        spacing: pixel size (mm per pixel); 1.0 gives pixels.
        percentile: 95 for HD95, 100 for the plain Hausdorff distance.
        symmetric: ``"max"`` = max of the two directed percentiles (MONAI, torchmetrics);
            ``"pooled"`` = percentile of both directed distance sets together (medpy ``hd95``).
        empty: empty-mask convention name.

    Returns:
        The distance in the units of ``spacing``.
    """
    p, g = _binary(pred, "pred"), _binary(target, "target")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and target {g.shape} differ in shape")
    case = _empty_case(p, g, spacing, _convention(empty))
    if case is not None:
        return float(case[2])
    sp, sg = _surface(p), _surface(g)
    d_pg = ndimage.distance_transform_edt(~sg, sampling=spacing)[sp]
    d_gp = ndimage.distance_transform_edt(~sp, sampling=spacing)[sg]
    if symmetric == "max":
        return float(max(np.percentile(d_pg, percentile), np.percentile(d_gp, percentile)))
    if symmetric == "pooled":
        return float(np.percentile(np.concatenate([d_pg, d_gp]), percentile))
    raise ValueError(f"symmetric must be 'max' or 'pooled', got {symmetric!r}")


def segmentation_scores(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    num_classes: int,
    *,
    spacing: float = 1.0,
    empty: str = DEFAULT_EMPTY,
    with_hd: bool = True,
) -> dict[str, float]:
    """Per-image Dice, IoU and HD95 of label maps, averaged over foreground classes.

    Args:
        pred: (H, W) integer label map (0 = background).
        target: (H, W) integer label map.
        num_classes: number of classes including background.
        spacing: mm per pixel for HD95.
        empty: empty-mask convention name.
        with_hd: compute HD95 (the slowest part); NaN when False.

    Returns:
        ``{"dice", "iou", "hd95"}``: NaN-ignoring means over classes 1..num_classes-1.

    Ref: TinyUSFM notes §2.4 (multi-class: mean over foreground classes).
    """
    p = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    g = target.detach().cpu().numpy() if isinstance(target, torch.Tensor) else np.asarray(target)
    rows = []
    for c in range(1, num_classes):
        d, i = dice_iou(p == c, g == c, empty=empty)
        h = hd95(p == c, g == c, spacing=spacing, empty=empty) if with_hd else math.nan
        rows.append((d, i, h))
    arr = np.array(rows, dtype=float)
    means = [math.nan if np.isnan(col).all() else float(np.nanmean(col)) for col in arr.T]
    return dict(zip(("dice", "iou", "hd95"), means))


def score_masks(
    preds: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor,
    num_classes: int,
    *,
    spacing: np.ndarray | list[float] | float = 1.0,
    empty: str = DEFAULT_EMPTY,
    with_hd: bool = True,
) -> pd.DataFrame:
    """Per-image metric table for a batch of label maps.

    Args:
        preds: (N, H, W) predicted label maps.
        targets: (N, H, W) ground-truth label maps.
        num_classes: classes including background.
        spacing: mm per pixel, scalar or (N,); 0 (unknown) falls back to pixels.
        empty: empty-mask convention name.
        with_hd: compute HD95.

    Returns:
        DataFrame with columns ``dice, iou, hd95, spacing`` (one row per image).
    """
    n = len(preds)
    sp = np.broadcast_to(np.asarray(spacing, dtype=float), (n,))
    rows = []
    for k in range(n):
        s = float(sp[k]) if sp[k] > 0 else 1.0
        rows.append(
            {
                **segmentation_scores(
                    preds[k], targets[k], num_classes, spacing=s, empty=empty, with_hd=with_hd
                ),
                "spacing": s,
            }
        )
    return pd.DataFrame(rows, columns=["dice", "iou", "hd95", "spacing"])


def fit_ellipse(mask: np.ndarray | torch.Tensor, spacing: float = 1.0) -> tuple[float, ...]:
    """Ellipse with the same second moments as a filled binary mask.

    For a uniformly filled ellipse with semi-axes a >= b the coordinate covariance has eigenvalues
    a^2/4 and b^2/4; 1/12 px^2 (the variance of a pixel's own extent) is added back as the
    Sheppard correction for the pixel grid.

    Args:
        mask: (H, W) filled mask (the HC18 annotation style).
        spacing: mm per pixel.

    Returns:
        ``(cx, cy, a, b, angle)``: centre (pixels), semi-axes (mm), angle of the major axis
        (radians, from the x axis).
    """
    m = _binary(mask, "mask")
    ys, xs = np.nonzero(m)
    if len(xs) < 3:
        raise ValueError("fit_ellipse needs a mask with at least 3 foreground pixels")
    cov = np.cov(np.stack([xs, ys]).astype(float), bias=True) + np.eye(2) / 12.0
    evals, evecs = np.linalg.eigh(cov)
    b, a = 2.0 * np.sqrt(evals) * spacing
    angle = float(np.arctan2(evecs[1, 1], evecs[0, 1]))
    return float(xs.mean()), float(ys.mean()), float(a), float(b), angle


def ellipse_perimeter(a: float, b: float) -> float:
    """Ramanujan's first approximation of an ellipse's perimeter from its semi-axes."""
    return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))


def head_circumference(mask: np.ndarray | torch.Tensor, spacing: float) -> float:
    """Head circumference (mm) of a filled fetal-head mask: perimeter of the fitted ellipse.

    Ref: HC18 (van den Heuvel et al. 2018); shared/data/hc18_subset/README.md (ellipse perimeter
    times pixel size reproduces the official HC within 0.83 mm on average).
    """
    _, _, a, b, _ = fit_ellipse(mask, spacing)
    return ellipse_perimeter(a, b)


def head_circumference_errors(
    preds: np.ndarray, targets: np.ndarray, spacing: np.ndarray | float
) -> np.ndarray:
    """Absolute head-circumference error (mm) per image, from ellipse fits of both masks.

    Args:
        preds: (N, H, W) predicted masks (non-zero = head).
        targets: (N, H, W) ground-truth filled head masks.
        spacing: mm per pixel, scalar or (N,).

    Returns:
        (N,) |HC(pred) - HC(gt)| in mm; NaN where a mask has fewer than 3 pixels.

    Ref: HC18 challenge metric (absolute HC difference in mm).
    """
    sp = np.broadcast_to(np.asarray(spacing, dtype=float), (len(preds),))
    out = np.full(len(preds), np.nan)
    for i, (p, g) in enumerate(zip(preds, targets)):
        if np.count_nonzero(p) >= 3 and np.count_nonzero(g) >= 3:
            s = sp[i] if sp[i] > 0 else 1.0
            out[i] = abs(head_circumference(p > 0, s) - head_circumference(g > 0, s))
    return out

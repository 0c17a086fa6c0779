"""Image geometry: resizing onto a square (pad or stretch) and ultrasound fan/ROI detection.

Resizing to a square ``size`` keeps the aspect ratio by default (``mode="pad"``: scale the long side
to ``size`` and pad the short side symmetrically with zeros, i.e. black), so pixel spacing stays
isotropic and ellipse measurements (HC18) stay valid; ``mode="stretch"`` resizes both axes. Both
work on the grey arrays of :mod:`uslib.data.media`.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def fit_geometry(height: int, width: int, size: int, mode: str = "pad") -> dict[str, float]:
    """Scale and padding that map an (H, W) image onto a ``size`` x ``size`` square.

    Returns:
        ``{"scale_y", "scale_x", "pad_top", "pad_left", "new_h", "new_w"}``; output pixel
        (y, x) shows input pixel ((y - pad_top) / scale_y, (x - pad_left) / scale_x).
    """
    if mode == "stretch":
        return {
            "scale_y": size / height,
            "scale_x": size / width,
            "pad_top": 0,
            "pad_left": 0,
            "new_h": size,
            "new_w": size,
        }
    if mode != "pad":
        raise ValueError(f"unknown resize mode {mode!r}; valid: 'pad', 'stretch'")
    s = size / max(height, width)
    new_h, new_w = max(1, round(height * s)), max(1, round(width * s))
    return {
        "scale_y": new_h / height,
        "scale_x": new_w / width,
        "pad_top": (size - new_h) // 2,
        "pad_left": (size - new_w) // 2,
        "new_h": new_h,
        "new_w": new_w,
    }


def fit_image(
    arr: np.ndarray, size: int, mode: str = "pad", *, nearest: bool = False
) -> np.ndarray:
    """Resize a 2-D array onto a ``size`` x ``size`` square (see :func:`fit_geometry`).

    Args:
        arr: (H, W) float image in [0, 1] or an integer mask.
        size: output side in pixels.
        mode: ``"pad"`` (keep aspect, zero padding) or ``"stretch"``.
        nearest: nearest-neighbour (for masks); otherwise antialiased bilinear.

    Returns:
        (size, size) array of the input's dtype family (float32 for images, int64 for masks).
    """
    g = fit_geometry(arr.shape[0], arr.shape[1], size, mode)
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    src = Image.fromarray(arr.astype(np.int32 if nearest else np.float32))
    small = np.asarray(src.resize((int(g["new_w"]), int(g["new_h"])), resample))
    out = np.zeros((size, size), np.int64 if nearest else np.float32)
    t, left = int(g["pad_top"]), int(g["pad_left"])
    out[t : t + small.shape[0], left : left + small.shape[1]] = small
    return out if nearest else np.clip(out, 0.0, 1.0)


def detect_fan_roi(
    img: np.ndarray, threshold: float = 0.04, min_fraction: float = 0.02
) -> tuple[int, int, int, int]:
    """Bounding box of the ultrasound image content without black borders and small overlays.

    Content = pixels whose local mean (box filter of ~2 % of the image side, so dark speckle
    inside the fan still counts) is above ``threshold``, after an opening of the same size that
    cuts thin links between the fan and burned-in text or calibration bars. The box spans every
    connected region covering at least ``min_fraction`` of the image: the fan (possibly split by
    dark fluid or rib shadows into several large regions) is kept whole, while text, logos, depth
    marks and calibration bars, small separate regions, fall outside unless they lie within the
    fan's box. Text *inside* the fan cannot be told from tissue and stays.

    Args:
        img: (H, W) grey image in [0, 1].
        threshold: local mean grey level above which a pixel is content.
        min_fraction: smallest region kept, as a fraction of the image area.

    Returns:
        ``(y0, y1, x0, x1)`` half-open box; the whole image when no region is large enough.
    """
    h, w = img.shape
    f = max(1, -(-max(h, w) // 256))  # work at <= 256 px: area-average f x f blocks
    small = img[: h // f * f, : w // f * f].astype(np.float32)
    small = small.reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    k = max(3, round(0.02 * min(small.shape)) | 1)  # odd kernel, ~2 % of the short side
    fg = (ndimage.uniform_filter(small, k) > threshold).astype(np.uint8)
    fg = ndimage.maximum_filter(ndimage.minimum_filter(fg, k), k)  # opening, separable
    labels, n = ndimage.label(fg)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    big = np.flatnonzero(sizes >= min_fraction * small.size) + 1
    if big.size == 0:
        return 0, h, 0, w
    ys, xs = np.nonzero(np.isin(labels, big))
    y1 = h if ys.max() + 1 == small.shape[0] else (ys.max() + 1) * f  # keep a cut remainder
    x1 = w if xs.max() + 1 == small.shape[1] else (xs.max() + 1) * f
    return int(ys.min() * f), int(y1), int(xs.min() * f), int(x1)

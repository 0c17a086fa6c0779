"""PUMIT's anisotropy geometry: how many in-plane-only downsamplings a spacing needs, the
effective depth patch, and the depth-tap summation of a 3-D patch kernel.

Pure functions shared by the volume loaders (``uslib.data.volumes``), the SPAD-ViT
(``uslib.models.adaptive_vit``), its tokenizer and the figures, so none of them reaches into
another's module. Ref: PUMIT notes §C.2 (aniso_d), §C.3 (SPAD conv, effective patch table).
"""

from __future__ import annotations

import math

import torch

TWO_D_Z_SPACING = 1e8  # PUMIT stores 2-D images as depth-1 volumes with this z spacing (§C.2)


def aniso_d(z_spacing: float, xy_spacing: float) -> int:
    """Number of in-plane-only x2 downsamplings for a spacing ratio (0 isotropic ... 5 for 2-D).

    Args:
        z_spacing: through-plane spacing (mm); ``TWO_D_Z_SPACING`` for 2-D images.
        xy_spacing: in-plane spacing (mm), > 0.

    Returns:
        ``floor(log2(clip(z / xy, 1, 32)))`` in {0, ..., 5}. Ref: PUMIT notes §C.2.
    """
    if xy_spacing <= 0 or z_spacing <= 0:
        raise ValueError(f"spacings must be > 0, got z={z_spacing}, xy={xy_spacing}")
    ratio = min(max(z_spacing / xy_spacing, 1.0), 32.0)
    return int(math.floor(math.log2(ratio)))


def depth_patch(patch_size: int, aniso: int) -> int:
    """Effective depth patch ``max(p >> aniso_d, 1)``: 16, 8, 4, 2, 1, 1 for aniso_d 0..5."""
    return max(patch_size >> aniso, 1)


def reduce_depth_kernel(weight: torch.Tensor, depth: int) -> torch.Tensor:
    """Sum groups of consecutive depth taps of a (O, I, k, kh, kw) kernel down to depth ``depth``.

    Returns:
        (O, I, depth, kh, kw); ``depth`` must divide k. Ref: PUMIT notes §C.3.
    """
    o, i, k, kh, kw = weight.shape
    if k % depth:
        raise ValueError(f"depth {depth} does not divide the kernel depth {k}")
    return weight.reshape(o, i, depth, k // depth, kh, kw).sum(dim=3)

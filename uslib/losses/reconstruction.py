"""Masked-image reconstruction losses (MAE family: MAE, DMAE, OpenUS's L_rec, TinyUSFM)."""

from __future__ import annotations

import torch


def normalise_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch normalised pixels: ``(t - mean) / sqrt(var + eps)`` over each patch's values.

    The variance is the unbiased one (``torch.var``'s default), as in MAE's ``norm_pix_loss``.

    Shape: (B, L, P) -> (B, L, P).

    Ref: MAE (He et al., CVPR 2022) §A.1 "normalized pixels"; DMAE notes §A.3.
    """
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps) ** 0.5


def masked_mse(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = False
) -> torch.Tensor:
    """Mean squared error over the masked patches only.

    ``L = sum_{b,l} mask[b,l] * mean_p (pred - target)^2 / sum_{b,l} mask[b,l]``.

    Args:
        pred: predicted patches (B, L, P) (``P = patch_size**2 * C``).
        target: the image patchified the same way (B, L, P) (``uslib.ops.masking.patchify``).
        mask: (B, L), 1 = masked (in the loss), 0 = visible.
        norm_pix: normalise each target patch first (``normalise_patches``).

    Returns:
        Scalar loss.

    Raises:
        ValueError: shapes disagree or no patch is masked.

    Ref: MAE ``forward_loss``; DMAE notes §A.3.
    """
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise ValueError(
            f"masked_mse: pred {tuple(pred.shape)}, target {tuple(target.shape)} and mask "
            f"{tuple(mask.shape)} must be (B, L, P), (B, L, P), (B, L)"
        )
    if norm_pix:
        target = normalise_patches(target)
    mask = mask.to(pred.dtype)
    n = mask.sum()
    if float(n) == 0.0:
        raise ValueError("masked_mse: no patch is masked")
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / n

"""Consistency-driven dynamic feature distillation (TinyUSFM) and USFM's frequency-domain loss.

The teacher sees two separately masked copies of each image (spatial, frequency). Where its
features of the two agree (cosine ``c`` near 1), the sample is treated as reliable and weighs
more in the feature-matching loss of that block; the weighting is faded in over training.

* ``consistency``: ``c = cos(h_spa, h_freq)`` per sample, (B,);
* ``consistency_weights``: ``B * softmax(c / tau)`` (default) or ``max(0, c)^gamma`` scaled to
  mean 1, then mixed with uniform weights, ``w = (1 - lam) + lam * w_c``;
* ``feature_mse``: per-sample MSE of projected student tokens against (layer-normalised)
  teacher tokens, (B,) (a plain feature-distillation term: ``uslib.losses.distillation`` did
  not exist when this was written, so the minimal term lives here);
* ``frequency_loss``: mean absolute difference of orthonormal 2-D DFTs (USFM's L_freq).

Ref: OpenUS/TinyUSFM notes §2.3 (overview figure: "Consistency" angle between h_t^spa and
h_t^freq; the weighting formulas are our reconstruction, item 3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WEIGHTINGS: tuple[str, ...] = ("softmax", "power", "uniform")
CONSISTENCY_ON: tuple[str, ...] = ("pooled", "tokens")
TARGET_NORMS: tuple[str, ...] = ("layernorm", "none")


def consistency(h_a: torch.Tensor, h_b: torch.Tensor, on: str = "pooled") -> torch.Tensor:
    """Per-sample cosine between two token sets of the same images.

    Args:
        h_a: tokens (B, N, D) (teacher on the spatially masked input).
        h_b: tokens (B, N, D) (teacher on the frequency-masked input).
        on: ``"pooled"``: cosine of the token means; ``"tokens"``: mean of per-token cosines.

    Returns:
        (B,) in [-1, 1].
    """
    if h_a.shape != h_b.shape or h_a.ndim != 3:
        raise ValueError(f"consistency needs two (B, N, D) tensors, got {h_a.shape}, {h_b.shape}")
    if on == "pooled":
        return F.cosine_similarity(h_a.mean(1), h_b.mean(1), dim=-1)
    if on == "tokens":
        return F.cosine_similarity(h_a, h_b, dim=-1).mean(1)
    raise ValueError(f"consistency_on must be one of {CONSISTENCY_ON}, got {on!r}")


def consistency_weights(
    c: torch.Tensor,
    mode: str = "softmax",
    *,
    temperature: float = 0.1,
    gamma: float = 2.0,
    strength: float = 1.0,
) -> torch.Tensor:
    """Per-sample distillation weights from teacher consistency, mean 1 over the batch.

    ``softmax``: ``w_c = B * softmax(c / temperature)``; ``power``: ``w_c = max(0, c)^gamma``
    divided by its batch mean (all zeros stay zero); ``uniform``: ones. The returned weights are
    ``(1 - strength) + strength * w_c`` (``strength`` 0 = plain distillation, 1 = fully
    consistency-driven) and carry no gradient.

    Args:
        c: (B,) consistencies.
        mode: one of ``WEIGHTINGS``.
        temperature: softmax temperature (> 0).
        gamma: exponent of the power form (>= 0).
        strength: mixing coefficient lambda in [0, 1] (annealed by the method).

    Returns:
        (B,) non-negative weights.
    """
    c = c.detach().float()
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"weight strength must be in [0, 1], got {strength}")
    if mode == "softmax":
        if temperature <= 0:
            raise ValueError(f"weight temperature must be > 0, got {temperature}")
        wc = len(c) * torch.softmax(c / temperature, dim=0)
    elif mode == "power":
        if gamma < 0:
            raise ValueError(f"weight gamma must be >= 0, got {gamma}")
        p = c.clamp_min(0.0) ** gamma
        wc = p / p.mean() if float(p.mean()) > 0 else p
    elif mode == "uniform":
        wc = torch.ones_like(c)
    else:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {mode!r}")
    return (1.0 - strength) + strength * wc


def feature_mse(
    pred: torch.Tensor, target: torch.Tensor, target_norm: str = "layernorm"
) -> torch.Tensor:
    """Per-sample mean squared error between student projections and teacher tokens.

    Args:
        pred: projected student tokens (B, N, D_t).
        target: teacher tokens (B, N, D_t) (no gradient needed).
        target_norm: ``"layernorm"`` (each teacher token standardised over D_t, no affine:
            blocks of different depth get comparable scales) or ``"none"``.

    Returns:
        (B,) ``mean_{n, d} (pred - t)^2``.
    """
    if pred.shape != target.shape:
        raise ValueError(f"feature_mse: pred {tuple(pred.shape)} vs target {tuple(target.shape)}")
    if target_norm == "layernorm":
        target = F.layer_norm(target, target.shape[-1:])
    elif target_norm != "none":
        raise ValueError(f"target_norm must be one of {TARGET_NORMS}, got {target_norm!r}")
    return ((pred - target.detach()) ** 2).mean(dim=(1, 2))


def frequency_loss(
    pred: torch.Tensor, target: torch.Tensor, band: torch.Tensor | None = None
) -> torch.Tensor:
    """``mean |DFT(pred) - DFT(target)|`` with orthonormal 2-D DFTs (USFM's L_freq).

    Args:
        pred: reconstructed images (B, C, H, W).
        target: original images (B, C, H, W).
        band: optional (H, W) bool mask of DFT bins (unshifted order) to average over, e.g. the
            removed annulus; ``None`` = the whole spectrum.

    Returns:
        Scalar.
    """
    if pred.shape != target.shape:
        raise ValueError(f"frequency_loss: {tuple(pred.shape)} vs {tuple(target.shape)}")
    diff = (
        torch.fft.fft2(pred.float(), norm="ortho") - torch.fft.fft2(target.float(), norm="ortho")
    ).abs()
    if band is None:
        return diff.mean()
    if band.shape != pred.shape[-2:] or not bool(band.any()):
        raise ValueError(
            f"frequency_loss: band {tuple(band.shape)} must be a non-empty (H, W) mask"
        )
    return diff[..., band].mean()

"""OpenUS self-adaptive masking (notes §1.3) and its multi-crop dataset (§1.2.1).

The mask of each global crop masks ``n_mask = ceil(rho L)`` of the L final-stage tokens (ceil, as
``GlobalAttGuidedMask_2``: 30 of 49 at rho 0.6): the ``k_top`` best-scored tokens plus a
uniform random fill of the rest. The score blends the teacher's implicit Mamba attention
(``VMamba.token_attention``, min-max per image) with the student's per-patch reconstruction
error of the *previous* step (EMA-smoothed, §1.3.3, min-max), weight ``alpha`` (cosine
0.1 -> 0.9). The guided share ``m_t`` is linear 0.1 -> 0.9 (the "dynamic learning schedule").

Two code-vs-paper choices (§1.8.2-3) are arguments: ``direction`` (``"paper"``: Fig. 1b,
``(1 - alpha) A + alpha L``, so masks move from attention-led to loss-led; ``"code"``:
``alpha A + (1 - alpha) L``) and ``k_top_of`` (``"masked"``: the paper's ``floor(m_t n_mask)``;
``"all"``: the training code's ``floor(m_t L)``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from uslib.data.transforms import MultiViewTransform
from uslib.data.video import item_rng
from uslib.ops.masking import attention_guided_mask, block_mask
from uslib.ops.schedules import cosine_ramp

DIRECTIONS = ("paper", "code")
K_TOP_OF = {"masked": "paper", "all": "code"}  # -> attention_guided_mask(mode=...)


def guided_share(fraction: float, start: float = 0.1, end: float = 0.9) -> float:
    """``m_t``: linear from ``start`` to ``end`` over training (§1.3.3 dynamic schedule)."""
    t = min(1.0, max(0.0, float(fraction)))
    return start + (end - start) * t


def blend_alpha(fraction: float, start: float = 0.1, end: float = 0.9) -> float:
    """``alpha``: cosine from ``start`` to ``end`` (§1.3.3, ``--alpha_schedule cosine``)."""
    return cosine_ramp(fraction, start, end)


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each row of (B, L) to [0, 1] (a constant row gives 0)."""
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def blend_scores(
    attn: torch.Tensor, loss_map: torch.Tensor | None, alpha: float, direction: str = "paper"
) -> torch.Tensor:
    """Mask score per token: min-max attention blended with the min-max loss map.

    Args:
        attn: (B, L) teacher token attention. loss_map: (L,) or (B, L), or ``None`` (first
            step: attention alone). alpha: blend weight. direction: see the module docstring.
    """
    a = minmax(attn)
    if loss_map is None:
        return a
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    lm = minmax(loss_map.expand_as(a))
    w_loss = alpha if direction == "paper" else 1.0 - alpha
    return (1.0 - w_loss) * a + w_loss * lm


def patch_importance(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """Per-token reconstruction error R (§1.3.3): channel-mean squared error, zeroed where the
    pixel was visible, average-pooled over each token's cell. (B, C, H, W) x2, (B, H, W) ->
    (B, h * w)."""
    err = (pred.detach() - target).pow(2).mean(1) * mask.to(pred.dtype)
    return F.adaptive_avg_pool2d(err[:, None], grid).flatten(1)


class LossMapEMA(nn.Module):
    """Smoothed student-feedback map of §1.3.3, kept as buffers so it survives a resume.

    ``update(R)``: the first call sets ``E = mean_b R`` and returns ``mean_b R``; later ones set
    ``E <- m E + (1 - m) mean_b R`` and return ``m mean_b R + (1 - m) E`` (m = 0.7). The returned
    map is stored as ``current`` and used by the *next* step. The code keeps the per-image map
    of the previous batch and applies it to whichever image has the same batch position; here
    the batch mean is kept (the images differ anyway, §1.8.4).
    """

    def __init__(self, num_tokens: int, momentum: float = 0.7) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("ema", torch.zeros(num_tokens))
        self.register_buffer("current", torch.zeros(num_tokens))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def update(self, importance: torch.Tensor) -> torch.Tensor:
        r, m = importance.detach().float().mean(0), self.momentum
        if not bool(self.ready):
            self.ema.copy_(r)
            self.current.copy_(r)
            self.ready.fill_(True)
        else:
            self.ema.mul_(m).add_(r, alpha=1.0 - m)
            self.current.copy_(m * r + (1.0 - m) * self.ema)
        return self.current.clone()

    def map(self) -> torch.Tensor | None:
        """The map for this step, or ``None`` before the first update."""
        return self.current if bool(self.ready) else None


def adaptive_mask(
    scores: torch.Tensor, mask_ratio: float, share: float, k_top_of: str = "masked"
) -> torch.Tensor:
    """``attention_guided_mask`` with ``k_top`` counted of the masked (paper) or all tokens."""
    if k_top_of not in K_TOP_OF:
        raise ValueError(f"k_top_of must be one of {list(K_TOP_OF)}, got {k_top_of!r}")
    return attention_guided_mask(scores, mask_ratio, share, mode=K_TOP_OF[k_top_of])


class MultiCropImages(Dataset):
    """Unlabelled grey frames as 2 global + n local views with block masks on the local crops.

    Randomness comes from ``item_rng(seed, epoch, index)`` only. The local masks are BEiT block
    masks on the crop's stride-``mask_stride`` grid, ratio ``local_mask_ratio`` (§1.2.1: 0.3; the
    global crops get the adaptive masks instead).

    Shape: item ``{"globals": (2, 1, S, S), "locals": (n, 1, s, s), "local_masks": (n, s/32,
    s/32) bool}`` in [0, 1].
    """

    def __init__(
        self,
        images: np.ndarray,
        views: tuple[MultiViewTransform, MultiViewTransform],
        local_mask_ratio: float = 0.3,
        mask_stride: int = 32,
        seed: int = 0,
    ) -> None:
        self.images, (self.g, self.l) = images, views
        self.ratio, self.stride, self.seed, self.epoch = local_mask_ratio, mask_stride, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = item_rng(self.seed, self.epoch, i)
        img = torch.from_numpy(self.images[i]).float().div_(255.0)[None]
        glob, loc = torch.stack(self.g(img, rng)), torch.stack(self.l(img, rng))
        n = max(1, loc.shape[-1] // self.stride)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        masks = block_mask(len(loc), (n, n), self.ratio, generator=gen)
        return {"globals": glob, "locals": loc, "local_masks": masks}

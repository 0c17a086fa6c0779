"""DINO / iBOT self-distillation losses with a centred, sharpened teacher.

Teacher probabilities ``p_t = softmax((t - c) / tau_t)`` with a per-dimension centre ``c``;
student log-probabilities ``log softmax(s / tau_s)``; the cross-entropy of one pair is
``-sum_k p_t[k] log p_s[k]``. ``dino_cls_loss`` averages it over the teacher-global x
student-view pairs with different views (DINO's multi-crop rule), ``ibot_patch_loss`` over the
masked tokens of each image (iBOT's MIM term). Written from the formulas of the OpenUS notes
§1.2.3 (no code copied from iBOT or lightly).

``tests/test_openus_lightly.py`` compares these with lightly 1.6 where it is installed (it is
not a dependency): ``dino_cls_loss`` + ``update_center_`` equal lightly's ``DINOLoss``, and
``ibot_patch_loss`` its ``IBOTPatchLoss``, but lightly centres the patch outputs on the masked
tokens only (DINOv2) where iBOT and the notes use every token, so the centre here is our own.

Ref: OpenUS notes §1.2.3 (L_cls, L_patch, centres); DINO (Caron et al. 2021); iBOT (Zhou et al.
2022).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F


def teacher_probs(logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    """``softmax((logits - center) / temp)`` over the last axis (no gradient)."""
    return F.softmax((logits.detach() - center) / temp, dim=-1)


def soft_cross_entropy(
    t_probs: torch.Tensor, s_logits: torch.Tensor, student_temp: float
) -> torch.Tensor:
    """Per-row ``-sum_k p_t log softmax(s / tau_s)``; shape of the inputs without the last axis."""
    return -(t_probs * F.log_softmax(s_logits / student_temp, dim=-1)).sum(-1)


def dino_cls_loss(
    t_probs: Sequence[torch.Tensor], s_logits: Sequence[torch.Tensor], student_temp: float
) -> torch.Tensor:
    """DINO cross-view CE: mean over pairs ``(q, v)``, ``q`` a teacher global view, ``v != q``.

    Args:
        t_probs: one (B, K) teacher probability tensor per global view (views 0..G-1).
        s_logits: one (B, K) student logit tensor per view; the first G are the same global
            views as ``t_probs`` (so pair (q, q) is skipped), the rest local views.
        student_temp: tau_s (0.1).

    Returns:
        Scalar: each pair's batch-mean CE, averaged over the ``G * (V - 1)`` pairs (18 for 2 + 8).
    """
    terms = [
        soft_cross_entropy(p, s, student_temp).mean()
        for q, p in enumerate(t_probs)
        for v, s in enumerate(s_logits)
        if v != q
    ]
    if not terms:
        raise ValueError("dino_cls_loss needs at least one teacher-student pair of distinct views")
    return torch.stack(terms).mean()


def ibot_patch_loss(
    t_probs: torch.Tensor, s_logits: torch.Tensor, mask: torch.Tensor, student_temp: float
) -> torch.Tensor:
    """iBOT MIM CE on masked tokens: ``mean_b [sum_i m_bi CE_bi / max(1, sum_i m_bi)]``.

    Args:
        t_probs: (B, L, K) teacher probabilities on the unmasked crop.
        s_logits: (B, L, K) student patch logits on the masked crop.
        mask: (B, L) bool, True = masked (only these tokens contribute).
        student_temp: tau_s.
    """
    m = mask.flatten(1).to(s_logits.dtype)
    ce = soft_cross_entropy(t_probs, s_logits, student_temp)  # (B, L)
    return ((ce * m).sum(-1) / m.sum(-1).clamp_min(1.0)).mean()


@torch.no_grad()
def update_center_(center: torch.Tensor, batch_center: torch.Tensor, momentum: float) -> None:
    """In place ``c <- m c + (1 - m) mean_ranks(batch_center)`` (all-reduced when distributed).

    ``batch_center`` is this rank's mean teacher output (CLS: over the batch; patches: over the
    batch and tokens). Ref: OpenUS notes §1.2.3 "Centres" (momentum 0.9, all-reduced).
    """
    bc = batch_center.detach().to(center.dtype).clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(bc)
        bc /= dist.get_world_size()
    center.mul_(momentum).add_(bc, alpha=1.0 - momentum)


__all__ = [
    "dino_cls_loss",
    "ibot_patch_loss",
    "soft_cross_entropy",
    "teacher_probs",
    "update_center_",
]

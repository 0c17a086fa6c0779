"""Feature-distillation losses: a student's (projected) token features matched to a frozen
teacher's (DMAE; reusable by TinyUSFM's feature term).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DISTILL_KINDS: tuple[str, ...] = ("l1", "l2")
"""``l1``: DMAE's default ``nn.L1Loss``; ``l2``: its ``--embedding_distillation_func L2``
(``nn.MSELoss``). Ref: DMAE notes §A.4."""


def feature_distill(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    kind: str = "l1",
    normalize: bool = True,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distance between L2-normalised student and teacher features, averaged over elements.

    ``L = mean_{b, n, d} | n(t)_{bnd} - n(s)_{bnd} |`` with ``n(v) = v / ||v||_2`` per token
    (``F.normalize(dim=-1)``); ``kind="l2"`` squares the difference instead. The teacher side is
    detached. Every token passed in counts, so DMAE's class token is included by passing the
    block outputs with it (notes §A.2, §A.4).

    Args:
        student: (B, N, D) or (B, D) student features, already projected to the teacher width.
        teacher: same shape, teacher features (no gradient flows into them).
        kind: ``"l1"`` (DMAE default) or ``"l2"`` (mean squared error).
        normalize: L2-normalise each feature vector first (DMAE: yes).
        weights: optional (B,) per-sample weights (e.g. TinyUSFM's dynamic weights); the loss is
            then ``sum_b w_b * mean_{n,d}(...) / sum_b w_b``.

    Returns:
        Scalar loss.

    Raises:
        ValueError: unknown ``kind``, shapes that differ, or weights of the wrong shape.

    Ref: DMAE (Bai et al., CVPR 2023) notes §A.4 (L1 between L2-normalised features), D-3.
    """
    if kind not in DISTILL_KINDS:
        raise ValueError(f"kind must be one of {list(DISTILL_KINDS)}, got {kind!r}")
    if student.shape != teacher.shape:
        raise ValueError(
            f"feature_distill: student {tuple(student.shape)} and teacher "
            f"{tuple(teacher.shape)} must have the same shape (project the student first)"
        )
    t = teacher.detach()
    s = student
    if normalize:
        s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    diff = s - t
    err = diff.abs() if kind == "l1" else diff.square()
    if weights is None:
        return err.mean()
    if weights.shape != student.shape[:1]:
        raise ValueError(
            f"weights must be ({student.shape[0]},) per sample, got {tuple(weights.shape)}"
        )
    per_sample = err.reshape(err.shape[0], -1).mean(dim=1)
    return (weights * per_sample).sum() / weights.sum()

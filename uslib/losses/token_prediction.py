"""Masked token prediction with soft labels (PUMIT MIM objective).

Ref: PUMIT notes §C.7 item 6 (soft-label cross-entropy on masked tokens, KL as a diagnostic)
and D-16 (the target is the tokenizer's softmax, never a hard token id).
"""

from __future__ import annotations

import torch


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.reshape(-1, x.shape[-1])
    if mask.shape != x.shape[:-1]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match tokens {tuple(x.shape[:-1])}")
    return x[mask.bool()]


def soft_token_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``mean over masked tokens of -sum_k target_k * log softmax(logits)_k``.

    Args:
        logits: (B, L, K) predicted code logits (or (M, K) already at masked tokens).
        target: same shape, per-token target distributions (rows sum to 1).
        mask: (B, L) bool, True = masked (counted); ``None``: every token counts.

    Returns:
        Scalar loss; unmasked tokens contribute nothing (neither value nor gradient).

    Raises:
        ValueError: shapes differ, or no token is masked.
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    lg, tg = _masked(logits, mask), _masked(target, mask)
    if lg.shape[0] == 0:
        raise ValueError("soft_token_cross_entropy: the mask selects no token")
    return -(tg * lg.float().log_softmax(-1)).sum(-1).mean()


def soft_token_kl(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``KL(target || softmax(logits))`` averaged over masked tokens (= CE - H(target))."""
    lg, tg = _masked(logits, mask), _masked(target, mask)
    return (tg * (tg.clamp_min(1e-12).log() - lg.float().log_softmax(-1))).sum(-1).mean()

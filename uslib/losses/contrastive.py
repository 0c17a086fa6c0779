"""Contrastive and (semi-)supervised classification losses: NT-Xent, InfoNCE, masked CE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from uslib.labels import UNLABELLED


def _check_pair(z1: torch.Tensor, z2: torch.Tensor, name: str) -> None:
    if z1.ndim != 2 or z1.shape != z2.shape:
        raise ValueError(
            f"{name}: expected two (N, D) tensors of equal shape, got {tuple(z1.shape)} and "
            f"{tuple(z2.shape)}"
        )


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy over the 2N views of a batch.

    Row ``k`` of ``z1`` and row ``k`` of ``z2`` are the two views of item ``k`` (a positive
    pair); every other view in the batch is a negative. With ``s(a, b) = cos(a, b) / tau``::

        L = 1/(2N) sum_k -log( exp(s(k, k+)) / sum_{m != k} exp(s(k, m)) )

    over all 2N anchors (each view is an anchor once), so for each anchor there is one positive
    and 2N - 2 negatives; the self-similarity is excluded. The loss is symmetric in
    ``(z1, z2)``.

    Args:
        z1: projections of the first views, shape (N, D); need not be normalised.
        z2: projections of the second views, shape (N, D).
        temperature: tau (USCL and SimCLR use 0.5).

    Returns:
        Scalar loss (mean over the 2N anchors).

    Ref: USCL §B.6 (code ``loss/nt_xent.py``); Chen et al., SimCLR, ICML 2020, Eq. 1.
    """
    _check_pair(z1, z2, "nt_xent")
    if temperature <= 0:
        raise ValueError(f"nt_xent: temperature must be > 0, got {temperature}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)  # (2N, D)
    logits = z @ z.t() / temperature  # (2N, 2N) cosine / tau
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # exclude k == m
    # the positive of view k is view k + N (and vice versa)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


def info_nce(
    query: torch.Tensor,
    key: torch.Tensor,
    temperature: float = 0.1,
    negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """One-directional InfoNCE: each query against its key and a set of negatives.

    Without ``negatives``, the other keys of the batch are the negatives (N - 1 per query, the
    MoCo-v3 / CLIP form); with ``negatives`` (a queue or memory bank) the candidates of query
    ``k`` are ``[key_k, *negatives]``. Unlike :func:`nt_xent` the queries are never compared with
    each other, and the loss is not symmetric.

    Args:
        query: shape (N, D).
        key: positives, shape (N, D), row-aligned with ``query``.
        temperature: tau.
        negatives: optional extra negatives, shape (K, D).

    Returns:
        Scalar loss, mean over the N queries.

    Ref: van den Oord et al., CPC 2018, Eq. 4; He et al., MoCo, CVPR 2020, Eq. 1.
    """
    _check_pair(query, key, "info_nce")
    if temperature <= 0:
        raise ValueError(f"info_nce: temperature must be > 0, got {temperature}")
    q = F.normalize(query, dim=1)
    k = F.normalize(key, dim=1)
    if negatives is None:
        logits = q @ k.t() / temperature  # (N, N); diagonal = positives
        target = torch.arange(q.shape[0], device=q.device)
    else:
        neg = F.normalize(negatives, dim=1)
        pos = (q * k).sum(dim=1, keepdim=True)  # (N, 1)
        logits = torch.cat([pos, q @ neg.t()], dim=1) / temperature  # (N, 1 + K)
        target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, target)


def masked_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = UNLABELLED
) -> torch.Tensor:
    """Cross-entropy over the labelled items only; exactly 0 when none is labelled.

    USCL's code averages CE over the labelled subset of a batch and returns NaN when a batch
    has no labelled video (§B.6, D-9); here such a batch contributes 0 (still attached to the
    graph, so ``backward`` works and gives zero gradients).

    Args:
        logits: shape (N, C).
        labels: shape (N,), int64; ``ignore_index`` (default ``UNLABELLED`` = -1) marks
            unlabelled items.
        ignore_index: label value to skip.

    Returns:
        Scalar: mean CE over the items with ``labels != ignore_index``.

    Ref: USCL §B.6 (semi-supervised term), D-9 (NaN bug not reproduced).
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"masked_cross_entropy: expected logits (N, C) and labels (N,), got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    keep = labels != ignore_index
    if not bool(keep.any()):
        return logits.sum() * 0.0
    bad = labels[keep]
    if bool((bad < 0).any()) or bool((bad >= logits.shape[1]).any()):
        raise ValueError(
            f"masked_cross_entropy: labels must be in [0, {logits.shape[1]}) or "
            f"{ignore_index}, got {sorted(set(bad.tolist()))}"
        )
    return F.cross_entropy(logits[keep], labels[keep])

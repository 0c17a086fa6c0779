"""Coreset selection for TinyUSFM's distillation set: the "dual rank" and two baselines.

Given teacher embeddings ``(N, D)`` of a candidate pool (and, for the quality rank, per-sample
gradient-norm curves ``(N, E)`` of a proxy student's warm-up epochs), choose ``budget`` samples:

* **distance rank**: mini-batch k-means (scikit-learn ``MiniBatchKMeans``, fed random
  mini-batches with ``partial_fit``); within each cluster the members are ranked by their
  distance to the centroid (centrality percentile) and cut into ``distance_bins`` distance
  quantiles;
* **quality rank**: per-sample curves ranked by level (mean gradient norm: near-zero =
  redundant) and stability (low coefficient of variation); the top ``noise_quantile`` by level
  (always extreme: noisy or mislabelled) is pushed to the bottom;
* **rank fusion**: weighted mean of the normalised ranks (Borda count);
* **budget**, a fraction or a count, spread **cluster-balanced** (water-filling: equal shares,
  small clusters taken whole) and, inside a cluster, equally over its distance quantiles; each
  (cluster, quantile) cell takes its best fused scores.

Baselines: ``random_select`` and ``k_center_greedy`` (Sener & Savarese, ICLR 2018).

Scale: nothing builds an ``N x N`` (or ``N x K x D``) array. The embeddings may be a
``numpy.memmap``; they are read in blocks of ``chunk_size`` rows, so the working memory is
``O(chunk_size * max(D, K))`` plus a few ``O(N)`` vectors (labels, distances, scores).
Why scikit-learn and not faiss: ``faiss`` is not installable here (no wheel in the
environment), while ``MiniBatchKMeans.partial_fit`` streams blocks with bounded memory and is
deterministic under a seed; the nearest-neighbour step of the coverage radius is
``sklearn.metrics.pairwise_distances_argmin_min`` (chunked by scikit-learn's working memory).
The only distances computed by hand are one-centre-to-all updates of k-center greedy, a
row-wise ``sum((x - c)**2)`` that gives the same bits whatever the chunk size.

Ref: OpenUS/TinyUSFM notes §2.3 (overview figure: "Dual Rank", distance rank + quality rank,
2.2 M -> 200 K, "down to 10 %"; the algorithm below is our reconstruction, item 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.cluster import MiniBatchKMeans, kmeans_plusplus
from sklearn.metrics import pairwise_distances_argmin_min

BALANCE_MODES: tuple[str, ...] = ("balanced", "proportional")


def resolve_budget(budget: float, n: int) -> int:
    """Number of samples to keep: ``budget < 1`` is a fraction of ``n``, ``>= 1`` a count."""
    if not budget > 0:
        raise ValueError(f"coreset budget must be > 0 (fraction < 1 or count >= 1), got {budget}")
    k = int(round(budget * n)) if budget < 1 else int(budget)
    if k > n:
        raise ValueError(f"coreset budget {budget} exceeds the pool of {n} samples")
    return max(1, k)


def _f32(x: Any, normalize: bool) -> np.ndarray:
    """``x`` as float32 rows, L2-normalised when asked."""
    x = np.asarray(x, dtype=np.float32)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def _rows(emb: Any, i: int, j: int, normalize: bool) -> np.ndarray:
    """Rows ``i:j`` of ``emb`` as float32, L2-normalised when asked."""
    return _f32(emb[i:j], normalize)


def percentile_rank(x: np.ndarray) -> np.ndarray:
    """Ordinal rank of each value scaled to [0, 1] (0 = smallest; ties by index, stable sort)."""
    x = np.asarray(x)
    out = np.empty(len(x), dtype=np.float64)
    out[np.argsort(x, kind="stable")] = np.arange(len(x))
    return out / max(1, len(x) - 1)


def rank_fusion(scores: list[np.ndarray], weights: list[float] | None = None) -> np.ndarray:
    """Weighted mean of the percentile ranks of several scores (higher score = better).

    ``fused = sum_s w_s * percentile_rank(score_s) / sum_s w_s`` (Borda count).
    """
    w = [1.0] * len(scores) if weights is None else list(weights)
    if len(w) != len(scores) or sum(w) <= 0 or min(w) < 0:
        raise ValueError(f"rank_fusion: need one weight >= 0 per score (sum > 0), got {w}")
    return sum(wi * percentile_rank(s) for wi, s in zip(w, scores)) / sum(w)


def allocate(sizes: np.ndarray, budget: int, mode: str = "balanced") -> np.ndarray:
    """Split ``budget`` over groups of the given sizes, never more than a group holds.

    ``"balanced"``: water-filling, every group gets ``min(size, t)`` for the largest level t
    that fits, the remainder one each to the larger groups (lowest index first);
    ``"proportional"``: ``budget * size / sum(size)``, largest remainders rounded up.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if mode not in BALANCE_MODES:
        raise ValueError(f"balance mode must be one of {BALANCE_MODES}, got {mode!r}")
    if budget > sizes.sum():
        raise ValueError(f"budget {budget} exceeds the {int(sizes.sum())} available samples")
    if mode == "proportional":
        raw = budget * sizes / max(1, sizes.sum())
        out = np.floor(raw).astype(np.int64)
        order = np.argsort(-(raw - out), kind="stable")
        out[order[: budget - int(out.sum())]] += 1
        return out
    out = np.zeros_like(sizes)
    left = budget
    while left > 0:
        open_ = np.flatnonzero(out < sizes)
        share = left // len(open_)
        if share == 0:  # fewer units than open groups: lowest indices first
            out[open_[:left]] += 1
            break
        add = np.minimum(sizes[open_] - out[open_], share)
        out[open_] += add
        left -= int(add.sum())
    return out


def fit_kmeans(
    emb: Any,
    n_clusters: int,
    *,
    batch_size: int = 4096,
    passes: int = 1,
    seed: int = 0,
    init_size: int | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """Centroids (K, D) of mini-batch k-means streamed over ``emb`` block by block.

    k-means++ seeds on ``init_size`` random rows (default ``max(3K, batch_size)``), then
    ``MiniBatchKMeans.partial_fit`` on random mini-batches of ``batch_size`` rows (a seeded
    permutation per pass, rows read in sorted order), ``passes`` times. Memory: one batch.
    """
    n = len(emb)
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be in [1, {n}], got {n_clusters}")
    rng = np.random.default_rng(seed)
    m = min(n, init_size or max(3 * n_clusters, batch_size))
    pick = np.sort(rng.choice(n, m, replace=False))
    init = _f32(emb[pick], normalize)
    centers, _ = kmeans_plusplus(init, n_clusters, random_state=seed)
    km = MiniBatchKMeans(n_clusters, init=centers, n_init=1, batch_size=batch_size,
                         random_state=seed)  # fmt: skip
    for _ in range(passes):  # random mini-batches: a pool stored by source is not mixed
        perm = rng.permutation(n)
        for s in range(0, n, batch_size):
            km.partial_fit(_f32(emb[np.sort(perm[s : s + batch_size])], normalize))
    return km.cluster_centers_.astype(np.float32)


def assign_clusters(
    emb: Any, centroids: np.ndarray, *, chunk_size: int = 65536, normalize: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid and Euclidean distance of every row, in chunks: (N,) int, (N,) float."""
    n = len(emb)
    labels = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float32)
    c2 = (centroids.astype(np.float32) ** 2).sum(1)
    for i in range(0, n, chunk_size):
        x = _rows(emb, i, i + chunk_size, normalize)
        d2 = (x**2).sum(1, keepdims=True) - 2.0 * x @ centroids.T + c2[None]  # (chunk, K)
        j = d2.argmin(1)
        labels[i : i + len(x)] = j
        dist[i : i + len(x)] = np.sqrt(np.maximum(d2[np.arange(len(x)), j], 0.0))
    return labels, dist


def distance_rank(
    labels: np.ndarray, dist: np.ndarray, n_bins: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Within-cluster distance ranks.

    Returns:
        ``(centrality, bin)``: centrality in [0, 1] (1 = nearest its centroid, 0 = farthest;
        a singleton cluster gets 1) and the distance-quantile bin 0..n_bins-1 (0 = central).
    """
    if n_bins < 1:
        raise ValueError(f"distance_bins must be >= 1, got {n_bins}")
    order = np.lexsort((np.arange(len(dist)), dist, labels))  # by cluster, then distance
    lab = labels[order]
    start = np.r_[0, np.flatnonzero(np.diff(lab)) + 1]
    sizes = np.diff(np.r_[start, len(lab)])
    size = np.repeat(sizes, sizes)
    pos = np.arange(len(lab)) - np.repeat(start, sizes)  # 0 = nearest in its cluster
    cent, bins = np.empty(len(lab)), np.empty(len(lab), dtype=np.int64)
    cent[order] = 1.0 - pos / np.maximum(size - 1, 1)
    bins[order] = np.minimum(pos * n_bins // size, n_bins - 1)
    return cent, bins


def quality_scores(curves: np.ndarray, noise_quantile: float = 0.0) -> np.ndarray:
    """Quality score in [0, 1] from per-sample gradient-norm curves (N, E).

    ``fused(level = mean_e g, stability = -std_e g / mean_e g)``; the ``noise_quantile``
    fraction with the highest level is set to 0 (persistently extreme gradients: noise).
    """
    g = np.asarray(curves, dtype=np.float64)
    if g.ndim != 2 or not np.isfinite(g).all():
        raise ValueError(f"gradient curves must be a finite (N, E) array, got shape {g.shape}")
    if not 0.0 <= noise_quantile < 1.0:
        raise ValueError(f"noise_quantile must be in [0, 1), got {noise_quantile}")
    level = g.mean(1)
    cv = g.std(1) / np.maximum(level, 1e-12)
    score = rank_fusion([level, -cv])
    n_noisy = int(np.floor(noise_quantile * len(g)))
    if n_noisy:
        score[np.argsort(-level, kind="stable")[:n_noisy]] = 0.0
    return score


@dataclass
class CoresetSelection:
    """What a selection returns.

    Attributes:
        indices: selected pool indices, sorted ascending (M,).
        method: ``"dual_rank"``, ``"random"`` or ``"k_center"``.
        labels: cluster of every pool item (N,) (dual rank; else empty).
        scores: named (N,) arrays: ``centrality``, ``distance_bin``, ``quality``, ``fused``.
        per_cluster: selected count per cluster (K,).
    """

    indices: np.ndarray
    method: str
    labels: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    per_cluster: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


def select_cells(group: np.ndarray, fused: np.ndarray, quota: np.ndarray) -> np.ndarray:
    """Indices of the ``quota[g]`` best ``fused`` scores of every group g (ties: lower index)."""
    order = np.lexsort((np.arange(len(group)), -fused, group))
    g = group[order]
    start = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
    sizes = np.diff(np.r_[start, len(g)])
    pos = np.arange(len(g)) - np.repeat(start, sizes)
    return np.sort(order[pos < quota[g]])


def dual_rank_select(
    emb: Any,
    budget: float,
    *,
    curves: np.ndarray | None = None,
    n_clusters: int = 10,
    distance_bins: int = 4,
    weights: tuple[float, float] = (0.5, 0.5),
    noise_quantile: float = 0.0,
    balance: str = "balanced",
    chunk_size: int = 65536,
    kmeans_batch: int = 4096,
    kmeans_passes: int = 1,
    normalize: bool = True,
    seed: int = 0,
) -> CoresetSelection:
    """TinyUSFM's dual-rank coreset (our reconstruction of notes §2.3, item 1).

    Args:
        emb: teacher embeddings (N, D), an array or a ``numpy.memmap``.
        budget: fraction (< 1) or count (>= 1) to keep.
        curves: per-sample gradient-norm curves (N, E) of the proxy warm-up; ``None`` drops the
            quality rank (distance rank only).
        n_clusters: K of k-means.
        distance_bins: distance quantiles inside a cluster shared equally by its budget.
        weights: rank-fusion weights (distance, quality).
        noise_quantile: share of the highest-gradient samples treated as noisy (quality 0).
        balance: ``"balanced"`` (equal per cluster) or ``"proportional"`` to cluster size.
        chunk_size: rows read at once for the assignment pass.
        kmeans_batch: mini-batch size of k-means.
        kmeans_passes: passes of ``partial_fit`` over the pool.
        normalize: L2-normalise embeddings (cosine geometry).
        seed: k-means seed (the selection is a function of it).

    Returns:
        A ``CoresetSelection`` with ``resolve_budget(budget, N)`` indices.
    """
    n = len(emb)
    m = resolve_budget(budget, n)
    if curves is not None and len(curves) != n:
        raise ValueError(f"{len(curves)} gradient curves for {n} embeddings")
    cents = fit_kmeans(emb, n_clusters, batch_size=kmeans_batch, passes=kmeans_passes,
                       seed=seed, normalize=normalize)  # fmt: skip
    labels, dist = assign_clusters(emb, cents, chunk_size=chunk_size, normalize=normalize)
    centrality, bins = distance_rank(labels, dist, distance_bins)
    quality = quality_scores(curves, noise_quantile) if curves is not None else np.zeros(n)
    w = weights if curves is not None else (1.0, 0.0)
    fused = rank_fusion([centrality, quality], list(w))
    sizes = np.bincount(labels, minlength=n_clusters)
    per_cluster = allocate(sizes, m, balance)
    cell = labels * distance_bins + bins
    cell_sizes = np.bincount(cell, minlength=n_clusters * distance_bins)
    quota = np.concatenate([
        allocate(cell_sizes[k * distance_bins : (k + 1) * distance_bins], int(per_cluster[k]))
        for k in range(n_clusters)
    ])  # fmt: skip
    idx = select_cells(cell, fused, quota)
    scores = {"centrality": centrality, "distance_bin": bins, "quality": quality, "fused": fused}
    return CoresetSelection(idx, "dual_rank", labels, scores, per_cluster)


def random_select(n: int, budget: float, seed: int = 0) -> CoresetSelection:
    """Uniform random subset of ``resolve_budget(budget, n)`` indices (sorted)."""
    m = resolve_budget(budget, n)
    idx = np.sort(np.random.default_rng(seed).choice(n, m, replace=False))
    return CoresetSelection(idx, "random")


def _sq_dist_to(emb: Any, center: np.ndarray, chunk_size: int, normalize: bool) -> np.ndarray:
    """Squared distance of every row to one centre (row-wise, chunk-size independent)."""
    out = np.empty(len(emb), dtype=np.float32)
    for i in range(0, len(emb), chunk_size):
        x = _rows(emb, i, i + chunk_size, normalize)
        out[i : i + len(x)] = ((x - center[None]) ** 2).sum(1)
    return out


def k_center_greedy(
    emb: Any,
    budget: float,
    *,
    chunk_size: int = 65536,
    normalize: bool = True,
    seed: int = 0,
    first: int | None = None,
) -> tuple[CoresetSelection, np.ndarray, float]:
    """Greedy 2-approximation of the k-center problem (Sener & Savarese, ICLR 2018, Alg. 1).

    Start from ``first`` (default: a seeded random row); repeatedly add the row farthest from
    the current centres (``argmax_i min_j ||x_i - c_j||``, ties to the lowest index). Cost
    O(budget * N * D), memory one chunk plus the (N,) min-distance vector.

    Returns:
        ``(selection, order, radius)``: the selection (sorted indices), the indices in the
        order chosen, and the covering radius ``max_i min_j ||x_i - c_j||``.
    """
    n = len(emb)
    m = resolve_budget(budget, n)
    start = int(np.random.default_rng(seed).integers(n)) if first is None else int(first)
    order = [start]
    mind = _sq_dist_to(emb, _rows(emb, start, start + 1, normalize)[0], chunk_size, normalize)
    for _ in range(m - 1):
        nxt = int(np.argmax(mind))
        order.append(nxt)
        d = _sq_dist_to(emb, _rows(emb, nxt, nxt + 1, normalize)[0], chunk_size, normalize)
        np.minimum(mind, d, out=mind)
    radius = float(np.sqrt(max(0.0, float(mind.max()))))
    return CoresetSelection(np.sort(np.array(order)), "k_center"), np.array(order), radius


def coverage_radius(
    emb: Any, indices: np.ndarray, *, chunk_size: int = 65536, normalize: bool = True
) -> float:
    """k-center radius of a subset: ``max_i min_{j in subset} ||x_i - x_j||`` (chunked)."""
    centers = _f32(emb[np.sort(np.asarray(indices))], normalize)
    worst = 0.0
    for i in range(0, len(emb), chunk_size):
        _, d = pairwise_distances_argmin_min(_rows(emb, i, i + chunk_size, normalize), centers)
        worst = max(worst, float(d.max()))
    return worst


def clusters_covered(labels: np.ndarray, indices: np.ndarray) -> int:
    """Number of distinct labels among the selected indices."""
    return int(len(np.unique(np.asarray(labels)[np.asarray(indices)])))

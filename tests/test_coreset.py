"""Coreset selection against definitions: brute-force k-center, rank fusion by hand, budget,
cluster balance, determinism, chunk-size invariance, coverage better than random."""

from __future__ import annotations

import numpy as np
import pytest

from uslib.data import coreset


def _clusters(
    n_per: int = 60, k: int = 6, d: int = 8, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 10
    sizes = [n_per * (1 + i % 3) for i in range(k)]  # unequal clusters
    lab = np.repeat(np.arange(k), sizes)
    return centres[lab] + rng.normal(size=(len(lab), d)), lab


def _k_center_brute(x: np.ndarray, m: int, first: int) -> list[int]:
    dist = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))  # the N x N matrix, tiny set only
    chosen = [first]
    for _ in range(m - 1):
        chosen.append(int(np.argmax(dist[:, chosen].min(1))))
    return chosen


def test_k_center_greedy_matches_brute_force() -> None:
    x, _ = _clusters(n_per=5)
    sel, order, radius = coreset.k_center_greedy(x, 12, normalize=False, first=3, chunk_size=7)
    ref = _k_center_brute(x, 12, 3)
    assert order.tolist() == ref
    dist = np.sqrt(((x[:, None] - x[ref][None]) ** 2).sum(-1)).min(1)
    assert radius == pytest.approx(dist.max(), rel=1e-5)
    assert coreset.coverage_radius(x, sel.indices, normalize=False) == pytest.approx(
        radius, rel=1e-5
    )


def test_rank_fusion_hand_case() -> None:
    a = np.array([3.0, 1.0, 2.0, 0.0])  # percentile ranks 1, 1/3, 2/3, 0
    b = np.array([0.0, 5.0, 1.0, 2.0])  # percentile ranks 0, 1, 1/3, 2/3
    np.testing.assert_allclose(coreset.rank_fusion([a, b]), [0.5, 2 / 3, 0.5, 1 / 3])
    np.testing.assert_allclose(coreset.rank_fusion([a, b], [3, 1]), [0.75, 0.5, 7 / 12, 1 / 6])


def test_allocate_balanced_and_proportional() -> None:
    sizes = np.array([1, 5, 10, 3])
    assert coreset.allocate(sizes, 12).tolist() == [1, 4, 4, 3]  # water-filling at level 4
    assert coreset.allocate(sizes, 19).tolist() == sizes.tolist()
    assert coreset.allocate(sizes, 12, "proportional").tolist() == [1, 3, 6, 2]
    with pytest.raises(ValueError, match="exceeds"):
        coreset.allocate(sizes, 20)


def test_distance_rank_and_quality_by_hand() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    dist = np.array([0.3, 0.1, 0.2, 5.0, 1.0])
    cent, bins = coreset.distance_rank(labels, dist, n_bins=2)
    np.testing.assert_allclose(cent, [0.0, 1.0, 0.5, 0.0, 1.0])
    assert bins.tolist() == [1, 0, 0, 1, 0]
    curves = np.array([[1.0, 1.0], [2.0, 0.0], [0.1, 0.1], [9.0, 9.0]])
    q = coreset.quality_scores(curves, noise_quantile=0.25)
    # level ranks 1/3, 2/3, 0, 1; stability (-cv) ranks 1/3, 0, 2/3, 1 (ties by index); the top
    # quarter by level (item 3) is noise -> 0
    np.testing.assert_allclose(q, [1 / 3, 1 / 3, 1 / 3, 0.0])


def test_dual_rank_budget_balance_determinism_and_chunks() -> None:
    x, lab = _clusters()
    curves = np.abs(np.random.default_rng(1).normal(size=(len(x), 3)))
    kw = dict(curves=curves, n_clusters=6, distance_bins=3, kmeans_batch=128, normalize=False)
    sel = coreset.dual_rank_select(x, 0.1, seed=0, **kw)
    assert len(sel.indices) == round(0.1 * len(x)) and len(np.unique(sel.indices)) == len(
        sel.indices
    )
    # cluster balanced: every cluster gets budget / K (all clusters are large enough)
    assert np.bincount(sel.labels[sel.indices], minlength=6).tolist() == [len(sel.indices) // 6] * 6
    assert sel.per_cluster.sum() == len(sel.indices)
    again = coreset.dual_rank_select(x, 0.1, seed=0, **kw)
    chunked = coreset.dual_rank_select(x, 0.1, seed=0, chunk_size=37, **kw)
    assert sel.indices.tolist() == again.indices.tolist() == chunked.indices.tolist()
    count = coreset.dual_rank_select(x, 24, seed=0, **kw)
    assert len(count.indices) == 24
    # within a (cluster, quantile) cell the best fused scores are kept
    cell = sel.labels * 3 + sel.scores["distance_bin"]
    for c in np.unique(cell[sel.indices]):
        members = np.flatnonzero(cell == c)
        kept = np.intersect1d(members, sel.indices)
        assert sel.scores["fused"][kept].min() >= np.max(
            sel.scores["fused"][np.setdiff1d(members, kept)], initial=-1.0
        )


def test_coverage_better_than_random() -> None:
    x, lab = _clusters(n_per=100)
    m = 18
    dual = coreset.dual_rank_select(x, m, n_clusters=6, kmeans_batch=256, normalize=False)
    kc, _, kc_radius = coreset.k_center_greedy(x, m, normalize=False)
    rnd = [coreset.random_select(len(x), m, seed=s).indices for s in range(20)]
    assert coreset.clusters_covered(lab, dual.indices) == 6
    assert coreset.clusters_covered(lab, kc.indices) == 6
    # random subsets of this size miss the small clusters sometimes
    assert min(coreset.clusters_covered(lab, r) for r in rnd) < 6
    r_rand = np.median([coreset.coverage_radius(x, r, normalize=False) for r in rnd])
    assert kc_radius < r_rand
    assert coreset.coverage_radius(x, dual.indices, normalize=False) < r_rand


def test_budget_errors() -> None:
    with pytest.raises(ValueError, match="budget"):
        coreset.resolve_budget(0, 10)
    with pytest.raises(ValueError, match="exceeds"):
        coreset.resolve_budget(11, 10)
    assert coreset.resolve_budget(0.25, 10) == 2 and coreset.resolve_budget(3, 10) == 3

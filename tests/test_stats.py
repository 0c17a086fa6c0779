"""Tests of uslib.evaluation.stats: grouped hold-out, mean/std, bootstrap CIs, label fractions."""

from __future__ import annotations

import numpy as np
import pytest

from uslib.data import splits
from uslib.evaluation.stats import (
    LABEL_FRACTIONS,
    bootstrap_ci,
    format_mean_std,
    grouped_holdout,
    label_fraction_subsets,
    mean_std,
)


def _toy(n_groups: int = 40, per_group: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    groups = np.repeat([f"p{i:03d}" for i in range(n_groups)], per_group)
    # one class per patient (as for patient-level diagnoses), unbalanced classes
    cls = rng.choice(3, size=n_groups, p=[0.6, 0.3, 0.1])
    cls[:3] = np.arange(3)  # every class present
    labels = np.repeat(cls, per_group)
    return labels, groups


def test_grouped_holdout_fraction_and_groups():
    labels, groups = _toy(n_groups=50)
    tr, va = grouped_holdout(groups, 0.2, labels=labels, seed=0)
    assert not set(groups[tr]) & set(groups[va])
    np.testing.assert_array_equal(np.union1d(tr, va), np.arange(len(groups)))
    assert 0.1 < len(va) / len(groups) < 0.3
    # built on the grouped k-fold: the first test fold of round(1 / 0.2) = 5 folds
    fold = splits.grouped_kfold(groups, 5, seed=0, labels=labels)
    np.testing.assert_array_equal(va, np.flatnonzero(fold == 0))
    with pytest.raises(ValueError, match="val_fraction"):
        grouped_holdout(groups, 0.9)


def test_mean_std_and_format():
    m, s = mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and s == pytest.approx(1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
    assert mean_std([1.0, np.nan, 3.0])[0] == 2.0
    assert format_mean_std(90.31, 0.44) == "90.3 ± 0.4"


def test_bootstrap_ci_coverage_near_nominal():
    """200 simulated datasets of N(mu, 1): the 95% percentile CI covers mu about 95% of the time."""
    rng = np.random.default_rng(123)
    mu, hits = 0.7, 0
    for rep in range(200):
        x = rng.normal(mu, 1.0, size=60)
        hits += bootstrap_ci(x, n_boot=400, seed=rep).covers(mu)
    assert 0.88 <= hits / 200 <= 0.99


def test_bootstrap_ci_statistic_on_pairs_and_cluster_option():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.where(rng.random(200) < 0.8, y, 1 - y)
    groups = np.repeat(np.arange(20), 10).astype(str)
    acc = lambda t, q: float(np.mean(t == q))  # noqa: E731
    ci = bootstrap_ci(y, p, statistic=acc, n_boot=300)
    assert ci.low < ci.estimate < ci.high and ci.estimate == acc(y, p)
    # strongly clustered data: the cluster bootstrap is wider than the item bootstrap
    x = np.repeat(rng.normal(0, 1, 20), 10) + rng.normal(0, 0.1, 200)
    naive = bootstrap_ci(x, n_boot=400)
    clustered = bootstrap_ci(x, groups=groups, n_boot=400)
    assert clustered.high - clustered.low > 2 * (naive.high - naive.low)


def test_label_fraction_subsets_nested_grouped_stratified():
    labels, groups = _toy(n_groups=120, per_group=4)
    subsets = label_fraction_subsets(labels, groups, LABEL_FRACTIONS, seed=3)
    fr = sorted(subsets)
    for a, b in zip(fr, fr[1:]):
        assert set(subsets[a]) <= set(subsets[b])  # nested
    for f, idx in subsets.items():
        chosen = set(groups[idx])
        # grouped: a chosen patient comes with all of its items
        assert set(np.flatnonzero(np.isin(groups, list(chosen)))) == set(idx)
        assert set(labels[idx]) == {0, 1, 2}  # every class, even at 1 %
        assert len(idx) >= np.ceil(f * len(labels))
    assert len(subsets[1.0]) == len(labels)
    assert len(subsets[0.25]) < 0.35 * len(labels)
    # deterministic by seed
    again = label_fraction_subsets(labels, groups, LABEL_FRACTIONS, seed=3)
    assert all(np.array_equal(subsets[f], again[f]) for f in subsets)


def test_label_fraction_subsets_rejects_bad_fraction():
    labels, groups = _toy()
    with pytest.raises(ValueError, match="fractions"):
        label_fraction_subsets(labels, groups, (0.0, 1.0))

"""Tests of uslib.evaluation.stats: grouped folds, mean/std, bootstrap CIs, label fractions."""

from __future__ import annotations

import numpy as np
import pytest

from uslib.data import splits
from uslib.evaluation.stats import (
    LABEL_FRACTIONS,
    bootstrap_ci,
    format_mean_std,
    grouped_holdout,
    grouped_kfold,
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


def _check_partition(folds, groups, n_splits):
    """Every item in exactly one test fold, train = the rest, no group on both sides."""
    assert len(folds) == n_splits
    all_test = np.concatenate([te for _, te in folds])
    assert sorted(all_test) == list(range(len(groups)))  # each item tested exactly once
    for tr, te in folds:
        assert len(te) > 0
        assert np.array_equal(tr, np.sort(tr)) and np.array_equal(te, np.sort(te))
        assert np.array_equal(np.union1d(tr, te), np.arange(len(groups)))
        assert len(np.intersect1d(tr, te)) == 0
        assert not set(groups[tr]) & set(groups[te])


@pytest.mark.parametrize("with_labels", [True, False])
def test_grouped_kfold_partitions_without_splitting_groups(with_labels):
    labels, groups = _toy()
    folds = grouped_kfold(groups, 5, labels=labels if with_labels else None, seed=1)
    _check_partition(folds, groups, 5)


def test_grouped_kfold_is_the_fold_id_form_of_data_splits():
    labels, groups = _toy()
    for lab in (labels, None):
        fold = splits.grouped_kfold(groups, 5, seed=2, labels=lab)
        pairs = grouped_kfold(groups, 5, labels=lab, seed=2)
        for k, (tr, te) in enumerate(pairs):
            np.testing.assert_array_equal(te, np.flatnonzero(fold == k))
            np.testing.assert_array_equal(tr, np.flatnonzero(fold != k))


def test_grouped_kfold_is_deterministic_by_seed():
    labels, groups = _toy()
    a = grouped_kfold(groups, 5, labels=labels, seed=3)
    b = grouped_kfold(groups, 5, labels=labels, seed=3)
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    c = grouped_kfold(groups, 5, labels=labels, seed=4)
    assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, c))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_kfold_balances_classes(seed):
    """Per-class counts of the test folds differ by at most one group (5 items)."""
    labels, groups = _toy(seed=seed)
    folds = grouped_kfold(groups, 5, labels=labels, seed=seed)
    counts = np.array([np.bincount(labels[te], minlength=3) for _, te in folds])
    assert (counts.max(0) - counts.min(0) <= 5).all(), counts
    sizes = counts.sum(1)
    assert sizes.max() - sizes.min() <= 5


def test_grouped_kfold_with_as_many_folds_as_groups():
    _, groups = _toy(n_groups=4)
    folds = grouped_kfold(groups, 4, seed=0)
    _check_partition(folds, groups, 4)
    assert sorted(len(set(groups[te])) for _, te in folds) == [1, 1, 1, 1]


def test_grouped_kfold_rejects_bad_input():
    _, groups = _toy(n_groups=6)
    with pytest.raises(ValueError, match="n_splits"):
        grouped_kfold(groups, 7)
    with pytest.raises(ValueError, match="n_splits"):
        grouped_kfold(groups, 1)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        grouped_kfold([], 2)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        grouped_kfold(groups.reshape(2, -1), 2)
    with pytest.raises(ValueError, match="differ in length"):
        grouped_kfold(groups, 2, labels=[0, 1])


def test_grouped_holdout_fraction_and_groups():
    labels, groups = _toy(n_groups=50)
    tr, va = grouped_holdout(groups, 0.2, labels=labels, seed=0)
    assert not set(groups[tr]) & set(groups[va])
    np.testing.assert_array_equal(np.union1d(tr, va), np.arange(len(groups)))
    assert 0.1 < len(va) / len(groups) < 0.3
    # built on the grouped k-fold: the first test fold of round(1 / 0.2) = 5 folds
    np.testing.assert_array_equal(va, grouped_kfold(groups, 5, labels=labels, seed=0)[0][1])
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

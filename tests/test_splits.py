"""Grouped splits: no group crosses, deterministic by seed, balanced fold sizes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from uslib.data.splits import (
    SplitLeakError,
    check_no_crossing,
    fold_pairs,
    grouped_kfold,
    split_table,
    train_val_test_split,
)

SHARED = Path(
    os.environ.get("USLIB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


@pytest.fixture
def rows():
    """300 rows in 60 groups of uneven size (1-9 rows), 3 labels."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 10, 60)
    groups = np.repeat([f"p{i}" for i in range(60)], sizes)
    labels = np.repeat(rng.integers(0, 3, 60), sizes)
    return groups, labels


def test_kfold_keeps_groups_apart_and_is_balanced(rows):
    groups, labels = rows
    folds = grouped_kfold(groups, k=5, seed=0, labels=labels)
    check_no_crossing(groups, folds)
    counts = np.bincount(folds, minlength=5)
    assert counts.min() > 0
    # greedy dealing, largest group first: spread at most one largest group (9 rows)
    assert counts.max() - counts.min() <= 9


def test_kfold_is_deterministic_and_seed_dependent(rows):
    groups, _ = rows
    a, b = grouped_kfold(groups, 5, seed=3), grouped_kfold(groups, 5, seed=3)
    np.testing.assert_array_equal(a, b)
    assert (grouped_kfold(groups, 5, seed=4) != a).any()


def test_kfold_does_not_depend_on_row_order(rows):
    groups, _ = rows
    perm = np.random.default_rng(1).permutation(len(groups))
    np.testing.assert_array_equal(grouped_kfold(groups, 4)[perm], grouped_kfold(groups[perm], 4))


def test_kfold_balances_labels(rows):
    groups, labels = rows
    folds = grouped_kfold(groups, 3, labels=labels)
    per = pd.crosstab(folds, labels).to_numpy()
    assert (per.max(0) - per.min(0) <= 9).all()


def test_kfold_gives_one_fold_id_per_row_and_no_empty_fold(rows):
    groups, labels = rows
    for k in (2, 5, 60):  # 60 = one group per fold
        folds = grouped_kfold(groups, k, seed=0, labels=labels)
        assert folds.shape == (len(groups),) and folds.dtype == np.int64
        assert set(folds.tolist()) == set(range(k))  # ids 0..k-1, every fold used
        check_no_crossing(groups, folds)


def test_fold_pairs_partition_rows_by_fold_id():
    fold = np.array([2, 0, 1, 0, 2, 2])  # hand-made fold ids
    pairs = fold_pairs(fold)
    assert [te.tolist() for _, te in pairs] == [[1, 3], [2], [0, 4, 5]]
    assert [tr.tolist() for tr, _ in pairs] == [[0, 2, 4, 5], [0, 1, 3, 4, 5], [1, 2, 3]]


def test_fold_pairs_of_grouped_kfold_keep_groups_apart(rows):
    groups, labels = rows
    pairs = fold_pairs(grouped_kfold(groups, 4, seed=1, labels=labels))
    assert len(pairs) == 4
    assert sorted(np.concatenate([te for _, te in pairs])) == list(range(len(groups)))
    for tr, te in pairs:
        assert not set(groups[tr]) & set(groups[te])


def test_kfold_needs_enough_groups():
    with pytest.raises(ValueError, match="groups"):
        grouped_kfold(["a", "a", "b"], k=3)
    with pytest.raises(ValueError, match="k >= 2"):
        grouped_kfold(["a", "b", "c"], k=1)


def test_train_val_test_fractions_and_groups(rows):
    groups, labels = rows
    split = train_val_test_split(groups, (0.7, 0.1, 0.2), seed=0, labels=labels)
    check_no_crossing(groups, split)
    frac = pd.Series(split).value_counts(normalize=True)
    assert abs(frac["train"] - 0.7) < 0.05 and abs(frac["test"] - 0.2) < 0.05
    assert frac["val"] > 0.05
    np.testing.assert_array_equal(split, train_val_test_split(groups, seed=0, labels=labels))


def test_empty_split_raises():
    with pytest.raises(ValueError, match="empty"):
        train_val_test_split(["a", "a", "b"], (0.5, 0.25, 0.25))


def test_check_names_the_crossing_group():
    groups = ["p1", "p1", "p2", "p2"]
    with pytest.raises(SplitLeakError, match=r"'p2' crosses splits \['test', 'train'\]"):
        check_no_crossing(groups, ["train", "train", "train", "test"])
    check_no_crossing(groups, ["train", "train", "test", "test"])


def test_split_table_counts(rows):
    groups, labels = rows
    folds = grouped_kfold(groups, 3)
    t = split_table(folds, groups, labels)
    assert t["rows"].sum() == len(groups) and t["groups"].sum() == 60
    assert t[["label_0", "label_1", "label_2"]].to_numpy().sum() == len(groups)


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED / "pocus_lung").is_dir(), reason="shared data absent")
def test_pocus_patient_folds_keep_patients_apart():
    frames = pd.read_csv(SHARED / "pocus_lung" / "frames.csv")
    check_no_crossing(frames["patient_id"], frames["fold"])  # the shipped folds
    ours = grouped_kfold(frames["patient_id"], 5, seed=0, labels=frames["label"])
    check_no_crossing(frames["patient_id"], ours)
    check_no_crossing(frames["sample_id"], ours)  # a video never spans folds either
    with pytest.raises(SplitLeakError):  # a per-frame split would leak
        check_no_crossing(frames["patient_id"], np.arange(len(frames)) % 5)

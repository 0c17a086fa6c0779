"""Leakage-free splits: every group (patient, else video) lies wholly in one fold or split.

The POCUS authors ask for splits per video/patient, never per frame (pocus_lung/README.md); HC18
images of one subject are near-duplicates (hc18_subset/README.md). Splitting frames at random
puts near-identical frames of one clip on both sides and inflates test scores.

Both splitters are greedy and deterministic given ``seed``: groups are visited in a seeded random
order, largest first, and each goes to the fold/split where it least increases the squared
misfit to the targets (row counts per split, and per split and label when labels are given, which
balances classes as well as sizes). The result does not depend on the order of the input rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")


class SplitLeakError(ValueError):
    """A group (patient or video) appears in more than one split."""


def _group_order(groups: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique groups in visiting order (seeded shuffle, then largest first), their sizes, and
    the inverse index of each row."""
    uniq, inverse, sizes = np.unique(groups.astype(str), return_inverse=True, return_counts=True)
    perm = np.random.default_rng(seed).permutation(len(uniq))
    order = perm[np.argsort(-sizes[perm], kind="stable")]
    return order, sizes, inverse


def _majority_labels(inverse: np.ndarray, labels: np.ndarray | None, n_groups: int) -> np.ndarray:
    if labels is None:
        return np.zeros(n_groups, np.int64)
    codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)[1]
    counts = np.zeros((n_groups, codes.max() + 1), np.int64)
    np.add.at(counts, (inverse, codes), 1)
    return counts.argmax(1)


def _greedy(
    groups: Sequence[Any], targets: np.ndarray, seed: int, labels: Sequence[Any] | None
) -> np.ndarray:
    """Deal groups to bins, each to the bin that least increases the squared misfit.

    With ``f`` the rows of the group's label and ``n`` all rows already in a bin, and ``t``, ``T``
    their targets, adding a group of ``s`` rows to the bin changes
    ``J = sum (f - t)^2 + sum (n - T)^2`` by ``s (2 (f - t) + s) + s (2 (n - T) + s)``; the bin
    with the smallest change wins (ties: lowest index). Small targets (a 10 % val split of a
    4-image class) are filled once the overall term calls for them.
    """
    g = np.asarray(groups)
    order, sizes, inverse = _group_order(g, seed)
    major = _majority_labels(inverse, None if labels is None else np.asarray(labels), len(sizes))
    n_labels = int(major.max()) + 1
    label_share = np.bincount(major, weights=sizes, minlength=n_labels) / sizes.sum()
    filled = np.zeros((n_labels, len(targets)))
    total = np.zeros(len(targets))
    bin_of_group = np.empty(len(sizes), np.int64)
    for gi in order:
        lab, s = major[gi], float(sizes[gi])
        delta = s * (2 * (filled[lab] - targets * label_share[lab]) + s)
        if labels is not None:  # without labels the two terms coincide
            delta = delta + s * (2 * (total - targets) + s)
        b = int(np.argmin(delta))
        bin_of_group[gi] = b
        filled[lab, b] += s
        total[b] += s
    return bin_of_group[inverse]


def grouped_kfold(
    groups: Sequence[Any], k: int = 5, seed: int = 0, labels: Sequence[Any] | None = None
) -> np.ndarray:
    """Fold id of each row, with every group in exactly one fold and folds of similar size.

    Args:
        groups: (N,) group of each row (patient id, else video id).
        k: number of folds.
        seed: order in which groups are dealt; same seed, same folds.
        labels: optional (N,) labels; folds are then balanced per (majority) label of a group.

    Returns:
        (N,) int64 fold ids in ``0..k-1``.

    Raises:
        ValueError: fewer distinct groups than folds.
    """
    n_groups = len(set(map(str, groups)))
    if k < 2 or n_groups < k:
        raise ValueError(f"grouped_kfold: need k >= 2 and at least k groups (k={k}, {n_groups})")
    targets = np.full(k, len(groups) / k)
    return _greedy(groups, targets, seed, labels)


def fold_pairs(fold: Sequence[int] | np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(train_idx, test_idx), ...]`` per fold id in ascending order, from one fold id per row.

    Turns the output of :func:`grouped_kfold` (or a layout's shipped ``fold`` column) into the
    index pairs the evaluation protocols loop over: fold ``k`` is the test part of pair ``k``.
    """
    f = np.asarray(fold)
    return [(np.flatnonzero(f != k), np.flatnonzero(f == k)) for k in np.unique(f)]


def train_val_test_split(
    groups: Sequence[Any],
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    labels: Sequence[Any] | None = None,
    names: tuple[str, str, str] = SPLIT_NAMES,
) -> np.ndarray:
    """Train/val/test name of each row, grouped, with split sizes close to ``fractions``.

    The default 7:1:2 is the UniUS-Bench protocol for datasets without an official split
    (TinyUSFM issue #1; openus_tinyusfm.md §2.4), here grouped by patient instead of per image.

    Args:
        groups: (N,) group of each row.
        fractions: target fraction of *rows* per split (normalised to sum 1).
        seed: dealing order of the groups.
        labels: optional (N,) labels to balance per class.
        names: the split names.

    Returns:
        (N,) array of split names.

    Raises:
        ValueError: a split with a positive fraction ends up empty (too few groups).
    """
    frac = np.asarray(fractions, np.float64)
    if frac.shape != (len(names),) or (frac < 0).any() or frac.sum() <= 0:
        raise ValueError(f"train_val_test_split: bad fractions {fractions}")
    idx = _greedy(groups, frac / frac.sum() * len(groups), seed, labels)
    out = np.asarray(names, dtype=object)[idx]
    for name, f in zip(names, frac):
        if f > 0 and not (out == name).any():
            raise ValueError(f"train_val_test_split: split {name!r} is empty (too few groups)")
    return out


def check_no_crossing(groups: Sequence[Any], assignment: Sequence[Any]) -> None:
    """Raise if any group has rows in more than one split.

    Args:
        groups: (N,) group of each row.
        assignment: (N,) split (fold id or name) of each row.

    Raises:
        SplitLeakError: naming the first offending group, the splits it spans, and how many
            groups cross in all.
    """
    df = pd.DataFrame({"group": np.asarray(groups).astype(str), "split": np.asarray(assignment)})
    spans = df.groupby("group", sort=True)["split"].unique()
    bad = spans[spans.map(len) > 1]
    if len(bad):
        first = bad.index[0]
        raise SplitLeakError(
            f"group {first!r} crosses splits {sorted(map(str, bad.iloc[0]))}"
            f" ({len(bad)} crossing group(s) in all)"
        )


def split_table(
    assignment: Sequence[Any], groups: Sequence[Any], labels: Sequence[Any] | None = None
) -> pd.DataFrame:
    """Rows and groups per split (and rows per label, one column each) for reports."""
    df = pd.DataFrame({"split": np.asarray(assignment), "group": np.asarray(groups).astype(str)})
    out = df.groupby("split", sort=True).agg(rows=("group", "size"), groups=("group", "nunique"))
    if labels is not None:
        df["label"] = np.asarray(labels)
        per = df.pivot_table(index="split", columns="label", values="group", aggfunc="size")
        per.columns = [f"label_{c}" for c in per.columns]
        out = out.join(per.fillna(0).astype(int))
    return out.reset_index()

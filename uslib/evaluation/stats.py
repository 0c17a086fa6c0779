"""Statistics of the evaluation harness: a grouped hold-out split, mean +- std, bootstrap CIs, and
nested label-efficiency subsets (grouped k-fold itself is ``uslib.data.splits.grouped_kfold``).

Every split here is grouped (by patient or video, ``uslib.data.schema.group_of``), never by frame,
so near-identical frames of one patient never sit on both sides of a split (ARCHITECTURE.md,
'Data flow').
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from uslib.data import splits as data_splits

LABEL_FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.10, 0.25, 1.0)
"""Fractions of training labels for label-efficiency curves (1, 5, 10, 25, 100 %)."""


def _as_groups(groups: Sequence[str] | np.ndarray) -> np.ndarray:
    g = np.asarray(groups)
    if g.ndim != 1 or len(g) == 0:
        raise ValueError(f"groups must be a non-empty 1-D sequence, got shape {g.shape}")
    return g.astype(str)


def grouped_holdout(
    groups: Sequence[str] | np.ndarray,
    val_fraction: float,
    *,
    labels: Sequence[int] | np.ndarray | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """One grouped (and, with ``labels``, stratified) train/validation split.

    Uses the first fold of a ``round(1 / val_fraction)``-fold grouped split, so the validation part
    holds about ``val_fraction`` of the items and whole groups only.

    Args:
        groups: (N,) group id per item.
        val_fraction: wanted share of items in the validation part, in (0, 0.5].
        labels: optional (N,) classes for stratification.
        seed: shuffling seed.

    Returns:
        ``(train_idx, val_idx)`` sorted int arrays.
    """
    if not 0.0 < val_fraction <= 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5], got {val_fraction}")
    g = _as_groups(groups)
    k = min(max(2, round(1.0 / val_fraction)), len(np.unique(g)))
    if k < 2:
        raise ValueError("a grouped hold-out split needs at least 2 groups")
    fold = data_splits.grouped_kfold(g, k, seed=seed, labels=labels)
    return np.flatnonzero(fold != 0), np.flatnonzero(fold == 0)


def mean_std(values: Sequence[float] | np.ndarray, ddof: int = 1) -> tuple[float, float]:
    """Mean and standard deviation over folds or runs (NaNs ignored).

    Args:
        values: per-fold (or per-seed) metric values.
        ddof: 1 = sample standard deviation (our default; the papers do not say which they use),
            0 = population.

    Returns:
        ``(mean, std)``; std is 0.0 for a single value.
    """
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    std = float(np.std(v, ddof=ddof)) if len(v) > ddof else 0.0
    return float(np.mean(v)), std


def format_mean_std(mean: float, std: float, digits: int = 1) -> str:
    """``"90.3 ± 0.4"`` (the papers' layout)."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate with a percentile-bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    level: float
    n_boot: int

    def covers(self, value: float) -> bool:
        """Whether ``value`` lies inside [low, high]."""
        return self.low <= value <= self.high


def bootstrap_ci(
    *arrays: np.ndarray | Sequence[float],
    statistic: Callable[..., float] | None = None,
    groups: Sequence[str] | np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> BootstrapCI:
    """Percentile bootstrap confidence interval of a statistic of paired per-item arrays.

    Items (rows shared by all ``arrays``) are resampled with replacement. With ``groups`` the
    resampling unit is the group (cluster bootstrap): whole patients are drawn, which keeps the
    within-patient correlation of frames and gives honest, wider intervals.

    Args:
        *arrays: one or more (N, ...) arrays indexed together (e.g. ``y_true, y_pred``).
        statistic: ``f(*resampled_arrays) -> float``; default: the mean of the first array.
        groups: optional (N,) cluster id per item.
        n_boot: number of bootstrap replicates.
        level: confidence level (0.95 -> 2.5 and 97.5 percentiles).
        seed: RNG seed.

    Returns:
        ``BootstrapCI(estimate=statistic(*arrays), low, high, level, n_boot)``.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    arrs = [np.asarray(a) for a in arrays]
    n = len(arrs[0])
    if n == 0 or any(len(a) != n for a in arrs):
        raise ValueError(
            f"arrays must be non-empty and of equal length, got {[len(a) for a in arrs]}"
        )
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    stat = statistic or (lambda a, *_: float(np.mean(a)))
    rng = np.random.default_rng(seed)
    estimate = float(stat(*arrs))
    if groups is None:
        idx_sets = (rng.integers(0, n, size=n) for _ in range(n_boot))
    else:
        g = _as_groups(groups)
        if len(g) != n:
            raise ValueError(f"groups has length {len(g)}, arrays have {n}")
        members = [np.flatnonzero(g == u) for u in np.unique(g)]
        idx_sets = (
            np.concatenate([members[j] for j in rng.integers(0, len(members), len(members))])
            for _ in range(n_boot)
        )
    reps = np.array([stat(*[a[i] for a in arrs]) for i in idx_sets], dtype=float)
    alpha = (1.0 - level) / 2.0
    low, high = np.nanquantile(reps, [alpha, 1.0 - alpha])
    return BootstrapCI(estimate, float(low), float(high), level, n_boot)


def _group_classes(labels: np.ndarray, groups: np.ndarray) -> dict[str, int]:
    """Majority (labelled) class of each group; -1 for a group with no labelled item."""
    out: dict[str, int] = {}
    for u in np.unique(groups):
        lab = labels[(groups == u) & (labels >= 0)]
        out[str(u)] = int(np.bincount(lab).argmax()) if len(lab) else -1
    return out


def _stratified_group_order(labels: np.ndarray, groups: np.ndarray, seed: int) -> list[str]:
    """A random order of groups whose every prefix is class-balanced and which opens with one group
    of every class (so the smallest subsets still hold each class)."""
    rng = np.random.default_rng(seed)
    cls_of = _group_classes(labels, groups)
    keys: dict[str, float] = {}
    for c in sorted(set(cls_of.values())):
        members = sorted(u for u, k in cls_of.items() if k == c)
        rng.shuffle(members)
        for rank, u in enumerate(members):
            # systematic interleaving: position (rank + jitter) / n in [0, 1); the first group of
            # each class is pulled to the front (negative key)
            keys[u] = (
                -1.0 + rng.random() * 1e-3 if rank == 0 else (rank + rng.random()) / len(members)
            )
    return sorted(keys, key=keys.__getitem__)


def label_fraction_subsets(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[str] | np.ndarray,
    fractions: Sequence[float] = LABEL_FRACTIONS,
    *,
    seed: int = 0,
) -> dict[float, np.ndarray]:
    """Nested, patient-grouped, class-stratified subsets of a training set.

    Groups are put in one random order that is stratified by each group's majority class and opens
    with one group per class; the subset for fraction f is the shortest prefix of that order that
    holds at least ``ceil(f * N)`` items (and at least one group of every class). Hence subsets are
    nested (f1 < f2 -> S(f1) within S(f2)), never split a group, and contain every class.

    Args:
        labels: (N,) class per item (``-1`` = unlabelled, ignored for stratification).
        groups: (N,) patient/video id per item.
        fractions: label fractions in (0, 1].
        seed: order seed.

    Returns:
        ``{fraction: sorted item indices}``.

    Ref: OpenUS §1.6 (label-efficiency curves); USCL §B.6 (label-rate sweep).
    """
    y = np.asarray(labels, dtype=int)
    g = _as_groups(groups)
    if len(y) != len(g):
        raise ValueError(f"labels ({len(y)}) and groups ({len(g)}) differ in length")
    bad = [f for f in fractions if not 0.0 < f <= 1.0]
    if bad:
        raise ValueError(f"fractions must lie in (0, 1], got {bad}")
    order = _stratified_group_order(y, g, seed)
    n_classes_groups = len(set(_group_classes(y, g).values()))
    sizes = np.array([np.count_nonzero(g == u) for u in order])
    cum = np.cumsum(sizes)
    out: dict[float, np.ndarray] = {}
    for f in fractions:
        need = math.ceil(f * len(y) - 1e-9)
        k = max(int(np.searchsorted(cum, need)) + 1, n_classes_groups)
        chosen = set(order[: min(k, len(order))])
        out[float(f)] = np.flatnonzero(np.isin(g, list(chosen)))
    return out

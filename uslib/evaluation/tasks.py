"""Downstream tasks of the benchmark: a materialised pool of records plus its grouped folds.

Synthetic tasks come from ``uslib.data.synthetic`` (lung 3-class, breast 3-class, liver fibrosis
F0-F4; breast-lesion and fetal-head segmentation); real ones from ``uslib.data.sources`` when
``data_root`` holds them (POCUS lung with its patient-grouped folds, HC18 fetal head).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from uslib.data.schema import group_of
from uslib.data.splits import fold_pairs, grouped_kfold
from uslib.evaluation.stats import label_fraction_subsets

CLASSIFICATION_TASKS: tuple[str, ...] = ("lung", "breast", "liver")
SEGMENTATION_TASKS: tuple[str, ...] = ("breast", "fetal_head")
HC_TASKS: frozenset[str] = frozenset({"fetal_head", "hc18"})
"""Segmentation tasks whose masks are filled fetal heads (head-circumference error reported)."""


@dataclass
class EvalTask:
    """One downstream task: records held in memory and patient-grouped folds over them.

    Attributes:
        name: task name (``"lung"``, ``"breast"``, ``"pocus"``, ``"hc18"``, ...).
        kind: ``"classification"`` or ``"segmentation"``.
        data: ``"synthetic:<task>"`` or ``"real:<dataset>"`` (for labels and contamination).
        records: the materialised pool (schema records).
        num_classes: classes (segmentation: including background).
        class_names: names of the classes.
        folds: ``(train_idx, test_idx)`` pairs, grouped by patient.
    """

    name: str
    kind: str
    data: str
    records: list[dict[str, Any]]
    num_classes: int
    class_names: tuple[str, ...]
    folds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        """(N,) labels of the pool."""
        return np.array([int(r["label"]) for r in self.records])

    @property
    def groups(self) -> np.ndarray:
        """(N,) patient/video groups of the pool."""
        return np.array([group_of(r) for r in self.records])

    @property
    def img_size(self) -> int:
        """Image side of the (square) records."""
        return int(self.records[0]["image"].shape[-1])

    @property
    def key(self) -> str:
        """``"<name>/<kind>"``: unique within a benchmark."""
        return f"{self.name}/{self.kind[:3]}"

    def split(self, k: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Training and test records of fold ``k``."""
        tr, te = self.folds[k]
        return [self.records[i] for i in tr], [self.records[i] for i in te]


def _materialise(ds: Any) -> list[dict[str, Any]]:
    return [ds[i] for i in range(len(ds))]


def _with_folds(task: EvalTask, n_folds: int, seed: int) -> EvalTask:
    labels = task.labels if task.kind == "classification" else None
    task.folds = fold_pairs(grouped_kfold(task.groups, n_folds, seed=seed, labels=labels))
    return task


def synthetic_task(
    name: str, kind: str, *, n_per_class: int, img_size: int, folds: int, seed: int = 0
) -> EvalTask:
    """A synthetic task pooled from the generator's ``test`` split (never used in pretraining).

    For breast segmentation only lesion images (benign, malignant) are kept, so every mask is
    non-empty, as in BUS-BRA / BUSI lesion segmentation (OpenUS §1.5).

    Args:
        name: ``uslib.data.synthetic.TASKS`` key.
        kind: ``"classification"`` or ``"segmentation"``.
        n_per_class: items per class.
        img_size: image side.
        folds: number of grouped folds.
        seed: generator and fold seed.
    """
    from uslib.data.synthetic import TASKS, SyntheticConfig, SyntheticStills

    spec = TASKS[name]
    ds = SyntheticStills(name, "test", n_per_class, SyntheticConfig(img_size=img_size), seed)
    records = _materialise(ds)
    if kind == "segmentation":
        records = [r for r in records if bool(r["has_mask"]) and bool(r["mask"].any())]
        n_cls = len(spec.masks) + 1
        names: tuple[str, ...] = ("background", *spec.masks.values())
    else:
        n_cls, names = len(spec.classes), tuple(spec.classes)
    task = EvalTask(name, kind, f"synthetic:{name}", records, n_cls, names)
    return _with_folds(task, folds, seed)


def _cap(items: list[dict[str, Any]], max_items: int | None, seed: int) -> list[dict[str, Any]]:
    """At most ``max_items`` items, by whole patients, stratified by label."""
    if max_items is None or len(items) <= max_items:
        return items
    labels = np.array([max(int(it.get("label", -1)), 0) for it in items])
    groups = np.array([it.get("patient_id") or it.get("video_id") or it["path"] for it in items])
    keep = label_fraction_subsets(labels, groups, (max_items / len(items),), seed=seed)
    return [items[i] for i in next(iter(keep.values()))]


def _fold_pairs(items: Sequence[dict[str, Any]]) -> list[tuple[np.ndarray, np.ndarray]]:
    return fold_pairs([int(it["meta"]["fold"]) for it in items])


def real_tasks(
    data_root: str | Path,
    *,
    img_size: int,
    max_items: int | None = None,
    seed: int = 0,
    max_folds: int | None = None,
) -> list[EvalTask]:
    """Real tasks found under ``data_root``: POCUS (3-class) and HC18 (head segmentation).

    Both keep their shipped patient-grouped folds (``meta["fold"]``); ``max_items`` caps each set
    by whole patients (stratified) for quick profiles. POCUS frames are stretched to the square
    (USCL's ``Resize((S, S))``, the one POCUS convention, ``pocus`` module); HC18 is padded (its
    head circumference needs the aspect ratio kept).
    """
    from uslib.data.manifest import find_real_sets
    from uslib.data.sources import POCUS_CLASSES, RecordDataset, hc18_items, pocus_items

    found, out = find_real_sets(data_root), []
    if "pocus" in found:  # stretched, as in USCL's protocol (``pocus.POCUS_RESIZE``)
        items = _cap(pocus_items(found["pocus"], "frames"), max_items, seed)
        names = tuple(k for k, v in sorted(POCUS_CLASSES.items(), key=lambda kv: kv[1]))[:3]
        recs = _materialise(RecordDataset(items, img_size, resize="stretch"))
        folds = _fold_pairs(items)[:max_folds]
        out.append(EvalTask("pocus", "classification", "real:pocus", recs, 3, names, folds))
    if "hc18" in found:
        items = _cap(hc18_items(found["hc18"]), max_items, seed)
        recs = _materialise(RecordDataset(items, img_size))
        folds = _fold_pairs(items)[:max_folds]
        out.append(
            EvalTask("hc18", "segmentation", "real:hc18", recs, 2, ("background", "head"), folds)
        )
    return out


REAL_CLASSES: dict[str, int] = {"real:pocus": 3}
"""Classes of the real classification sets (``EvalTask.data`` label -> K)."""


def chance_level(data: str) -> float | None:
    """Accuracy of a uniform random guess, 1/K, for a classification set named as in
    ``EvalTask.data`` (``"synthetic:lung"``, ``"real:pocus"``); it is also the balanced accuracy
    of any constant guess. None for a set without classes (segmentation) or an unknown label."""
    from uslib.data.synthetic import TASKS

    kind, _, name = str(data).partition(":")
    if kind == "synthetic" and name in TASKS and len(TASKS[name].classes) > 1:
        return 1.0 / len(TASKS[name].classes)
    k = REAL_CLASSES.get(str(data))
    return None if k is None else 1.0 / k

"""Record plumbing: batching, cheap per-item indexes, transformed views and subsets of record
datasets (used by evaluation and by any trainer on records).

Datasets here are anything indexable that returns records of ``uslib.data.schema`` (a list of dicts
works too).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Subset

from uslib.data.schema import UNLABELLED, group_of

RecordTransform = Callable[[dict[str, Any]], dict[str, Any]]
"""A function record -> record (joint image/mask augmentation)."""


def collate_records(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch the evaluation-relevant fields of records.

    ``meta`` dicts are dropped (their keys vary between items, which ``default_collate`` rejects).

    Returns:
        ``{"image": (B, C, H, W), "label": (B,), "mask": (B, H, W), "has_mask": (B,),
        "spacing": (B,), "group": list[str]}``.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    images = torch.stack([torch.as_tensor(r["image"], dtype=torch.float32) for r in batch])
    b, _, h, w = images.shape
    masks = torch.stack(
        [
            torch.as_tensor(r["mask"]).long()
            if "mask" in r
            else torch.zeros(h, w, dtype=torch.long)
            for r in batch
        ]
    )
    return {
        "image": images,
        "label": torch.tensor([int(r.get("label", UNLABELLED)) for r in batch], dtype=torch.long),
        "mask": masks,
        "has_mask": torch.tensor([bool(r.get("has_mask", False)) for r in batch]),
        "spacing": torch.tensor([float(r.get("spacing", 0.0)) for r in batch]),
        "group": [group_of(r) for r in batch],
    }


def _index_rows(ds: Any) -> list[dict[str, Any]]:
    rows = []
    for i in range(len(ds)):
        r = ds[i]
        rows.append(
            {
                "label": int(r.get("label", UNLABELLED)),
                "group": group_of(r),
                "has_mask": bool(r.get("has_mask", False)),
                "spacing": float(r.get("spacing", 0.0)),
            }
        )
    return rows


def dataset_index(ds: Any) -> pd.DataFrame:
    """Per-item ``label, group, has_mask, spacing`` of a record dataset.

    Uses ``ds.index_frame()`` or the ``labels`` + ``groups`` attributes when the dataset provides
    them (no image decoding, e.g. ``uslib.data.sources.RecordDataset``), follows
    ``torch.utils.data.Subset`` to its parent, and otherwise reads every record once.

    Returns:
        DataFrame with one row per item, in dataset order.
    """
    if isinstance(ds, Subset):
        parent = dataset_index(ds.dataset)
        return parent.iloc[list(ds.indices)].reset_index(drop=True)
    frame_fn = getattr(ds, "index_frame", None)
    if callable(frame_fn):
        df = frame_fn()
        missing = {"label", "group"} - set(df.columns)
        if missing:
            raise ValueError(f"{type(ds).__name__}.index_frame() lacks columns {sorted(missing)}")
        return df.reset_index(drop=True)
    labels, groups = getattr(ds, "labels", None), getattr(ds, "groups", None)
    if labels is not None and groups is not None and not callable(labels):
        return pd.DataFrame(
            {"label": np.asarray(labels, dtype=int), "group": np.asarray(groups).astype(str)}
        )
    return pd.DataFrame(_index_rows(ds), columns=["label", "group", "has_mask", "spacing"])


class TransformedDataset(Dataset):
    """A view of a record dataset with a record transform applied on access (train-time aug)."""

    def __init__(self, base: Any, transform: RecordTransform | None) -> None:
        """Wrap ``base``; ``transform=None`` is the identity."""
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        """Number of items of the base dataset."""
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """The (transformed) record ``i``."""
        r = self.base[i]
        return self.transform(dict(r)) if self.transform is not None else r


def subset(ds: Any, indices: Sequence[int] | np.ndarray) -> Subset:
    """``torch.utils.data.Subset`` with plain int indices."""
    return Subset(ds, [int(i) for i in indices])

"""The papers' published numbers, kept as data (``published.csv``) rather than in prose.

Every number a table or figure of this project compares to is one row: ``id, paper, source`` (table,
README, figure, result file, abstract), ``dataset, task, protocol, metric, value`` (percent for
scores), ``std`` (when reported), ``label_fraction`` and ``notes`` (meaning, caveats, section of our
reproduction notes). PUMIT has no row: its result tables could not be retrieved (notes §C.10), so
nothing of it is quoted.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pandas as pd

PUBLISHED_CSV = Path(__file__).with_name("published.csv")
"""Location of the published-numbers table (shipped as package data)."""

COLUMNS: tuple[str, ...] = (
    "id",
    "paper",
    "source",
    "dataset",
    "task",
    "protocol",
    "metric",
    "value",
    "std",
    "label_fraction",
    "notes",
)

_PROBE, _PARTIAL, _SEG = "linear probe", "partial FT, best test epoch (USCL)", "frozen + SegDecoder"

REFERENCES: dict[tuple[str, str, str], tuple[str, ...]] = {
    ("lung", _PARTIAL, "accuracy"): ("uscl_pocus_acc_readme",),
    ("pocus", _PARTIAL, "accuracy"): ("uscl_pocus_acc_readme",),
    ("breast", _PROBE, "accuracy"): ("openus_busi_acc",),
    ("busi", _PROBE, "accuracy"): ("openus_busi_acc",),
    ("breast", _PROBE, "f1_macro"): ("openus_busi_f1",),
    ("busi", _PROBE, "f1_macro"): ("openus_busi_f1",),
    ("fetal_planes", _PROBE, "accuracy"): ("openus_fetal_planes_acc",),
    ("breast", _SEG, "dice"): ("openus_busbra_dice",),
    ("busbra", _SEG, "dice"): ("openus_busbra_dice",),
    ("breast", _SEG, "iou"): ("openus_busbra_iou",),
    ("busbra", _SEG, "iou"): ("openus_busbra_iou",),
    ("tn3k", _SEG, "dice"): ("openus_tn3k_dice",),
    ("tn3k", _SEG, "iou"): ("openus_tn3k_iou",),
}
"""(our task, our protocol, metric) -> ids of the published rows set beside our result: only where
the paper used the same protocol (USCL's partial fine-tuning with test-fold epoch selection;
OpenUS's frozen linear probe and frozen encoder + decoder). For synthetic tasks these are real-data
references (synthetic lung ~ POCUS, synthetic breast ~ BUSI / BUS-BRA), not like-for-like
comparisons; the tables say so. Liver fibrosis (USCL's private US-4 subset) and fetal head (HC18;
no verified PUMIT number) have none. Protocol names are those of ``evaluation.protocols``."""


@lru_cache(maxsize=1)
def _load(path: str) -> pd.DataFrame:
    df = pd.read_csv(path, keep_default_na=False, na_values={"std": [""], "label_fraction": [""]})
    missing = set(COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    if df["id"].duplicated().any():
        raise ValueError(f"{path}: duplicate ids {df['id'][df['id'].duplicated()].tolist()}")
    df["value"] = df["value"].astype(float)
    return df[list(COLUMNS)]


def published_numbers(
    paper: str | None = None,
    dataset: str | None = None,
    *,
    metric: str | None = None,
    path: str | Path | None = None,
) -> pd.DataFrame:
    """Rows of the published-numbers table, optionally filtered (case-insensitive exact match).

    Args:
        paper: e.g. ``"OpenUS"``, ``"TinyUSFM"``, ``"USCL"``, ``"DMAE"``.
        dataset: e.g. ``"BUSI"``, ``"POCUS"``, ``"BUS-BRA"``.
        metric: e.g. ``"accuracy"``, ``"dice"``.
        path: an alternative CSV (tests); default ``PUBLISHED_CSV``.

    Returns:
        A copy of the matching rows with the ``COLUMNS`` columns.

    Example:
        >>> published_numbers("USCL", "POCUS", metric="accuracy").value.max()
        95.42
    """
    df = _load(str(path or PUBLISHED_CSV)).copy()
    for col, want in (("paper", paper), ("dataset", dataset), ("metric", metric)):
        if want is not None:
            df = df[df[col].str.lower() == want.lower()]
    return df.reset_index(drop=True)


def published_value(id_: str, *, path: str | Path | None = None) -> float:
    """The value of one row by its ``id`` (e.g. ``"uscl_pocus_acc_readme"`` -> 94.19)."""
    df = _load(str(path or PUBLISHED_CSV))
    hit = df[df["id"] == id_]
    if hit.empty:
        raise KeyError(f"no published number with id {id_!r} in {path or PUBLISHED_CSV}")
    return float(hit["value"].iloc[0])


def reference_for(task: str, metric: str, protocol: str) -> pd.DataFrame:
    """Published rows to set beside our ``metric`` of ``protocol`` on ``task`` (may be empty)."""
    ids = REFERENCES.get((task, protocol, metric), ())
    df = published_numbers()
    return df[df["id"].isin(ids)].reset_index(drop=True)

"""The catalog of every dataset the five papers use (package data file ``catalog.csv``).

One row per *use* of a dataset: (dataset, paper, role). BUSI, for instance, has an OpenUS
pretraining row (1,560 files), an OpenUS downstream row, a UniUS-Bench row (780 images) and a PUMIT
pretraining row. ``dataset_id`` ties the rows of one dataset together across papers.

Every value comes from the project's notes (``shared/papers/openus_tinyusfm.md``,
``shared/papers/dmae_uscl_pumit.md``) and the READMEs of ``shared/data``; nothing was looked up
elsewhere. Unknown values are empty; the notes' own tags (``[inferred]``, ``[NOT VERIFIED]``,
``[3rd-party]``) are kept in ``tasks``, ``evidence`` and ``notes``. Licences are empty where the
notes say "not stated upstream".

Columns:
    dataset_id: canonical id shared by all rows of one dataset (``busi``, ``hc18``, ...).
    name: the name as the paper or repository writes it.
    paper: ``openus`` | ``tinyusfm`` | ``usfm`` | ``uscl`` | ``dmae`` | ``pumit`` | ``uslib``
        (``uslib`` = the real sample data shipped in ``shared/data``).
    role: ``pretrain`` | ``downstream`` | ``local sample``.
    modality: ``US``, ``CT``, ``MR``, ``XR``, ``fundus``, ``natural``, ``mixed``.
    dim: ``2d`` | ``3d`` | ``video``.
    organ: normalised organ (``heart`` for "Cardiac" and "Echocardiogram", ``fetus`` for fetal
        planes, head and abdomen, ...); ``;``-separated when several.
    body_part: the body part exactly as the source table gives it.
    tasks: ``;``-separated (``classification``, ``segmentation``, ``regression``, ...).
    n_images, n_videos, n_classes: counts as given (nullable integers).
    source_url, licence: as given in the notes; empty when not stated.
    access: ``public`` | ``registration`` | ``private`` | ``never released`` | ``unknown``.
    access_basis: why (a note section, or ``[inferred]`` from an open repository host).
    evidence: the notes' source tag and section.
    notes: caveats (overlaps with evaluation sets, inferred task assignment, results).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import pandas as pd

CATALOG_FILE = "catalog.csv"
ACCESS_LEVELS: tuple[str, ...] = ("public", "registration", "private", "never released", "unknown")
PAPERS: tuple[str, ...] = ("openus", "tinyusfm", "usfm", "uscl", "dmae", "pumit", "uslib")
_INT_COLS = ("n_images", "n_videos", "n_classes")


@lru_cache(maxsize=1)
def _read() -> pd.DataFrame:
    with resources.files("uslib.data").joinpath(CATALOG_FILE).open("r", encoding="utf-8") as f:
        df = pd.read_csv(f, dtype=str, keep_default_na=False)
    for col in _INT_COLS:
        df[col] = pd.to_numeric(df[col].replace("", None)).astype("Int64")
    return df


def load_catalog() -> pd.DataFrame:
    """Load the dataset catalog shipped with the package.

    Returns:
        A fresh copy (safe to modify) with one row per (dataset, paper, role); columns as listed in
        the module docstring. Count columns are pandas nullable ``Int64``; text columns use ``""``
        for unknown.

    Ref: OpenUS README table (openus_tinyusfm.md §1.4), UniUS-Bench (§2.5), US-4 (dmae_uscl_pumit.md
    §B.2), PUMIT's 55 datasets (§C.8).
    """
    return _read().copy()


def _split_values(cell: str) -> list[str]:
    """``"classification;segmentation [inferred]"`` -> ``["classification", "segmentation"]``."""
    out = []
    for part in cell.split(";"):
        word = part.split("[")[0].strip().lower()
        if word:
            out.append(word)
    return out


def _check_choice(name: str, value: str, valid: set[str]) -> None:
    if value.lower() not in {v.lower() for v in valid}:
        raise ValueError(f"unknown {name} {value!r}; valid: {sorted(valid)}")


def filter_catalog(
    paper: str | None = None,
    organ: str | None = None,
    access: str | None = None,
    task: str | None = None,
    role: str | None = None,
    modality: str | None = None,
) -> pd.DataFrame:
    """Select catalog rows; every argument left at ``None`` is ignored (case-insensitive matches).

    Args:
        paper: one of ``PAPERS``.
        organ: a normalised organ; matches rows listing it among their ``;``-separated organs.
        access: one of ``ACCESS_LEVELS``.
        task: e.g. ``"segmentation"``; matches rows listing it (tags like ``[inferred]`` ignored).
        role: ``"pretrain"``, ``"downstream"`` or ``"local sample"``.
        modality: e.g. ``"US"``.

    Returns:
        The matching rows (a copy), in catalog order.

    Raises:
        ValueError: an unknown paper, access level, organ, task, role or modality; the message
            lists the valid values.
    """
    df = load_catalog()
    keep = pd.Series(True, index=df.index)
    if paper is not None:
        _check_choice("paper", paper, set(PAPERS))
        keep &= df["paper"].str.lower() == paper.lower()
    if access is not None:
        _check_choice("access", access, set(ACCESS_LEVELS))
        keep &= df["access"].str.lower() == access.lower()
    for name, value, col in (("role", role, "role"), ("modality", modality, "modality")):
        if value is not None:
            _check_choice(name, value, set(df[col]))
            keep &= df[col].str.lower() == value.lower()
    for name, value, col in (("organ", organ, "organ"), ("task", task, "tasks")):
        if value is not None:
            lists = df[col].map(_split_values)
            _check_choice(name, value, {v for vs in lists for v in vs})
            wanted = value.lower()
            keep &= lists.map(lambda vs, w=wanted: w in vs)
    return df[keep].reset_index(drop=True)


def catalog_summary(
    df: pd.DataFrame | None = None, by: tuple[str, ...] = ("paper",)
) -> pd.DataFrame:
    """Count datasets and images per group.

    Args:
        df: catalog rows (default: the whole catalog).
        by: grouping columns, e.g. ``("paper", "access")`` or ``("organ",)``.

    Returns:
        One row per group: ``n_datasets`` (distinct ``dataset_id``), ``n_rows`` and ``n_images``
        (sum of the known counts; rows without a count add nothing).
    """
    df = load_catalog() if df is None else df
    g = df.groupby(list(by), sort=True, dropna=False)
    out = g.agg(
        n_datasets=("dataset_id", "nunique"),
        n_rows=("dataset_id", "size"),
        n_images=("n_images", lambda s: int(s.fillna(0).sum())),
    )
    return out.reset_index()


def pretrain_eval_overlap(paper: str, eval_paper: str | None = None) -> pd.DataFrame:
    """Datasets that a paper pretrains on *and* that it (or another paper) evaluates on.

    OpenUS's corpus contains BUSI, BUS-BRA, TN3K and Fetal_Planes_DB, its own downstream sets, so
    their test images are seen (without labels) during pretraining (openus_tinyusfm.md §1.4, §1.8).

    Args:
        paper: the pretraining paper.
        eval_paper: the paper whose downstream sets are checked (default: ``paper``).

    Returns:
        One row per overlapping ``dataset_id`` with the pretraining and evaluation names.
    """
    eval_paper = paper if eval_paper is None else eval_paper
    pre = filter_catalog(paper=paper, role="pretrain")[["dataset_id", "name", "n_images"]]
    ev = filter_catalog(paper=eval_paper, role="downstream")[["dataset_id", "name", "tasks"]]
    both = pre.merge(ev, on="dataset_id", suffixes=("_pretrain", "_eval"))
    return both.drop_duplicates("dataset_id").reset_index(drop=True)

"""Dry run of a data root before any training: what is there, what is rejected, what would leak.

Composes the listing of :mod:`uslib.data.assembly` / :mod:`uslib.data.items`, one decoding pass
of :func:`~uslib.data.manifest.build_manifest` and the pHash pairs of :mod:`uslib.data.dedup`.
A wrong or empty root is an error naming it; bad files are report rows, never an exception.
CLI: ``python -m uslib.data.check DATA_ROOT [--layout ...] [--max-items N] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from uslib.data.assembly import REAL_LAYOUTS, cap_by_group, find_real_sets, real_items
from uslib.data.dedup import DEFAULT_MAX_DISTANCE, duplicate_summary, near_duplicates
from uslib.data.items import LAYOUTS, class_folder_items, media_file_items, paired_items
from uslib.data.manifest import build_manifest
from uslib.data.schema import UNLABELLED
from uslib.data.validation import LayoutError, logger

GENERIC_LAYOUTS: dict[str, Callable[[Path], list[dict[str, Any]]]] = {
    "class-folders": class_folder_items,
    "pairs": paired_items,
    "videos": lambda p: media_file_items(p, kinds=("video",)),
    "dicom": lambda p: media_file_items(p, kinds=("dicom",)),
}
"""``--layout`` name -> lister of :mod:`uslib.data.items` (``"auto"`` = the real layouts)."""
_MEDIA = LAYOUTS["clips or DICOM files"]
_DESCRIBE = {"class-folders": LAYOUTS["class folders"], "pairs": LAYOUTS["image + mask pairs"],
             "videos": _MEDIA, "dicom": _MEDIA}  # fmt: skip
REJECT_COLS = ["dataset", "file", "stage", "reason", "detail"]
LEAK_COLS = ["dataset", "kind", "distance", "fold_a", "fold_b", "group_a", "group_b", "path_a",
             "path_b"]  # fmt: skip


@dataclass
class DataReport:
    """What :func:`check_data_root` found; every table is a ``pandas.DataFrame``.

    Attributes:
        sets: one row per set: ``dataset``, ``layout``, ``path``, ``n_listed``, ``n_valid``,
            ``n_rejected``.
        counts: ``dataset``, ``class``, ``n_items`` (valid), ``n_groups`` (patients, else videos
            or single images), ``n_folds`` (<NA> when the set ships no folds), ``n_rejected``;
            an ``(all)`` row closes each set with two or more classes.
        rejects: ``dataset``, ``file``, ``stage`` (``listing``: skipped by the layout, e.g. a GIF
            among stills; ``decode``: rejected by the manifest pass), ``reason``, ``detail``.
        duplicates: near-duplicate pairs within a set (:func:`~uslib.data.dedup.near_duplicates`
            columns plus ``dataset``), frames of one clip included.
        leakage: rows that would leak between train and test: ``near-duplicate across folds``
            (shipped folds), ``near-duplicate across groups`` (no folds: a grouped split may part
            them) and ``group in several folds`` (one patient in two folds).
        notes: warnings raised while listing (skipped CSV rows, empty class folders, ...).
    """

    root: Path
    layout: str
    sets: pd.DataFrame
    counts: pd.DataFrame
    rejects: pd.DataFrame
    duplicates: pd.DataFrame
    leakage: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    hamming: int = DEFAULT_MAX_DISTANCE
    seconds: float = 0.0

    @property
    def usable(self) -> bool:
        """Every set found has at least one valid item (rejects alone are not fatal)."""
        return bool(len(self.sets)) and bool((self.sets["n_valid"] > 0).all())

    @property
    def ok(self) -> bool:
        """Usable and nothing would leak between folds or groups."""
        return self.usable and self.leakage.empty

    def summary(self, max_rows: int = 20) -> str:
        """The report as text: sets, counts, rejects, duplicate and leakage tables, verdict."""
        n_valid, n_rej = int(self.sets["n_valid"].sum()), len(self.rejects)
        out = [f"DATA_ROOT {self.root} (layout {self.layout}): {len(self.sets)} set(s), "
               f"{n_valid} valid items, {n_rej} rejected files, {self.seconds:.1f} s",
               "", "## Sets", _table(self.sets), "", "## Counts", _table(self.counts), "",
               f"## Rejects ({n_rej})"]  # fmt: skip
        if n_rej:
            out += [_table(self.rejects.drop(columns="detail").head(max_rows))]
            out += [f"... {n_rej - max_rows} more"] if n_rej > max_rows else []
            out += ["", _table(self.rejects.groupby(["dataset", "stage", "reason"]).size()
                               .rename("n_files").reset_index())]  # fmt: skip
        out += ["", f"## Near-duplicate pairs ({len(self.duplicates)}, pHash Hamming <= "
                f"{self.hamming} of 64 bits)"]  # fmt: skip
        if len(self.duplicates):
            out += [_table(duplicate_summary(self.duplicates))]
        out += ["", f"## Leakage ({len(self.leakage)})"]
        if len(self.leakage):
            by_pair = _leak_pairs(self.leakage)
            out += [_table(self.leakage.groupby(["dataset", "kind"]).size()
                           .rename("n_rows").reset_index()), "",
                    f"By pair of groups ({len(by_pair)}; closest files shown):",
                    _table(by_pair.head(max_rows))]  # fmt: skip
        if self.notes:
            out += ["", "## Notes", *(f"- {n}" for n in self.notes)]
        verdict = "OK" if self.ok else "USABLE; review the leakage" if self.usable else "NOT USABLE"
        return "\n".join([*out, "", f"verdict: {verdict}"])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (duplicates as their summary and count)."""
        dups = duplicate_summary(self.duplicates)
        tables = {"sets": self.sets, "counts": self.counts, "rejects": self.rejects,
                  "duplicates": dups, "leakage": self.leakage}  # fmt: skip
        out = {k: json.loads(v.to_json(orient="records")) for k, v in tables.items()}
        return {"root": str(self.root), "layout": self.layout, "ok": self.ok,
                "usable": self.usable, "seconds": round(self.seconds, 2), "hamming": self.hamming,
                "n_duplicate_pairs": len(self.duplicates), "notes": self.notes, **out}  # fmt: skip


def _leak_pairs(leak: pd.DataFrame) -> pd.DataFrame:
    """Leakage rows per pair of groups: count, closest distance and the closest files' names."""
    names = {c: leak[f"path_{c[-1]}"].map(lambda p: Path(p).name) for c in ("file_a", "file_b")}
    keys = ["dataset", "kind", "group_a", "group_b", "fold_a", "fold_b"]
    g = leak.assign(**names).sort_values("distance", kind="stable").groupby(keys, sort=False)
    return g.agg(n_rows=("kind", "size"), distance=("distance", "min"), file_a=("file_a", "first"),
                 file_b=("file_b", "first")).reset_index()  # fmt: skip


def _table(df: pd.DataFrame) -> str:
    try:  # tabulate is a dev extra; pandas needs it for markdown
        import tabulate  # noqa: F401
    except ImportError:
        return df.to_string(index=False)
    return df.to_markdown(index=False)


@contextmanager
def _listing_events() -> Iterator[list[logging.LogRecord]]:
    """Collect ``uslib.data`` records (INFO and up) while a layout lists its files.

    The layouts' ``UserWarning``s are silenced here because they are kept as report notes.
    """
    records: list[logging.LogRecord] = []
    handler, level = logging.Handler(logging.INFO), logger.level
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    logger.setLevel(min(logger.getEffectiveLevel(), logging.INFO))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _list_sets(
    root: Path, layout: str, max_items: int | None
) -> tuple[dict[str, tuple[str, Path]], list[dict[str, Any]]]:
    """``{dataset: (layout, path)}`` and the items of every set (at most ``max_items`` each)."""
    if layout == "auto":
        try:
            items = real_items(root, limit=max_items)
        except LayoutError as e:
            raise LayoutError(f"{e}; or check such a folder with --layout "
                              f"{'|'.join(GENERIC_LAYOUTS)}") from None  # fmt: skip
        return {k: (REAL_LAYOUTS[k], p) for k, p in find_real_sets(root).items()}, items
    if layout not in GENERIC_LAYOUTS:
        raise ValueError(f"layout {layout!r}; valid: auto, {', '.join(GENERIC_LAYOUTS)}")
    items = cap_by_group(GENERIC_LAYOUTS[layout](root), max_items, seed=0)
    return {items[0]["dataset"]: (_DESCRIBE[layout], root)}, items


def _class(label: int, name: str) -> str:
    return name or ("(unlabelled)" if label == UNLABELLED else str(label))


def _counts(listed: pd.DataFrame, valid: pd.DataFrame) -> pd.DataFrame:
    """Rows per (dataset, class) in label order, with an ``(all)`` row for multi-class sets."""
    rows = []
    for ds, lst in listed.groupby("dataset", sort=True):
        val = valid[valid["dataset"] == ds]
        classes = lst.sort_values("label")["class"].unique().tolist()
        for cls in classes + (["(all)"] if len(classes) > 1 else []):
            v = val if cls == "(all)" else val[val["class"] == cls]
            n_lst = len(lst) if cls == "(all)" else int((lst["class"] == cls).sum())
            rows.append({"dataset": ds, "class": cls, "n_items": len(v),
                         "n_groups": v["group"].nunique(),
                         "n_folds": v["fold"].nunique() if v["fold"].notna().any() else pd.NA,
                         "n_rejected": n_lst - len(v)})  # fmt: skip
    return pd.DataFrame(rows).astype({"n_folds": "Int64"})


def _leakage(ds: str, rows: pd.DataFrame, pairs: pd.DataFrame, folds: bool) -> pd.DataFrame:
    """Near-duplicate pairs that cross folds (or groups) and groups found in several folds."""
    cross = pairs["crosses_split"] if folds else pairs["relation"] != "same group"
    near = pairs[cross].rename(columns={"split_a": "fold_a", "split_b": "fold_b"})
    kind = "near-duplicate across " + ("folds" if folds else "groups")
    out = [near.assign(dataset=ds, kind=kind).reindex(columns=LEAK_COLS)]
    if folds:
        for g, sub in rows.groupby("group", sort=True):
            first = sub.drop_duplicates("fold").sort_values("fold")
            if len(first) > 1:  # one row per group: its first two folds, one file from each
                (fa, pa), (fb, pb) = first[["fold", "path"]].head(2).itertuples(index=False)
                row = [ds, "group in several folds", None, fa, fb, g, g, pa, pb]
                out.append(pd.DataFrame([row], columns=LEAK_COLS))
    return pd.concat(out, ignore_index=True)


def _rejects(
    events: list[logging.LogRecord], sets: dict[str, tuple[str, Path]], decoded: pd.DataFrame
) -> tuple[pd.DataFrame, list[str]]:
    """Files skipped while listing plus the manifest's rejects; other warnings become notes."""
    skipped, notes = [], []
    for r in events:
        if r.msg.startswith("skipped %s") and r.args:  # the skip format of list_files and layouts
            path = str(r.args[0])  # type: ignore[index]
            ds = next((d for d, (_, p) in sets.items() if Path(path).is_relative_to(p)), "")
            why = r.getMessage().removeprefix(f"skipped {path}: ")
            skipped.append({"dataset": ds, "file": path, "stage": "listing", "reason": why})
        elif r.levelno >= logging.WARNING:
            notes.append(r.getMessage())
    decoded = decoded.rename(columns={"path": "file"}).assign(stage="decode")[REJECT_COLS]
    listing = pd.DataFrame(skipped, columns=REJECT_COLS)
    return pd.concat([listing, decoded], ignore_index=True).fillna(""), notes


def check_data_root(
    root: str | Path,
    *,
    layout: str = "auto",
    max_items: int | None = None,
    hamming: int = DEFAULT_MAX_DISTANCE,
) -> DataReport:
    """Validate a data root before training: list, decode once, count, find duplicates and leaks.

    Args:
        root: the folder (``make reproduce DATA_ROOT=...``).
        layout: ``"auto"`` (POCUS / HC18 index files at ``root`` or two levels below) or a
            generic layout of :data:`GENERIC_LAYOUTS` for ``root`` itself.
        max_items: keep at most this many items per set, by whole patients / groups (seeded).
        hamming: largest pHash Hamming distance (of 64 bits) counted as a near-duplicate.

    Returns:
        A :class:`DataReport`.

    Raises:
        FileNotFoundError: ``root`` is not a folder (named in the message).
        LayoutError: ``root`` holds no recognised layout (the message names it and the layouts
            looked for).
    """
    t0, root = time.perf_counter(), Path(root)
    with _listing_events() as events:
        sets, items = _list_sets(root, layout, max_items)
    man = build_manifest(items)
    rejects, notes = _rejects(events, sets, man.rejects)
    valid = man.to_pandas()
    valid["fold"] = [m.get("fold") for m in valid["meta"]]
    valid["class"] = [_class(lab, n) for lab, n in zip(valid["label"], valid["label_name"])]
    listed = pd.DataFrame([{"dataset": it["dataset"], "label": it["label"],
                            "class": _class(it["label"], it["label_name"])}
                           for it in items])  # fmt: skip
    dups, leaks, set_rows = [], [], []
    for ds, (desc, path) in sets.items():
        rows = valid[valid["dataset"] == ds].reset_index(drop=True)
        folds = bool(rows["fold"].notna().any())
        pairs = near_duplicates(rows, hamming, split_col="fold" if folds else None)
        dups.append(pairs.assign(dataset=ds))
        leaks.append(_leakage(ds, rows, pairs, folds))
        set_rows.append({"dataset": ds, "layout": desc, "path": str(path),
                         "n_listed": int((listed["dataset"] == ds).sum()), "n_valid": len(rows),
                         "n_rejected": int((rejects["dataset"] == ds).sum())})  # fmt: skip
    return DataReport(
        root, layout, pd.DataFrame(set_rows), _counts(listed, valid), rejects,
        pd.concat(dups, ignore_index=True), pd.concat(leaks, ignore_index=True), notes,
        hamming, time.perf_counter() - t0,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the report; exit 0 if usable, 1 if a set has no valid item, 2 for a bad root."""
    ap = argparse.ArgumentParser(prog="python -m uslib.data.check", description=__doc__)
    ap.add_argument("data_root", help="folder to check")
    ap.add_argument("--layout", default="auto", choices=["auto", *GENERIC_LAYOUTS])
    ap.add_argument("--max-items", type=int, default=None, help="cap per set (whole patients)")
    ap.add_argument("--hamming", type=int, default=DEFAULT_MAX_DISTANCE, help="pHash bits")
    ap.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    args = ap.parse_args(argv)
    try:
        report = check_data_root(args.data_root, layout=args.layout, max_items=args.max_items,
                                 hamming=args.hamming)  # fmt: skip
    except (FileNotFoundError, LayoutError) as e:
        print(f"check-data: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return 0 if report.usable else 1


if __name__ == "__main__":
    sys.exit(main())

"""The manifest: one table of every image of a run, built from any mix of sources.

A manifest stores paths and metadata, never pixels: it is a Hugging Face ``datasets.Dataset``
saved as Arrow (``save_to_disk``) plus a Parquet copy, next to a rejects table and a JSON info
file. Building it runs one validation pass that decodes every item once and

* applies the shared rule set (:mod:`uslib.data.validation`, a ``Rules`` argument) and rejects,
  without crashing, missing, empty, non-image, truncated, undecodable, tiny (< 32 px), huge and
  non-finite (NaN/Inf) files, and masks that do not match their image or hold undeclared values:
  each goes to ``rejects`` as (file, reason);
* reads odd modes (16-bit, RGBA, palette, CMYK, ...) through ``uslib.data.media`` (16-bit data is
  rescaled over its real range) and records the mode;
* computes the DCT pHash of each image (``uslib.data.dedup``) for duplicate and contamination
  reports;
* optionally detects the ultrasound fan (``roi_crop``) and writes a resized image cache.

Synthetic records (the embedded default) have no files; :func:`write_records` saves them as PNG
first, so that every later notebook reads the same kind of manifest. Notebook 01's assembly
(``AssemblyConfig``, ``assemble_items``, ``write_records``, ``find_real_sets``, ``real_items``)
lives in :mod:`uslib.data.assembly` and is re-exported here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from uslib.data.assembly import (
    AssemblyConfig,
    assemble_items,
    find_real_sets,
    real_items,
    write_records,
)
from uslib.data.dedup import hash_to_hex, phash
from uslib.data.geometry import detect_fan_roi, fit_image
from uslib.data.items import make_item
from uslib.data.media import (
    MediaError,
    read_dicom,
    read_image,
    read_mask,
    read_video_frame,
    video_info,
)
from uslib.data.sources import hc18_items, pocus_items
from uslib.data.validation import DEFAULT_RULES, MIN_SIDE, Rules, check_size, logger

__all__ = [
    "INFO_COLUMNS",
    "ITEM_COLUMNS",
    "MIN_SIDE",
    "REJECT_COLUMNS",
    "AssemblyConfig",
    "Manifest",
    "assemble_items",
    "build_manifest",
    "find_real_sets",
    "hc18_items",
    "inspect_item",
    "load_manifest",
    "make_item",
    "manifest_dir",
    "pocus_items",
    "real_items",
    "save_manifest",
    "write_records",
]

ITEM_COLUMNS = ("path", "kind", "mask_paths", "label", "label_name", "dataset", "organ",
                "patient_id", "video_id", "frame_idx", "spacing")  # fmt: skip
INFO_COLUMNS = ("height", "width", "mode", "n_frames", "roi_y0", "roi_y1", "roi_x0", "roi_x1",
                "phash", "cache_path", "group")  # fmt: skip
REJECT_COLUMNS = ("path", "dataset", "reason", "detail")


@dataclass
class Manifest:
    """A built manifest: ``table`` (one row per valid item) and ``rejects`` (file, reason)."""

    table: Any  # datasets.Dataset
    rejects: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=REJECT_COLUMNS))

    def __len__(self) -> int:
        return len(self.table)

    def to_pandas(self) -> pd.DataFrame:
        """The rows as a DataFrame (``meta`` decoded from JSON)."""
        df = self.table.to_pandas()
        df["meta"] = df.pop("meta_json").map(json.loads)
        return df

    def with_columns(self, **columns: Sequence[Any]) -> Manifest:
        """A copy with extra (or replaced) columns, e.g. ``fold=..., split=...``."""
        table = self.table
        for name, values in columns.items():
            if name in table.column_names:
                table = table.remove_columns(name)
            table = table.add_column(name, list(values))
        return Manifest(table, self.rejects)

    def items(self) -> list[dict[str, Any]]:
        """Rows as items for ``uslib.data.sources.RecordDataset`` (with ``roi``/``cache_path``)."""
        return [_row_to_item(r) for r in self.to_pandas().to_dict("records")]

    def items_by(self, column: str) -> dict[Any, list[dict[str, Any]]]:
        """Items grouped by a column's value, e.g. ``items_by("split")["train"]``."""
        out: dict[Any, list[dict[str, Any]]] = {}
        for row in self.to_pandas().to_dict("records"):
            out.setdefault(row[column], []).append(_row_to_item(row))
        return out


def _row_to_item(row: dict[str, Any]) -> dict[str, Any]:
    item = {k: row[k] for k in ITEM_COLUMNS}
    item["mask_paths"] = [str(p) for p in row["mask_paths"]]
    item["meta"] = row["meta"]
    if row["roi_y1"] > 0:
        item["roi"] = (
            int(row["roi_y0"]),
            int(row["roi_y1"]),
            int(row["roi_x0"]),
            int(row["roi_x1"]),
        )
    if row["cache_path"]:
        item["cache_path"] = row["cache_path"]
    return item


def _decode(item: dict[str, Any], rules: Rules) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode the item's frame once; info has height, width, mode, n_frames."""
    kind, idx = item["kind"], max(int(item["frame_idx"]), 0)
    if kind == "image":
        return read_image(item["path"], rules=rules)
    if kind == "video":
        vi = video_info(item["path"])
        if vi["height"] * vi["width"] > rules.max_pixels:
            raise MediaError(item["path"], "too large", f"{vi['width']}x{vi['height']}")
        arr = read_video_frame(item["path"], idx).astype(np.float32) / 255.0
        return arr, {"mode": "video", "n_frames": vi["n_frames"]}
    frames, di = read_dicom(item["path"], rules)
    if idx >= len(frames):
        raise MediaError(item["path"], "frame out of range", f"index {idx}")
    return frames[idx], {"mode": f"dicom/{di['photometric']}", "n_frames": di["n_frames"]}


def _cache_file(cache_dir: Path, item: dict[str, Any]) -> Path:
    key = hashlib.sha1(f"{item['path']}|{item['frame_idx']}".encode()).hexdigest()[:20]
    return cache_dir / f"{key}.png"


def inspect_item(
    item: dict[str, Any],
    min_side: int | None = None,
    max_pixels: int | None = None,
    roi_crop: bool = False,
    cache_dir: Path | None = None,
    cache_size: int | None = None,
    rules: Rules = DEFAULT_RULES,
) -> dict[str, Any]:
    """Validate one item and compute its manifest columns.

    Args:
        item: the item.
        min_side, max_pixels: override ``rules.min_side`` / ``rules.max_pixels`` when given.
        roi_crop, cache_dir, cache_size: see :func:`build_manifest`.
        rules: the shared validation rules (:mod:`uslib.data.validation`).

    Returns:
        The ``INFO_COLUMNS`` values (without ``group``).

    Raises:
        MediaError: the reason to reject it (unreadable, too small, non-finite, mask mismatch).
    """
    rules = rules.but(min_side=min_side, max_pixels=max_pixels)
    arr, info = _decode(item, rules)
    h, w = arr.shape
    check_size(h, w, item["path"], rules)
    if item["mask_paths"]:
        read_mask(item["mask_paths"], shape=(h, w), rules=rules)
    y0, y1, x0, x1 = detect_fan_roi(arr) if roi_crop else (0, h, 0, w)
    crop = arr[y0:y1, x0:x1]
    cache_path = ""
    if cache_dir is not None and cache_size is not None:
        out = _cache_file(cache_dir, item)
        small = fit_image(crop, cache_size)
        Image.fromarray((small * 255.0 + 0.5).astype(np.uint8)).save(out)
        cache_path = str(out)
    return {
        "height": h, "width": w, "mode": info["mode"], "n_frames": int(info.get("n_frames", 1)),
        "roi_y0": y0, "roi_y1": y1, "roi_x0": x0, "roi_x1": x1,
        "phash": hash_to_hex(phash(crop)), "cache_path": cache_path,
    }  # fmt: skip


def build_manifest(
    items: Iterable[dict[str, Any]],
    *,
    min_side: int | None = None,
    max_pixels: int | None = None,
    roi_crop: bool = False,
    cache_dir: str | Path | None = None,
    cache_size: int | None = None,
    progress: bool = False,
    rules: Rules = DEFAULT_RULES,
) -> Manifest:
    """Validate items and build the manifest; bad files go to ``rejects``, never raise.

    Args:
        items: items from ``uslib.data.sources`` (any mix of datasets and kinds).
        min_side: images with a side shorter than this are rejected (``"too small"``; default
            ``rules.min_side`` = ``MIN_SIDE``).
        max_pixels: larger images are rejected (``"too large"``; default ``rules.max_pixels``).
        roi_crop: detect the ultrasound fan and store its box (used when loading records).
        cache_dir: where to write the resized image cache (needs ``cache_size``).
        cache_size: side of the cached (ROI-cropped, padded) 8-bit PNGs.
        progress: show a tqdm bar.
        rules: the shared validation rules (non-finite pixels, mask values, ...).

    Returns:
        A :class:`Manifest`; ``group`` = patient id, else video id, else path.
    """
    from tqdm.auto import tqdm

    cdir = Path(cache_dir) if cache_dir is not None else None
    if cdir is not None:
        cdir.mkdir(parents=True, exist_ok=True)
    rows, rejects = [], []
    for item in tqdm(list(items), disable=not progress, desc="manifest"):
        try:
            info = inspect_item(item, min_side, max_pixels, roi_crop, cdir, cache_size, rules)
        except MediaError as e:
            # the row names the item; the detail names the failing file (maybe its mask)
            rejects.append({"path": item["path"], "dataset": item["dataset"], "reason": e.reason,
                            "detail": str(e)})  # fmt: skip
            logger.info("rejected %s (manifest rejects table)", e)
            continue
        row = {k: item[k] for k in ITEM_COLUMNS} | info
        row["mask_paths"] = [str(p) for p in item["mask_paths"]]
        row["meta_json"] = json.dumps(item.get("meta", {}), sort_keys=True)
        row["group"] = item["patient_id"] or item["video_id"] or item["path"]
        rows.append(row)
    return Manifest(_to_dataset(rows), pd.DataFrame(rejects, columns=list(REJECT_COLUMNS)))


def _to_dataset(rows: list[dict[str, Any]]) -> Any:
    import datasets

    feats = {"path": "string", "kind": "string", "label": "int64", "label_name": "string",
             "dataset": "string", "organ": "string", "patient_id": "string", "video_id": "string",
             "frame_idx": "int64", "spacing": "float64", "height": "int64", "width": "int64",
             "mode": "string", "n_frames": "int64", "roi_y0": "int64", "roi_y1": "int64",
             "roi_x0": "int64", "roi_x1": "int64", "phash": "string", "cache_path": "string",
             "group": "string", "meta_json": "string"}  # fmt: skip
    features = datasets.Features(
        {k: datasets.Value(v) for k, v in feats.items()}
        | {"mask_paths": datasets.Sequence(datasets.Value("string"))}
    )
    cols = {k: [r[k] for r in rows] for k in features}
    return datasets.Dataset.from_dict(cols, features=features)


def save_manifest(manifest: Manifest, out_dir: str | Path) -> Path:
    """Write ``arrow/`` (``datasets.save_to_disk``), ``manifest.parquet``, ``rejects.csv`` and
    ``info.json`` (counts per dataset and reason) into ``out_dir``; returns ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    import datasets

    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # keep notebook output short
    try:
        manifest.table.save_to_disk(str(out / "arrow"))
        manifest.table.to_parquet(str(out / "manifest.parquet"))
    finally:
        if not quiet:
            datasets.enable_progress_bars()
    manifest.rejects.to_csv(out / "rejects.csv", index=False)
    df = manifest.table.to_pandas()
    info = {
        "n_rows": len(df), "n_rejects": len(manifest.rejects),
        "per_dataset": df["dataset"].value_counts().sort_index().to_dict(),
        "reject_reasons": manifest.rejects["reason"].value_counts().sort_index().to_dict(),
    }  # fmt: skip
    (out / "info.json").write_text(json.dumps(info, indent=2))
    return out


def manifest_dir(profile: str, data_root: str | Path | None = None) -> Path:
    """Where notebook 01 writes the manifest of ``profile`` (default run folder of its run set)."""
    from uslib.paths import runs_root

    return runs_root(profile, data_root) / "01_dataset_assembly" / "manifest"


def load_manifest(out_dir: str | Path) -> Manifest:
    """Read a manifest written by :func:`save_manifest` (memory-mapped Arrow)."""
    import datasets

    out = Path(out_dir)
    if not (out / "arrow").is_dir():
        raise FileNotFoundError(f"{out}: no manifest (expected {out / 'arrow'})")
    rej = out / "rejects.csv"
    rejects = pd.read_csv(rej, keep_default_na=False) if rej.is_file() else None
    table = datasets.load_from_disk(str(out / "arrow"))
    return Manifest(table, rejects if rejects is not None else pd.DataFrame(columns=REJECT_COLUMNS))

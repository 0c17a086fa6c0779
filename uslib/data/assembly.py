"""Assembly of notebook 01's items: synthetic stills written as PNG plus auto-detected real sets.

Synthetic records (the embedded default) have no files; :func:`write_records` saves them as PNG
first, so that every later notebook reads the same kind of manifest (``uslib.data.manifest``).
Real sets (POCUS frames, HC18 images) are found under a ``data_root`` by their index files and
capped by whole patients so that a capped set still splits cleanly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from uslib.config import ConfigBase
from uslib.data.items import LAYOUTS, make_item
from uslib.data.sources import hc18_items, pocus_items
from uslib.data.validation import LayoutError, MediaError

REAL_LAYOUTS: dict[str, str] = {
    "pocus": "samples.csv + frames.csv (POCUS lung, pocus_items)",
    "hc18": "labels.csv with a head_circumference_mm column (HC18, hc18_items)",
}
"""The real layouts :func:`find_real_sets` looks for (at ``data_root`` and two levels below)."""


@dataclass(frozen=True)
class AssemblyConfig(ConfigBase):
    """Settings of notebook 01 (dataset assembly); defaults are the smoke profile.

    ``tasks`` are synthetic tasks (``uslib.data.synthetic.TASKS``); ``real_limit`` caps the items
    taken from each real set found under ``data_root`` (0 = all); ``cache_size`` 0 = no cache.
    """

    tasks: tuple[str, ...] = ("lung", "breast")
    n_per_class: int = 4
    img_size: int = 64
    folds: int = 3
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    max_distance: int = 6
    roi_crop: bool = False  # for raw scanner exports with overlays; the sets here are cropped
    cache_size: int = 0
    real_limit: int = 60
    seed: int = 0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {},
        "cpu": {"tasks": ("lung", "breast", "liver", "fetal_head"), "n_per_class": 24,
                "img_size": 128, "folds": 5, "real_limit": 0, "cache_size": 128},
        "paper": {"tasks": ("lung", "breast", "liver", "fetal_head"), "n_per_class": 200,
                  "img_size": 224, "folds": 5, "real_limit": 0, "cache_size": 224},
    }  # fmt: skip


def write_records(
    records: Iterable[dict[str, Any]], out_dir: str | Path, prefix: str = ""
) -> list[dict[str, Any]]:
    """Save in-memory records (e.g. synthetic ones) as 8-bit PNGs and return their items.

    Args:
        records: records of the common schema (``image`` (1, H, W) in [0, 1]).
        out_dir: folder for ``<dataset>/<prefix><n>.png`` and ``..._mask.png``.
        prefix: file-name prefix (e.g. the split).

    Returns:
        Items pointing at the files (labels, ids, spacing and scalar meta kept).

    Raises:
        MediaError: a record with NaN/Inf pixels (``reason="non-finite pixels"``, naming the file
            it would have written): an 8-bit PNG cannot store them, and casting would write 0.
    """
    out, items = Path(out_dir), []
    for n, rec in enumerate(records):
        folder = out / rec["dataset"]
        img = np.asarray(rec["image"], np.float32)[0]
        path = folder / f"{prefix}{n:05d}.png"
        n_bad = int((~np.isfinite(img)).sum())
        if n_bad:
            raise MediaError(path, "non-finite pixels", f"record {n} of {rec['dataset']!r} has "
                             f"{n_bad} NaN/Inf of {img.size} pixels; not written")  # fmt: skip
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.clip(img, 0, 1) * 255.0 + 0.5).astype(np.uint8)).save(path)
        masks = []
        if bool(rec.get("has_mask", False)):
            masks = [folder / f"{prefix}{n:05d}_mask.png"]
            m = (np.asarray(rec["mask"]) > 0).astype(np.uint8) * 255
            Image.fromarray(m).save(masks[0])
        meta = {k: v for k, v in rec.get("meta", {}).items() if isinstance(v, str | int | float)}
        items.append(make_item(
            path, dataset=rec["dataset"], mask_paths=masks, label=int(rec["label"]),
            label_name=str(meta.get("label_name", meta.get("class_name", ""))),
            organ=rec.get("organ", ""),
            patient_id=rec.get("patient_id", ""),
            video_id=rec.get("video_id") or f"{rec['dataset']}:{prefix}{n:05d}",
            frame_idx=int(rec.get("frame_idx", -1)), spacing=float(rec.get("spacing", 0.0)),
            meta=meta))  # fmt: skip
    return items


def assemble_items(
    cfg: AssemblyConfig, out_dir: str | Path, data_root: str | Path | None = None
) -> list[dict[str, Any]]:
    """The items of notebook 01: synthetic stills of ``cfg.tasks`` (written as PNG under
    ``out_dir``), plus every real set found under ``data_root`` when it is given.

    Synthetic: ``uslib.data.synthetic.SyntheticStills(task, "train", cfg.n_per_class, cfg,
    cfg.seed)``, one patient per image. Real: :func:`real_items` capped at ``cfg.real_limit``.

    Raises:
        LayoutError: ``data_root`` is given but holds no real layout (:data:`REAL_LAYOUTS`), e.g.
            a class-folder root: never silently the synthetic items only.
    """
    from uslib.data.synthetic import SyntheticStills

    real = []  # listed first: a wrong data_root fails before any file is written
    if data_root is not None:
        real = real_items(data_root, limit=cfg.real_limit or None, seed=cfg.seed)
    items: list[dict[str, Any]] = []
    for task in cfg.tasks:
        ds = SyntheticStills(task, "train", cfg.n_per_class, cfg, seed=cfg.seed)
        items += write_records((ds[i] for i in range(len(ds))), out_dir, prefix="train_")
    return items + real


def find_real_sets(data_root: str | Path) -> dict[str, Path]:
    """Auto-detect the real layouts under ``data_root`` (itself and two levels below).

    Returns:
        ``{"pocus": path, "hc18": path}`` for the folders found: POCUS = ``samples.csv`` +
        ``frames.csv``; HC18 = ``labels.csv`` with a ``head_circumference_mm`` column.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"data_root {root} is not a folder")
    found: dict[str, Path] = {}
    for d in [root, *sorted(root.glob("*/")), *sorted(root.glob("*/*/"))]:
        if "pocus" not in found and (d / "samples.csv").is_file() and (d / "frames.csv").is_file():
            found["pocus"] = d
        lab = d / "labels.csv"
        if "hc18" not in found and lab.is_file():
            if "head_circumference_mm" in lab.open().readline():
                found["hc18"] = d
    return found


def real_items(
    data_root: str | Path, limit: int | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """Items of every real set found by :func:`find_real_sets` (POCUS frames, HC18 images).

    Args:
        limit: keep at most this many items per set, taken by whole groups (patients) in a
            seeded order so that a capped set still splits cleanly.
        seed: order of the groups when capping.

    Raises:
        LayoutError: no real layout under ``data_root`` (the layouts looked for are listed, and
            the generic ones of :mod:`uslib.data.items` named as the way in for other folders).
    """
    sets = find_real_sets(data_root)
    if not sets:
        looked = "; ".join(f"{k}: {v}" for k, v in REAL_LAYOUTS.items())
        generic = "; ".join(f"{k}: {v}" for k, v in LAYOUTS.items())
        raise LayoutError(
            f"{data_root}: no real data set found at it or two levels below. Layouts looked for: "
            f"{looked}. Other folders are listed by the generic layouts of uslib.data.items "
            f"({generic}), then passed to build_manifest"
        )
    loaders = {"pocus": lambda p: pocus_items(p, "frames"), "hc18": hc18_items}
    out: list[dict[str, Any]] = []
    for name, path in sets.items():
        out += cap_by_group(loaders[name](path), limit, seed)
    return out


def cap_by_group(items: Sequence[dict[str, Any]], limit: int | None, seed: int) -> list[dict]:
    """``items`` cut to at most ``limit`` by whole patient (or video) groups, drawn in a
    ``seed``-fixed random order, a group that would overflow skipped (the first drawn is always
    kept); all items when ``limit`` is None or not exceeded. Used by the assembly and by the
    ``uslib.data.check`` dry run."""
    if limit is None or len(items) <= limit:
        return list(items)
    sizes = Counter(it["patient_id"] or it["video_id"] for it in items)
    groups = sorted(sizes)
    keep: set[str] = set()
    n = 0
    for k in np.random.default_rng(seed).permutation(len(groups)):
        if n and n + sizes[groups[k]] > limit:
            continue
        keep.add(groups[k])
        n += sizes[groups[k]]
    return [it for it in items if (it["patient_id"] or it["video_id"]) in keep]

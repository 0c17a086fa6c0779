"""Real-data sources: the POCUS lung and HC18 layouts, plus the item and record API re-exported.

Each source reads a local root and lists *items* (``uslib.data.items``: where the pixels are,
never the pixels), which load lazily into records (``uslib.data.records``). Layouts here: POCUS
lung (``shared/data/pocus_lung``: samples.csv, frames.csv) and HC18 (``shared/data/hc18_subset``:
labels.csv). Generic layouts (class folders, image + mask pairs, folders of clips or DICOM files)
are in :mod:`uslib.data.items`; :func:`load_record`, :class:`RecordDataset` and
:class:`ClipCollection` in :mod:`uslib.data.records`. All of them stay importable from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from uslib.data.items import class_folder_items, make_item, media_file_items, paired_items
from uslib.data.media import (
    DICOM_EXTS,
    IMAGE_EXTS,
    VIDEO_EXTS,
    MediaError,
    fit_geometry,
    fit_image,
    iter_video_frames,
    media_kind,
    read_dicom,
    read_image,
    read_mask,
    read_video_frame,
)
from uslib.data.records import ClipCollection, RecordDataset, load_array, load_record
from uslib.data.schema import UNLABELLED
from uslib.data.validation import notify

__all__ = [
    "DICOM_EXTS",
    "IMAGE_EXTS",
    "POCUS_CLASSES",
    "UNLABELLED",
    "VIDEO_EXTS",
    "ClipCollection",
    "FrameArray",
    "MediaError",
    "RecordDataset",
    "class_folder_items",
    "fit_geometry",
    "fit_image",
    "hc18_items",
    "iter_video_frames",
    "load_array",
    "load_record",
    "make_item",
    "media_file_items",
    "media_kind",
    "paired_items",
    "pocus_items",
    "pocus_videos",
    "read_dicom",
    "read_image",
    "read_mask",
    "read_table",
    "read_video_frame",
]

POCUS_CLASSES: dict[str, int] = {"covid": 0, "pneumonia": 1, "regular": 2, "viral": 3}
"""USCL's POCUS class map (covid=0, pneumonia=1, regular=2; Ref: USCL §B.8); viral (opt-in) = 3."""


_CASTS: dict[type, Callable[[str], Any]] = {int: int, float: float, str: str}


def read_table(path: str | Path, columns: dict[str, type]) -> list[dict[str, Any]]:
    """Rows of a layout's CSV index with typed values; a bad value skips its row, with a word.

    Args:
        path: the CSV file.
        columns: required column -> type (``int``, ``float`` (finite), ``str``); other columns
            are kept as text.

    Returns:
        One dict per good row, plus ``"_line"`` (its 1-based line in the file; line 1 is the
        header).

    Raises:
        FileNotFoundError: no such file. ValueError: unreadable CSV, or required columns
        missing (the file and the columns are named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: index file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable CSV ({e})") from e
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; has {list(df.columns)}")
    rows, bad = [], []
    for k, row in enumerate(df.to_dict("records")):
        line, col = k + 2, ""
        try:
            for col, typ in columns.items():
                value = _CASTS[typ](row[col].strip())
                if typ is float and not np.isfinite(value):
                    raise ValueError("not finite")
                row[col] = value
        except ValueError:
            bad.append(f"line {line}, column {col!r}: {row[col]!r}")
            continue
        rows.append({**row, "_line": line})
    if bad:
        more = f" ... (+{len(bad) - 5} more)" if len(bad) > 5 else ""
        notify("%s: skipped %d of %d rows with bad values: %s%s",
               path, len(bad), len(df), "; ".join(bad[:5]), more)  # fmt: skip
    return rows


_POCUS_COLS = {"label": str, "label_uncertain": int, "fold": int, "probe": str,
               "patient_id": str, "sample_id": str}  # fmt: skip


def _pocus_keep(
    path: Path,
    rows: list[dict[str, Any]],
    include_viral: bool,
    include_uncertain: bool,
    folds: Sequence[int] | None,
) -> list[dict[str, Any]]:
    unknown = sorted({r["label"] for r in rows} - set(POCUS_CLASSES))
    if unknown:
        notify("%s: skipped rows with labels %s (not in %s)", path, unknown, list(POCUS_CLASSES))
    keep = [k for k in POCUS_CLASSES if include_viral or k != "viral"]
    return [
        r
        for r in rows
        if r["label"] in keep
        and (include_uncertain or r["label_uncertain"] == 0)
        and (folds is None or r["fold"] in folds)
    ]


def _pocus_fields(row: dict[str, Any]) -> dict[str, Any]:
    sample_id = row["sample_id"]
    return {
        "label": POCUS_CLASSES[row["label"]],
        "label_name": row["label"],
        "organ": "lung",
        "patient_id": f"pocus:{row['patient_id']}",
        "video_id": f"pocus:{sample_id}",
        "meta": {"fold": row["fold"], "probe": row["probe"], "sample_id": sample_id},
    }


def _pocus_frames(
    root: Path, include_viral: bool, include_uncertain: bool, folds: Sequence[int] | None
) -> list[dict[str, Any]]:
    path = root / "frames.csv"
    rows = read_table(path, _POCUS_COLS | {"frame_file": str, "frame_index": int})
    return _pocus_keep(path, rows, include_viral, include_uncertain, folds)


def pocus_items(
    root: str | Path,
    what: str = "frames",
    include_viral: bool = False,
    include_uncertain: bool = False,
    folds: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Items of the POCUS lung set (``shared/data/pocus_lung``: samples.csv, frames.csv).

    Args:
        root: the pocus_lung folder.
        what: ``"frames"`` (2,201 extracted JPEG frames), ``"stills"`` (31 still images) or
            ``"clips"`` (124 raw videos, one item each, ``frame_idx = -1``).
        include_viral: keep the viral class (label 3); USCL drops it.
        include_uncertain: keep the one clip with ``label_uncertain = 1``.
        folds: keep only these patient-grouped folds (0-4).

    Returns:
        Items with ``patient_id = "pocus:<id>"`` and ``video_id = "pocus:<sample_id>"``; frame
        items carry the frame index in the source clip. A CSV row with a bad value (or an
        unknown label) is skipped with a warning naming the file, line and column.
        Ref: USCL §B.8 (class map).
    """
    root = Path(root)
    if what == "frames":
        return [
            make_item(
                root / r["frame_file"],
                dataset="pocus",
                frame_idx=r["frame_index"],
                **_pocus_fields(r),
            )  # fmt: skip
            for r in _pocus_frames(root, include_viral, include_uncertain, folds)
        ]
    if what not in ("stills", "clips"):
        raise ValueError(f"pocus_items: unknown what={what!r}; valid: frames, stills, clips")
    path = root / "samples.csv"
    extra = {"n_frames": int, "fps": float} if what == "clips" else {}
    kind = "image" if what == "stills" else "video"
    table = read_table(path, _POCUS_COLS | {"file": str, "kind": str})
    rows = [r for r in table if r["kind"] == kind]
    items = []
    for r in _pocus_keep(path, rows, include_viral, include_uncertain, folds):
        item = make_item(root / r["file"], dataset="pocus", **_pocus_fields(r))
        if what == "clips":
            try:
                item["meta"].update({k: t(r[k]) for k, t in extra.items()})
            except ValueError:
                notify("%s: skipped line %d: bad n_frames/fps %r/%r",
                       path, r["_line"], r["n_frames"], r["fps"])  # fmt: skip
                continue
        items.append(item)
    return items


_HC18_COLS = {"image": str, "mask": str, "subject_id": str, "fold": int, "pixel_size_mm": float,
              "head_circumference_mm": float}  # fmt: skip


def hc18_items(root: str | Path, folds: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Items of the HC18 subset (``shared/data/hc18_subset/labels.csv``).

    Returns:
        One item per image with its filled head mask, ``spacing`` = pixel size (mm) and
        ``meta["hc_mm"]`` = the official head circumference; ``patient_id = "hc18:<subject>"``.
        A row with a bad value (e.g. a non-numeric ``pixel_size_mm``) is skipped with a warning
        naming the file, line and column; the other rows are kept.
    """
    root = Path(root)
    rows = read_table(root / "labels.csv", _HC18_COLS)
    return [
        make_item(
            root / r["image"],
            dataset="hc18",
            organ="fetus",
            mask_paths=[root / r["mask"]],
            patient_id=f"hc18:{r['subject_id']}",
            video_id=f"hc18:{Path(r['image']).stem}",
            spacing=r["pixel_size_mm"],
            meta={"fold": r["fold"], "hc_mm": r["head_circumference_mm"]},
        )
        for r in rows
        if folds is None or r["fold"] in folds
    ]


def pocus_videos(
    root: str | Path,
    source: str = "frames",
    include_viral: bool = False,
    include_uncertain: bool = False,
    folds: Sequence[int] | None = None,
    img_size: int | None = None,
    max_frames: int | None = None,
) -> ClipCollection:
    """The POCUS clips as a video collection (USCL's pretraining / SPG input).

    Args:
        root: the pocus_lung folder.
        source: ``"frames"`` (the extracted 3 Hz frames, at most 30 per clip: USCL's folder-of-
            frames format, fast) or ``"raw"`` (decode every frame of the video files).
        include_viral, include_uncertain, folds: as in :func:`pocus_items`.
        img_size, max_frames: as in :class:`ClipCollection`.

    Returns:
        A :class:`ClipCollection` of 123 clips by default (124 with the uncertain one; 118 without
        viral). Labels: covid=0, pneumonia=1, regular=2 (viral=3). Ref: USCL §B.4, §B.8.
    """
    clips = pocus_items(root, "clips", include_viral, include_uncertain, folds)
    if source == "frames":
        by_clip: dict[str, list[dict[str, Any]]] = {}
        for r in _pocus_frames(Path(root), True, True, None):
            by_clip.setdefault(r["sample_id"], []).append(r)
        for c in clips:
            g = sorted(by_clip.get(c["meta"]["sample_id"], []), key=lambda r: r["frame_index"])
            c["meta"]["frame_paths"] = [str(Path(root) / r["frame_file"]) for r in g]
            c["meta"]["frame_indices"] = [r["frame_index"] for r in g]
    elif source != "raw":
        raise ValueError(f"pocus_videos: unknown source {source!r}; valid: 'frames', 'raw'")
    return ClipCollection(clips, img_size=img_size, max_frames=max_frames)


def pocus_frame_array(
    data_root: str | Path, img_size: int, max_frames_per_clip: int | None = None
) -> tuple[np.ndarray, Path]:
    """Every extracted POCUS frame under ``data_root`` as one unlabelled ``(N, S, S)`` uint8
    array (pretraining input of the image methods), and the layout folder.

    Args:
        data_root: a POCUS layout or a folder holding one (:func:`pocus_root`).
        img_size: square frame side ``S``.
        max_frames_per_clip: keep at most this many frames of each clip, evenly spaced over it
            (``None``: all 2,201 frames of the shipped set).

    Raises:
        FileNotFoundError: no POCUS layout at ``data_root`` (the path is named).
    """
    root = pocus_root(data_root)
    if root is None:
        raise ValueError("pocus_frame_array needs a data_root (None is the synthetic default)")
    coll = pocus_videos(root, img_size=img_size, max_frames=max_frames_per_clip)
    frames = [coll.video(i)["frames"] for i in range(len(coll))]
    return np.concatenate(frames).astype(np.uint8), root


class FrameArray(Dataset):
    """Unlabelled ``(N, S, S)`` uint8 frames (:func:`pocus_frame_array`) as schema records.

    Item ``i``: ``image`` (1, S, S) float in [0, 1], an all-background ``mask``, ``label``
    ``UNLABELLED``, ``dataset``, empty ``patient_id`` / ``video_id``, ``spacing`` 0 (unknown)
    and ``index`` ``i`` (the pretraining pools of TinyUSFM and SPAD-ViT both read these).

    Raises:
        ValueError: ``frames`` is not an ``(N, S, S)`` uint8 array (its shape and dtype named).
    """

    def __init__(self, frames: np.ndarray, dataset: str = "pocus") -> None:
        if frames.ndim != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"FrameArray needs (N, S, S) uint8 frames, got {frames.shape} {frames.dtype}"
            )
        self.frames, self.dataset = frames, dataset

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> dict[str, Any]:
        x = torch.from_numpy(self.frames[i].astype(np.float32) / 255.0)[None]
        return {"image": x, "mask": torch.zeros(x.shape[1:], dtype=torch.int64),
                "label": UNLABELLED, "dataset": self.dataset, "patient_id": "", "video_id": "",
                "spacing": 0.0, "index": i}  # fmt: skip


def pocus_root(data_root: str | Path | None) -> Path | None:
    """The POCUS layout (a folder with ``samples.csv``) at or directly under ``data_root``.

    Returns:
        ``None`` when ``data_root`` is ``None`` (the synthetic default), else the layout folder.

    Raises:
        FileNotFoundError: ``data_root`` is given but holds no POCUS layout (the path is named),
            so a run pointed at the wrong folder never falls back to synthetic data silently.
    """
    if data_root is None:
        return None
    for cand in (Path(data_root), Path(data_root) / "pocus_lung"):
        if (cand / "samples.csv").is_file():
            return cand
    raise FileNotFoundError(
        f"data_root {data_root} holds no POCUS layout: expected samples.csv there or in "
        f"{Path(data_root) / 'pocus_lung'}"
    )

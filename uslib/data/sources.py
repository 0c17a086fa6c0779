"""Real-data sources: the POCUS lung and HC18 layouts, plus the item and record API re-exported.

Each source reads a local root and lists *items* (``uslib.data.items``: where the pixels are,
never the pixels), which load lazily into records (``uslib.data.records``). Layouts here: POCUS
lung (``shared/data/pocus_lung``: samples.csv, frames.csv) and HC18 (``shared/data/hc18_subset``:
labels.csv). Generic layouts (class folders, image + mask pairs, folders of clips or DICOM files)
are in :mod:`uslib.data.items`; :func:`load_record`, :class:`RecordDataset` and
:class:`ClipCollection` in :mod:`uslib.data.records`. All of them stay importable from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

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

__all__ = [
    "DICOM_EXTS",
    "IMAGE_EXTS",
    "POCUS_CLASSES",
    "UNLABELLED",
    "VIDEO_EXTS",
    "ClipCollection",
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
    "read_video_frame",
]

POCUS_CLASSES: dict[str, int] = {"covid": 0, "pneumonia": 1, "regular": 2, "viral": 3}
"""USCL's POCUS class map (covid=0, pneumonia=1, regular=2; Ref: USCL §B.8); viral (opt-in) = 3."""


def _pocus_keep(
    df: pd.DataFrame, include_viral: bool, include_uncertain: bool, folds: Sequence[int] | None
) -> pd.DataFrame:
    keep = df["label"].isin([k for k in POCUS_CLASSES if include_viral or k != "viral"])
    if not include_uncertain:
        keep &= df["label_uncertain"] == 0
    if folds is not None:
        keep &= df["fold"].isin(list(folds))
    return df[keep]


def _pocus_fields(row: Any, sample_id: str) -> dict[str, Any]:
    return {
        "label": POCUS_CLASSES[row.label],
        "label_name": row.label,
        "organ": "lung",
        "patient_id": f"pocus:{row.patient_id}",
        "video_id": f"pocus:{sample_id}",
        "meta": {"fold": int(row.fold), "probe": row.probe, "sample_id": sample_id},
    }


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
        items carry the frame index in the source clip. Ref: USCL §B.8 (class map).
    """
    root = Path(root)
    if what == "frames":
        df = _pocus_keep(pd.read_csv(root / "frames.csv"), include_viral, include_uncertain, folds)
        return [
            make_item(
                root / r.frame_file,
                dataset="pocus",
                frame_idx=int(r.frame_index),
                **_pocus_fields(r, r.sample_id),
            )
            for r in df.itertuples()
        ]
    if what not in ("stills", "clips"):
        raise ValueError(f"pocus_items: unknown what={what!r}; valid: frames, stills, clips")
    df = pd.read_csv(root / "samples.csv")
    df = _pocus_keep(
        df[df["kind"] == ("image" if what == "stills" else "video")],
        include_viral,
        include_uncertain,
        folds,
    )
    items = []
    for r in df.itertuples():
        item = make_item(root / r.file, dataset="pocus", **_pocus_fields(r, r.sample_id))
        if what == "clips":
            item["meta"].update(n_frames=int(r.n_frames), fps=float(r.fps))
        items.append(item)
    return items


def hc18_items(root: str | Path, folds: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Items of the HC18 subset (``shared/data/hc18_subset/labels.csv``).

    Returns:
        One item per image with its filled head mask, ``spacing`` = pixel size (mm) and
        ``meta["hc_mm"]`` = the official head circumference; ``patient_id = "hc18:<subject>"``.
    """
    root = Path(root)
    df = pd.read_csv(root / "labels.csv")
    if folds is not None:
        df = df[df["fold"].isin(list(folds))]
    return [
        make_item(
            root / r.image,
            dataset="hc18",
            organ="fetus",
            mask_paths=[root / r.mask],
            patient_id=f"hc18:{r.subject_id}",
            video_id=f"hc18:{Path(r.image).stem}",
            spacing=float(r.pixel_size_mm),
            meta={"fold": int(r.fold), "hc_mm": float(r.head_circumference_mm)},
        )
        for r in df.itertuples()
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
        frames = pd.read_csv(Path(root) / "frames.csv").sort_values(["sample_id", "frame_index"])
        by_clip = {sid: g for sid, g in frames.groupby("sample_id", sort=False)}
        for c in clips:
            g = by_clip[c["meta"]["sample_id"]]
            c["meta"]["frame_paths"] = [str(Path(root) / f) for f in g["frame_file"]]
            c["meta"]["frame_indices"] = [int(i) for i in g["frame_index"]]
    elif source != "raw":
        raise ValueError(f"pocus_videos: unknown source {source!r}; valid: 'frames', 'raw'")
    return ClipCollection(clips, img_size=img_size, max_frames=max_frames)


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

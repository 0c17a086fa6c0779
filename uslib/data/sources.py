"""Real-data sources: each reads a local root and lists *items*, which load lazily into records.

An **item** is a small JSON-able dict that says where the pixels are, never the pixels themselves
(the manifest stores items): ``path``, ``kind`` (image | video | dicom), ``mask_paths`` (a list,
merged by logical OR), ``label``, ``label_name``, ``dataset``, ``organ``, ``patient_id``,
``video_id``, ``frame_idx`` (frame of a clip, -1 for a still), ``spacing`` (mm/px) and
``meta``. Optional keys added by the manifest: ``roi`` (fan box) and ``cache_path`` (resized
image cache).

:func:`load_record` turns an item into a record of the common schema (``uslib/data/schema.py``);
:class:`RecordDataset` does it lazily for a torch DataLoader; :class:`ClipCollection` serves whole
clips (``video(i)``, the interface of ``uslib.data.video``) for USCL's sample-pair generation.

Layouts: class folders (``<root>/<class>/*.png``); image + mask pairs (BUSI's ``<class>/<class>
(n).png`` + ``<class> (n)_mask.png`` [+ ``_mask_1`` ...], or ``images/`` + ``masks/``); POCUS lung
(``shared/data/pocus_lung``); HC18 (``shared/data/hc18_subset``); folders of clips; DICOM files.
Stills without a patient id get their own ``video_id`` (a still is a one-frame clip), so grouped
splits never lump them together.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

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
from uslib.data.schema import UNLABELLED

POCUS_CLASSES: dict[str, int] = {"covid": 0, "pneumonia": 1, "regular": 2, "viral": 3}
"""USCL's POCUS class map (covid=0, pneumonia=1, regular=2; Ref: USCL §B.8); viral (opt-in) = 3."""

_MASK_RE = re.compile(r"^(?P<stem>.+?)_mask(?:_\d+)?$", re.IGNORECASE)


def make_item(path: str | Path, *, dataset: str, **fields: Any) -> dict[str, Any]:
    """Build an item with defaults for every missing field (kind is guessed from the path)."""
    item: dict[str, Any] = {
        "path": str(path),
        "kind": media_kind(path),
        "mask_paths": [],
        "label": UNLABELLED,
        "label_name": "",
        "dataset": dataset,
        "organ": "",
        "patient_id": "",
        "video_id": "",
        "frame_idx": -1,
        "spacing": 0.0,
        "meta": {},
    }
    unknown = set(fields) - set(item) - {"roi", "cache_path"}
    if unknown:
        raise ValueError(f"make_item: unknown fields {sorted(unknown)}")
    item.update(fields)
    item["mask_paths"] = [str(p) for p in item["mask_paths"]]
    return item


def _files(folder: Path, exts: frozenset[str]) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in exts)


def _class_dirs(root: Path, classes: Sequence[str] | None) -> list[str]:
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        return names
    missing = set(classes) - set(names)
    if missing:
        raise FileNotFoundError(f"{root}: class folders {sorted(missing)} not found; have {names}")
    return list(classes)


def _mask_index(files: Sequence[Path]) -> dict[str, list[Path]]:
    """``"<folder>/<image stem>"`` -> its mask files (``<stem>_mask``, ``<stem>_mask_1``, ...)."""
    out: dict[str, list[Path]] = {}
    for m in files:
        hit = _MASK_RE.match(m.stem)
        if hit:
            out.setdefault(str(m.parent / hit.group("stem")), []).append(m)
    return out


def class_folder_items(
    root: str | Path,
    dataset: str | None = None,
    organ: str = "",
    classes: Sequence[str] | None = None,
    with_masks: bool = False,
) -> list[dict[str, Any]]:
    """Items of a ``<root>/<class>/**/*.png`` tree; mask files (``*_mask*``) are not items.

    Args:
        root: folder with one sub-folder per class.
        dataset: dataset name (default: the folder name).
        organ: organ of every item.
        classes: class folder names in label order (default: sorted folder names).
        with_masks: attach each image's ``<stem>_mask*`` files from its folder (BUSI layout).

    Returns:
        One item per image; ``label`` = index in ``classes``.
    """
    root = Path(root)
    dataset = dataset or root.name
    items = []
    for label, name in enumerate(_class_dirs(root, classes)):
        files = _files(root / name, IMAGE_EXTS)
        masks = _mask_index(files) if with_masks else {}
        for p in files:
            if _MASK_RE.match(p.stem):
                continue
            vid = f"{dataset}:{p.relative_to(root).with_suffix('').as_posix()}"
            mp = masks.get(str(p.with_suffix("")), [])
            items.append(make_item(p, dataset=dataset, label=label, label_name=name, organ=organ,
                                   video_id=vid, mask_paths=mp))  # fmt: skip
    return items


def paired_items(
    root: str | Path,
    dataset: str | None = None,
    organ: str = "",
    classes: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Image + mask pairs: ``images/`` + ``masks/`` folders, or BUSI-style class folders.

    BUSI: ``<class>/<class> (n).png`` with ``<class> (n)_mask.png`` and optional extra
    ``_mask_1``, ``_mask_2`` files; all masks of an image are merged by logical OR at load time.
    ``images/`` + ``masks/``: a mask matches an image by stem, optionally with a ``_mask`` /
    ``_Mask`` suffix. Images without a mask file are kept with ``mask_paths=[]``.

    Returns:
        One item per image (labels from class folders; ``UNLABELLED`` for ``images/``).
    """
    root = Path(root)
    dataset = dataset or root.name
    if not ((root / "images").is_dir() and (root / "masks").is_dir()):
        return class_folder_items(root, dataset, organ, classes, with_masks=True)
    masks: dict[str, list[Path]] = {}
    for m in _files(root / "masks", IMAGE_EXTS):
        hit = _MASK_RE.match(m.stem)
        masks.setdefault(hit.group("stem") if hit else m.stem, []).append(m)
    return [
        make_item(
            p,
            dataset=dataset,
            organ=organ,
            mask_paths=masks.get(p.stem, []),
            video_id=f"{dataset}:{p.stem}",
        )  # fmt: skip
        for p in _files(root / "images", IMAGE_EXTS)
    ]


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


def media_file_items(
    root: str | Path, dataset: str | None = None, organ: str = "", kinds: Sequence[str] = ("video",)
) -> list[dict[str, Any]]:
    """One item per clip or DICOM file found under ``root`` (recursive).

    Args:
        kinds: ``"video"`` and/or ``"dicom"``.

    Returns:
        Items with ``frame_idx = -1`` (frame 0 is shown when loaded as a record) and
        ``video_id`` = the relative path.
    """
    root = Path(root)
    dataset = dataset or root.name
    exts = (VIDEO_EXTS if "video" in kinds else frozenset()) | (
        DICOM_EXTS if "dicom" in kinds else frozenset()
    )
    return [
        make_item(
            p, dataset=dataset, organ=organ, video_id=f"{dataset}:{p.relative_to(root).as_posix()}"
        )
        for p in _files(root, exts)
    ]


def load_array(item: dict[str, Any]) -> np.ndarray:
    """Decode the pixels of an item: float32 (H, W) in [0, 1] (frame ``frame_idx`` of a clip)."""
    kind, idx = item.get("kind", "image"), max(int(item.get("frame_idx", -1)), 0)
    if kind == "image":
        return read_image(item["path"])[0]
    if kind == "video":
        return read_video_frame(item["path"], idx).astype(np.float32) / 255.0
    frames, _ = read_dicom(item["path"])
    if idx >= len(frames):
        raise MediaError(item["path"], "frame out of range", f"index {idx}, {len(frames)} frames")
    return frames[idx]


def _scalar_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Keep str/int/float/bool values; JSON-encode anything else (collate-friendly)."""
    return {
        k: v if isinstance(v, str | int | float | bool) else json.dumps(v) for k, v in meta.items()
    }


def _crop(arr: np.ndarray, roi: Sequence[int] | None) -> np.ndarray:
    return arr if roi is None else arr[roi[0] : roi[1], roi[2] : roi[3]]


def load_record(
    item: dict[str, Any], img_size: int | None = None, resize: str = "pad"
) -> dict[str, Any]:
    """Load an item into a record of the common schema.

    The image is cropped to ``item["roi"]`` (the manifest's fan box) when present. With an
    ``img_size``, the manifest's resized cache (``item["cache_path"]``, already cropped and
    fitted) is read instead of the source when it exists. Masks are always read from the source
    and get the same crop and resize (nearest neighbour).

    Args:
        item: an item (see module docstring).
        img_size: output side (square, see ``resize``); ``None`` keeps the (cropped) native size.
        resize: ``"pad"`` (keep aspect, black padding) or ``"stretch"``.

    Returns:
        Record: ``image`` float32 (1, H, W) in [0, 1], ``mask`` int64 (H, W), ``has_mask``, label,
        ids, ``spacing`` (mm/px of the *output* pixels; 0.0 unknown) and ``meta`` (scalars:
        ``path``, ``label_name``, geometry ``scale``/``pad_top``/``pad_left``, source extras).
    """
    roi, cache = item.get("roi"), item.get("cache_path") or ""
    if img_size is not None and roi is not None and cache and Path(cache).is_file():
        img, shape = read_image(cache)[0], (roi[1] - roi[0], roi[3] - roi[2])
    else:
        img = _crop(load_array(item), roi)
        shape = img.shape
    has_mask = bool(item.get("mask_paths"))
    mask = _crop(read_mask(item["mask_paths"]), roi) if has_mask else np.zeros(shape, np.int64)
    if mask.shape != tuple(shape):
        raise MediaError(item["path"], "mask size differs", f"{mask.shape} vs {tuple(shape)}")
    scale, pad_top, pad_left = 1.0, 0, 0
    if img_size is not None:
        g = fit_geometry(shape[0], shape[1], img_size, resize)
        scale, pad_top, pad_left = g["scale_x"], int(g["pad_top"]), int(g["pad_left"])
        img = img if img.shape == (img_size, img_size) else fit_image(img, img_size, resize)
        mask = fit_image(mask, img_size, resize, nearest=True)
    meta = {
        "path": item["path"],
        "label_name": item.get("label_name", ""),
        "scale": scale,
        "pad_top": pad_top,
        "pad_left": pad_left,
        **_scalar_meta(item.get("meta", {})),
    }
    return {
        "image": torch.from_numpy(np.ascontiguousarray(img, np.float32))[None],
        "mask": torch.from_numpy(np.ascontiguousarray(mask, np.int64)),
        "has_mask": has_mask,
        "label": int(item.get("label", UNLABELLED)),
        "dataset": item["dataset"],
        "organ": item.get("organ", ""),
        "patient_id": item.get("patient_id", ""),
        "video_id": item.get("video_id", ""),
        "frame_idx": int(item.get("frame_idx", -1)),
        "spacing": float(item.get("spacing", 0.0) or 0.0) / scale,
        "meta": meta,
    }


class RecordDataset(Dataset):
    """Torch dataset over items; each record is decoded when indexed (nothing held in memory).

    ``meta`` dicts are made uniform over the whole dataset (missing numeric keys -> NaN, missing
    text -> "") so that ``default_collate`` can batch records of mixed sources.

    Args:
        items: items (from the functions above or :func:`uslib.data.manifest.manifest_items`).
        img_size: square output size (``None``: native size, batch size 1 only).
        resize: ``"pad"`` or ``"stretch"`` (see :func:`load_record`).
        transform: optional ``record -> record`` applied after loading.
    """

    def __init__(
        self,
        items: Sequence[dict[str, Any]],
        img_size: int | None = None,
        resize: str = "pad",
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.items = list(items)
        self.img_size, self.resize, self.transform = img_size, resize, transform
        self._meta_defaults: dict[str, Any] = {}
        for it in self.items:
            for k, v in _scalar_meta(it.get("meta", {})).items():
                self._meta_defaults.setdefault(k, "" if isinstance(v, str) else float("nan"))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = load_record(self.items[i], self.img_size, self.resize)
        rec["meta"] = {**self._meta_defaults, **rec["meta"]}
        return self.transform(rec) if self.transform is not None else rec

    @property
    def labels(self) -> np.ndarray:
        """Labels of all items, (N,) int64, without decoding any pixels."""
        return np.array([int(it.get("label", UNLABELLED)) for it in self.items], np.int64)

    @property
    def groups(self) -> np.ndarray:
        """Split groups of all items (patient, else video, else path), (N,) object."""
        return np.array(
            [it.get("patient_id") or it.get("video_id") or it["path"] for it in self.items],
            dtype=object,
        )

    def subset(self, indices: Sequence[int]) -> RecordDataset:
        """A new dataset over the selected items (same size, resize and transform)."""
        return RecordDataset(
            [self.items[i] for i in indices], self.img_size, self.resize, self.transform
        )


class ClipCollection:
    """Whole clips, decoded on demand: ``len(coll)`` and ``coll.video(i)`` (USCL's unit is a video).

    Each clip is an item of kind ``video`` (a video file) or an item whose ``meta["frame_paths"]``
    lists pre-extracted frame files (USCL's own on-disk format, one folder per video).

    Args:
        clips: clip items.
        img_size: square frame size (``None``: native).
        resize: ``"pad"`` or ``"stretch"``.
        max_frames: keep at most this many frames, evenly spaced over the clip (``None``: all).
    """

    def __init__(
        self,
        clips: Sequence[dict[str, Any]],
        img_size: int | None = None,
        resize: str = "pad",
        max_frames: int | None = None,
    ) -> None:
        self.clips = list(clips)
        self.img_size, self.resize, self.max_frames = img_size, resize, max_frames

    def __len__(self) -> int:
        return len(self.clips)

    def _frames(self, clip: dict[str, Any]) -> tuple[list[np.ndarray], list[int]]:
        paths = clip.get("meta", {}).get("frame_paths")
        if paths:
            index = [int(i) for i in clip["meta"]["frame_indices"]]
            frames = [(read_image(p)[0] * 255.0 + 0.5).astype(np.uint8) for p in paths]
        else:
            frames = list(iter_video_frames(clip["path"]))
            index = list(range(len(frames)))
        if self.max_frames is not None and len(frames) > self.max_frames:
            keep = np.linspace(0, len(frames) - 1, self.max_frames).round().astype(int)
            frames, index = [frames[k] for k in keep], [index[k] for k in keep]
        return frames, index

    def video(self, i: int) -> dict[str, Any]:
        """Clip ``i``.

        Returns:
            ``frames`` uint8 (T, H, W), ``frame_indices`` (T,) source frame numbers, ``label``,
            ``label_name``, ``video_id``, ``patient_id``, ``dataset``, ``organ``, ``meta``.
        """
        clip = self.clips[i]
        frames, index = self._frames(clip)
        if self.img_size is not None:
            frames = [
                (
                    fit_image(f.astype(np.float32) / 255.0, self.img_size, self.resize) * 255.0
                    + 0.5
                ).astype(np.uint8)
                for f in frames
            ]
        meta = {k: v for k, v in clip.get("meta", {}).items() if k != "frame_paths"}
        return {
            "frames": np.stack(frames),
            "frame_indices": np.asarray(index, np.int64),
            "label": int(clip.get("label", UNLABELLED)),
            "label_name": clip.get("label_name", ""),
            "video_id": clip["video_id"],
            "patient_id": clip.get("patient_id", ""),
            "dataset": clip["dataset"],
            "organ": clip.get("organ", ""),
            "meta": meta,
        }

    @property
    def labels(self) -> np.ndarray:
        """Clip labels, (N,) int64."""
        return np.array([int(c.get("label", UNLABELLED)) for c in self.clips], np.int64)

    @property
    def groups(self) -> np.ndarray:
        """Split group of each clip (patient, else video id), (N,) object."""
        return np.array([c.get("patient_id") or c["video_id"] for c in self.clips], dtype=object)

    def subset(self, indices: Sequence[int]) -> ClipCollection:
        """A collection of the selected clips (same frame settings)."""
        return ClipCollection(
            [self.clips[i] for i in indices], self.img_size, self.resize, self.max_frames
        )


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

"""Lazy loading of items into records: one frame (:class:`RecordDataset`) or a whole clip.

:func:`load_record` turns an item (``uslib.data.items``) into a record of the common schema
(``uslib/data/schema.py``); :class:`RecordDataset` does it lazily for a torch DataLoader;
:class:`ClipCollection` serves whole clips (``video(i)``, the interface of ``uslib.data.video``)
for USCL's sample-pair generation. Nothing is decoded before it is indexed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from uslib.data.geometry import fit_geometry, fit_image
from uslib.data.media import (
    MediaError,
    iter_video_frames,
    read_dicom,
    read_image,
    read_mask,
    read_video_frame,
)
from uslib.data.schema import UNLABELLED


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
        items: items (from ``uslib.data.items``/``uslib.data.sources`` or
            :meth:`uslib.data.manifest.Manifest.items`).
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

"""Lazy loading of items into records: one frame (:class:`RecordDataset`) or a whole clip.

:func:`load_record` turns an item (``uslib.data.items``) into a record of the common schema
(``uslib/data/schema.py``); :class:`RecordDataset` does it lazily for a torch DataLoader;
:class:`ClipCollection` serves whole clips (``video(i)``, the interface of ``uslib.data.video``)
for USCL's sample-pair generation. Nothing is decoded before it is indexed. Every path applies
the shared rule set of :mod:`uslib.data.validation` (non-finite pixels, EXIF, mask values, size).

A bad record at training time does not end the epoch: :class:`RecordDataset` (``on_error="skip"``)
logs it, records it (``rejects``, ``reject_count``, a CSV in ``reject_dir``) and serves the next
good item in its place (same group first), deterministically and without any RNG, so batches keep
their size and an exact resume sees the same stream. Past ``max_reject_share`` it raises
:class:`TooManyRejectsError` naming the first files.
"""

from __future__ import annotations

import bisect
import csv
import json
from collections.abc import Callable, Iterator, Sequence
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
from uslib.data.validation import DEFAULT_RULES, Rules, check_size, logger

REJECT_FILE = "data_rejects.csv"
"""Name of the reject list a :class:`RecordDataset` appends to in its ``reject_dir``."""
REJECT_FIELDS = ("path", "frame_idx", "dataset", "reason", "detail")


class TooManyRejectsError(RuntimeError):
    """More records were rejected than ``max_reject_share`` allows (the first files are named)."""


def load_array(item: dict[str, Any], rules: Rules = DEFAULT_RULES) -> np.ndarray:
    """Decode the pixels of an item: float32 (H, W) in [0, 1] (frame ``frame_idx`` of a clip).

    Raises:
        MediaError: the file breaks a rule (unreadable, non-finite, smaller than
            ``rules.min_side``, ...); the message names it.
    """
    kind, idx = item.get("kind", "image"), max(int(item.get("frame_idx", -1)), 0)
    if kind == "image":
        arr = read_image(item["path"], rules=rules)[0]
    elif kind == "video":
        arr = read_video_frame(item["path"], idx).astype(np.float32) / 255.0
    else:
        frames, _ = read_dicom(item["path"], rules)
        if idx >= len(frames):
            raise MediaError(
                item["path"], "frame out of range", f"index {idx}, {len(frames)} frames"
            )
        arr = frames[idx]
    check_size(arr.shape[0], arr.shape[1], item["path"], rules)
    return arr


def _scalar_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Keep str/int/float/bool values; JSON-encode anything else (collate-friendly)."""
    return {
        k: v if isinstance(v, str | int | float | bool) else json.dumps(v) for k, v in meta.items()
    }


def _crop(arr: np.ndarray, roi: Sequence[int] | None) -> np.ndarray:
    return arr if roi is None else arr[roi[0] : roi[1], roi[2] : roi[3]]


def load_record(
    item: dict[str, Any],
    img_size: int | None = None,
    resize: str = "pad",
    rules: Rules = DEFAULT_RULES,
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
        rules: the shared validation rules (:mod:`uslib.data.validation`).

    Returns:
        Record: ``image`` float32 (1, H, W) in [0, 1], ``mask`` int64 (H, W), ``has_mask``, label,
        ids, ``spacing`` (mm/px of the *output* pixels; 0.0 unknown) and ``meta`` (scalars:
        ``path``, ``label_name``, geometry ``scale``/``pad_top``/``pad_left``, source extras).
    """
    roi, cache = item.get("roi"), item.get("cache_path") or ""
    if img_size is not None and roi is not None and cache and Path(cache).is_file():
        img, shape = read_image(cache)[0], (roi[1] - roi[0], roi[3] - roi[2])
    else:
        img = _crop(load_array(item, rules), roi)
        shape = img.shape
    has_mask = bool(item.get("mask_paths"))
    mask = (
        _crop(read_mask(item["mask_paths"], rules=rules), roi)
        if has_mask
        else np.zeros(shape, np.int64)
    )
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


def _item_key(item: dict[str, Any]) -> tuple[str, int]:
    return str(item["path"]), int(item.get("frame_idx", -1))


class RecordDataset(Dataset):
    """Torch dataset over items; each record is decoded when indexed (nothing held in memory).

    ``meta`` dicts are made uniform over the whole dataset (missing numeric keys -> NaN, missing
    text -> "") so that ``default_collate`` can batch records of mixed sources.

    Bad records (``on_error="skip"``, the default): an item whose file breaks a rule
    (``MediaError``) is logged on ``uslib.data`` once, appended to ``rejects`` (and to
    ``<reject_dir>/data_rejects.csv``), and index ``i`` serves the next good item instead: first
    the next one of the same group (patient, else video), so grouped folds stay disjoint, else the
    next one in the list (cyclic). A substitute rather than a dropped item because the default
    collate cannot drop items and a smaller batch would change shapes and the sampler's stream;
    the choice depends only on which files are bad (no RNG), so an exact resume is unchanged.
    Once more than ``max_reject_share`` of the items are bad it raises
    :class:`TooManyRejectsError` naming the first files. ``on_error="raise"`` raises at once.

    Args:
        items: items (from ``uslib.data.items``/``uslib.data.sources`` or
            :meth:`uslib.data.manifest.Manifest.items`).
        img_size: square output size (``None``: native size, batch size 1 only).
        resize: ``"pad"`` or ``"stretch"`` (see :func:`load_record`).
        transform: optional ``record -> record`` applied after loading.
        rules: the shared validation rules (:mod:`uslib.data.validation`).
        on_error: ``"skip"`` (log, record, substitute) or ``"raise"``.
        max_reject_share: largest tolerated share of rejected items (``"skip"`` only).
        reject_dir: a run folder for the reject list (shared by DataLoader workers); ``None``
            keeps it in memory only.
    """

    def __init__(
        self,
        items: Sequence[dict[str, Any]],
        img_size: int | None = None,
        resize: str = "pad",
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        *,
        rules: Rules = DEFAULT_RULES,
        on_error: str = "skip",
        max_reject_share: float = 0.1,
        reject_dir: str | Path | None = None,
    ) -> None:
        if on_error not in ("skip", "raise"):
            raise ValueError(f"RecordDataset: on_error={on_error!r}; valid: 'skip', 'raise'")
        self.items = list(items)
        self.img_size, self.resize, self.transform = img_size, resize, transform
        self.rules, self.on_error, self.max_reject_share = rules, on_error, max_reject_share
        self.reject_file = Path(reject_dir) / REJECT_FILE if reject_dir is not None else None
        if self.reject_file is not None and not self.reject_file.is_file():
            self.reject_file.parent.mkdir(parents=True, exist_ok=True)
            with self.reject_file.open("w", newline="") as f:
                csv.writer(f).writerow(REJECT_FIELDS)
        self.rejects: list[dict[str, Any]] = []
        self._bad: set[int] = set()
        self._meta_defaults: dict[str, Any] = {}
        for it in self.items:
            for k, v in _scalar_meta(it.get("meta", {})).items():
                self._meta_defaults.setdefault(k, "" if isinstance(v, str) else float("nan"))
        groups = self.groups
        self._members: dict[Any, list[int]] = {}
        for i, g in enumerate(groups):
            self._members.setdefault(g, []).append(i)
        self._group = list(groups)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i) % len(self.items) if int(i) < 0 else int(i)
        if self.on_error == "raise":
            rec = self._load(i)
        else:
            rec = self._try(i)
            if rec is None:
                rec = self._substitute(i)
        return self.transform(rec) if self.transform is not None else rec

    def _load(self, i: int) -> dict[str, Any]:
        rec = load_record(self.items[i], self.img_size, self.resize, self.rules)
        rec["meta"] = {**self._meta_defaults, **rec["meta"]}
        return rec

    def _try(self, i: int) -> dict[str, Any] | None:
        if i in self._bad:
            return None
        try:
            return self._load(i)
        except MediaError as err:
            self._reject(i, err)
            return None

    def _order(self, i: int) -> Iterator[int]:
        """Substitutes for ``i``: its group after it (cyclic), then every item after it."""
        members = self._members[self._group[i]]
        k = bisect.bisect_right(members, i)
        yield from (j for j in members[k:] + members[:k] if j != i)
        n = len(self.items)
        yield from ((i + d) % n for d in range(1, n))

    def _substitute(self, i: int) -> dict[str, Any]:
        for j in self._order(i):
            rec = self._try(j)
            if rec is not None:
                logger.debug("item %d (%s) served by item %d", i, self.items[i]["path"], j)
                return rec
        raise TooManyRejectsError(f"no loadable item left: {self._first_rejects()}")

    def _reject(self, i: int, err: MediaError) -> None:
        item = self.items[i]
        path, frame_idx = _item_key(item)
        row = {"path": path, "frame_idx": frame_idx, "dataset": item.get("dataset", ""),
               "reason": err.reason, "detail": str(err)}  # fmt: skip
        self._bad.add(i)
        self.rejects.append(row)
        logger.warning("skipped record %d: %s (served by the next good item)", i, err)
        if self.reject_file is not None:
            with self.reject_file.open("a", newline="") as f:
                csv.writer(f).writerow([row[k] for k in REJECT_FIELDS])
        n = self.reject_count
        if n > self.max_reject_share * len(self.items):
            raise TooManyRejectsError(
                f"{n} of {len(self.items)} records rejected ({n / len(self.items):.1%} > "
                f"max_reject_share {self.max_reject_share:.1%}); first: {self._first_rejects()}"
            )

    def _first_rejects(self, n: int = 5) -> str:
        rows = self.rejects[:n]
        more = f" ... (+{len(self.rejects) - n} more)" if len(self.rejects) > n else ""
        return "; ".join(r["detail"] for r in rows) + more

    @property
    def reject_count(self) -> int:
        """Distinct items rejected so far (read from ``reject_dir`` when given, so the rejects
        of DataLoader worker processes count too): the value for a training history."""
        if self.reject_file is None or not self.reject_file.is_file():
            return len(self._bad)
        mine = {_item_key(it) for it in self.items}
        with self.reject_file.open(newline="") as f:
            seen = {(r["path"], int(r["frame_idx"])) for r in csv.DictReader(f)}
        return max(len(seen & mine), len(self._bad))

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
        """A new dataset over the selected items (same size, resize, transform and rules)."""
        return RecordDataset(
            [self.items[i] for i in indices], self.img_size, self.resize, self.transform,
            rules=self.rules, on_error=self.on_error, max_reject_share=self.max_reject_share,
            reject_dir=self.reject_file.parent if self.reject_file is not None else None,
        )  # fmt: skip


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

"""torch ``Dataset`` wrappers over the generator, with an optional uint8 ``.npz`` disk cache.

Item i of split s is generated from ``np.random.default_rng([seed, split_code, task_code, i])``
only, so any worker, process or machine produces the same bytes. Records follow
``uslib.data.schema``. Ref: synthetic_ultrasound.md §2.1; ARCHITECTURE.md "Data flow".
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from uslib.data.synthetic.config import SyntheticConfig
from uslib.data.synthetic.tasks import TaskSpec, get_task, render_still, render_video

SPLIT_CODES: dict[str, int] = {"train": 0, "val": 1, "test": 2}
CACHE_VERSION = 1
"""Bump when the generator changes, so stale cache files are not reused."""
_COMMON_META = ("task", "class_name", "probe", "fc_mhz", "depth_mm", "atypical", "true_label")


def split_code(split: str) -> int:
    """Integer code of a split name (train 0, val 1, test 2, others a stable CRC32)."""
    return SPLIT_CODES.get(split, zlib.crc32(split.encode()) & 0x7FFFFFFF)


def _task_code(task: str) -> int:
    return zlib.crc32(task.encode()) & 0x7FFFFFFF


def item_seed(seed: int, split: str, task: str, index: int) -> list[int]:
    """Seed sequence of one item: ``[seed, split_code, task_code, index]``."""
    return [int(seed), split_code(split), _task_code(task), int(index)]


def as_synthetic_config(cfg: Any) -> SyntheticConfig:
    """``cfg`` itself, or a ``SyntheticConfig`` taking ``img_size`` from another config."""
    if cfg is None:
        return SyntheticConfig()
    if isinstance(cfg, SyntheticConfig):
        return cfg
    if hasattr(cfg, "img_size"):
        return SyntheticConfig(img_size=int(cfg.img_size))
    raise TypeError(f"expected a SyntheticConfig, got {type(cfg).__name__}")


class _Cache:
    """uint8 arrays + JSON meta in ``<dir>/<sha1>.npz``, written atomically (temp + rename)."""

    def __init__(self, cache_dir: str | os.PathLike | None, key: dict[str, Any]) -> None:
        self.dir = None if cache_dir is None else Path(cache_dir)
        self.key = key
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, index: int) -> Path | None:
        """Cache file of item ``index`` (``None`` without a cache directory)."""
        if self.dir is None:
            return None
        text = json.dumps({**self.key, "index": int(index), "v": CACHE_VERSION}, sort_keys=True)
        return self.dir / f"{hashlib.sha1(text.encode()).hexdigest()}.npz"

    def load(self, index: int) -> dict[str, Any] | None:
        """The cached item, or ``None`` when absent."""
        p = self.path(index)
        if p is None or not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                out = {k: z[k] for k in z.files if k != "meta"}
                out["meta"] = json.loads(str(z["meta"]))
        except (OSError, ValueError, KeyError) as err:
            raise OSError(f"corrupt synthetic cache file {p}: {err}; delete it") from err
        return out

    def save(self, index: int, item: dict[str, Any]) -> None:
        """Write ``item`` atomically (temp file in the same directory, then rename)."""
        p = self.path(index)
        if p is None:
            return
        arrays = {k: v for k, v in item.items() if isinstance(v, np.ndarray)}
        fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez_compressed(fh, meta=np.array(json.dumps(item["meta"])), **arrays)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _record(
    image: np.ndarray,
    mask: np.ndarray,
    label: int,
    spec: TaskSpec,
    meta: dict[str, Any],
    ids: tuple[str, str, int],
) -> dict[str, Any]:
    """A schema record (``uslib.data.schema``) from uint8 arrays."""
    keep = {k: meta[k] for k in (*_COMMON_META, *spec.meta_keys) if k in meta}
    return {
        "image": torch.from_numpy(image.astype(np.float32) / 255.0)[None],
        "mask": torch.from_numpy(mask.astype(np.int64)),
        "has_mask": True,
        "label": int(label),
        "dataset": f"synthetic_{spec.name}",
        "organ": str(meta.get("organ", spec.organ)),
        "patient_id": ids[0],
        "video_id": ids[1],
        "frame_idx": ids[2],
        "spacing": float(meta["spacing_mm"]),
        "meta": keep,
    }


def _noisy_label(label: int, n_classes: int, p: float, seq: list[int]) -> int:
    """The returned label: with probability ``p`` another class (independent stream)."""
    if p <= 0 or n_classes < 2:
        return label
    rng = np.random.default_rng([*seq, 1])
    if rng.random() >= p:
        return label
    return int((label + rng.integers(1, n_classes)) % n_classes)


class SyntheticStills(Dataset):
    """Balanced labelled stills of one synthetic task.

    Item i has class ``i % n_classes`` (any prefix is balanced) and its own seed, so
    ``patient_id`` (one "scan" per item) is unique and grouped splits work.

    Args:
        task: a key of ``TASKS``.
        split: split name; different splits draw independent items.
        n_per_class: items per class.
        cfg: generator knobs (another config with ``img_size`` is accepted).
        seed: dataset seed.
        cache_dir: optional directory for the uint8 ``.npz`` cache.
        transform: optional callable applied to each record.
        keep_in_memory: keep rendered items in memory (re-read every epoch by pretraining;
            rendering is deterministic per item, so this changes no value, only the cost).

    Shape:
        ``record["image"]``: (1, H, W) float32 in [0, 1]; ``record["mask"]``: (H, W) int64.
    """

    def __init__(
        self,
        task: str,
        split: str = "train",
        n_per_class: int = 8,
        cfg: SyntheticConfig | None = None,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        keep_in_memory: bool = False,
    ) -> None:
        self.spec = get_task(task)
        self.task, self.split, self.seed = task, split, int(seed)
        self.cfg = as_synthetic_config(cfg)
        self.n_per_class = int(n_per_class)
        self.transform = transform
        self._memory: dict[int, dict[str, Any]] | None = {} if keep_in_memory else None
        self._cache = _Cache(
            cache_dir,
            {
                "kind": "still",
                "task": task,
                "split": split,
                "seed": self.seed,
                "cfg": self.cfg.to_dict(),
            },
        )

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names (label i is element i)."""
        return self.spec.classes

    @property
    def labels(self) -> list[int]:
        """True class of every item (before label noise)."""
        return [i % len(self.spec.classes) for i in range(len(self))]

    def __len__(self) -> int:
        return self.n_per_class * len(self.spec.classes)

    def raw(self, i: int) -> dict[str, Any]:
        """``render_still`` output of item ``i`` (from the cache when present)."""
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        if self._memory is not None and i in self._memory:
            return self._memory[i]
        item = self._cache.load(i)
        if item is None:
            label = i % len(self.spec.classes)
            seq = item_seed(self.seed, self.split, self.task, i)
            item = render_still(self.task, label, seq, self.cfg)
            noisy = _noisy_label(label, len(self.spec.classes), self.cfg.label_noise, seq)
            item["meta"].update(true_label=label, label=noisy)
            self._cache.save(i, item)
        if self._memory is not None:
            self._memory[i] = item
        return item

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.raw(i)
        pid = f"syn-{self.task}-{self.split}-s{self.seed}-{i:06d}"
        rec = _record(
            item["image"],
            item["mask"],
            item["meta"]["label"],
            self.spec,
            item["meta"],
            (pid, "", -1),
        )
        return self.transform(rec) if self.transform else rec


class SyntheticVideos(Dataset):
    """Balanced labelled videos: the video-collection interface used by USCL.

    ``len(ds)`` is the number of videos; ``ds.video(i)`` returns ``dict(frames=uint8
    (T, H, W), label=int, video_id=str, patient_id=str, dataset=str, organ=str)`` plus
    ``masks`` (T, H, W) uint8, ``spacing`` and ``meta``; ``ds[i]`` is the schema record of the
    middle frame.

    Args:
        task: a key of ``TASKS``.
        split: split name.
        n_videos: number of videos (class ``i % n_classes``).
        n_frames: frames per video T.
        cfg: generator knobs (another config with ``img_size`` is accepted).
        seed: dataset seed.
        cache_dir: optional ``.npz`` cache directory.
        keep_in_memory: also keep rendered videos in memory (they are re-read every epoch).
    """

    def __init__(
        self,
        task: str,
        split: str = "train",
        n_videos: int = 12,
        n_frames: int = 8,
        cfg: SyntheticConfig | None = None,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        keep_in_memory: bool = True,
    ) -> None:
        self.spec = get_task(task)
        self.task, self.split, self.seed = task, split, int(seed)
        self.cfg = as_synthetic_config(cfg)
        self.n_videos, self.n_frames = int(n_videos), int(n_frames)
        self._memory: dict[int, dict[str, Any]] | None = {} if keep_in_memory else None
        self._cache = _Cache(
            cache_dir,
            {
                "kind": "video",
                "task": task,
                "split": split,
                "seed": self.seed,
                "n_frames": self.n_frames,
                "cfg": self.cfg.to_dict(),
            },
        )

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names (label i is element i)."""
        return self.spec.classes

    @property
    def labels(self) -> list[int]:
        """Class of every video."""
        return [i % len(self.spec.classes) for i in range(len(self))]

    def __len__(self) -> int:
        return self.n_videos

    def _raw(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"video {i} out of range for {len(self)} videos")
        if self._memory is not None and i in self._memory:
            return self._memory[i]
        item = self._cache.load(i)
        if item is None:
            label = i % len(self.spec.classes)
            seq = item_seed(self.seed, self.split, self.task, i)
            item = render_video(self.task, label, self.n_frames, seq, self.cfg)
            noisy = _noisy_label(label, len(self.spec.classes), self.cfg.label_noise, seq)
            item["meta"].update(true_label=label, label=noisy)
            self._cache.save(i, item)
        if self._memory is not None:
            self._memory[i] = item
        return item

    def video_id(self, i: int) -> str:
        """Unique id of video ``i`` (also its ``patient_id``)."""
        return f"syn-{self.task}-{self.split}-s{self.seed}-v{i:05d}"

    def video(self, i: int) -> dict[str, Any]:
        """Frames and ids of video ``i`` (see the class docstring)."""
        item = self._raw(i)
        vid = self.video_id(i)
        return {
            "frames": item["frames"],
            "masks": item["masks"],
            "label": int(item["meta"]["label"]),
            "video_id": vid,
            "patient_id": vid,
            "dataset": f"synthetic_{self.task}",
            "organ": str(item["meta"].get("organ", self.spec.organ)),
            "spacing": float(item["meta"]["spacing_mm"]),
            "meta": item["meta"],
        }

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self._raw(i)
        t = self.n_frames // 2
        vid = self.video_id(i)
        meta = item["meta"]
        if "phases" in meta:  # cardiac: the phase of this frame
            meta = {**meta, "phase": meta["phases"][t]}
        return _record(
            item["frames"][t], item["masks"][t], meta["label"], self.spec, meta, (vid, vid, t)
        )

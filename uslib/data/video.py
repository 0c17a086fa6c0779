"""USCL sample-pair generation (SPG): one item per video, two mixed positive views.

USCL (Chen et al., MICCAI 2021, arXiv 2011.13066) builds its contrastive pairs from *videos*:
three frames of one video are augmented independently and the two positives are mixups toward
the middle (anchor) frame, so the positives are alike but not identical, and, since each item
is a different video, the negatives of a batch never share a video. See ``SamplePairDataset``.

A *video collection* is anything with ``len(coll)`` (number of videos) and ``coll.video(i)``
returning ``dict(frames=uint8 ndarray (T, H, W), label=int (-1 unlabelled), video_id=str,
patient_id=str, dataset=str, organ=str)`` (``uslib.data.synthetic.SyntheticVideos`` and the POCUS
loader in ``uslib.data.sources`` implement it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from uslib.data.schema import UNLABELLED
from uslib.data.transforms import (
    META_USCL_MEAN,
    META_USCL_STD,
    Transform,
    USCLAugment,
    to_image_tensor,
)

PAIR_MODES: tuple[str, ...] = ("uscl", "meta_uscl")


class VideoCollection(Protocol):
    """What ``SamplePairDataset`` needs from a set of videos."""

    def __len__(self) -> int: ...

    def video(self, i: int) -> dict[str, Any]: ...


class VideoSubset:
    """The videos ``indices`` of a collection, itself a collection (train/val splits)."""

    def __init__(self, coll: VideoCollection, indices: Sequence[int]) -> None:
        self.coll, self.indices = coll, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def video(self, i: int) -> dict[str, Any]:
        """Video ``indices[i]`` of the parent collection."""
        return self.coll.video(self.indices[i])


class ConcatVideos:
    """Several video collections as one, in order (``__len__`` + ``video(i)``)."""

    def __init__(self, *colls: VideoCollection) -> None:
        self.colls = colls

    def __len__(self) -> int:
        return sum(len(c) for c in self.colls)

    def video(self, i: int) -> dict[str, Any]:
        """Video ``i`` of the concatenation."""
        if not 0 <= i < len(self):
            raise IndexError(f"video index {i} out of range for {len(self)} videos")
        for c in self.colls:
            if i < len(c):
                return c.video(i)
            i -= len(c)
        raise AssertionError("unreachable")


def split_videos(
    n_videos: int, val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Shuffle video indices with ``seed`` and hold out ``val_fraction`` of them.

    USCL holds out 20 % of the *videos* (``valid_size 0.2``, shuffled with seed 0) for its
    validation loss (§B.7). At least one video goes to each side when ``n_videos >= 2``.

    Returns:
        ``(train_indices, val_indices)``, both sorted.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(n_videos)
    n_val = int(round(val_fraction * n_videos))
    if val_fraction > 0 and n_videos >= 2:
        n_val = min(max(n_val, 1), n_videos - 1)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one item: a pure function of ``(seed, epoch, index)``, no global state."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def sample_frame_indices(
    n_frames: int, rng: np.random.Generator, mode: str = "uscl", max_dist: int = 16
) -> tuple[int, ...]:
    """Pick the frames of one item, sorted in time.

    * ``"uscl"``: 3 distinct frames uniformly from the whole video (the code's
      ``random.sample(frames, 3)``), then **sorted** so that ``x1 < x2 < x3`` and the anchor
      ``x2`` is the temporal middle (the code leaves them unordered, §B.4 step 2; the issue asks
      for ordered frames; as ``random.sample`` is exchangeable, sorting only fixes which of the
      three is the anchor).
    * ``"meta_uscl"``: 3 distinct sorted frames with ``x3 - x1 <= max_dist``: a window of
      ``min(n_frames, max_dist + 1)`` frames at a uniform start, then 3 frames uniformly in it.

    With 2 frames both are returned in order (no mixing); with 1 frame, ``(0,)``.

    Args:
        n_frames: frames in the video (>= 1).
        rng: the item's generator.
        mode: ``"uscl"`` or ``"meta_uscl"``.
        max_dist: Meta-USCL's maximum frame distance.

    Returns:
        Sorted frame indices, length ``min(n_frames, 3)``.

    Ref: USCL §B.4 steps 2, 6, 7; Meta-USCL bullets of §B.4; D-7.
    """
    if mode not in PAIR_MODES:
        raise ValueError(f"unknown pair_mode {mode!r}; valid: {list(PAIR_MODES)}")
    if n_frames < 1:
        raise ValueError(f"a video needs at least 1 frame, got {n_frames}")
    if n_frames < 3:
        return tuple(range(n_frames))
    lo, width = 0, n_frames
    if mode == "meta_uscl":
        width = min(n_frames, max(3, max_dist + 1))
        lo = int(rng.integers(0, n_frames - width + 1))
    picked = rng.choice(width, size=3, replace=False) + lo
    return tuple(int(i) for i in np.sort(picked))


def sample_mix_weights(
    rng: np.random.Generator,
    mode: str = "uscl",
    beta: tuple[float, float] = (0.5, 0.5),
    meta_beta: tuple[float, float] = (3.0, 5.0),
) -> tuple[float, float]:
    """Weights of the outer frames ``(w1, w3)`` in the two views (the anchor gets ``1 - w``).

    * ``"uscl"``: one lam ~ Beta(0.5, 0.5) shared by both views: ``(lam, lam)``.
    * ``"meta_uscl"``: alpha, beta ~ Beta(3, 5) independently, with ``v1 = (1 - alpha) x1 +
      alpha x2`` and ``v2 = beta x2 + (1 - beta) x3``: ``(1 - alpha, 1 - beta)``.

    Ref: USCL §B.4 steps 4-5; Meta-USCL bullets of §B.4.
    """
    if mode == "uscl":
        lam = float(rng.beta(*beta))
        return lam, lam
    if mode == "meta_uscl":
        a, b = rng.beta(*meta_beta, size=2)
        return 1.0 - float(a), 1.0 - float(b)
    raise ValueError(f"unknown pair_mode {mode!r}; valid: {list(PAIR_MODES)}")


def mix_toward_anchor(
    x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor, weights: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two positives of SPG: ``v1 = w1 x1 + (1 - w1) x2``, ``v2 = w3 x3 + (1 - w3) x2``.

    Args:
        x1: first frame (any shape); ``x2`` is the anchor, ``x3`` the last frame (same shape).
        x2: anchor frame.
        x3: third frame.
        weights: ``(w1, w3)`` from ``sample_mix_weights``.

    Returns:
        ``(v1, v2)``, same shape as the frames.

    Ref: USCL §B.4 step 5.
    """
    w1, w3 = weights
    return w1 * x1 + (1.0 - w1) * x2, w3 * x3 + (1.0 - w3) * x2


class SamplePairDataset(Dataset):
    """USCL's sample-pair generation over a video collection; one item = one video.

    Per item, with its own generator from ``(seed, epoch, index)`` (``set_epoch`` changes it):

    * ``pair_mode="uscl"`` (the USCL code, §B.4): 3 distinct frames anywhere in the video,
      sorted (``x1 < x2 < x3``, anchor ``x2``), each augmented independently (§B.5), then
      ``v1 = lam x1~ + (1 - lam) x2~`` and ``v2 = lam x3~ + (1 - lam) x2~`` with one
      lam ~ Beta(0.5, 0.5) (mixing after augmentation, in normalised space). 2 frames: the pair
      ``(x1~, x2~)`` without mixing; 1 frame: the frame augmented twice.
    * ``pair_mode="meta_uscl"`` (Meta-USCL, TMI 2022): 3 sorted frames within ``max_dist``,
      two independent weights ~ Beta(3, 5), mixing *before* augmentation, then each view
      augmented (normalisation 0.18 / 0.24 unless a transform is given).

    Item keys: ``view1``, ``view2`` (1, S, S) normalised; ``label1``, ``label2`` (the view's
    frame label; all frames share the video label; ``-1`` when unlabelled); ``raw1``, ``raw2``:
    the un-mixed augmented ``(x1~, x2~)`` (USCL's validation pair, §B.4 step 10); ``weights``
    (2,) outer-frame weights ``(w1, w3)`` (``(1, 1)`` when there is no mixing); ``frame_idx``
    (3,) the sampled frames (repeated when the video is shorter); ``index``; ``video_id``;
    ``patient_id``.

    Args:
        videos: a video collection (see the module docstring).
        img_size: output side S (224 in the paper).
        pair_mode: ``"uscl"`` (default) or ``"meta_uscl"``.
        transform: per-frame augmentation ``(img, rng) -> (1, S, S)``; default ``USCLAugment``.
        seed: base seed of the per-item generators.
        beta: USCL's Beta parameters (0.5, 0.5).
        meta_beta: Meta-USCL's Beta parameters (3, 5).
        max_dist: Meta-USCL's maximum frame distance (16).
        label_fraction: fraction of videos that keep their label (USCL's label rate, picked
            with ``seed``); the others become unlabelled.

    Ref: USCL §B.4, §B.5; D-7.
    """

    def __init__(
        self,
        videos: VideoCollection,
        img_size: int = 224,
        pair_mode: str = "uscl",
        transform: Transform | None = None,
        seed: int = 0,
        beta: tuple[float, float] = (0.5, 0.5),
        meta_beta: tuple[float, float] = (3.0, 5.0),
        max_dist: int = 16,
        label_fraction: float = 1.0,
    ) -> None:
        if pair_mode not in PAIR_MODES:
            raise ValueError(f"unknown pair_mode {pair_mode!r}; valid: {list(PAIR_MODES)}")
        if not 0.0 <= label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in [0, 1], got {label_fraction}")
        self.videos, self.img_size, self.pair_mode = videos, img_size, pair_mode
        if transform is None:
            norm = (META_USCL_MEAN, META_USCL_STD) if pair_mode == "meta_uscl" else (0.5, 0.25)
            transform = USCLAugment(img_size, mean=norm[0], std=norm[1])
        self.transform, self.seed, self.epoch = transform, seed, 0
        self.beta, self.meta_beta, self.max_dist = beta, meta_beta, max_dist
        n = len(videos)
        keep = np.random.default_rng([seed, 7]).permutation(n)[: int(round(label_fraction * n))]
        self.labelled = np.zeros(n, dtype=bool)
        self.labelled[keep] = True

    def __len__(self) -> int:
        return len(self.videos)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch part of the per-item seed (``engine.fit`` calls it every epoch)."""
        self.epoch = int(epoch)

    def explain(self, index: int, epoch: int | None = None) -> dict[str, Any]:
        """Everything behind item ``index``: raw and augmented frames, weights and views.

        Returns:
            The item's keys plus ``frames`` (list of raw (1, H, W) frames in [0, 1]) and
            ``augmented`` (list of the augmented frames; empty in ``meta_uscl`` mode, where
            mixing comes first).
        """
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} videos")
        rng = item_rng(self.seed, self.epoch if epoch is None else epoch, index)
        vid = self.videos.video(index)
        frames_all = np.asarray(vid["frames"])
        if frames_all.ndim != 3:
            raise ValueError(
                f"video {vid.get('video_id', index)!r}: frames must be (T, H, W), got "
                f"{frames_all.shape}"
            )
        idx = sample_frame_indices(len(frames_all), rng, self.pair_mode, self.max_dist)
        frames = [to_image_tensor(frames_all[i]) for i in idx]
        out = self._views(frames, rng)
        label = int(vid.get("label", UNLABELLED)) if self.labelled[index] else UNLABELLED
        padded = list(idx) + [idx[-1]] * (3 - len(idx))
        out.update(
            label1=label,
            label2=label,
            frame_idx=torch.tensor(padded, dtype=torch.long),
            index=index,
            video_id=str(vid.get("video_id", index)),
            patient_id=str(vid.get("patient_id", "")),
            frames=frames,
        )
        return out

    def _views(self, frames: list[torch.Tensor], rng: np.random.Generator) -> dict[str, Any]:
        aug = self.transform
        no_mix = torch.ones(2)
        if len(frames) == 1:  # one frame: augmented twice
            a, b = aug(frames[0], rng), aug(frames[0], rng)
            return dict(view1=a, view2=b, raw1=a, raw2=b, weights=no_mix, augmented=[a, b])
        if len(frames) == 2:  # two frames: the pair itself, no mixing
            a, b = aug(frames[0], rng), aug(frames[1], rng)
            return dict(view1=a, view2=b, raw1=a, raw2=b, weights=no_mix, augmented=[a, b])
        w = sample_mix_weights(rng, self.pair_mode, self.beta, self.meta_beta)
        if self.pair_mode == "uscl":  # augment each frame, then mix in normalised space
            xs = [aug(f, rng) for f in frames]
            v1, v2 = mix_toward_anchor(*xs, w)
            return dict(
                view1=v1, view2=v2, raw1=xs[0], raw2=xs[1], weights=torch.tensor(w), augmented=xs
            )
        m1, m2 = mix_toward_anchor(*frames, w)  # meta_uscl: mix raw frames, then augment
        v1, v2 = aug(m1, rng), aug(m2, rng)
        r1, r2 = aug(frames[0], rng), aug(frames[1], rng)
        return dict(view1=v1, view2=v2, raw1=r1, raw2=r2, weights=torch.tensor(w), augmented=[])

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Item ``index`` of the current epoch (keys in the class docstring)."""
        out = self.explain(index)
        del out["frames"], out["augmented"]
        return out


__all__ = [
    "PAIR_MODES",
    "SamplePairDataset",
    "VideoCollection",
    "VideoSubset",
    "item_rng",
    "mix_toward_anchor",
    "sample_frame_indices",
    "sample_mix_weights",
    "split_videos",
]

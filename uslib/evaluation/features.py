"""Frozen-feature extraction: batched, no grad, eval mode, cached per checkpoint and split.

The cache is one ``.npz`` per (encoder weights, data split, extraction settings), named by a hash of
the three, so re-running the evaluation notebook with the same checkpoints costs no forward passes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from uslib.data.collate import collate_records


@dataclass(frozen=True)
class Features:
    """Pooled features of a split with their labels and split groups.

    Attributes:
        x: (N, D) float32 features (``encoder(image)``, the backbone's pooled output).
        y: (N,) int64 labels (``-1`` = unlabelled).
        groups: (N,) patient/video ids (str).
    """

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray

    def __post_init__(self) -> None:
        """Check that the three arrays agree in length."""
        if not len(self.x) == len(self.y) == len(self.groups):
            raise ValueError(
                f"lengths differ: x {len(self.x)}, y {len(self.y)}, g {len(self.groups)}"
            )

    def __len__(self) -> int:
        """Number of items."""
        return len(self.y)

    def subset(self, idx: np.ndarray | list[int]) -> Features:
        """Rows ``idx`` as new ``Features``."""
        i = np.asarray(idx, dtype=int)
        return Features(self.x[i], self.y[i], self.groups[i])

    def save(self, path: str | Path) -> None:
        """Write to ``path`` (.npz)."""
        np.savez(path, x=self.x, y=self.y, groups=self.groups.astype(str))

    @classmethod
    def load(cls, path: str | Path) -> Features:
        """Read a ``.npz`` written by ``save``."""
        with np.load(path, allow_pickle=False) as z:
            return cls(z["x"], z["y"], z["groups"])


def encoder_fingerprint(encoder: nn.Module) -> str:
    """SHA-1 of an encoder's class name and state dict (names, shapes, bytes)."""
    h = hashlib.sha1(type(encoder).__name__.encode())
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def file_fingerprint(path: str | Path) -> str:
    """SHA-1 of a file's bytes (checkpoint identity for the feature cache)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(checkpoint_id: str, split_id: str, **settings: Any) -> str:
    """Hash of (checkpoint identity, split identity, extraction settings) for the cache name."""
    payload = json.dumps([checkpoint_id, split_id, settings], sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:20]


@torch.no_grad()
def _extract(encoder: nn.Module, dataset: Any, batch_size: int, device: str) -> Features:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_records)
    xs, ys, gs = [], [], []
    for batch in loader:
        feats = encoder(batch["image"].to(device))
        if feats.ndim != 2:
            raise ValueError(
                f"encoder must return pooled (B, D) features, got {tuple(feats.shape)}"
            )
        xs.append(feats.float().cpu().numpy())
        ys.append(batch["label"].numpy())
        gs.extend(batch["group"])
    if not xs:
        raise ValueError("cannot extract features from an empty dataset")
    return Features(
        np.concatenate(xs), np.concatenate(ys).astype(np.int64), np.array(gs, dtype=str)
    )


def extract_features(
    encoder: nn.Module,
    dataset: Any,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    checkpoint_id: str | None = None,
    split_id: str | None = None,
) -> Features:
    """Pooled features of every item of ``dataset`` under a frozen encoder.

    The encoder runs in eval mode under ``torch.no_grad`` (its previous train/eval mode is restored
    afterwards). With ``cache_dir``, results are stored as ``<cache_dir>/<key>.npz`` where ``key``
    hashes ``checkpoint_id`` (default: ``encoder_fingerprint``), ``split_id`` and ``batch_size``.

    Args:
        encoder: backbone with ``forward(x) -> (B, D)``.
        dataset: record dataset (``uslib.data.schema``).
        batch_size: images per forward pass.
        device: where the forward passes run.
        cache_dir: directory of the feature cache; None disables caching.
        checkpoint_id: identity of the weights (e.g. ``file_fingerprint`` of the safetensors).
        split_id: identity of the data split (required with ``cache_dir``), e.g.
            ``"synthetic:lung:test:n8:seed0"``.

    Returns:
        ``Features`` (x: (N, D), y: (N,), groups: (N,)).

    Ref: OpenUS §1.5 (frozen backbone protocols); USCL ``linear_eval.py`` (§B.1).
    """
    path = None
    if cache_dir is not None:
        if not split_id:
            raise ValueError("extract_features: caching needs a split_id naming the data split")
        ckpt = checkpoint_id or encoder_fingerprint(encoder)
        path = Path(cache_dir) / f"{cache_key(ckpt, split_id, batch_size=batch_size)}.npz"
        if path.is_file():
            return Features.load(path)
    was_training = encoder.training
    encoder.eval().to(device)
    try:
        feats = _extract(encoder, dataset, batch_size, str(device))
    finally:
        encoder.train(was_training)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        feats.save(tmp)
        tmp.replace(path)  # atomic: a crashed run leaves no half-written cache entry
    return feats

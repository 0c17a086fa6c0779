"""The model side of TinyUSFM's coreset: teacher embeddings and proxy-student gradient curves.

``uslib.data.coreset`` selects from arrays; this module produces the arrays from a built
``TinyUSFM`` method and its candidate pool:

* ``teacher_embeddings``: the frozen teacher's pooled final feature (or the concatenated token
  means of the distilled blocks), computed in chunks without gradients, (N, D);
* ``gradient_curves``: a proxy student (a fresh copy of the student architecture plus a linear
  head to the teacher width) regresses the teacher embedding of each image for a few warm-up
  epochs through the engine's ``fit`` (passed in: methods sit below the engine,
  ``.importlinter``); at every visit of a sample its per-sample gradient norm of that
  distillation loss with respect to the head is recorded (GraNd restricted to the last layer,
  exact in closed form: ``||dL_i/dW|| = (2/D) ||e_i|| sqrt(||h_i||^2 + 1)``), (N, E).

Ref: OpenUS/TinyUSFM notes §2.3 (quality rank: "gradient-magnitude curves over training
epochs"; our reconstruction, item 1.3).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from uslib.config import OptimConfig
from uslib.data import coreset
from uslib.methods.base import Method
from uslib.models import create_backbone

SELECTIONS: tuple[str, ...] = ("dual_rank", "random", "k_center", "none")
EMBEDDINGS: tuple[str, ...] = ("final", "blocks")


class _Targets(Dataset):
    """Pool items with their index and teacher embedding (the proxy's regression target)."""

    def __init__(self, pool: Dataset, targets: np.ndarray) -> None:
        self.pool, self.targets = pool, torch.from_numpy(targets)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {**self.pool[i], "target": self.targets[i]}


class ProxyStudent(Method):
    """Warm-up proxy of the quality rank: backbone + linear head regressing teacher embeddings.

    ``curves[index, epoch]`` receives the closed-form per-sample gradient norm of
    ``L_i = mean_d (W h_i + b - t_i)^2`` with respect to (W, b) at the step that visits item i.
    """

    def __init__(self, backbone: nn.Module, target_dim: int, n_items: int, epochs: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.num_features), target_dim)
        self.curves = np.zeros((n_items, epochs), dtype=np.float32)

    @property
    def encoder(self) -> nn.Module:
        """The proxy's backbone (never saved)."""
        return self.backbone

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """MSE to the teacher embedding; records per-sample head-gradient norms."""
        h = self.backbone(batch["image"])
        err = self.head(h) - batch["target"]
        with torch.no_grad():
            d = err.shape[1]
            g = (2.0 / d) * err.norm(dim=1) * torch.sqrt((h**2).sum(1) + 1.0)
            self.curves[batch["index"].cpu().numpy(), self.progress.epoch] = g.cpu().numpy()
        return {"loss": (err**2).mean()}


@torch.no_grad()
def teacher_embeddings(
    method: Any, pool: Dataset, how: str = "final", batch_size: int = 64
) -> np.ndarray:
    """Frozen-teacher embeddings of every pool item, (N, D) float32, computed in chunks.

    Args:
        method: a built ``TinyUSFM`` (its ``teacher``, ``teacher_input`` and block indices).
        pool: dataset of ``{"image": (C, H, W), ...}`` items.
        how: ``"final"`` (the teacher's pooled output) or ``"blocks"`` (concatenated patch-token
            means of the distilled teacher blocks).
    """
    if how not in EMBEDDINGS:
        raise ValueError(f"coreset_embed must be one of {EMBEDDINGS}, got {how!r}")
    teacher = method.teacher
    out = []
    for batch in DataLoader(pool, batch_size=batch_size, shuffle=False):
        x = method.teacher_input(batch["image"])
        if how == "final":
            out.append(teacher(x).float())
        else:
            _, hs = teacher.forward_intermediates(x, indices=method.teacher_idx, stop_early=True)
            out.append(torch.cat([h[:, 1:].mean(1) for h in hs], dim=1).float())
    return torch.cat(out).numpy()


def gradient_curves(
    cfg: Any, pool: Dataset, targets: np.ndarray, fit: Callable[..., Any]
) -> np.ndarray:
    """Per-sample gradient-norm curves (N, E) of a proxy student's warm-up on ``pool``.

    ``fit`` is ``uslib.engine.fit`` (the one training loop), handed in by the caller.
    """
    epochs = int(cfg.coreset_warmup_epochs)
    if epochs < 1:
        raise ValueError(f"coreset_warmup_epochs must be >= 1, got {epochs}")
    torch.manual_seed(cfg.seed + 1)
    name = cfg.coreset_proxy_backbone or cfg.backbone
    backbone = create_backbone(name, in_chans=cfg.data.in_chans, img_size=cfg.data.img_size)
    proxy = ProxyStudent(backbone, targets.shape[1], len(targets), epochs)
    optim = OptimConfig(lr=cfg.coreset_proxy_lr, epochs=epochs, batch_size=cfg.optim.batch_size,
                        drop_last=False, weight_decay=0.05, warmup_epochs=0.0)  # fmt: skip
    fit(proxy, _Targets(pool, targets), optim, seed=cfg.seed + 1, progress=False)
    return proxy.curves


def select(
    cfg: Any, method: Any, pool: Dataset, *, fit: Callable[..., Any] | None = None
) -> coreset.CoresetSelection:
    """The coreset of ``cfg.coreset`` for ``pool`` using ``method``'s frozen teacher.

    ``fit`` (``uslib.engine.fit``) trains the proxy student of the quality rank; it is needed
    only when ``cfg.coreset_weights[1] > 0`` with ``coreset="dual_rank"``.
    """
    kind, n = cfg.coreset, len(pool)
    if kind not in SELECTIONS:
        raise ValueError(f"coreset must be one of {SELECTIONS}, got {kind!r}")
    if kind == "random":
        return coreset.random_select(n, cfg.coreset_budget, seed=cfg.seed)
    emb = teacher_embeddings(method, pool, cfg.coreset_embed)
    if kind == "k_center":
        sel, _, _ = coreset.k_center_greedy(emb, cfg.coreset_budget, seed=cfg.seed,
                                            chunk_size=cfg.coreset_chunk)  # fmt: skip
        return sel
    curves = None
    if cfg.coreset_weights[1] > 0:
        if fit is None:
            raise ValueError(
                "the quality rank (coreset_weights[1] > 0) trains a proxy student: pass "
                "fit=uslib.engine.fit (uslib.pretraining.train_data does)"
            )
        curves = gradient_curves(cfg, pool, emb, fit)
    sel = coreset.dual_rank_select(
        emb, cfg.coreset_budget, curves=curves, n_clusters=min(cfg.coreset_clusters, n),
        distance_bins=cfg.coreset_bins, weights=tuple(cfg.coreset_weights),
        noise_quantile=cfg.coreset_noise_quantile, chunk_size=cfg.coreset_chunk,
        kmeans_batch=min(cfg.coreset_kmeans_batch, n), seed=cfg.seed,
    )  # fmt: skip
    sel.scores["embedding"] = emb  # kept for the notebook's 2-D view
    if curves is not None:
        sel.scores["curves"] = curves
    return sel

"""Classifier fine-tuning of a pretrained encoder: linear, partial (USCL) or full (TinyUSFM).

Training runs through ``uslib.engine.fit`` (the one loop) with a small ``ClassifierMethod``; an
epoch-end callback scores the validation and test sets, and the reported epoch is picked either on
the test fold (``select="test"``: USCL's POCUS protocol, optimistic by design, notes D-8) or on a
patient-grouped validation split of the training data (``select="val"``: the honest protocol).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from uslib.config import EvalConfig, OptimConfig
from uslib.data.schema import UNLABELLED
from uslib.evaluation.metrics import classification_metrics, confusion_matrix
from uslib.evaluation.records import (
    RecordTransform,
    TransformedDataset,
    collate_records,
    dataset_index,
    subset,
)
from uslib.evaluation.stats import grouped_holdout
from uslib.methods.base import Method

FINETUNE_MODES: tuple[str, ...] = ("linear", "partial", "full")
BN_STATS: tuple[str, ...] = ("epoch", "ema")

USCL_PARTIAL_OPTIM = OptimConfig(
    optimizer="adam",
    lr=0.01,
    weight_decay=1e-4,
    schedule="cosine",
    epochs=100,
    batch_size=32,
    drop_last=False,
)
"""USCL's POCUS recipe (notes §B.8): Adam lr 0.01 wd 1e-4, CosineAnnealingLR over 100 epochs,
batch 32."""

TINYUSFM_FULL_OPTIM = OptimConfig(
    optimizer="adamw",
    lr=1e-4,
    weight_decay=0.0,
    min_lr=1e-6,
    warmup_epochs=5.0,
    schedule="cosine",
    epochs=400,
    batch_size=8,
    drop_last=False,
)
"""TinyUSFM's classification recipe (notes §2.4): AdamW lr 1e-4 wd 0, batch 8, 400 epochs, 5
warmup epochs, decay to 1e-6 (the paper's schedule is linear "poly"; the engine offers cosine)."""


class ClassifierMethod(Method):
    """Encoder + new linear head trained with cross-entropy; freezing set by ``mode``.

    * ``"linear"``: encoder frozen and kept in eval mode (a linear probe trained end to end);
    * ``"partial"``: only ``encoder.last_block()`` and the head train (USCL §B.8, "last three
      layers"); frozen layers stay in train mode so BatchNorm statistics still update, as in the
      released script;
    * ``"full"``: every parameter trains (TinyUSFM §2.4).

    BatchNorm statistics (``bn_stats``) of layers in train mode (``"partial"``, ``"full"``):

    * ``"epoch"`` (default): the running statistics are the exact average over the current
      epoch's training batches (``momentum=None``, reset by ``on_epoch_start``). USCL's EMA
      (momentum 0.1) converges over its 100 epochs, but on short schedules a randomly initialised
      encoder's running statistics lag far behind (eval-mode outputs collapse to one class); an
      average over the whole run instead mixes the statistics of weights long gone (from-scratch
      training then collapses mid-run).
    * ``"ema"``: PyTorch's default exponential average (momentum 0.1), as in USCL's script.

    Args:
        encoder: backbone (``forward(x) -> (B, num_features)``); modified in place (freezing).
        num_classes: C.
        mode: one of ``FINETUNE_MODES``.
        bn_stats: ``"epoch"`` or ``"ema"`` (see above).
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        mode: str = "partial",
        bn_stats: str = "epoch",
    ) -> None:
        super().__init__()
        if mode not in FINETUNE_MODES:
            raise ValueError(f"mode must be one of {FINETUNE_MODES}, got {mode!r}")
        if bn_stats not in BN_STATS:
            raise ValueError(f"bn_stats must be one of {BN_STATS}, got {bn_stats!r}")
        self.backbone, self.mode = encoder, mode
        self.head = nn.Linear(int(encoder.num_features), num_classes)
        self._bn = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self.epoch_bn = bn_stats == "epoch" and mode != "linear"
        if self.epoch_bn:
            for m in self._bn:
                m.momentum = None
        if mode != "full":
            encoder.requires_grad_(False)
        if mode == "partial":
            if not callable(getattr(encoder, "last_block", None)):
                raise TypeError(
                    f"{type(encoder).__name__} has no last_block(); cannot use 'partial'"
                )
            encoder.last_block().requires_grad_(True)

    def on_epoch_start(self, epoch: int) -> None:
        """With ``bn_stats="epoch"``, restart the BatchNorm averages for the new epoch."""
        if self.epoch_bn:
            for m in self._bn:
                m.reset_running_stats()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, num_classes)."""
        return self.head(self.backbone(images))

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Cross-entropy on the labelled items of the batch (``label = -1`` ignored)."""
        loss = nn.functional.cross_entropy(
            self.logits(batch["image"]), batch["label"], ignore_index=UNLABELLED
        )
        return {"loss": loss}

    @property
    def encoder(self) -> nn.Module:
        """The (fine-tuned) backbone."""
        return self.backbone

    def frozen_modules(self) -> list[nn.Module]:
        """The encoder in ``"linear"`` mode (kept in eval mode)."""
        return [self.backbone] if self.mode == "linear" else []


@dataclass
class FinetuneResult:
    """Outcome of ``finetune_classifier``.

    Attributes:
        accuracy: test accuracy at ``best_epoch``.
        best_epoch: 0-based epoch picked by ``select``.
        select: ``"val"`` or ``"test"``.
        history: one row per epoch: ``epoch, step, train_loss, val_acc (select="val"), test_acc``.
        confusion: (C, C) test confusion matrix at ``best_epoch`` (rows = true class).
        y_true: (N,) test labels.
        y_pred: (N,) test predictions at ``best_epoch``.
        proba: (N, C) test probabilities at ``best_epoch``.
        metrics: ``classification_metrics`` of the test predictions at ``best_epoch``.
        model: the trained ``ClassifierMethod`` (weights of the last epoch).
    """

    accuracy: float
    best_epoch: int
    select: str
    history: pd.DataFrame
    confusion: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray
    proba: np.ndarray = field(repr=False)
    metrics: dict[str, float] = field(default_factory=dict)
    model: ClassifierMethod | None = field(default=None, repr=False)

    @property
    def last_accuracy(self) -> float:
        """Test accuracy after the last epoch (no selection at all)."""
        return float(self.history["test_acc"].iloc[-1])


@torch.no_grad()
def predict_proba(
    method: ClassifierMethod, dataset: Any, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true (N,), proba (N, C))`` of a classifier on a record dataset (eval mode, no grad)."""
    was_training = method.training
    method.eval()
    device = next(method.parameters()).device
    ys, ps = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_records):
        ps.append(torch.softmax(method.logits(batch["image"].to(device)).float(), 1).cpu())
        ys.append(batch["label"])
    method.train(was_training)
    return torch.cat(ys).numpy(), torch.cat(ps).numpy()


def default_finetune_optim(cfg: EvalConfig, mode: str) -> OptimConfig:
    """The optimiser of a mode at the scale of ``cfg``.

    ``"linear"``/``"partial"``: USCL's recipe with ``cfg``'s lr, weight decay, epochs and batch
    size. ``"full"``: TinyUSFM's recipe (AdamW 1e-4, wd 0, min lr 1e-6) with ``cfg``'s epochs and
    batch size, the 5 warmup epochs scaled by ``epochs / 400``.
    """
    if mode == "full":
        return TINYUSFM_FULL_OPTIM.replace(
            epochs=cfg.epochs, batch_size=cfg.batch_size, warmup_epochs=5.0 * cfg.epochs / 400
        )
    return USCL_PARTIAL_OPTIM.replace(
        lr=cfg.lr, weight_decay=cfg.weight_decay, epochs=cfg.epochs, batch_size=cfg.batch_size
    )


class _EpochScorer:
    """Epoch-end callback: accuracy on the validation/test sets, keeping test predictions."""

    def __init__(self, val_ds: Any | None, test_ds: Any, batch_size: int) -> None:
        self.val_ds, self.test_ds, self.bs = val_ds, test_ds, batch_size
        self.test_proba: list[np.ndarray] = []
        self.y_test: np.ndarray | None = None

    def __call__(self, epoch: int, method: Method, row: dict[str, Any]) -> dict[str, float]:
        assert isinstance(method, ClassifierMethod)
        out = {}
        if self.val_ds is not None:
            yv, pv = predict_proba(method, self.val_ds, self.bs)
            out["val_acc"] = float(np.mean(pv.argmax(1) == yv))
        self.y_test, pt = predict_proba(method, self.test_ds, self.bs)
        self.test_proba.append(pt)
        out["test_acc"] = float(np.mean(pt.argmax(1) == self.y_test))
        return out


def finetune_classifier(
    encoder: nn.Module,
    train_ds: Any,
    test_ds: Any,
    cfg: EvalConfig,
    *,
    num_classes: int,
    mode: str = "partial",
    select: str = "val",
    val_fraction: float = 0.2,
    seed: int = 0,
    train_transform: RecordTransform | None = None,
    optim: OptimConfig | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``encoder`` with a new linear head and score it on ``test_ds``.

    Args:
        encoder: pretrained backbone (not modified: a deep copy is trained).
        train_ds: labelled record dataset (training folds).
        test_ds: record dataset of the test fold.
        cfg: evaluation settings (epochs, lr, weight decay, batch size).
        num_classes: C.
        mode: ``"partial"`` (USCL §B.8), ``"linear"`` or ``"full"`` (TinyUSFM §2.4).
        select: ``"test"`` = epoch with the best test accuracy (USCL's protocol, optimistic);
            ``"val"`` = epoch with the best accuracy on a patient-grouped ``val_fraction`` split of
            ``train_ds`` (which is then not trained on); ties go to the earliest epoch.
        val_fraction: share of training items held out for ``select="val"``.
        seed: seed of the split and of the training run.
        train_transform: record -> record augmentation for training items only.
        optim: optimiser override (default ``default_finetune_optim(cfg, mode)``).

    Returns:
        ``FinetuneResult`` (accuracy, best_epoch, per-epoch history, confusion matrix, y_true,
        y_pred).

    Ref: USCL notes §B.8 (POCUS protocol), D-8 (test-fold selection); TinyUSFM notes §2.4.
    """
    from uslib.engine import fit  # lazy: accelerate is heavy to import

    if select not in ("val", "test"):
        raise ValueError(f"select must be 'val' or 'test', got {select!r}")
    val_ds = None
    if select == "val":
        index = dataset_index(train_ds)
        tr_idx, va_idx = grouped_holdout(
            index["group"].to_numpy(), val_fraction, labels=index["label"].to_numpy(), seed=seed
        )
        train_ds, val_ds = subset(train_ds, tr_idx), subset(train_ds, va_idx)
    opt = optim or default_finetune_optim(cfg, mode)
    if len(train_ds) % opt.batch_size == 1:  # a 1-item last batch breaks BatchNorm in train mode
        opt = opt.replace(drop_last=True)
    method = ClassifierMethod(copy.deepcopy(encoder), num_classes, mode)
    scorer = _EpochScorer(val_ds, test_ds, max(opt.batch_size, 64))
    torch.manual_seed(seed)  # head initialisation
    method.head.reset_parameters()
    hist = fit(
        method,
        TransformedDataset(train_ds, train_transform),
        opt,
        seed=seed,
        callbacks=[scorer],
        collate_fn=collate_records,
        progress=False,
    )
    result = _result(hist, scorer, select, num_classes)
    result.model = method
    return result


def _result(hist: Any, scorer: _EpochScorer, select: str, num_classes: int) -> FinetuneResult:
    epochs = hist.to_frame("epochs")
    steps = hist.to_frame("steps")
    if len(steps):
        loss = steps.groupby("epoch")["loss"].mean().rename("train_loss")
        epochs = epochs.merge(loss, left_on="epoch", right_index=True, how="left")
    key = "val_acc" if select == "val" else "test_acc"
    best = int(np.argmax(epochs[key].to_numpy()))  # first maximum = earliest epoch on ties
    proba = scorer.test_proba[best]
    y_true = np.asarray(scorer.y_test)
    y_pred = proba.argmax(1)
    metrics = classification_metrics(y_true, y_pred, num_classes, proba=proba)
    return FinetuneResult(
        accuracy=metrics["accuracy"],
        best_epoch=int(epochs["epoch"].iloc[best]),
        select=select,
        history=epochs,
        confusion=confusion_matrix(y_true, y_pred, num_classes),
        y_true=y_true,
        y_pred=y_pred,
        proba=proba,
        metrics=metrics,
    )

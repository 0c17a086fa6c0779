"""Classifier fine-tuning of a pretrained encoder: linear, partial (USCL) or full (TinyUSFM).

A new linear layer on a copy of the encoder trains through the one head trainer
(``heads.fit_head``: ``engine.fit`` + ``KeepBest``). The reported epoch is picked on the test fold
(``select="test"``: USCL's POCUS protocol, optimistic by design, notes D-8) or on a
patient-grouped validation split of the training data (``select="val"``: the honest protocol);
both can come from one run (``select=("val", "test")``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from uslib.config import EvalConfig, OptimConfig
from uslib.data.collate import RecordTransform, TransformedDataset
from uslib.evaluation.heads import HeadFit, HeadModel, fit_head, holdout, predict
from uslib.evaluation.metrics import classification_metrics, confusion_matrix

FINETUNE_MODES: tuple[str, ...] = ("linear", "partial", "full")

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


@dataclass
class FinetuneResult:
    """Outcome of ``finetune_classifier``.

    Attributes:
        accuracy: test accuracy at ``best_epoch``.
        best_epoch: 0-based epoch picked by ``select``.
        select: ``"val"`` or ``"test"`` (the first of several).
        history: one row per epoch: ``epoch, step, train_loss, val_acc (with "val"), test_acc``.
        confusion: (C, C) test confusion matrix at ``best_epoch`` (rows = true class).
        y_true: (N,) test labels.
        y_pred: (N,) test predictions at ``best_epoch``.
        proba: (N, C) test probabilities at ``best_epoch``.
        metrics: ``classification_metrics`` of the test predictions at ``best_epoch``.
        model: the trained ``HeadModel`` (weights of ``best_epoch``).
        best_epochs: the epoch each requested selection set picked.
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
    model: HeadModel | None = field(default=None, repr=False)
    best_epochs: dict[str, int] = field(default_factory=dict)

    @property
    def last_accuracy(self) -> float:
        """Test accuracy after the last epoch (no selection at all)."""
        return float(self.history["test_acc"].iloc[-1])

    def accuracy_at(self, select: str) -> float:
        """Test accuracy at the epoch ``select`` picked."""
        h = self.history
        return float(h.loc[h["epoch"] == self.best_epochs[select], "test_acc"].iloc[0])


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


def finetune_classifier(
    encoder: nn.Module,
    train_ds: Any,
    test_ds: Any,
    cfg: EvalConfig,
    *,
    num_classes: int,
    mode: str = "partial",
    select: str | Sequence[str] = "val",
    val_fraction: float = 0.2,
    seed: int = 0,
    train_transform: RecordTransform | None = None,
    optim: OptimConfig | None = None,
    bn_stats: str = "epoch",
) -> FinetuneResult:
    """Fine-tune a copy of ``encoder`` with a new linear head and score it on ``test_ds``.

    Args:
        encoder: pretrained backbone (not modified: a deep copy is trained).
        train_ds: labelled record dataset (training folds).
        test_ds: record dataset of the test fold.
        cfg: evaluation settings (epochs, lr, weight decay, batch size).
        num_classes: C.
        mode: ``"partial"`` (USCL §B.8), ``"linear"`` (frozen encoder) or ``"full"`` (TinyUSFM).
        select: ``"test"`` = epoch with the best test accuracy (USCL's protocol, optimistic);
            ``"val"`` = epoch with the best accuracy on a patient-grouped ``val_fraction`` split of
            ``train_ds`` (then not trained on); several: all from one run (the first is reported).
            The rule is ``heads``' (ties go to the earliest epoch).
        val_fraction: share of training items held out for ``"val"``.
        seed: seed of the split, the head initialisation and the training run.
        train_transform: record -> record augmentation for training items only.
        optim: optimiser override (default ``default_finetune_optim(cfg, mode)``).
        bn_stats: BatchNorm statistics of trainable modes (``heads.HeadModel``).

    Returns:
        ``FinetuneResult``.

    Ref: USCL notes §B.8 (POCUS protocol), D-8 (test-fold selection); TinyUSFM notes §2.4.
    """
    selects = (select,) if isinstance(select, str) else tuple(select)
    if mode not in FINETUNE_MODES or not selects or set(selects) - {"val", "test"}:
        raise ValueError(
            f"mode in {FINETUNE_MODES}, select in 'val'/'test'; got {mode!r}, {select!r}"
        )
    sets: dict[str, Any] = {}
    if "val" in selects:
        train_ds, sets["val"] = holdout(train_ds, val_fraction, seed)
    sets["test"] = test_ds
    enc = copy.deepcopy(encoder)
    head = nn.Linear(int(enc.num_features), num_classes)
    model = HeadModel(head, enc, mode="frozen" if mode == "linear" else mode, bn_stats=bn_stats)
    torch.manual_seed(seed)  # head initialisation
    head.reset_parameters()
    opt = optim or default_finetune_optim(cfg, mode)
    train = TransformedDataset(train_ds, train_transform)
    fitted = fit_head(
        model, train, opt, num_classes=num_classes, score_on=sets, select=selects, seed=seed
    )
    return _result(fitted, test_ds, selects[0], num_classes)


def _result(fitted: HeadFit, test_ds: Any, select: str, num_classes: int) -> FinetuneResult:
    """Test predictions of the weights ``select`` kept, as a ``FinetuneResult``."""
    pred = predict(fitted.load(select), test_ds)
    y_true, proba = pred["label"], pred["proba"]
    y_pred = proba.argmax(1)
    metrics = classification_metrics(y_true, y_pred, num_classes, proba=proba)
    return FinetuneResult(
        metrics["accuracy"], fitted.best_epoch[select], select, fitted.history,
        confusion_matrix(y_true, y_pred, num_classes), y_true, y_pred, proba, metrics,
        fitted.model, fitted.best_epoch,
    )  # fmt: skip

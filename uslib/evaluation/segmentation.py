"""Segmentation transfer: a frozen (or fine-tuned) encoder with a light decoder, scored by Dice,
IoU and HD95 (``seg_metrics``), plus head-circumference error for fetal-head masks.

Training goes through ``uslib.engine.fit`` with ``SegmentationMethod``; an epoch-end callback
scores mean Dice and keeps the weights of the selected epoch, which are restored for the final
per-image scoring.
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
from uslib.engine.callbacks import KeepBest
from uslib.evaluation.feature_maps import DecoderOnMaps, cache_feature_maps, predict_cached
from uslib.evaluation.finetune import TINYUSFM_FULL_OPTIM
from uslib.evaluation.records import (
    RecordTransform,
    TransformedDataset,
    collate_records,
    dataset_index,
    subset,
)
from uslib.evaluation.seg_metrics import DEFAULT_EMPTY, dice_iou, score_masks
from uslib.evaluation.stats import grouped_holdout
from uslib.methods.base import Method

SEG_MODES: tuple[str, ...] = ("frozen", "full")
_IGNORE = -100  # target of items without a mask

OPENUS_SEG_OPTIM = OptimConfig(
    optimizer="adam",
    lr=1e-3,
    weight_decay=0.0,
    schedule="cosine",
    epochs=100,
    batch_size=16,
    drop_last=False,
)
"""OpenUS's frozen-encoder segmentation recipe (notes §1.5): Adam lr 1e-3, cosine over 100
epochs, batch 16, cross-entropy."""

TINYUSFM_SEG_OPTIM = TINYUSFM_FULL_OPTIM.replace(epochs=1000)
"""TinyUSFM's full fine-tuning segmentation recipe (notes §2.4): the classification recipe
(AdamW lr 1e-4 wd 0, batch 8, 5 warmup epochs; poly decay there, cosine here) over 1000 epochs."""


class SegmentationMethod(Method):
    """Encoder feature maps -> decoder -> per-pixel logits at input size, cross-entropy loss.

    Args:
        encoder: backbone with ``forward_features`` and ``feature_info``.
        num_classes: classes including background (2 for a binary mask).
        mode: ``"frozen"`` (encoder fixed, eval mode: OpenUS §1.5) or ``"full"`` (TinyUSFM §2.4).
        decoder: module mapping the feature list to (B, num_classes, h, w) logits; default
            ``uslib.models.heads.SegDecoder(encoder.feature_info, num_classes)``.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_classes: int,
        mode: str = "frozen",
        decoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if mode not in SEG_MODES:
            raise ValueError(f"mode must be one of {SEG_MODES}, got {mode!r}")
        if decoder is None:
            from uslib.models.heads import SegDecoder

            decoder = SegDecoder(encoder.feature_info, num_classes)
        self.backbone, self.decoder, self.mode = encoder, decoder, mode
        self.decoder_classes = num_classes
        if mode == "frozen":
            encoder.requires_grad_(False)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, num_classes, H, W); bilinear resize if the decoder is coarser."""
        if self.mode == "frozen":
            with torch.no_grad():
                feats = self.backbone.forward_features(images)
        else:
            feats = self.backbone.forward_features(images)
        out = self.decoder(feats)
        if out.shape[-2:] != images.shape[-2:]:
            out = nn.functional.interpolate(
                out, size=images.shape[-2:], mode="bilinear", align_corners=False
            )
        return out

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Pixel cross-entropy over the items that have a mask."""
        target = batch["mask"].clone()
        target[~batch["has_mask"].bool()] = _IGNORE
        return {
            "loss": nn.functional.cross_entropy(
                self.logits(batch["image"]), target, ignore_index=_IGNORE
            )
        }

    @property
    def encoder(self) -> nn.Module:
        """The backbone."""
        return self.backbone

    def frozen_modules(self) -> list[nn.Module]:
        """The encoder in ``"frozen"`` mode."""
        return [self.backbone] if self.mode == "frozen" else []


@torch.no_grad()
def predict_masks(method: SegmentationMethod, dataset: Any, batch_size: int = 32) -> dict[str, Any]:
    """Predicted label maps for a record dataset (eval mode, no grad).

    Returns:
        ``{"image": (N, H, W) float, "mask": (N, H, W) int64, "pred": (N, H, W) int64,
        "has_mask": (N,) bool, "spacing": (N,) float}`` as numpy arrays.
    """
    was_training = method.training
    method.eval()
    device = next(method.parameters()).device
    out: dict[str, list] = {k: [] for k in ("image", "mask", "pred", "has_mask", "spacing")}
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_records):
        out["pred"].append(method.logits(batch["image"].to(device)).argmax(1).cpu())
        out["image"].append(batch["image"][:, 0])
        for k in ("mask", "has_mask", "spacing"):
            out[k].append(batch[k])
    method.train(was_training)
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def _mean_dice(pred: dict[str, Any], num_classes: int, empty: str) -> float:
    keep = np.flatnonzero(pred["has_mask"])
    scores = [
        np.nanmean(
            [
                dice_iou(pred["pred"][i] == c, pred["mask"][i] == c, empty=empty)[0]
                for c in range(1, num_classes)
            ]
        )
        for i in keep
    ]
    return float(np.nanmean(scores)) if scores else float("nan")


class _SelectionDice:
    """Epoch-end callback: mean Dice on the selection set (``sel_dice``, read by ``KeepBest``).

    ``predict`` maps the method being trained to ``predict_masks``-style arrays of the selection
    set (None: ``select="last"``, nothing to score and ``KeepBest`` keeps the latest weights).
    """

    def __init__(self, predict: Any | None, num_classes: int, empty: str) -> None:
        self.predict, self.c, self.empty = predict, num_classes, empty

    def __call__(self, epoch: int, method: Method, row: dict[str, Any]) -> dict[str, float]:
        if self.predict is None:
            return {}
        return {"sel_dice": _mean_dice(self.predict(method), self.c, self.empty)}


def _select_by_dice(
    predict: Any | None, num_classes: int, empty: str
) -> tuple[list[Any], KeepBest, dict[str, Any]]:
    """Callbacks scoring the selection Dice and keeping a copy of the best weights."""
    kept: dict[str, Any] = {}

    def copy_weights(epoch: int, method: Method, value: float) -> None:
        kept["state"] = copy.deepcopy(method.state_dict())

    keeper = KeepBest("sel_dice", copy_weights, mode="max")
    return [_SelectionDice(predict, num_classes, empty), keeper], keeper, kept


@dataclass
class SegResult:
    """Outcome of ``train_segmentation``.

    Attributes:
        dice, iou, hd95: means over the test images with a mask (HD95 in mm where spacing is
            known, else pixels).
        best_epoch: 0-based selected epoch.
        select: ``"val"``, ``"test"`` or ``"last"``.
        history: per-epoch rows (``epoch, step, sel_dice``).
        per_image: ``score_masks`` table of the test images.
        predictions: ``predict_masks`` output on the test set at ``best_epoch``.
        model: the trained ``SegmentationMethod`` (weights of ``best_epoch``).
    """

    dice: float
    iou: float
    hd95: float
    best_epoch: int
    select: str
    history: pd.DataFrame
    per_image: pd.DataFrame
    predictions: dict[str, Any] = field(repr=False)
    model: SegmentationMethod | None = field(default=None, repr=False)


def default_seg_optim(cfg: EvalConfig, mode: str) -> OptimConfig:
    """OpenUS's recipe (``"frozen"``) or TinyUSFM's (``"full"``) with ``cfg``'s epochs and batch
    size (TinyUSFM's 5 warmup epochs scaled by ``epochs / 1000``)."""
    if mode == "full":
        return TINYUSFM_SEG_OPTIM.replace(
            epochs=cfg.epochs, batch_size=cfg.batch_size, warmup_epochs=5.0 * cfg.epochs / 1000
        )
    return OPENUS_SEG_OPTIM.replace(epochs=cfg.epochs, batch_size=cfg.batch_size)


def train_segmentation(
    encoder: nn.Module,
    train_ds: Any,
    test_ds: Any,
    cfg: EvalConfig,
    *,
    num_classes: int = 2,
    mode: str = "frozen",
    select: str = "val",
    val_fraction: float = 0.2,
    seed: int = 0,
    train_transform: RecordTransform | None = None,
    optim: OptimConfig | None = None,
    decoder: nn.Module | None = None,
    empty: str = DEFAULT_EMPTY,
    with_hd: bool = True,
    cache_features: bool = True,
) -> SegResult:
    """Train a decoder on a copy of ``encoder`` (frozen or fine-tuned) and score the test set.

    Args:
        encoder: pretrained backbone (not modified).
        train_ds: record dataset with masks (training folds).
        test_ds: record dataset of the test fold.
        cfg: evaluation settings (epochs, batch size).
        num_classes: classes including background.
        mode: ``"frozen"`` (OpenUS) or ``"full"`` (TinyUSFM).
        select: ``"val"`` (best mean Dice on a patient-grouped split of ``train_ds``; OpenUS and
            TinyUSFM select on val), ``"test"`` (best test Dice: optimistic) or ``"last"``.
        val_fraction: held-out share for ``select="val"``.
        seed: split and training seed.
        train_transform: joint record augmentation for training items.
        optim: optimiser override (default ``default_seg_optim(cfg, mode)``).
        decoder: decoder override (default ``SegDecoder``).
        empty: empty-mask convention (``seg_metrics.EMPTY_CONVENTIONS``).
        with_hd: compute HD95 on the test set.
        cache_features: with a frozen encoder and no augmentation, compute its feature maps once
            and train the decoder on them (same result, far cheaper; ``DecoderOnMaps``).

    Returns:
        ``SegResult``.

    Ref: OpenUS notes §1.5 (frozen + decoder); TinyUSFM notes §2.4 (full fine-tuning, metrics).
    """
    if select not in ("val", "test", "last"):
        raise ValueError(f"select must be 'val', 'test' or 'last', got {select!r}")
    sel_ds = test_ds if select == "test" else None
    if select == "val":
        groups = dataset_index(train_ds)["group"].to_numpy()
        tr_idx, va_idx = grouped_holdout(groups, val_fraction, seed=seed)
        train_ds, sel_ds = subset(train_ds, tr_idx), subset(train_ds, va_idx)
    opt = optim or default_seg_optim(cfg, mode)
    if len(train_ds) % opt.batch_size == 1:  # a 1-item last batch breaks BatchNorm
        opt = opt.replace(drop_last=True)
    torch.manual_seed(seed)
    method = SegmentationMethod(copy.deepcopy(encoder), num_classes, mode, decoder=decoder)
    if mode == "frozen" and cache_features and train_transform is None:
        best_epoch, hist = _fit_on_cached_maps(method, train_ds, sel_ds, opt, seed, empty)
    else:
        best_epoch, hist = _fit_end_to_end(
            method, train_ds, sel_ds, opt, seed, empty, train_transform
        )
    method.to(next(method.decoder.parameters()).device)  # accelerate may have moved the decoder
    pred = predict_masks(method, test_ds)
    keep = np.flatnonzero(pred["has_mask"])
    per_image = score_masks(
        pred["pred"][keep],
        pred["mask"][keep],
        num_classes,
        spacing=pred["spacing"][keep],
        empty=empty,
        with_hd=with_hd,
    )
    means = per_image[["dice", "iou", "hd95"]].mean()
    return SegResult(
        float(means["dice"]),
        float(means["iou"]),
        float(means["hd95"]),
        best_epoch,
        select,
        hist.to_frame("epochs"),
        per_image,
        pred,
        method,
    )


def _fit_end_to_end(
    method: SegmentationMethod,
    train_ds: Any,
    sel_ds: Any | None,
    opt: OptimConfig,
    seed: int,
    empty: str,
    transform: RecordTransform | None,
) -> tuple[int, Any]:
    from uslib.engine import fit

    predict = None if sel_ds is None else (lambda m: predict_masks(m, sel_ds))
    callbacks, keeper, kept = _select_by_dice(predict, int(method.decoder_classes), empty)
    hist = fit(
        method,
        TransformedDataset(train_ds, transform),
        opt,
        seed=seed,
        callbacks=callbacks,
        collate_fn=collate_records,
        progress=False,
    )
    method.load_state_dict(kept["state"])
    return keeper.best_epoch, hist


def _fit_on_cached_maps(
    method: SegmentationMethod,
    train_ds: Any,
    sel_ds: Any | None,
    opt: OptimConfig,
    seed: int,
    empty: str,
) -> tuple[int, Any]:
    from uslib.engine import fit

    head = DecoderOnMaps(method.decoder)
    train_maps = cache_feature_maps(method.backbone, train_ds)
    sel_maps = None if sel_ds is None else cache_feature_maps(method.backbone, sel_ds)
    predict = None if sel_maps is None else (lambda m: predict_cached(m, sel_maps))
    callbacks, keeper, kept = _select_by_dice(predict, int(method.decoder_classes), empty)
    hist = fit(head, train_maps, opt, seed=seed, callbacks=callbacks, progress=False)
    head.load_state_dict(kept["state"])  # shares its decoder with ``method``
    return keeper.best_epoch, hist

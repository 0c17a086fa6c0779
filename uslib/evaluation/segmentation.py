"""Segmentation transfer: a frozen (or fine-tuned) encoder with a light decoder, scored by Dice,
IoU and HD95 (``seg_metrics``), plus head-circumference error for fetal-head masks.

The decoder trains through the one head trainer (``heads.fit_head``); the selected epoch's weights
are restored for the final per-image scoring. With a frozen encoder and no augmentation its
feature maps are identical every epoch, so they are computed once (``cache_feature_maps``) and
only the decoder trains on them: the same optimisation without one encoder pass per item and epoch.
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
from uslib.data.collate import RecordTransform, TransformedDataset, collate_records
from uslib.evaluation.finetune import TINYUSFM_FULL_OPTIM
from uslib.evaluation.heads import HeadFit, HeadModel, fit_head, holdout, predict
from uslib.evaluation.seg_metrics import DEFAULT_EMPTY, score_masks

SEG_MODES: tuple[str, ...] = ("frozen", "full")

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


@dataclass
class SegResult:
    """Outcome of ``train_segmentation``.

    Attributes:
        dice, iou, hd95: means over the test images with a mask (HD95 in mm where spacing is
            known, else pixels).
        best_epoch: 0-based selected epoch.
        select: ``"val"``, ``"test"`` or ``"last"``.
        history: per-epoch rows (``epoch, step, train_loss, <select>_dice``).
        per_image: ``score_masks`` table of the test images.
        predictions: ``heads.predict`` output on the test set at ``best_epoch``.
        model: the trained ``HeadModel`` (encoder + decoder, weights of ``best_epoch``).
    """

    dice: float
    iou: float
    hd95: float
    best_epoch: int
    select: str
    history: pd.DataFrame
    per_image: pd.DataFrame
    predictions: dict[str, Any] = field(repr=False)
    model: HeadModel | None = field(default=None, repr=False)


def default_seg_optim(cfg: EvalConfig, mode: str) -> OptimConfig:
    """OpenUS's recipe (``"frozen"``) or TinyUSFM's (``"full"``) with ``cfg``'s epochs and batch
    size (TinyUSFM's 5 warmup epochs scaled by ``epochs / 1000``)."""
    if mode == "full":
        return TINYUSFM_SEG_OPTIM.replace(
            epochs=cfg.epochs, batch_size=cfg.batch_size, warmup_epochs=5.0 * cfg.epochs / 1000
        )
    return OPENUS_SEG_OPTIM.replace(epochs=cfg.epochs, batch_size=cfg.batch_size)


@torch.no_grad()
def cache_feature_maps(encoder: nn.Module, dataset: Any, batch_size: int = 32) -> list[dict]:
    """``[{"feats": [(C_i, H_i, W_i), ...], "mask", "has_mask"}]`` per item (eval mode)."""
    was = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_records):
        maps = encoder.forward_features(batch["image"].to(device))
        out += [{"feats": [m[i].cpu() for m in maps], "mask": batch["mask"][i],
                 "has_mask": batch["has_mask"][i]} for i in range(len(batch["image"]))]  # fmt: skip
    encoder.train(was)
    return out


def _fit_decoder(
    model: HeadModel, train_ds: Any, sets: dict[str, Any], opt: OptimConfig, *, c: int,
    chosen: tuple, seed: int, transform: RecordTransform | None, cached: bool,
) -> HeadFit:  # fmt: skip
    """``fit_head`` end to end, or (``cached``) of the decoder alone on cached feature maps."""
    if not cached:
        train = TransformedDataset(train_ds, transform)
        return fit_head(model, train, opt, num_classes=c, score_on=sets, select=chosen, seed=seed)
    on_maps = HeadModel(model.head, dense=True)  # shares the decoder with ``model``
    maps = {k: cache_feature_maps(model.backbone, d) for k, d in sets.items()}
    return fit_head(on_maps, cache_feature_maps(model.backbone, train_ds), opt, num_classes=c,
                    score_on=maps, select=chosen, seed=seed, collate_fn=None)  # fmt: skip


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
        decoder: decoder override (default ``uslib.models.heads.SegDecoder``).
        empty: empty-mask convention of the test scores (``seg_metrics.EMPTY_CONVENTIONS``).
        with_hd: compute HD95 on the test set.
        cache_features: with a frozen encoder and no augmentation, train the decoder on feature
            maps computed once (same result, far cheaper).

    Returns:
        ``SegResult``.

    Ref: OpenUS notes §1.5 (frozen + decoder); TinyUSFM notes §2.4 (full fine-tuning, metrics).
    """
    if select not in ("val", "test", "last") or mode not in SEG_MODES:
        raise ValueError(f"select in val/test/last, mode in {SEG_MODES}; got {select!r}, {mode!r}")
    sets = {"test": test_ds} if select == "test" else {}
    if select == "val":
        train_ds, sets["val"] = holdout(train_ds, val_fraction, seed, stratify=False)
    torch.manual_seed(seed)
    enc = copy.deepcopy(encoder)
    if decoder is None:
        from uslib.models.heads import SegDecoder

        decoder = SegDecoder(enc.feature_info, num_classes)
    model = HeadModel(decoder, enc, mode=mode, dense=True)
    opt = optim or default_seg_optim(cfg, mode)
    chosen = () if select == "last" else (select,)
    cached = mode == "frozen" and cache_features and train_transform is None
    fitted = _fit_decoder(model, train_ds, sets, opt, c=num_classes, chosen=chosen, seed=seed,
                          transform=train_transform, cached=cached)  # fmt: skip
    fitted.load(chosen[0] if chosen else "last")
    model.to(next(decoder.parameters()).device)
    pred = predict(model, test_ds, batch_size=32)
    k = np.flatnonzero(pred["has_mask"])
    per_image = score_masks(pred["pred"][k], pred["mask"][k], num_classes,
                            spacing=pred["spacing"][k], empty=empty, with_hd=with_hd)  # fmt: skip
    m = per_image[["dice", "iou", "hd95"]].mean()
    best = next(iter(fitted.best_epoch.values()))
    return SegResult(float(m["dice"]), float(m["iou"]), float(m["hd95"]), best, select,
                     fitted.history, per_image, pred, model)  # fmt: skip

"""The one head trainer of the evaluation harness: ``HeadModel`` + ``fit_head`` on ``engine.fit``.

Every trained evaluation head goes through here: a linear layer on cached features (OpenUS's
linear probe), a classifier on a frozen / partially / fully fine-tuned encoder (USCL §B.8,
TinyUSFM §2.4), and a segmentation decoder on encoder feature maps, live or cached (OpenUS §1.5).

**The best-epoch rule** (the only one): each scored set (``"val"``, ``"test"``) is scored at every
epoch end (accuracy, or mean foreground Dice for dense heads) and one ``KeepBest`` per selection
set keeps the weights of its highest score, the earliest epoch on ties; with no selection set the
last epoch is kept.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from uslib.config import OptimConfig
from uslib.data.collate import collate_records, dataset_index, subset
from uslib.engine.callbacks import KeepBest
from uslib.evaluation.seg_metrics import DEFAULT_EMPTY, dice_iou
from uslib.evaluation.stats import grouped_holdout
from uslib.methods.base import Method

MODES: tuple[str, ...] = ("frozen", "partial", "full")
BN_STATS: tuple[str, ...] = ("epoch", "ema")
IGNORE = -100
"""Target of items without a label (``label = -1``) or without a mask."""


class HeadModel(Method):
    """``[encoder ->] head`` trained with cross-entropy on labels (B,) or masks (B, H, W).

    * ``encoder=None``: batches carry precomputed inputs (``batch["feats"]``: (B, D) features or
      a list of feature maps); only the head trains.
    * ``mode="frozen"``: the encoder is fixed and kept in eval mode (linear probe, frozen seg);
      ``"partial"``: only ``encoder.last_block()`` and the head train (USCL §B.8, "last three
      layers"; frozen layers stay in train mode so BatchNorm statistics update, as in the released
      script); ``"full"``: every parameter trains (TinyUSFM §2.4).
    * ``dense=True``: the head maps ``encoder.forward_features(x)`` to (B, C, h, w) logits,
      bilinearly resized to the target size; otherwise it maps ``encoder(x)`` (B, D) to (B, C).

    BatchNorm statistics of encoder layers in train mode (``bn_stats``): ``"epoch"`` (default)
    makes the running statistics the exact average over the current epoch's batches
    (``momentum=None``, reset in ``on_epoch_start``): on short schedules PyTorch's EMA lags so far
    behind a randomly initialised encoder that eval-mode outputs collapse to one class, and an
    average over the whole run mixes weights long gone; ``"ema"``: PyTorch's momentum 0.1 (USCL).

    Args:
        head: ``nn.Linear`` / decoder producing the logits.
        encoder: backbone (modified in place: freezing), or None.
        mode: one of ``MODES``.
        dense: per-pixel logits (segmentation).
        bn_stats: one of ``BN_STATS``.
    """

    def __init__(
        self,
        head: nn.Module,
        encoder: nn.Module | None = None,
        *,
        mode: str = "frozen",
        dense: bool = False,
        bn_stats: str = "epoch",
    ) -> None:
        super().__init__()
        if mode not in MODES or bn_stats not in BN_STATS:
            raise ValueError(f"mode in {MODES}, bn_stats in {BN_STATS}; got {mode!r}, {bn_stats!r}")
        self.head, self.backbone, self.mode, self.dense = head, encoder, mode, dense
        self.metric = "dice" if dense else "acc"
        self._bn: list[nn.Module] = []
        if encoder is None:
            return
        if mode != "full":
            encoder.requires_grad_(False)
        if mode == "partial":
            if not callable(getattr(encoder, "last_block", None)):
                raise TypeError(f"{type(encoder).__name__} has no last_block(); not 'partial'")
            encoder.last_block().requires_grad_(True)
        if bn_stats == "epoch" and mode != "frozen":
            self._bn = [
                m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            ]
            for m in self._bn:
                m.momentum = None

    def on_epoch_start(self, epoch: int) -> None:
        """With ``bn_stats="epoch"``, restart the BatchNorm averages for the new epoch."""
        for m in self._bn:
            m.reset_running_stats()

    def features(self, x: Any) -> Any:
        """Encoder output of images (B, C, H, W), or ``x`` itself without an encoder."""
        if self.backbone is None:
            return x
        fn = self.backbone.forward_features if self.dense else self.backbone
        if self.mode == "frozen":
            with torch.no_grad():
                return fn(x)
        return fn(x)

    def logits(self, x: Any, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(B, num_classes) or, dense, (B, num_classes, *size) (default size: the image's)."""
        out = self.head(self.features(x))
        if self.dense:
            size = tuple(size or x.shape[-2:])
            if tuple(out.shape[-2:]) != size:
                out = nn.functional.interpolate(
                    out, size=size, mode="bilinear", align_corners=False
                )
        return out

    def target(self, batch: dict[str, Any]) -> torch.Tensor:
        """Labels (B,) or masks (B, H, W) with unlabelled / mask-less items set to ``IGNORE``."""
        if self.dense:
            t = batch["mask"].clone()
            t[~batch["has_mask"].bool()] = IGNORE
        else:
            t = batch["label"].clone()
            t[t < 0] = IGNORE
        return t

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Cross-entropy over the labelled items (pixels) of the batch."""
        target = self.target(batch)
        x = batch["feats"] if "feats" in batch else batch["image"]
        logits = self.logits(x, tuple(target.shape[-2:]) if self.dense else None)
        return {"loss": nn.functional.cross_entropy(logits, target, ignore_index=IGNORE)}

    @property
    def encoder(self) -> nn.Module:
        """The (fine-tuned) backbone, or ``nn.Identity`` without one."""
        return self.backbone if self.backbone is not None else nn.Identity()

    def frozen_modules(self) -> list[nn.Module]:
        """The encoder in ``"frozen"`` mode (kept in eval mode)."""
        return [self.backbone] if self.backbone is not None and self.mode == "frozen" else []


@torch.no_grad()
def predict(model: HeadModel, data: Any, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Predictions of a head on a dataset (eval mode, no grad).

    ``data`` holds records (``image`` ...) or cached inputs (``feats`` ...), batched by
    ``collate_records`` or default collation. Returns numpy arrays: ``proba`` (N, C) and ``label``
    (N,) for classifiers; ``pred``, ``mask`` (N, H, W), ``has_mask`` (N,) (and for records
    ``image`` (N, H, W), ``spacing`` (N,)) for dense heads.
    """
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    records = len(data) > 0 and "image" in data[0]
    out: dict[str, list] = {}
    for batch in DataLoader(
        data, batch_size=batch_size, collate_fn=collate_records if records else None
    ):
        x = batch["image"] if records else batch["feats"]
        x = x.to(device) if torch.is_tensor(x) else [m.to(device) for m in x]
        if model.dense:
            logits = model.logits(x, tuple(batch["mask"].shape[-2:]))
            got = {
                "pred": logits.argmax(1).cpu(),
                "mask": batch["mask"],
                "has_mask": batch["has_mask"],
            }
            got.update(
                {"image": batch["image"][:, 0], "spacing": batch["spacing"]} if records else {}
            )
        else:
            got = {
                "proba": torch.softmax(model.logits(x).float(), 1).cpu(),
                "label": batch["label"],
            }
        for k, v in got.items():
            out.setdefault(k, []).append(v)
    model.train(was)
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def mean_dice(pred: dict[str, np.ndarray], num_classes: int, empty: str = DEFAULT_EMPTY) -> float:
    """Mean over images with a mask of the mean foreground-class Dice (NaN if none)."""
    scores = [
        np.nanmean([dice_iou(pred["pred"][i] == c, pred["mask"][i] == c, empty=empty)[0]
                    for c in range(1, num_classes)])
        for i in np.flatnonzero(pred["has_mask"])
    ]  # fmt: skip
    return float(np.nanmean(scores)) if scores else float("nan")


def score(model: HeadModel, pred: dict[str, np.ndarray], num_classes: int) -> float:
    """Accuracy of a classifier's predictions, mean Dice of a dense head's."""
    if model.dense:
        return mean_dice(pred, num_classes)
    return float(np.mean(pred["proba"].argmax(1) == pred["label"]))


@dataclass
class HeadFit:
    """Outcome of ``fit_head``.

    Attributes:
        model: the trained ``HeadModel`` (weights of the last epoch until ``load``).
        history: one row per epoch: ``epoch, step, train_loss, <set>_<acc|dice>``.
        best_epoch: selected epoch per selection set (``"last"`` without one).
        states: the kept state dict per selection set.
    """

    model: HeadModel
    history: pd.DataFrame
    best_epoch: dict[str, int]
    states: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def load(self, select: str) -> HeadModel:
        """The model with the weights ``select`` chose (``"last"``: as trained)."""
        if select in self.states:
            self.model.load_state_dict(self.states[select])
        return self.model


def _keepers(select: Sequence[str], metric: str) -> tuple[list[KeepBest], dict[str, Any]]:
    states: dict[str, Any] = {}

    def saver(name: str) -> Callable[[int, Method, float], None]:
        def save(epoch: int, method: Method, value: float) -> None:
            states[name] = copy.deepcopy(method.state_dict())

        return save

    return [KeepBest(f"{s}_{metric}", saver(s), mode="max") for s in select], states


def _history(hist: Any) -> pd.DataFrame:
    epochs, steps = hist.to_frame("epochs"), hist.to_frame("steps")
    if len(steps):
        loss = steps.groupby("epoch")["loss"].mean().rename("train_loss")
        epochs = epochs.merge(loss, left_on="epoch", right_index=True, how="left")
    return epochs.drop(columns=["best_epoch"], errors="ignore")


def fit_head(
    model: HeadModel,
    train_data: Any,
    optim: OptimConfig,
    *,
    num_classes: int,
    score_on: Mapping[str, Any] | None = None,
    select: Sequence[str] = (),
    seed: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = collate_records,
) -> HeadFit:
    """Train ``model`` with ``engine.fit``, scoring ``score_on`` sets and keeping best epochs.

    Args:
        model: the head (and encoder) to train, in place.
        train_data: records (batched by ``collate_records``) or cached ``feats`` dicts.
        optim: optimiser settings (a 1-item last batch is dropped: it breaks BatchNorm).
        num_classes: C (segmentation: including background).
        score_on: ``{name: data}`` scored at every epoch end (``<name>_acc`` / ``<name>_dice``).
        select: names of ``score_on`` sets that pick a best epoch (the module's rule).
        seed: seed of the run (the head's initialisation is the caller's).
        collate_fn: batching of ``train_data`` (None: default collation, for cached inputs).

    Returns:
        ``HeadFit``.
    """
    from uslib.engine import fit  # lazy: accelerate is heavy to import

    sets = dict(score_on or {})
    keepers, states = _keepers(select, model.metric)

    def scorer(epoch: int, method: Method, row: dict[str, Any]) -> dict[str, float]:
        return {
            f"{n}_{model.metric}": score(model, predict(model, d), num_classes)
            for n, d in sets.items()
        }

    if len(train_data) % optim.batch_size == 1:
        optim = optim.replace(drop_last=True)
    hist = fit(model, train_data, optim, seed=seed, callbacks=[scorer, *keepers],
               collate_fn=collate_fn, progress=False)  # fmt: skip
    model.to(next(model.head.parameters()).device)  # accelerate may have moved parts
    best = {s: k.best_epoch for s, k in zip(select, keepers)}
    return HeadFit(
        model,
        _history(hist),
        best or {"last": int(hist.to_frame("epochs")["epoch"].iloc[-1])},
        states,
    )


def holdout(data: Any, val_fraction: float, seed: int, stratify: bool = True) -> tuple[Any, Any]:
    """A patient-grouped (and label-stratified) ``(train, val)`` split of a record dataset."""
    index = dataset_index(data)
    labels = index["label"].to_numpy() if stratify else None
    tr, va = grouped_holdout(index["group"].to_numpy(), val_fraction, labels=labels, seed=seed)
    return subset(data, tr), subset(data, va)

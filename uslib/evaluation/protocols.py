"""The protocol registry and ``evaluate``: "protocol P on task T for encoder E" is one call.

>>> from uslib.evaluation import evaluate, list_protocols
>>> list_protocols()
['knn', 'linear_probe', 'partial_ft', 'segmentation', 'supervised', 'uscl_pocus']
>>> evaluate(encoder, "lung", "linear_probe", fractions=(0.1, 1.0)).results  # doctest: +SKIP

Every protocol returns long-table rows (``report.RESULT_COLUMNS``; mean ± std over folds, a
patient-clustered bootstrap 95 % CI of the headline metric from pooled out-of-fold predictions)
and extras (confusion matrices, segmentation overlays):

* ``linear_probe`` / ``knn``: frozen features over the task's grouped folds; label efficiency
  through ``fractions`` (nested, patient-grouped subsets of each training fold);
* ``partial_ft``: USCL's partial fine-tuning (``pocus.partial_ft_folds``: best-test-epoch and
  last-epoch accuracy; ``selects=("test", "val")`` adds the honest rule); ``uscl_pocus``: the
  same protocol with notebook 02's options (both rules, crop + flip augmentation);
* ``supervised``: full fine-tuning from random init (the supervised reference, last epoch);
* ``segmentation``: frozen encoder + ``SegDecoder`` (Dice, IoU, HD95, HC error), label fractions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from uslib.config import EvalConfig
from uslib.evaluation.discovery import EncoderEntry, contamination
from uslib.evaluation.features import Features, extract_features
from uslib.evaluation.finetune import default_finetune_optim, finetune_classifier
from uslib.evaluation.pocus import partial_ft_folds
from uslib.evaluation.probes import knn_classify, linear_probe
from uslib.evaluation.report import results_frame
from uslib.evaluation.seg_metrics import head_circumference_errors
from uslib.evaluation.segmentation import train_segmentation
from uslib.evaluation.stats import bootstrap_ci, label_fraction_subsets, mean_std
from uslib.evaluation.tasks import HC_TASKS, EvalTask, synthetic_task
from uslib.registry import Registry

PROBE = "linear probe"
KNN = "kNN"
PARTIAL_TEST = "partial FT, best test epoch (USCL)"
PARTIAL_VAL = "partial FT, val-selected epoch"
PARTIAL_LAST = "partial FT, last epoch"
SUPERVISED = "full FT from scratch, last epoch"
SEG_FROZEN = "frozen + SegDecoder"

CLS_METRICS: tuple[str, ...] = ("accuracy", "balanced_acc", "f1_macro", "auc")
Rows = tuple[list[dict[str, Any]], dict[str, Any]]
PROTOCOLS: Registry[Rows] = Registry("protocol")
"""Protocol name -> ``fn(encoder, task, *, entry, profile, seed, **options) -> (rows, extras)``."""


def make_rows(
    task: EvalTask,
    entry: EncoderEntry,
    protocol: str,
    per_fold: list[dict[str, float]],
    *,
    profile: str,
    label_fraction: float = 1.0,
    n_test: int = 0,
    ci: dict[str, tuple[float, float]] | None = None,
) -> list[dict[str, Any]]:
    """One long-table row per metric: mean ± std over folds (+ CI where given)."""
    rows = []
    for metric in per_fold[0]:
        mean, std = mean_std([f[metric] for f in per_fold])
        lo, hi = (ci or {}).get(metric, (np.nan, np.nan))
        rows.append({
            "task": task.name, "data": task.data, "kind": task.kind, "protocol": protocol,
            "encoder": entry.name, "source": entry.source, "backbone": entry.architecture,
            "metric": metric, "value": mean, "std": std, "ci_low": lo, "ci_high": hi,
            "n_folds": len(per_fold), "n_test": n_test, "label_fraction": label_fraction,
            "profile": profile, "contamination": contamination(entry, task.data),
        })  # fmt: skip
    return rows


def _features(encoder: nn.Module, task: EvalTask, features: Features | None) -> Features:
    return features if features is not None else extract_features(encoder, task.records)


def _frozen_rows(
    task: EvalTask, entry: EncoderEntry, protocol: str, fit_fold: Callable[..., Any],
    feats: Features, *, fractions: tuple[float, ...], n_boot: int, profile: str, seed: int,
) -> Rows:  # fmt: skip
    """A probe ``fit_fold(train_feats, test_feats) -> ProbeResult`` over every fold and fraction.

    Extras: the summed test confusion matrix at 100 % labels.
    """
    per: dict[float, list[dict[str, float]]] = {}
    y, g, pred = [], [], []
    cm = np.zeros((task.num_classes, task.num_classes), dtype=np.int64)
    for tr, te in task.folds:
        test = feats.subset(te)
        for f, sub in label_fraction_subsets(
            feats.y[tr], feats.groups[tr], fractions, seed=seed
        ).items():
            res = fit_fold(feats.subset(tr[sub]), test)
            per.setdefault(f, []).append({m: res.metrics[m] for m in CLS_METRICS})
            if f == 1.0:
                y, g, pred, cm = (
                    [*y, test.y],
                    [*g, test.groups],
                    [*pred, res.y_pred],
                    cm + res.confusion,
                )
    rows = []
    for f, vals in per.items():
        ci = None
        if f == 1.0 and pred:
            acc = lambda a, b: float(np.mean(a == b))  # noqa: E731
            c = bootstrap_ci(np.concatenate(y), np.concatenate(pred), statistic=acc,
                             groups=np.concatenate(g), n_boot=n_boot, seed=seed)  # fmt: skip
            ci = {"accuracy": (c.low, c.high)}
        n = sum(len(te) for _, te in task.folds)
        rows += make_rows(
            task, entry, protocol, vals, profile=profile, label_fraction=f, n_test=n, ci=ci
        )
    return rows, {"confusion": cm}


@PROTOCOLS.register("linear_probe")
def linear_probe_protocol(
    encoder: nn.Module, task: EvalTask, *, entry: EncoderEntry, profile: str = "", seed: int = 0,
    fractions: tuple[float, ...] = (1.0,), n_boot: int = 200, features: Features | None = None,
    kind: str = "logreg",
) -> Rows:  # fmt: skip
    """Linear probe on frozen features (OpenUS §1.5, USCL ``linear_eval.py``) at each fraction."""
    fit = partial(linear_probe, num_classes=task.num_classes, kind=kind, seed=seed)
    return _frozen_rows(task, entry, PROBE, fit, _features(encoder, task, features),
                        fractions=fractions, n_boot=n_boot, profile=profile, seed=seed)  # fmt: skip


@PROTOCOLS.register("knn")
def knn_protocol(
    encoder: nn.Module, task: EvalTask, *, entry: EncoderEntry, profile: str = "", seed: int = 0,
    k: int = 20, n_boot: int = 200, features: Features | None = None,
) -> Rows:  # fmt: skip
    """Similarity-weighted cosine kNN on frozen features, all training labels."""
    fit = partial(knn_classify, k=k, num_classes=task.num_classes)
    rows, _ = _frozen_rows(task, entry, KNN, fit, _features(encoder, task, features),
                           fractions=(1.0,), n_boot=n_boot, profile=profile, seed=seed)  # fmt: skip
    return rows, {}


def partial_ft_protocol(
    encoder: nn.Module, task: EvalTask, *, entry: EncoderEntry, profile: str = "", seed: int = 0,
    cfg: EvalConfig | None = None, n_folds: int = 1, selects: tuple[str, ...] = ("test",),
    augment: bool = False, shared_run: bool = True, val_fraction: float = 0.2,
) -> Rows:  # fmt: skip
    """USCL's partial fine-tuning (``pocus.partial_ft_folds``) on the first ``n_folds`` folds.

    Rows: ``PARTIAL_TEST`` (best test epoch, the paper's rule) and ``PARTIAL_VAL`` (the honest
    rule) for the requested ``selects``, and ``PARTIAL_LAST`` (no selection) from the first.
    """
    folds = [task.split(k) for k in range(min(n_folds, len(task.folds)))]
    df = partial_ft_folds(encoder, folds, cfg or EvalConfig(), num_classes=task.num_classes,
                          selects=selects, augment_size=task.img_size if augment else None,
                          val_fraction=val_fraction, shared_run=shared_run, seed=seed)  # fmt: skip
    names = {"test": PARTIAL_TEST, "val": PARTIAL_VAL}
    n, rows = int(df.loc[df["select"] == selects[0], "n_test"].sum()), []
    for s in selects:
        part = df[df["select"] == s]
        rows += make_rows(task, entry, names[s], [{"accuracy": a} for a in part["accuracy"]],
                          profile=profile, n_test=n)  # fmt: skip
    last = df[df["select"] == selects[0]]["last_accuracy"]
    rows += make_rows(
        task, entry, PARTIAL_LAST, [{"accuracy": a} for a in last], profile=profile, n_test=n
    )
    return rows, {"per_fold": df}


PROTOCOLS.register("partial_ft")(partial_ft_protocol)
PROTOCOLS.register("uscl_pocus")(
    partial(partial_ft_protocol, selects=("test", "val"), augment=True, shared_run=False)
)


def _from_scratch(encoder: nn.Module, entry: EncoderEntry, seed: int, img_size: int) -> nn.Module:
    """A randomly initialised encoder of ``entry``'s architecture (a re-initialised copy of
    ``encoder`` when ``entry`` describes a checkpoint)."""
    if entry.source != "pretrained":
        return entry.build(seed, img_size=img_size)
    fresh = copy.deepcopy(encoder)
    torch.manual_seed(seed)
    for m in fresh.modules():
        if callable(getattr(m, "reset_parameters", None)):
            m.reset_parameters()
    return fresh


@PROTOCOLS.register("supervised")
def supervised_protocol(
    encoder: nn.Module, task: EvalTask, *, entry: EncoderEntry, profile: str = "", seed: int = 0,
    cfg: EvalConfig | None = None, n_folds: int = 1,
) -> Rows:  # fmt: skip
    """Full fine-tuning from random init (TinyUSFM recipe, ``cfg.lr`` as the peak learning
    rate): the supervised reference, reported at the last epoch."""
    cfg = cfg or EvalConfig()
    optim = default_finetune_optim(cfg, "full").replace(lr=cfg.lr)
    vals, n = [], 0
    for k in range(min(n_folds, len(task.folds))):
        train, test = task.split(k)
        res = finetune_classifier(_from_scratch(encoder, entry, seed, task.img_size), train, test,
                                  cfg, num_classes=task.num_classes, mode="full", select="test",
                                  seed=seed, optim=optim)  # fmt: skip
        vals.append({"accuracy": res.last_accuracy})
        n += len(test)
    return make_rows(task, entry, SUPERVISED, vals, profile=profile, n_test=n), {}


def _seg_values(res: Any, task: EvalTask) -> dict[str, float]:
    """Dice, IoU, HD95 (and HC error for fetal heads) of one ``SegResult``."""
    vals = {"dice": res.dice, "iou": res.iou, "hd95": res.hd95}
    if task.name in HC_TASKS:
        p = res.predictions
        err = head_circumference_errors(p["pred"], p["mask"], p["spacing"])
        vals["hc_error_mm"] = float(np.nanmean(err)) if np.isfinite(err).any() else np.nan
    return vals


@PROTOCOLS.register("segmentation")
def segmentation_protocol(
    encoder: nn.Module, task: EvalTask, *, entry: EncoderEntry, profile: str = "", seed: int = 0,
    cfg: EvalConfig | None = None, n_folds: int = 1, fractions: tuple[float, ...] = (1.0,),
    n_boot: int = 200,
) -> Rows:  # fmt: skip
    """Frozen encoder + ``SegDecoder`` on the first ``n_folds`` folds at each label fraction,
    epoch picked on a grouped validation split. Extras: the first fold's first four test
    predictions at 100 % labels (``overlay``: ``image, mask, pred``)."""
    per: dict[float, list[dict[str, float]]] = {}
    dice, groups, extras = [], [], {}
    for k in range(min(n_folds, len(task.folds))):
        tr, te = task.folds[k]
        subsets = label_fraction_subsets(
            np.zeros(len(tr), int), task.groups[tr], fractions, seed=seed
        )
        for f, sub in subsets.items():
            res = train_segmentation(
                encoder, [task.records[i] for i in tr[sub]], [task.records[i] for i in te],
                cfg or EvalConfig(), num_classes=task.num_classes, mode="frozen", select="val",
                seed=seed,
            )  # fmt: skip
            per.setdefault(f, []).append(_seg_values(res, task))
            if f == 1.0:
                dice.append(res.per_image["dice"].to_numpy())
                groups.append(task.groups[te][np.flatnonzero(res.predictions["has_mask"])])
                extras.setdefault(
                    "overlay", {key: res.predictions[key][:4] for key in ("image", "mask", "pred")}
                )
    rows = []
    for f, vals in per.items():
        ci = None
        if f == 1.0 and dice:
            c = bootstrap_ci(
                np.concatenate(dice), groups=np.concatenate(groups), n_boot=n_boot, seed=seed
            )
            ci = {"dice": (c.low, c.high)}
        n = sum(len(d) for d in dice)
        rows += make_rows(
            task, entry, SEG_FROZEN, vals, profile=profile, label_fraction=f, n_test=n, ci=ci
        )
    return rows, extras


@dataclass
class Evaluation:
    """Outcome of ``evaluate``: the long results table and the protocol's extras."""

    results: pd.DataFrame
    extras: dict[str, Any] = field(default_factory=dict)


def list_protocols(pattern: str = "*") -> list[str]:
    """Registered protocol names matching a shell-style ``pattern``."""
    return PROTOCOLS.list(pattern)


def evaluate(
    encoder: nn.Module | EncoderEntry,
    task: EvalTask | str,
    protocol: str = "linear_probe",
    *,
    entry: EncoderEntry | None = None,
    profile: str = "",
    seed: int = 0,
    **options: Any,
) -> Evaluation:
    """Run one registered protocol for one encoder on one task.

    Args:
        encoder: a backbone taking [0, 1] images (wrap a raw one with
            ``uslib.models.adapter.adapt_encoder`` for its ``input_norm``), or an
            ``EncoderEntry`` (built at the task's image size, adapter included).
        task: an ``EvalTask``, or a synthetic task name (``uslib.data.synthetic.TASKS``: 20 items
            per class at 64 px, 5 grouped folds; segmentation for ``"segmentation"``).
        protocol: a name of ``list_protocols()``.
        entry: labels of the rows (name, source, backbone, pretraining data); default from
            ``encoder``.
        profile: profile label of the rows.
        seed: seed of splits, heads and training.
        **options: the protocol's keyword options (see its docstring; ``None`` values dropped),
            e.g. ``fractions``, ``n_boot``, ``k``, ``cfg`` (``EvalConfig``), ``n_folds``,
            ``selects``, ``augment``, ``features``.

    Returns:
        ``Evaluation`` (``results``: ``report.RESULT_COLUMNS`` rows; ``extras``).
    """
    fn = PROTOCOLS.get(protocol)
    if isinstance(task, str):
        kind = "segmentation" if protocol == "segmentation" else "classification"
        task = synthetic_task(task, kind, n_per_class=20, img_size=64, folds=5, seed=seed)
    if isinstance(encoder, EncoderEntry):
        entry, encoder = encoder, encoder.build(seed, img_size=task.img_size)
    if entry is None:
        name = type(encoder).__name__
        entry = EncoderEntry(name=name, backbone=name)
    kw = {k: v for k, v in options.items() if v is not None}
    rows, extras = fn(encoder, task, entry=entry, profile=profile, seed=seed, **kw)
    return Evaluation(results_frame(rows), extras)

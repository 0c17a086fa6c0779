"""The benchmark's protocols applied to one (encoder, task) pair, each returning long-table rows.

* ``probe_rows``: linear probe and kNN on frozen features over grouped folds, with label
  efficiency (nested, patient-grouped subsets of each training fold);
* ``partial_rows``: USCL's partial fine-tuning (best-test-epoch and last-epoch accuracies);
* ``supervised_rows``: full fine-tuning from random init (the supervised reference);
* ``segmentation_rows``: frozen encoder + light decoder (Dice, IoU, HD95, HC error).

Per-fold values give mean ± std; pooled out-of-fold predictions give a patient-clustered
bootstrap 95 % CI of the headline metric.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from uslib.config import EvalConfig
from uslib.evaluation.discovery import EncoderEntry, contamination
from uslib.evaluation.features import Features
from uslib.evaluation.finetune import default_finetune_optim, finetune_classifier
from uslib.evaluation.probes import knn_classify, linear_probe
from uslib.evaluation.seg_metrics import head_circumference_errors
from uslib.evaluation.segmentation import train_segmentation
from uslib.evaluation.stats import bootstrap_ci, label_fraction_subsets, mean_std
from uslib.evaluation.tasks import HC_TASKS, EvalTask

PROBE = "linear probe"
KNN = "kNN"
PARTIAL_TEST = "partial FT, best test epoch (USCL)"
PARTIAL_LAST = "partial FT, last epoch"
SUPERVISED = "full FT from scratch, last epoch"
SEG_FROZEN = "frozen + SegDecoder"

CLS_METRICS: tuple[str, ...] = ("accuracy", "balanced_acc", "f1_macro", "auc")


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


def _accuracy_ci(y: np.ndarray, p: np.ndarray, g: np.ndarray, n_boot: int, seed: int) -> tuple:
    ci = bootstrap_ci(
        y, p, statistic=lambda a, b: float(np.mean(a == b)), groups=g, n_boot=n_boot, seed=seed
    )
    return ci.low, ci.high


def probe_rows(
    feats: Features,
    task: EvalTask,
    entry: EncoderEntry,
    *,
    fractions: tuple[float, ...],
    knn_k: int,
    n_boot: int,
    profile: str,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Linear probe (every label fraction) and kNN (all labels) over the task's folds.

    Returns:
        ``(rows, extras)``; extras hold the summed linear-probe confusion matrix (all labels).
    """
    per: dict[tuple[str, float], list[dict[str, float]]] = {}
    oof: dict[str, list[np.ndarray]] = {"y": [], "g": [], PROBE: [], KNN: []}
    cm = np.zeros((task.num_classes, task.num_classes), dtype=np.int64)
    for tr, te in task.folds:
        test = feats.subset(te)
        subsets = label_fraction_subsets(feats.y[tr], feats.groups[tr], fractions, seed=seed)
        for f, sub in subsets.items():
            res = linear_probe(feats.subset(tr[sub]), test, num_classes=task.num_classes, seed=seed)
            per.setdefault((PROBE, f), []).append({m: res.metrics[m] for m in CLS_METRICS})
            if f == 1.0:
                oof[PROBE].append(res.y_pred)
                cm += res.confusion
        knn = knn_classify(feats.subset(tr), test, k=knn_k, num_classes=task.num_classes)
        per.setdefault((KNN, 1.0), []).append({m: knn.metrics[m] for m in CLS_METRICS})
        oof[KNN].append(knn.y_pred)
        oof["y"].append(test.y)
        oof["g"].append(test.groups)
    y, g = np.concatenate(oof["y"]), np.concatenate(oof["g"])
    rows = []
    for (protocol, f), vals in per.items():
        ci = None
        if f == 1.0 and oof[protocol]:
            ci = {"accuracy": _accuracy_ci(y, np.concatenate(oof[protocol]), g, n_boot, seed)}
        rows += make_rows(
            task, entry, protocol, vals, profile=profile, label_fraction=f, n_test=len(y), ci=ci
        )
    return rows, {"confusion": cm}


def partial_rows(
    encoder: nn.Module,
    task: EvalTask,
    entry: EncoderEntry,
    cfg: EvalConfig,
    *,
    n_folds: int,
    profile: str,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """USCL's partial fine-tuning on the first ``n_folds`` folds: the paper's best-test-epoch
    accuracy and the selection-free last-epoch accuracy (notes §B.8, D-8)."""
    best, last, n = [], [], 0
    for k in range(min(n_folds, len(task.folds))):
        train, test = task.split(k)
        res = finetune_classifier(
            encoder,
            train,
            test,
            cfg,
            num_classes=task.num_classes,
            mode="partial",
            select="test",
            seed=seed,
        )
        best.append({"accuracy": res.accuracy})
        last.append({"accuracy": res.last_accuracy})
        n += len(test)
    return make_rows(task, entry, PARTIAL_TEST, best, profile=profile, n_test=n) + make_rows(
        task, entry, PARTIAL_LAST, last, profile=profile, n_test=n
    )


def supervised_rows(
    entry: EncoderEntry,
    task: EvalTask,
    cfg: EvalConfig,
    *,
    n_folds: int,
    profile: str,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Full fine-tuning of a randomly initialised encoder (TinyUSFM recipe, ``cfg.lr`` as the
    peak learning rate): the supervised reference, reported at the last epoch."""
    optim = default_finetune_optim(cfg, "full").replace(lr=cfg.lr)
    vals, n = [], 0
    for k in range(min(n_folds, len(task.folds))):
        train, test = task.split(k)
        res = finetune_classifier(
            entry.build(seed, img_size=int(task.records[0]["image"].shape[-1])),
            train,
            test,
            cfg,
            num_classes=task.num_classes,
            mode="full",
            select="test",
            seed=seed,
            optim=optim,
        )
        vals.append({"accuracy": res.last_accuracy})
        n += len(test)
    return make_rows(task, entry, SUPERVISED, vals, profile=profile, n_test=n)


def _seg_values(res: Any, task: EvalTask) -> dict[str, float]:
    """Dice, IoU, HD95 (and HC error for fetal heads) of one ``SegResult``."""
    vals = {"dice": res.dice, "iou": res.iou, "hd95": res.hd95}
    if task.name in HC_TASKS:
        p = res.predictions
        err = head_circumference_errors(p["pred"], p["mask"], p["spacing"])
        vals["hc_error_mm"] = float(np.nanmean(err)) if np.isfinite(err).any() else np.nan
    return vals


def segmentation_rows(
    encoder: nn.Module,
    task: EvalTask,
    entry: EncoderEntry,
    cfg: EvalConfig,
    *,
    n_folds: int,
    fractions: tuple[float, ...],
    n_boot: int,
    profile: str,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Frozen encoder + ``SegDecoder`` on the first ``n_folds`` folds at each label fraction.

    Returns:
        ``(rows, extras)``; extras hold the first fold's test predictions at 100 % labels
        (``image, mask, pred`` arrays, for overlays).
    """
    per: dict[float, list[dict[str, float]]] = {}
    dice_all, groups_all, extras = [], [], {}
    for k in range(min(n_folds, len(task.folds))):
        tr, te = task.folds[k]
        subsets = label_fraction_subsets(
            np.zeros(len(tr), int), task.groups[tr], fractions, seed=seed
        )
        for f, sub in subsets.items():
            res = train_segmentation(
                encoder, [task.records[i] for i in tr[sub]], [task.records[i] for i in te], cfg,
                num_classes=task.num_classes, mode="frozen", select="val", seed=seed,
            )  # fmt: skip
            per.setdefault(f, []).append(_seg_values(res, task))
            if f == 1.0:
                dice_all.append(res.per_image["dice"].to_numpy())
                groups_all.append(task.groups[te][np.flatnonzero(res.predictions["has_mask"])])
                overlay = {key: res.predictions[key][:4] for key in ("image", "mask", "pred")}
                extras.setdefault("overlay", overlay)
    rows = []
    for f, vals in per.items():
        ci = None
        if f == 1.0 and dice_all:
            c = bootstrap_ci(
                np.concatenate(dice_all),
                groups=np.concatenate(groups_all),
                n_boot=n_boot,
                seed=seed,
            )
            ci = {"dice": (c.low, c.high)}
        rows += make_rows(
            task,
            entry,
            SEG_FROZEN,
            vals,
            profile=profile,
            label_fraction=f,
            n_test=sum(len(d) for d in dice_all),
            ci=ci,
        )
    return rows, extras

"""Classification metrics with the papers' conventions stated (torchmetrics underneath).

All scores are fractions in [0, 1]; tables show them as percent (``PERCENT_METRICS``).

================  ===================================  ==========================================
name              definition                           used by
================  ===================================  ==========================================
``accuracy``      micro: correct / all items           USCL "total accuracy" (summed confusion
                                                       matrices, §B.8), OpenUS ACC, TinyUSFM acc
``balanced_acc``  macro-averaged recall                TinyUSFM (sklearn balanced accuracy, §2.4)
``f1_macro``      unweighted mean of per-class F1      OpenUS ``test_linear.py`` (§1.5), TinyUSFM
``auc``           binary: ROC AUC of class 1;          TinyUSFM (macro one-vs-rest for
                  multi-class: macro one-vs-rest AUC   multi-class, §2.4), PUMIT MedMNIST (§C.9)
================  ===================================  ==========================================

Classes absent from both the targets and the predictions are left out of macro averages
(torchmetrics' behaviour).
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional import classification as tmc

PERCENT_METRICS: frozenset[str] = frozenset(
    {"accuracy", "balanced_acc", "f1_macro", "auc", "dice", "iou"}
)
"""Metrics stored as fractions and shown as percent in tables and figures."""


def display_scale(metric: str) -> float:
    """Factor from the stored value to the shown one: 100 for ``PERCENT_METRICS``, else 1 (mm)."""
    return 100.0 if metric in PERCENT_METRICS else 1.0


def _t(x: np.ndarray | torch.Tensor | list) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def confusion_matrix(
    y_true: np.ndarray | torch.Tensor, y_pred: np.ndarray | torch.Tensor, num_classes: int
) -> np.ndarray:
    """(C, C) counts; rows = true class, columns = predicted class."""
    cm = tmc.multiclass_confusion_matrix(_t(y_pred).long(), _t(y_true).long(), num_classes)
    return cm.numpy().astype(np.int64)


def classification_metrics(
    y_true: np.ndarray | torch.Tensor,
    y_pred: np.ndarray | torch.Tensor,
    num_classes: int,
    *,
    proba: np.ndarray | torch.Tensor | None = None,
) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1 and (with ``proba``) AUC; see the module table.

    Args:
        y_true: (N,) integer classes.
        y_pred: (N,) predicted classes.
        num_classes: C.
        proba: optional (N, C) class probabilities for AUC.

    Returns:
        ``{"accuracy", "balanced_acc", "f1_macro"[, "auc"]}`` as floats in [0, 1].
    """
    t, p = _t(y_true).long(), _t(y_pred).long()
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"y_true {tuple(t.shape)} and y_pred {tuple(p.shape)} must be equal 1-D")
    out = {
        "accuracy": float((t == p).float().mean()),
        "balanced_acc": float(tmc.multiclass_recall(p, t, num_classes, average="macro")),
        "f1_macro": float(tmc.multiclass_f1_score(p, t, num_classes, average="macro")),
    }
    if proba is not None:
        out["auc"] = auc_score(t, proba, num_classes)
    return out


def auc_score(
    y_true: np.ndarray | torch.Tensor, proba: np.ndarray | torch.Tensor, num_classes: int
) -> float:
    """ROC AUC: class-1 AUC when binary, macro one-vs-rest AUC otherwise (NaN if one class only)."""
    t, pr = _t(y_true).long(), _t(proba).float()
    if len(torch.unique(t)) < 2:
        return float("nan")
    if num_classes == 2:
        return float(tmc.binary_auroc(pr[:, 1], t))
    return float(tmc.multiclass_auroc(pr, t, num_classes, average="macro"))


def per_class_precision_recall(
    y_true: np.ndarray | torch.Tensor, y_pred: np.ndarray | torch.Tensor, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class precision and recall, (C,) each (USCL reports both per class, §B.8)."""
    t, p = _t(y_true).long(), _t(y_pred).long()
    prec = tmc.multiclass_precision(p, t, num_classes, average="none").numpy()
    rec = tmc.multiclass_recall(p, t, num_classes, average="none").numpy()
    return prec, rec

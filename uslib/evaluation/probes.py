"""Probes on frozen features: a linear probe (logistic regression or a trained linear layer) and a
cosine-similarity kNN classifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import nn

from uslib.config import OptimConfig
from uslib.evaluation.features import Features
from uslib.evaluation.heads import HeadModel, fit_head, predict
from uslib.evaluation.metrics import classification_metrics, confusion_matrix

OPENUS_LINEAR_OPTIM = OptimConfig(
    optimizer="sgd",
    lr=1e-3,  # --lr * batch / 16 with batch 16
    momentum=0.9,
    weight_decay=0.0,
    schedule="cosine",
    epochs=150,
    batch_size=16,
    drop_last=False,
)
"""OpenUS's linear-probe recipe (notes §1.5: SGD momentum 0.9, lr 1e-3 at batch 16, wd 0, cosine
over 150 epochs), the default of ``linear_probe(kind="linear")``."""


@dataclass
class ProbeResult:
    """Test-set outcome of a probe.

    Attributes:
        accuracy: micro accuracy in [0, 1].
        metrics: ``classification_metrics`` (accuracy, balanced_acc, f1_macro, auc).
        y_true: (N,) test labels.
        y_pred: (N,) predictions.
        proba: (N, C) class probabilities (kNN: normalised vote weights).
        confusion: (C, C) confusion matrix.
    """

    accuracy: float
    metrics: dict[str, float]
    y_true: np.ndarray
    y_pred: np.ndarray
    proba: np.ndarray
    confusion: np.ndarray = field(repr=False)

    def to_frame(self) -> pd.DataFrame:
        """One-row DataFrame of ``metrics``."""
        return pd.DataFrame([self.metrics])


def _labelled(f: Features, name: str) -> Features:
    keep = np.flatnonzero(f.y >= 0)
    if len(keep) == 0:
        raise ValueError(f"{name} features have no labelled item")
    return f.subset(keep)


def _result(y_true: np.ndarray, proba: np.ndarray, num_classes: int) -> ProbeResult:
    y_pred = proba.argmax(1)
    m = classification_metrics(y_true, y_pred, num_classes, proba=proba)
    cm = confusion_matrix(y_true, y_pred, num_classes)
    return ProbeResult(m["accuracy"], m, y_true, y_pred, proba, cm)


def _fit_linear_layer(
    xtr: np.ndarray,
    ytr: np.ndarray,
    xte: np.ndarray,
    num_classes: int,
    optim: OptimConfig,
    seed: int,
) -> np.ndarray:
    """(N_test, C) probabilities of one ``nn.Linear`` trained on features by ``heads.fit_head``."""
    head = nn.Linear(xtr.shape[1], num_classes)
    nn.init.normal_(head.weight, std=0.01)  # OpenUS eval_linear.py init (notes §1.5)
    nn.init.zeros_(head.bias)
    feats = lambda x, y: [{"feats": torch.from_numpy(a).float(), "label": int(b)}  # noqa: E731
                          for a, b in zip(x, y)]  # fmt: skip
    model = fit_head(HeadModel(head), feats(xtr, ytr), optim, num_classes=num_classes,
                     seed=seed, collate_fn=None).model  # fmt: skip
    return predict(model.cpu(), feats(xte, np.zeros(len(xte))))["proba"]


def linear_probe(
    train: Features,
    test: Features,
    *,
    num_classes: int | None = None,
    kind: str = "logreg",
    C: float = 1.0,
    max_iter: int = 2000,
    standardize: bool = True,
    optim: OptimConfig | None = None,
    seed: int = 0,
) -> ProbeResult:
    """Linear classifier on frozen features, scored on the test features.

    Args:
        train: training features (unlabelled rows, ``y = -1``, are dropped).
        test: test features.
        num_classes: C (default: ``max(label) + 1`` over both sets).
        kind: ``"logreg"`` = sklearn multinomial logistic regression (L-BFGS, L2 with inverse
            strength ``C``), the USCL ``linear_eval.py`` style; ``"linear"`` = one ``nn.Linear``
            trained with cross-entropy by ``uslib.engine.fit`` under ``optim`` (OpenUS style).
        C: inverse L2 strength for ``"logreg"``.
        max_iter: L-BFGS iterations for ``"logreg"``.
        standardize: z-score features with the training mean/std first.
        optim: optimiser settings for ``"linear"`` (default ``OPENUS_LINEAR_OPTIM``).
        seed: seed of the solver / training run.

    Returns:
        ``ProbeResult`` on the test set.

    Ref: OpenUS §1.5 (linear probe on the frozen backbone); USCL §B.1 (``linear_eval.py``).
    """
    tr, te = _labelled(train, "train"), _labelled(test, "test")
    c = num_classes or int(max(tr.y.max(), te.y.max())) + 1
    xtr, xte = tr.x.astype(np.float64), te.x.astype(np.float64)
    if standardize:
        scaler = StandardScaler().fit(xtr)
        xtr, xte = scaler.transform(xtr), scaler.transform(xte)
    if kind == "logreg":
        clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
        # one BLAS thread: these problems are tiny, and threads cost ~10x on a shared 2-core box
        with threadpool_limits(1):
            clf.fit(xtr, tr.y)
            proba = np.zeros((len(te.y), c))
            proba[:, clf.classes_] = clf.predict_proba(xte)
    elif kind == "linear":
        proba = _fit_linear_layer(xtr, tr.y, xte, c, optim or OPENUS_LINEAR_OPTIM, seed)
    else:
        raise ValueError(f"kind must be 'logreg' or 'linear', got {kind!r}")
    return _result(te.y, proba, c)


def knn_classify(
    train: Features,
    test: Features,
    *,
    k: int = 20,
    num_classes: int | None = None,
    weighting: str = "similarity",
    temperature: float = 0.07,
) -> ProbeResult:
    """k-nearest-neighbour classification with cosine similarity.

    Features are L2-normalised; the k most similar training items vote. ``weighting="similarity"``
    weighs each vote by exp(s / T) (the DINO / InstDisc weighted kNN, T = 0.07);
    ``"uniform"`` counts votes.

    Args:
        train: training features (unlabelled rows dropped).
        test: test features.
        k: neighbours (capped at the training-set size).
        num_classes: C (default from the labels).
        weighting: ``"similarity"`` or ``"uniform"``.
        temperature: T of the similarity weighting.

    Returns:
        ``ProbeResult``; ``proba`` holds the normalised class votes.
    """
    tr, te = _labelled(train, "train"), _labelled(test, "test")
    c = num_classes or int(max(tr.y.max(), te.y.max())) + 1
    a = torch.nn.functional.normalize(torch.from_numpy(tr.x).float(), dim=1)
    b = torch.nn.functional.normalize(torch.from_numpy(te.x).float(), dim=1)
    sim = b @ a.T  # (N_test, N_train) cosine similarities
    top, idx = sim.topk(min(k, len(tr.y)), dim=1)
    if weighting == "similarity":
        w = torch.exp(top / temperature)
    elif weighting == "uniform":
        w = torch.ones_like(top)
    else:
        raise ValueError(f"weighting must be 'similarity' or 'uniform', got {weighting!r}")
    votes = torch.zeros(len(te.y), c)
    votes.scatter_add_(1, torch.from_numpy(tr.y)[idx], w)
    return _result(te.y, (votes / votes.sum(1, keepdim=True)).numpy(), c)

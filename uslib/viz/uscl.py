"""Figures of notebook 02 (USCL): sample pairs, the mixing weight, pretraining curves, folds.

Each function returns a ``matplotlib.figure.Figure``; saving is the caller's job
(``Run.save_figure``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from uslib.data.video import sample_mix_weights
from uslib.viz.style import styled


def _show(ax: Any, img: Any, title: str, normalised: bool) -> None:
    arr = np.asarray(img.detach().cpu() if hasattr(img, "detach") else img).squeeze()
    lo, hi = (-2.0, 2.0) if normalised else (0.0, 1.0)  # USCL normalisation: (x - .5) / .25
    ax.imshow(arr, cmap="gray", vmin=lo, vmax=hi)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


@styled
def plot_sample_pairs(dataset: Any, indices: Sequence[int] = (0, 1, 2)) -> Figure:
    """One row per video: the three sampled frames, then the two mixed positive views.

    Args:
        dataset: a ``SamplePairDataset`` (uses its ``explain``).
        indices: videos to show.

    Returns:
        A Figure with ``len(indices)`` rows and 5 columns (x1, anchor x2, x3, v1, v2).

    Ref: USCL §B.4 (SPG).
    """
    fig, axes = plt.subplots(len(indices), 5, figsize=(9, 1.9 * len(indices)), squeeze=False)
    for row, idx in zip(axes, indices):
        ex = dataset.explain(int(idx))
        t = ex["frame_idx"].tolist()
        names = ["x1", "anchor x2", "x3"]
        for k in range(3):
            frame = ex["frames"][min(k, len(ex["frames"]) - 1)]
            _show(row[k], frame, f"{names[k]} (t={t[k]})", normalised=False)
        w1, w3 = (float(w) for w in ex["weights"])
        _show(row[3], ex["view1"], f"v1: {w1:.2f}·x̃1 + {1 - w1:.2f}·x̃2", normalised=True)
        _show(row[4], ex["view2"], f"v2: {w3:.2f}·x̃3 + {1 - w3:.2f}·x̃2", normalised=True)
        tag = f"{ex['video_id'][-8:]}\nlabel {ex['label1']}"
        row[0].text(-0.08, 0.5, tag, transform=row[0].transAxes, rotation=90, va="center",
                    ha="right", fontsize=7)  # fmt: skip
    fig.suptitle("USCL sample pairs: frames of one video (raw) and the two positives", fontsize=9)
    fig.tight_layout()
    return fig


@styled
def plot_mix_weights(mode: str = "uscl", n: int = 5000, seed: int = 0) -> Figure:
    """Histogram of the sampler's mixing weights against the Beta density they follow.

    Ref: USCL §B.4 step 4 (Beta(0.5, 0.5)); Meta-USCL (Beta(3, 5)).
    """
    rng = np.random.default_rng(seed)
    draws = np.array([sample_mix_weights(rng, mode)[0] for _ in range(n)])
    fig, ax = plt.subplots(figsize=(4, 2.6))
    ax.hist(draws, bins=40, density=True, alpha=0.6, label=f"{n} draws ({mode})")
    x = np.linspace(0.005, 0.995, 200)
    a, b = (0.5, 0.5) if mode == "uscl" else (5.0, 3.0)  # weight of x1 is 1 - alpha, alpha~B(3,5)
    ax.plot(x, stats.beta(a, b).pdf(x), "k-", lw=1.2, label=f"Beta({a:g}, {b:g})")
    ax.set_xlabel("weight of the outer frame")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


@styled
def plot_pretrain_curves(history: Any) -> Figure:
    """Training loss parts per step and validation NT-Xent per epoch (best epoch marked).

    Args:
        history: an ``engine.History`` (``steps`` with ``loss``, ``nt_xent``, ``ce``; ``epochs``
            with ``val_nt_xent``).
    """
    steps = pd.DataFrame(history.steps)
    epochs = pd.DataFrame(history.epochs)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3))
    for key in ("loss", "nt_xent", "ce"):
        if key in steps:
            ax1.plot(steps["step"], steps[key], label=key, lw=1)
    ax1.set_xlabel("optimizer step")
    ax1.set_title("training loss", fontsize=9)
    ax1.legend(fontsize=7)
    if "val_nt_xent" in epochs and len(epochs):
        ax2.plot(epochs["epoch"], epochs["val_nt_xent"], "o-", ms=3, label="val NT-Xent (un-mixed)")
        best = epochs.loc[epochs["val_nt_xent"].idxmin()]
        ax2.axvline(
            best["epoch"], color="k", ls=":", lw=1, label=f"best epoch {int(best['epoch'])}"
        )
        ax2.legend(fontsize=7)
    ax2.set_xlabel("epoch")
    ax2.set_title("validation contrastive loss (model selection)", fontsize=9)
    fig.tight_layout()
    return fig


@styled
def plot_protocol(per_fold: pd.DataFrame, published: dict[str, float] | None = None) -> Figure:
    """Per-fold downstream accuracy for each initialisation and epoch-selection rule.

    Args:
        per_fold: rows with ``init``, ``select``, ``fold``, ``accuracy`` (in [0, 1]).
        published: optional ``{label: accuracy in %}`` drawn as horizontal reference lines.
    """
    groups = list(per_fold.groupby(["init", "select"], sort=False))
    folds = sorted(per_fold["fold"].unique())
    width = 0.8 / max(1, len(groups))
    fig, ax = plt.subplots(figsize=(8, 3))
    for g, ((init, select), df) in enumerate(groups):
        acc = df.set_index("fold").reindex(folds)["accuracy"] * 100
        ax.bar(np.arange(len(folds)) + g * width, acc, width, label=f"{init}, epoch by {select}")
    for k, (label, value) in enumerate((published or {}).items()):
        ax.axhline(value, color=f"C{k + 5}", ls="--", lw=1, label=label)
    ax.set_xticks(np.arange(len(folds)) + width * (len(groups) - 1) / 2)
    ax.set_xticklabels([f"fold {f}" for f in folds])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return fig


__all__ = ["plot_mix_weights", "plot_pretrain_curves", "plot_protocol", "plot_sample_pairs"]

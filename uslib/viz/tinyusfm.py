"""Figures and tables of notebook 05 (TinyUSFM): the coreset in a 2-D embedding, gradient curves
of selected and rejected samples, domain-masked examples with their spectra, the distillation
weights over training, the size table, the probe bars. Functions return Figures / DataFrames;
saving is the caller's job (``Run.save_figure``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from uslib.evaluation.cost import count_params, gflops
from uslib.ops.domain_masks import centred_log_spectrum, frequency_mask, spatial_mask
from uslib.viz.style import styled

PAPER_RATIO = {"params": 6.36, "gflops": 6.40}
"""TinyUSFM / USFM in % (abstract, notes §2.3): 5.52 M of 86 M params, 2.16 of 33.8 GFLOPs."""


def pca_2d(emb: np.ndarray) -> np.ndarray:
    """The first two principal components of the L2-normalised rows, (N, 2) (SVD, centred)."""
    x = np.asarray(emb, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


@styled
def plot_coreset_embedding(selections: Mapping[str, Any], emb: np.ndarray) -> Figure:
    """One panel per selection: the pool in 2-D PCA of the teacher embedding, coloured by the
    dual rank's k-means cluster; selected items filled and outlined, the rest faint.

    Args:
        selections: ``{name: CoresetSelection}``; the first must carry ``labels`` (dual rank).
        emb: teacher embeddings (N, D) the selections were computed from.
    """
    xy = pca_2d(emb)
    labels = next(iter(selections.values())).labels
    fig, axes = plt.subplots(1, len(selections), figsize=(3.6 * len(selections), 3.4),
                             squeeze=False)  # fmt: skip
    for ax, (name, sel) in zip(axes[0], selections.items()):
        chosen = np.zeros(len(xy), dtype=bool)
        chosen[sel.indices] = True
        ax.scatter(*xy[~chosen].T, c=labels[~chosen], cmap="tab20", s=6, alpha=0.15, lw=0)
        ax.scatter(*xy[chosen].T, c=labels[chosen], cmap="tab20", s=16, edgecolors="k", lw=0.4)
        n_cov = len(np.unique(labels[chosen]))
        ax.set_title(f"{name}: {chosen.sum()} of {len(xy)}, {n_cov}/{labels.max() + 1} clusters",
                     fontsize=8)  # fmt: skip
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("PC 2 (teacher embedding)")
    fig.tight_layout()
    return fig


@styled
def plot_gradient_curves(curves: np.ndarray, selected: np.ndarray, n_lines: int = 12) -> Figure:
    """Per-sample gradient-norm curves of the proxy warm-up: a few individual curves and the
    median with its 10-90 % band, for selected and rejected items.

    Args:
        curves: (N, E) gradient norms (``CoresetSelection.scores["curves"]``).
        selected: indices of the coreset.
    """
    chosen = np.zeros(len(curves), dtype=bool)
    chosen[selected] = True
    ep = np.arange(1, curves.shape[1] + 1)
    rng = np.random.default_rng(0)
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    for mask, name, colour in ((chosen, "selected", "tab:blue"), (~chosen, "rejected", "0.5")):
        g = curves[mask]
        for i in rng.choice(len(g), min(n_lines, len(g)), replace=False):
            ax.plot(ep, g[i], color=colour, lw=0.5, alpha=0.4)
        q = np.quantile(g, [0.1, 0.5, 0.9], axis=0)
        ax.fill_between(ep, q[0], q[2], color=colour, alpha=0.15)
        ax.plot(ep, q[1], color=colour, lw=2, label=f"{name} (n={len(g)}), median, 10-90 %")
    ax.set_xlabel("proxy warm-up epoch")
    ax.set_ylabel("per-sample ||dL/dW_head||")
    ax.set_xticks(ep)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


@styled
def plot_masked_examples(
    images: torch.Tensor, ratio: float, band: tuple[float, float], patch: int, seed: int = 0
) -> Figure:
    """Rows: original, spatially masked, frequency masked; each image beside its centred log
    spectrum (the removed annulus drawn on the frequency row). Masks from ``ops.domain_masks``.
    """
    g = torch.Generator().manual_seed(seed)
    x_spa, _ = spatial_mask(images, ratio, patch, generator=g)
    x_freq, _ = frequency_mask(images, *band)
    rows = {"original": images, f"spatial rho_s={ratio:g}": x_spa,
            f"frequency band-stop [{band[0]:g}, {band[1]:g}]": x_freq}  # fmt: skip
    n, s = len(images), images.shape[-1]
    fig, axes = plt.subplots(3, 2 * n, figsize=(1.5 * 2 * n, 4.8), squeeze=False)
    for r, (name, x) in enumerate(rows.items()):
        spec = centred_log_spectrum(x)
        for i in range(n):
            axes[r, 2 * i].imshow(x[i, 0], cmap="gray", vmin=0, vmax=1)
            axes[r, 2 * i + 1].imshow(spec[i, 0], cmap="magma")
            if r == 2:  # the annulus in centred pixel units: radius r * s / 2
                for rad in band:
                    ring = plt.Circle((s / 2, s / 2), rad * s / 2, fill=False, color="c", lw=0.6)
                    axes[r, 2 * i + 1].add_patch(ring)
        axes[r, 0].set_title(name, fontsize=8, loc="left")
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


@styled
def plot_weight_distribution(frame: pd.DataFrame) -> Figure:
    """Distillation weights over training: per-step 10/50/90 % quantiles of w (all blocks of
    the batch) and the strength lambda of the cosine ramp; per-block mean consistency beside."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.0, 2.8))
    a.fill_between(frame["step"], frame["w_q10"], frame["w_q90"], alpha=0.3, label="w 10-90 %")
    a.plot(frame["step"], frame["w_q50"], lw=1, label="w median")
    a.plot(frame["step"], frame["strength"], "k--", lw=1, label="strength lambda")
    a.axhline(1.0, color="0.6", lw=0.5)
    a.set_xlabel("optimizer step")
    a.set_ylabel("per-sample weight")
    a.legend(fontsize=7)
    for col in [c for c in frame.columns if c.startswith("consistency_b")]:
        b.plot(frame["step"], frame[col], lw=1, label=col.replace("consistency_", "block "))
    b.set_xlabel("optimizer step")
    b.set_ylabel("mean cos(h_spa, h_freq) (teacher)")
    b.legend(fontsize=7)
    fig.tight_layout()
    return fig


def size_table(
    student: torch.nn.Module, teacher: torch.nn.Module, img_size: int, in_chans: int
) -> pd.DataFrame:
    """Parameters and GFLOPs (multiply-adds, one image) of student and teacher, with the ratio
    beside the paper's 6.36 % / 6.40 % (``uslib.evaluation.cost``)."""
    rows = []
    for name, m in (("student", student), ("teacher", teacher)):
        rows.append({"model": name, "params_M": count_params(m) / 1e6,
                     "GFLOPs": gflops(m, img_size, in_chans)})  # fmt: skip
    df = pd.DataFrame(rows)
    ratio = 100 * df.iloc[0, 1:].astype(float) / df.iloc[1, 1:].astype(float)
    df.loc[len(df)] = ["student / teacher (%)", ratio["params_M"], ratio["GFLOPs"]]
    df.loc[len(df)] = ["paper (%)", PAPER_RATIO["params"], PAPER_RATIO["gflops"]]
    return df


@styled
def plot_probe(table: pd.DataFrame) -> Figure:
    """Probe accuracy with 95 % CI per encoder (columns ``encoder, accuracy, ci_low, ci_high``)."""
    fig, ax = plt.subplots(figsize=(1.2 * len(table) + 1.5, 2.8))
    y = table["accuracy"].to_numpy()
    err = np.stack([y - table["ci_low"].to_numpy(), table["ci_high"].to_numpy() - y])
    ax.bar(table["encoder"], y, yerr=err, capsize=4, color="tab:blue")
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.tick_params(axis="x", labelsize=7, rotation=20)
    ax.set_title("linear probe on frozen features (95 % bootstrap CI)", fontsize=9)
    fig.tight_layout()
    return fig

"""Figures of notebook 06 (SPAD-ViT / PUMIT): tokenization at several spacings, tokenizer
reconstructions, codebook usage, training curves and the downstream probe.

Each function returns a ``matplotlib.figure.Figure``; saving is the caller's job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from uslib.ops.anisotropy import depth_patch
from uslib.viz.style import styled


def _np(x: Any) -> np.ndarray:
    return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)


@styled
def plot_tokenization(records: Sequence[Mapping[str, Any]], patch: int) -> Figure:
    """Per record: the middle slice with its p x p token grid (top) and a physical-scale side
    view (depth x width) with the adaptive depth patch ``d = max(p >> aniso_d, 1)`` (bottom).

    Args:
        records: volume records (``image`` (1, D, H, W), ``spacing_zyx``, ``aniso_d``).
        patch: the ViT patch p.

    Ref: PUMIT notes §C.2-C.3 (aniso_d, effective patch table).
    """
    fig, axes = plt.subplots(2, len(records), figsize=(2.6 * len(records), 5.2), squeeze=False)
    for k, rec in enumerate(records):
        vol, a = _np(rec["image"])[0], int(rec["aniso_d"])
        z, y, x = (float(s) for s in rec["spacing_zyx"])
        dd, h, w = vol.shape
        d = depth_patch(patch, a)
        top, side = axes[0, k], axes[1, k]
        top.imshow(vol[dd // 2], cmap="gray", vmin=0, vmax=1)
        for t in range(patch, w, patch):
            top.axvline(t - 0.5, color="y", lw=0.6)
            top.axhline(t - 0.5, color="y", lw=0.6)
        grid = (dd // d, h // patch, w // patch)
        ratio = "2-D" if z > 1e6 else f"z/xy = {z / y:.1f}"
        top.set_title(f"{ratio}: aniso_d {a}\npatch {d}x{patch}x{patch}, grid {grid}", fontsize=8)
        zs = min(z, 4.0 * y * max(dd, 1))  # 2-D: draw the single slice at a finite thickness
        side.imshow(vol[:, h // 2], cmap="gray", vmin=0, vmax=1, aspect="equal",
                    extent=(0, w * x, dd * zs, 0))  # fmt: skip
        for t in range(d, dd, d):
            side.axhline(t * zs, color="c", lw=0.8)
        for t in range(patch, w, patch):
            side.axvline(t * x, color="y", lw=0.6)
        side.set_xlabel("width (mm)", fontsize=7)
        side.set_ylabel("elevation (mm)", fontsize=7)
        side.tick_params(labelsize=6)
        top.set_axis_off()
    fig.suptitle("one weight set, several spacings: SPAD token grids (top: slice, bottom: side)",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    return fig


@styled
def plot_reconstructions(target: torch.Tensor, recon: torch.Tensor, n: int = 4) -> Figure:
    """Input (top) and tokenizer reconstruction (bottom) of the middle slice of ``n`` items.

    Args:
        target, recon: (B, C, D, H, W) in [-1, 1] (``SPADTokenizer.tokenize`` outputs).
    """
    t, r = _np(target), _np(recon)
    n = min(n, len(t))
    fig, axes = plt.subplots(2, n, figsize=(1.8 * n, 3.8), squeeze=False)
    for k in range(n):
        mid = t.shape[2] // 2
        for row, arr, name in ((0, t, "input"), (1, r, "reconstruction")):
            axes[row, k].imshow(arr[k, 0, mid], cmap="gray", vmin=-1, vmax=1)
            axes[row, k].set_title(name, fontsize=8)
            axes[row, k].set_axis_off()
    err = float(np.abs(t - r).mean())
    fig.suptitle(f"SPAD-VT reconstructions (mean |x - x_hat| = {err:.3f} on [-1, 1])", fontsize=9)
    fig.tight_layout()
    return fig


@styled
def plot_codebook_usage(probs: torch.Tensor) -> Figure:
    """Sorted mean code probability (usage) and the per-token max probability (confidence).

    Args:
        probs: (N, L, K) or (M, K) per-token code distributions.
    """
    p = _np(probs).reshape(-1, np.asarray(probs.shape)[-1])
    pbar = np.sort(p.mean(0))[::-1]
    perplexity = float(np.exp(-(pbar * np.log(np.clip(pbar, 1e-12, None))).sum()))
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 2.8))
    a.bar(np.arange(len(pbar)), pbar, width=1.0)
    a.set_yscale("log")
    a.set_xlabel("code (sorted by usage)")
    a.set_ylabel("mean probability")
    a.set_title(f"codebook usage: perplexity {perplexity:.1f} of {len(pbar)}", fontsize=9)
    b.hist(p.max(1), bins=30, range=(0, 1))
    b.set_xlabel("max code probability per token")
    b.set_title("per-token confidence", fontsize=9)
    fig.tight_layout()
    return fig


@styled
def plot_training_curves(frames: Mapping[str, pd.DataFrame], keys: Sequence[str]) -> Figure:
    """One panel per (run, key) group: logged step values of each run (``History.to_frame``)."""
    fig, axes = plt.subplots(1, len(frames), figsize=(4.2 * len(frames), 2.8), squeeze=False)
    for ax, (name, df) in zip(axes[0], frames.items(), strict=True):
        for key in keys:
            if key in df and df[key].notna().any():
                ax.plot(df["step"], df[key], label=key, lw=1)
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


@styled
def plot_probe(table: pd.DataFrame) -> Figure:
    """Probe accuracy with 95 % CI per encoder (columns ``encoder, accuracy, low, high``)."""
    fig, ax = plt.subplots(figsize=(4.5, 2.6))
    y = table["accuracy"].to_numpy()
    err = np.stack([y - table["low"].to_numpy(), table["high"].to_numpy() - y])
    ax.bar(table["encoder"], y, yerr=err, capsize=4, color=["0.6", "tab:blue"][: len(y)])
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.set_title("linear probe on frozen features (95 % bootstrap CI)", fontsize=9)
    fig.tight_layout()
    return fig

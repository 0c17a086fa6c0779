"""Figures and tables of notebook 04 (MAE / DMAE): reconstructions at several masking ratios,
linear-probe accuracy against the masking ratio, pretraining losses, the paper's table beside
ours. Functions return Figures / DataFrames; saving is the caller's job (``Run.save_figure``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from uslib.viz.style import styled

PAPER_ROWS: dict[str, tuple[str, float | None]] = {
    "dmae_in1k_75": ("DMAE", 0.75),
    "dmae_in1k_95": ("DMAE", 0.95),
    "dmae_in1k_98": ("DMAE", 0.98),
    "dmae_in1k_baseline_ft_distill": ("fine-tuned teacher distilled", None),
}
"""Published DMAE rows of ``uslib/evaluation/published.csv`` (notes §A.7) and their setting."""


def _gray(ax: Any, img: Any, title: str = "") -> None:
    ax.imshow(np.asarray(img).squeeze(), cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


@styled
def plot_reconstructions(recons: Mapping[float, Mapping[str, Any]], n_images: int = 4) -> Figure:
    """One row per masking ratio: for each image, the masked input and the reconstruction
    (visible patches pasted back), plus the original in the first row's titles.

    Args:
        recons: ``{mask_ratio: MAE.reconstruct(...) output}`` (same images for every ratio).
        n_images: images shown per row.

    Returns:
        A Figure with ``len(recons)`` rows and ``1 + 2 * n_images`` columns.

    Ref: DMAE notes §A.3 (masking), D-4 (visible-patch counts).
    """
    ratios = list(recons)
    n = min(n_images, len(next(iter(recons.values()))["original"]))
    fig, axes = plt.subplots(len(ratios), 1 + 2 * n, figsize=(1.3 * (1 + 2 * n), 1.5 * len(ratios)),
                             squeeze=False)  # fmt: skip
    for r, ratio in enumerate(ratios):
        out = recons[ratio]
        keep = int((~out["mask"][0]).sum())
        _gray(axes[r, 0], out["original"][0], "original")
        axes[r, 0].text(-0.15, 0.5, f"{ratio:.0%}\n{keep} visible", transform=axes[r, 0].transAxes,
                        ha="right", va="center", fontsize=8)  # fmt: skip
        for i in range(n):
            _gray(axes[r, 1 + 2 * i], out["masked"][i], "masked" if r == 0 else "")
            _gray(axes[r, 2 + 2 * i], out["pasted"][i], "reconstruction" if r == 0 else "")
    fig.tight_layout()
    return fig


@styled
def plot_probe_vs_ratio(df: pd.DataFrame, random_acc: float | None = None) -> Figure:
    """Linear-probe accuracy (with CI bars) against the pretraining masking ratio, per student.

    Args:
        df: rows with ``student``, ``mask_ratio``, ``accuracy`` and optional ``ci_low`` /
            ``ci_high`` (fractions in [0, 1]).
        random_acc: accuracy of the random-init encoder (dashed line).

    Returns:
        A Figure.
    """
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name, g in df.sort_values("mask_ratio").groupby("student", sort=False):
        x, y = 100 * g["mask_ratio"].to_numpy(), 100 * g["accuracy"].to_numpy()
        err = None
        if {"ci_low", "ci_high"} <= set(g.columns):
            err = 100 * np.abs(
                np.stack([g["accuracy"] - g["ci_low"], g["ci_high"] - g["accuracy"]])
            )
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=str(name))
    if random_acc is not None:
        ax.axhline(100 * random_acc, ls="--", color="grey", label="random init")
    ax.set_xlabel("pretraining mask ratio (%)")
    ax.set_ylabel("linear-probe accuracy (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


@styled
def plot_losses(histories: Mapping[str, Any], key: str = "loss") -> Figure:
    """Per-step training curves of several runs (``History.to_frame()`` rows with ``key``)."""
    fig, ax = plt.subplots(figsize=(4.5, 3.0))
    for name, hist in histories.items():
        steps = hist.to_frame()
        ax.plot(steps["step"], steps[key], label=name, lw=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(key)
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def paper_table(published: pd.DataFrame, ours: pd.DataFrame) -> pd.DataFrame:
    """The paper's DMAE rows (§A.7) beside our probe accuracies at the same masking ratios.

    Args:
        published: ``published_numbers("DMAE", "ImageNet-1k")``.
        ours: rows with ``student`` (``"MAE-only"`` / ``"DMAE"``), ``mask_ratio``,
            ``accuracy`` (fraction).

    Returns:
        One row per published setting: ``setting``, ``mask_ratio``, ``paper top-1 (IN-1k,
        fine-tuned)``, ``ours DMAE probe``, ``ours MAE-only probe`` (percent).
    """
    acc = ours.pivot_table(index="mask_ratio", columns="student", values="accuracy")
    rows = []
    for rid, (setting, ratio) in PAPER_ROWS.items():
        hit = published[published["id"] == rid]
        ours_row = acc.loc[ratio] if ratio is not None and ratio in acc.index else None
        rows.append({
            "setting": setting if ratio is None else f"{setting} {ratio:.0%}",
            "mask_ratio": ratio,
            "paper top-1 (IN-1k, fine-tuned)": float(hit["value"].iloc[0]) if len(hit) else None,
            "ours DMAE probe": None if ours_row is None else 100 * ours_row.get("DMAE", np.nan),
            "ours MAE-only probe": None if ours_row is None else 100 * ours_row.get("MAE-only",
                                                                                    np.nan),
        })  # fmt: skip
    return pd.DataFrame(rows)

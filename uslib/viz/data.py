"""Figures of notebook 01 (dataset assembly): catalog, manifest counts, samples, duplicates,
splits. Every function returns a ``matplotlib.figure.Figure`` and never shows or saves it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from uslib.data.sources import load_record
from uslib.viz.style import styled


@styled
def plot_catalog(cat: pd.DataFrame) -> Figure:
    """Ultrasound images per organ in each paper's data (left, log scale) and datasets per access
    level (right), from ``uslib.data.catalog.load_catalog()``."""
    # US rows of the papers with a single organ (aggregates such as US-4 would double count)
    us = cat[(cat["modality"] == "US") & (cat["paper"] != "uslib") & (cat["organ"] != "")]
    us = us[~us["organ"].str.contains(";")]
    imgs = us.groupby(["organ", "paper"], as_index=False)["n_images"].sum()
    imgs = imgs[imgs["n_images"] > 0].sort_values("n_images", ascending=False)
    access = cat[cat["paper"] != "uslib"].drop_duplicates(["dataset_id", "paper"])
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 5), width_ratios=(3, 2))
    sns.barplot(imgs, y="organ", x="n_images", hue="paper", ax=ax0)
    ax0.set(xscale="log", xlabel="images (as listed)", ylabel="", title="Ultrasound data per organ")
    order = ["public", "registration", "private", "never released", "unknown"]
    sns.countplot(access, y="paper", hue="access", hue_order=order, ax=ax1)
    ax1.set(xlabel="datasets", ylabel="", title="Access")
    fig.tight_layout()
    return fig


@styled
def plot_manifest_counts(df: pd.DataFrame) -> Figure:
    """Manifest rows per dataset, coloured by organ (``Manifest.to_pandas()``)."""
    counts = df.groupby(["dataset", "organ"], as_index=False).size()
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * len(counts)))
    sns.barplot(counts, y="dataset", x="size", hue="organ", dodge=False, ax=ax)
    ax.set(xlabel="images", ylabel="", title="Images per dataset and organ")
    for c in ax.containers:
        ax.bar_label(c, fontsize=8, padding=2)
    fig.tight_layout()
    return fig


def _show(ax: Any, rec: dict[str, Any], title: str) -> None:
    ax.imshow(rec["image"][0].numpy(), cmap="gray", vmin=0, vmax=1)
    if rec["has_mask"] and rec["mask"].any():
        ax.contour(rec["mask"].numpy() > 0, levels=[0.5], colors="r", linewidths=0.8)
    ax.set_title(title, fontsize=7)
    ax.axis("off")


@styled
def plot_sample_grid(
    items: Sequence[dict[str, Any]], n_per_dataset: int = 4, img_size: int = 96, seed: int = 0
) -> Figure:
    """A row of random samples per dataset with mask outlines (red) and class names.

    Args:
        items: manifest items (``Manifest.items()``).
        n_per_dataset: columns.
        img_size: display size (padded to square, aspect kept).
        seed: which samples.
    """
    names = sorted({it["dataset"] for it in items})
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(len(names), n_per_dataset, figsize=(1.6 * n_per_dataset,
                             1.7 * len(names)), squeeze=False)  # fmt: skip
    for row, name in zip(axes, names):
        pool = [it for it in items if it["dataset"] == name]
        pick = rng.choice(len(pool), size=min(n_per_dataset, len(pool)), replace=False)
        for ax in row:
            ax.axis("off")
        for ax, k in zip(row, pick):
            it = pool[int(k)]
            _show(ax, load_record(it, img_size), f"{name}\n{it['label_name'] or 'unlabelled'}")
    fig.tight_layout()
    return fig


@styled
def plot_duplicate_pairs(
    pairs: pd.DataFrame, items: Sequence[dict[str, Any]], n: int = 4, img_size: int = 96
) -> Figure:
    """The ``n`` closest near-duplicate pairs side by side, with their Hamming distance.

    Args:
        pairs: ``uslib.data.dedup.near_duplicates`` output.
        items: manifest items, to load the images by ``index_a`` / ``index_b``.
    """
    # pairs across groups first: those are the surprising ones (frames of a clip are expected)
    order = pairs.assign(_same=pairs["relation"] == "same group")
    shown = order.sort_values(["_same", "distance"], kind="stable").head(n)
    fig, axes = plt.subplots(max(len(shown), 1), 2, figsize=(4, 2 * max(len(shown), 1)),
                             squeeze=False)  # fmt: skip
    if shown.empty:
        for ax in axes.ravel():
            ax.axis("off")
        axes[0, 0].text(0.5, 0.5, "no near-duplicates", ha="center", transform=axes[0, 0].transAxes)
    for (ax_a, ax_b), r in zip(axes, shown.itertuples()):
        _show(ax_a, load_record(items[r.index_a], img_size), f"{r.dataset_a} ({r.relation})")
        _show(ax_b, load_record(items[r.index_b], img_size), f"Hamming distance {r.distance}")
    fig.tight_layout()
    return fig


@styled
def plot_split_table(df: pd.DataFrame, split_col: str = "split", by: str = "dataset") -> Figure:
    """Heatmap of row counts per ``by`` value (rows) and split (columns)."""
    table = pd.crosstab(df[by], df[split_col])
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * table.shape[1], 0.8 + 0.45 * table.shape[0]))
    sns.heatmap(table, annot=True, fmt="d", cmap="Blues", cbar=False, ax=ax)
    ax.set(xlabel=split_col, ylabel="", title=f"Images per {by} and {split_col}")
    fig.tight_layout()
    return fig

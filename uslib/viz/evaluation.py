"""Figures of notebook 07 (evaluation): label-efficiency curves, bar charts with confidence
intervals, segmentation overlays and the cost table.

Each function takes the long results table of ``uslib.evaluation.report`` (or plain arrays) and
returns a ``matplotlib.figure.Figure`` built without pyplot state; saving is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from uslib.evaluation.metrics import PERCENT_METRICS
from uslib.evaluation.report import human_name


def _scale(metric: str) -> float:
    return 100.0 if metric in PERCENT_METRICS else 1.0


def _ylabel(metric: str) -> str:
    return f"{metric} (%)" if metric in PERCENT_METRICS else f"{metric} (mm)"


def plot_label_efficiency(
    results: pd.DataFrame,
    *,
    task: str,
    metric: str,
    protocol: str | None = None,
    published: pd.DataFrame | None = None,
    title: str | None = None,
) -> Figure:
    """Metric versus the percentage of training labels, one line per encoder (mean ± std band).

    Args:
        results: long results table with ``label_fraction``, ``value``, ``std``.
        task: task to plot.
        metric: metric to plot.
        protocol: restrict to one protocol (default: all rows of the task and metric).
        published: optional published rows (``label_fraction``, ``value`` in %) drawn as a dashed
            reference, e.g. OpenUS's Fig. 4 curve.
        title: axes title (default ``"<task>: <metric>"``).

    Returns:
        A Figure with one axes (x: % labels, log scale).

    Ref: OpenUS notes §1.6 (label-efficiency curves).
    """
    df = results[(results["task"] == task) & (results["metric"] == metric)]
    if protocol is not None:
        df = df[df["protocol"] == protocol]
    fig = Figure(figsize=(5.0, 3.6), layout="constrained")
    ax = fig.subplots()
    s = _scale(metric)
    for enc, g in df.groupby("encoder", sort=False):
        g = g.sort_values("label_fraction")
        x, y = 100 * g["label_fraction"].to_numpy(float), s * g["value"].to_numpy(float)
        sd = s * g["std"].fillna(0.0).to_numpy(float)
        ax.plot(x, y, marker="o", label=human_name(str(enc), str(g["backbone"].iloc[0])))
        ax.fill_between(x, y - sd, y + sd, alpha=0.15)
    if published is not None and len(published):
        p = published.sort_values("label_fraction")
        ax.plot(100 * p["label_fraction"], p["value"], "k--", marker="s", label="paper")
    ax.set_xscale("log")
    ticks = sorted(set(100 * df["label_fraction"].dropna().astype(float)))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("training labels (%)")
    ax.set_ylabel(_ylabel(metric))
    what = f"{protocol}, {metric}" if protocol else metric
    ax.set_title(title or f"{task}: {what} (band: ± std over folds)", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return fig


def plot_metric_bars(
    results: pd.DataFrame,
    *,
    metric: str,
    tasks: Sequence[str] | None = None,
    protocol: str | None = None,
    title: str | None = None,
) -> Figure:
    """Grouped bars: one group per task, one bar per encoder, 95 % CI (else ± std) error bars.

    Args:
        results: long results table; rows at label fraction 1 are used.
        metric: metric to plot.
        tasks: tasks to show (default: all with this metric).
        protocol: restrict to one protocol.
        title: axes title.

    Returns:
        A Figure with one axes.
    """
    df = results[(results["metric"] == metric) & (results["label_fraction"].fillna(1.0) == 1.0)]
    if protocol is not None:
        df = df[df["protocol"] == protocol]
    tasks = list(tasks) if tasks is not None else list(dict.fromkeys(df["task"]))
    encoders = list(dict.fromkeys(df["encoder"]))
    fig = Figure(figsize=(max(4.0, 1.6 * len(tasks) + 2), 3.6), layout="constrained")
    ax = fig.subplots()
    s, width = _scale(metric), 0.8 / max(1, len(encoders))
    for k, enc in enumerate(encoders):
        sub = df[df["encoder"] == enc].set_index("task").reindex(tasks)
        y = s * sub["value"].to_numpy(float)
        has_ci = sub["ci_low"].notna().to_numpy()
        lo = np.where(
            has_ci, y - s * sub["ci_low"].to_numpy(float), s * sub["std"].fillna(0).to_numpy(float)
        )
        hi = np.where(
            has_ci, s * sub["ci_high"].to_numpy(float) - y, s * sub["std"].fillna(0).to_numpy(float)
        )
        x = np.arange(len(tasks)) + (k - (len(encoders) - 1) / 2) * width
        label = human_name(str(enc), str(df.loc[df["encoder"] == enc, "backbone"].iloc[0]))
        ax.bar(x, y, width, yerr=np.vstack([lo, hi]), capsize=2, label=label)
    ax.set_xticks(np.arange(len(tasks)), tasks)
    ax.set_ylabel(_ylabel(metric))
    what = f"{protocol}, {metric}" if protocol else metric
    ax.set_title(title or f"{what} (error bars: 95 % bootstrap CI over test items)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncols=2)
    return fig


def plot_segmentation_overlays(
    images: np.ndarray,
    masks: np.ndarray,
    preds: np.ndarray,
    *,
    titles: Sequence[str] | None = None,
    n: int = 4,
) -> Figure:
    """Images with the ground-truth outline (green) and the predicted mask (red, translucent).

    Args:
        images: (N, H, W) grey images in [0, 1].
        masks: (N, H, W) ground-truth label maps.
        preds: (N, H, W) predicted label maps.
        titles: optional per-image titles (e.g. Dice).
        n: number of images shown (first n).

    Returns:
        A Figure with one row of ``min(n, N)`` panels.
    """
    k = max(1, min(n, len(images)))
    fig = Figure(figsize=(2.2 * k, 2.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, k))
    for i, ax in enumerate(axes):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=1)
        ax.imshow(np.ma.masked_where(preds[i] == 0, preds[i]), cmap="autumn", alpha=0.4)
        if masks[i].any():
            ax.contour(masks[i] > 0, levels=[0.5], colors="lime", linewidths=0.8)
        ax.set_title(titles[i] if titles else f"#{i}", fontsize=8)
        ax.set_axis_off()
    return fig


def plot_cost_table(cost: pd.DataFrame, *, title: str = "cost") -> Figure:
    """The cost table (params, GFLOPs, images/s per encoder) drawn as a table with bars.

    Args:
        cost: rows per backbone with columns ``backbone, params_m, gflops, images_per_s``.
        title: figure title.

    Returns:
        A Figure: bar charts of the three quantities, one panel each.
    """
    cols = [c for c in ("params_m", "gflops", "images_per_s") if c in cost.columns]
    fig = Figure(figsize=(3.2 * len(cols), 0.35 * len(cost) + 1.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(cols), sharey=True))
    names = cost["backbone"].astype(str).tolist()
    labels = {"params_m": "parameters (M)", "gflops": "GFLOPs / image", "images_per_s": "images/s"}
    if "gflops_img_size" in cost.columns:
        labels["gflops"] += f" ({int(cost['gflops_img_size'].max())} px)"
    if {"img_size", "threads"} <= set(cost.columns):
        r = cost.iloc[0]
        labels["images_per_s"] += f" ({int(r['img_size'])} px, {int(r['threads'])} threads)"
    for ax, col in zip(axes, cols):
        vals = cost[col].to_numpy(float)
        ax.barh(names, vals, color="tab:blue")
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:.3g}", va="center", fontsize=7)
        ax.set_xlabel(labels[col])
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    return fig


def plot_confusion(
    cm: np.ndarray, class_names: Sequence[str] | None = None, title: str = ""
) -> Figure:
    """Row-normalised confusion matrix (rows = true class) with counts."""
    cm = np.asarray(cm)
    names = list(class_names) if class_names else [str(i) for i in range(len(cm))]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(1.0 + 0.6 * len(cm), 0.8 + 0.6 * len(cm)), layout="constrained")
    ax = fig.subplots()
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(
            j,
            i,
            str(v),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if norm[i, j] > 0.5 else "black",
        )
    ax.set_xticks(range(len(names)), names, rotation=45, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=8)
    return fig


def plot_task_examples(tasks: Sequence[Any], n: int = 4) -> Figure:
    """One row per task: ``n`` images of its pool, mask outlines (green) on segmentation tasks.

    Args:
        tasks: ``uslib.evaluation.tasks.EvalTask`` objects.
        n: images per task.

    Returns:
        A Figure of ``len(tasks)`` x ``n`` panels titled with the class or structure.
    """
    rows = max(1, len(tasks))
    fig = Figure(figsize=(1.8 * n, 1.9 * rows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, n, squeeze=False))
    for r, task in enumerate(tasks):
        for c in range(n):
            ax = axes[r, c]
            ax.set_axis_off()
            if c >= len(task.records):
                continue
            rec = task.records[c * max(1, len(task.records) // n)]
            ax.imshow(np.asarray(rec["image"][0]), cmap="gray", vmin=0, vmax=1)
            if task.kind == "segmentation":
                ax.contour(np.asarray(rec["mask"]) > 0, levels=[0.5], colors="lime", linewidths=0.8)
                label = task.data
            else:
                label = task.class_names[int(rec["label"])]
            ax.set_title(f"{task.name}: {label}" if c == 0 else label, fontsize=7)
    return fig

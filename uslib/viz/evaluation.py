"""Figures of notebook 07 (evaluation): label-efficiency curves, scores with confidence
intervals, segmentation overlays and the cost chart, all in the style of ``uslib.viz.style``.

Each function takes the long results table of ``uslib.evaluation.report`` (or plain arrays) and
returns a ``matplotlib.figure.Figure`` built without pyplot state; saving is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from uslib.evaluation.metrics import display_scale
from uslib.evaluation.report import backbone_label, human_name
from uslib.evaluation.tasks import chance_level
from uslib.viz.style import (
    BAND_CAPTION,
    CHANCE_LABEL,
    CI_CAPTION,
    STD_CAPTION,
    encoder_style,
    metric_label,
    score_axis,
    styled,
)


def _chance(df: pd.DataFrame, metric: str) -> float | None:
    """1/K of the rows' classification set for accuracy-like metrics, else None."""
    if metric not in ("accuracy", "balanced_acc") or "data" not in df.columns or df.empty:
        return None
    return chance_level(str(df["data"].iloc[0]))


def _backbone_groups(df: pd.DataFrame) -> dict[str, list[str]]:
    """Backbone label -> its encoders, pretrained first and the random-init twin last."""
    groups: dict[str, list[str]] = {}
    for enc, g in df.groupby("encoder", sort=False):
        groups.setdefault(backbone_label(str(g["backbone"].iloc[0])), []).append(str(enc))
    return {b: sorted(encs, key=lambda e: e.startswith("random:")) for b, encs in groups.items()}


def _name(df: pd.DataFrame, enc: str) -> str:
    return human_name(enc, str(df.loc[df["encoder"] == enc, "backbone"].iloc[0]))


@styled
def plot_label_efficiency(
    results: pd.DataFrame,
    *,
    task: str,
    metric: str,
    protocol: str | None = None,
    published: pd.DataFrame | None = None,
    title: str | None = None,
) -> Figure:
    """Metric versus the percentage of training labels: one panel per backbone, each pretrained
    encoder against the random-init encoder of that backbone (grey, dashed); mean ± std band
    over folds; chance (1/K) dotted; the score axis from 0 to 100 %.

    Args:
        results: long results table with ``label_fraction``, ``value``, ``std`` (and ``data``,
            which names the set for the chance level).
        task: task to plot.
        metric: metric to plot.
        protocol: restrict to one protocol (default: all rows of the task and metric).
        published: optional published rows (``label_fraction``, ``value`` in %) drawn as a dashed
            black reference in every panel, e.g. OpenUS's Fig. 4 curve.
        title: figure title (default: task, protocol, metric and what the band is).

    Returns:
        A Figure with one axes per backbone (x: % labels, log scale; shared y).

    Ref: OpenUS notes §1.6 (label-efficiency curves).
    """
    df = results[(results["task"] == task) & (results["metric"] == metric)]
    if protocol is not None:
        df = df[df["protocol"] == protocol]
    groups, s, chance = _backbone_groups(df), display_scale(metric), _chance(df, metric)
    ncols = min(3, max(1, len(groups)))
    nrows = -(-max(1, len(groups)) // ncols)
    fig = Figure(figsize=(3.1 * ncols, 2.5 * nrows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
    ticks = sorted(set(100 * df["label_fraction"].dropna().astype(float)))
    for ax, (backbone, encoders) in zip(axes, groups.items()):
        for enc in encoders:
            g = df[df["encoder"] == enc].sort_values("label_fraction")
            x, y = 100 * g["label_fraction"].to_numpy(float), s * g["value"].to_numpy(float)
            sd = s * g["std"].fillna(0.0).to_numpy(float)
            st = encoder_style(enc)
            short = "random init" if enc.startswith("random:") else human_name(enc)
            ax.plot(x, y, marker="o", label=short, **st)  # the panel title names the backbone
            ax.fill_between(x, y - sd, y + sd, alpha=0.12, color=st["color"], linewidth=0)
        if published is not None and len(published):
            p = published.sort_values("label_fraction")
            ax.plot(100 * p["label_fraction"], p["value"], "k--", marker="s", label="paper")
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        score_axis(ax, metric, chance)
        ax.set_title(backbone)
        ax.set_xlabel("training labels (%)")
        ax.legend(loc="upper left")
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    for ax in axes[::ncols]:
        ax.set_ylabel(metric_label(metric))
    what = f"{protocol}, {metric}" if protocol else metric
    chance_note = f"; dotted: {CHANCE_LABEL}" if chance is not None else ""
    fig.suptitle(title or f"{task}: {what} vs training labels\n({BAND_CAPTION}{chance_note})")
    return fig


@styled
def plot_metric_intervals(
    results: pd.DataFrame,
    *,
    metric: str,
    tasks: Sequence[str] | None = None,
    protocol: str | None = None,
    title: str | None = None,
) -> Figure:
    """One panel per task, one row per encoder (grouped by backbone, random init last): the score
    at 100 % labels as a dot with its 95 % bootstrap CI (± std over folds where no CI was
    recorded, said in the title); chance (1/K) dotted; the score axis from 0 to 100 %.

    Args:
        results: long results table; rows at label fraction 1 are used.
        metric: metric to plot.
        tasks: tasks to show (default: all with this metric).
        protocol: restrict to one protocol.
        title: figure title (default: protocol, metric and what the whiskers are).

    Returns:
        A Figure with one axes per task (shared rows).
    """
    df = results[(results["metric"] == metric) & (results["label_fraction"].fillna(1.0) == 1.0)]
    if protocol is not None:
        df = df[df["protocol"] == protocol]
    tasks = list(tasks) if tasks is not None else list(dict.fromkeys(df["task"]))
    groups = _backbone_groups(df)
    order = [e for encs in groups.values() for e in encs]
    s = display_scale(metric)
    fig = Figure(figsize=(1.6 + 2.3 * len(tasks), 0.8 + 0.24 * len(order)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(1, len(tasks)), sharey=True, squeeze=False)).ravel()
    ypos = {e: -i for i, e in enumerate(order)}
    used_std = False
    for ax, task in zip(axes, tasks):
        sub = df[df["task"] == task]
        for enc in order:
            row = sub[sub["encoder"] == enc]
            if row.empty:
                continue
            r = row.iloc[0]
            v = s * float(r["value"])
            if pd.notna(r["ci_low"]):
                err = [[v - s * float(r["ci_low"])], [s * float(r["ci_high"]) - v]]
            else:
                used_std, sd = True, s * float(0.0 if pd.isna(r["std"]) else r["std"])
                err = [[sd], [sd]]
            color = encoder_style(enc)["color"]
            face = "white" if enc.startswith("random:") else color  # random init: hollow
            ax.errorbar(v, ypos[enc], xerr=err, fmt="o", color=color, mfc=face, capsize=2)
        for k in np.cumsum([len(v) for v in groups.values()])[:-1]:
            ax.axhline(-k + 0.5, color="0.85", linewidth=0.8)
        score_axis(ax, metric, _chance(sub, metric), axis="x")
        ax.set_title(task)
        ax.set_xlabel(metric_label(metric))
        ax.grid(axis="y", visible=False)
    axes[0].set_yticks(list(ypos.values()), [_name(df, e) for e in order])
    what = f"{protocol}, {metric}" if protocol else metric
    caption = STD_CAPTION if used_std else CI_CAPTION
    chance = any(_chance(df[df["task"] == t], metric) is not None for t in tasks)
    chance_note = f"; dotted: {CHANCE_LABEL}" if chance else ""
    fig.suptitle(title or f"{what} at 100 % labels\n({caption}{chance_note})")
    return fig


@styled
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


@styled
def plot_cost_table(
    cost: pd.DataFrame, *, results: pd.DataFrame | None = None, title: str | None = None
) -> Figure:
    """Encoder cost as three bar panels (parameters, GFLOPs per image, images/s), one bar per
    backbone, labelled with the encoders of ``results`` that use it.

    Args:
        cost: rows per backbone with columns ``backbone, params_m, gflops, images_per_s``
            (optionally ``gflops_img_size``, ``img_size``, ``threads``).
        results: the long results table, to name the encoders that share each backbone.
        title: figure title (default: what is measured, at which sizes and threads).

    Returns:
        A Figure with one panel per quantity, sharing the backbone rows.
    """
    cols = [c for c in ("params_m", "gflops", "images_per_s") if c in cost.columns]
    users: dict[str, list[str]] = {}
    if results is not None:
        for enc, g in results.groupby("encoder", sort=False):
            kind = str(enc).partition(":")[0]
            short = {"random": "random init", "supervised": "supervised"}.get(kind)
            short = short or human_name(str(enc))
            users.setdefault(str(g["backbone"].iloc[0]), []).append(short)
    names = [
        backbone_label(b) + (f"\n({', '.join(users[b])})" if b in users else "")
        for b in cost["backbone"].astype(str)
    ]
    fig = Figure(figsize=(2.6 * len(cols) + 2.2, 0.55 * len(cost) + 1.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(cols), sharey=True))
    labels = {"params_m": "parameters (M)", "gflops": "GFLOPs / image", "images_per_s": "images/s"}
    if "gflops_img_size" in cost.columns:
        labels["gflops"] += f" at {int(cost['gflops_img_size'].max())} px"
    if {"img_size", "threads"} <= set(cost.columns):
        r = cost.iloc[0]
        labels["images_per_s"] += f" at {int(r['img_size'])} px, {int(r['threads'])} threads"
    y = np.arange(len(cost))
    for ax, col in zip(axes, cols):
        vals = cost[col].to_numpy(float)
        ax.barh(y, vals, color="#4c72b0", height=0.6)
        for yi, v in zip(y, vals):
            ax.text(v, yi, f" {v:,.0f}" if v >= 100 else f" {v:.3g}", va="center")
        ax.set_xlim(0, 1.25 * max(vals.max(), 1e-9))
        ax.set_xlabel(labels[col])
        ax.grid(axis="y", visible=False)
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    fig.suptitle(title or "Encoder cost: size, forward compute and inference throughput (CPU)")
    return fig


@styled
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


@styled
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

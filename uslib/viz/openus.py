"""Figures and tables of notebook 03 (OpenUS): the multi-crop views, the loss parts, the
schedules, teacher attention beside the chosen masks, and which signal led each mask.

The recorder these functions read is ``OpenUS.recorder``: a list of dicts, one per recorded step,
with ``step``, ``alpha``, ``m_t``, ``teacher_temp``, ``teacher_patch_temp``, ``momentum`` (floats),
``globals`` (B, 2, C, S, S), ``attn`` (B, L), ``mask`` (B, L) bool (first global view), and
``loss_map`` (L,) or None (the first step has no student feedback). Figures are returned, never
shown or saved (``Run.save_figure`` saves them). Ref: OpenUS notes §1.2-1.3.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from uslib.ops.schedules import cosine_ramp
from uslib.viz.style import styled

LOSS_PARTS: tuple[str, ...] = ("loss", "cls", "patch", "rec_global", "rec_local")
"""The ``training_step`` parts of OpenUS: total, L_cls, L_patch, L_rec^g, L_rec^l (§1.2.3)."""

SCHEDULE_KEYS: tuple[str, ...] = (
    "step", "alpha", "m_t", "teacher_temp", "teacher_patch_temp", "momentum",
)  # fmt: skip
"""Recorder keys that ``schedule_table`` keeps (``OpenUS.schedules`` plus the step)."""


def _gray(ax: Any, img: Any, title: str, cmap: str = "gray", size: int = 7, **kw: Any) -> None:
    arr = img.detach().float().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    ax.imshow(arr, cmap=cmap, **kw)
    ax.set_title(title, fontsize=size)
    ax.set_axis_off()


@styled
def plot_views(item: Mapping[str, Any], n_global: int | None = None) -> Figure:
    """One row: the global crops, then the local crops of one multi-crop item (channel 0).

    Args:
        item: ``{"globals": (G, C, S, S), "locals": (n, C, s, s)}`` in [0, 1] (``MultiCropImages``).
        n_global: how many of the views are global (default: ``len(item["globals"])``).

    Returns:
        A Figure with ``G + n`` image axes titled "global" / "local".

    Ref: OpenUS notes §1.2.1 (2 global + 8 local crops).
    """
    views = [*item["globals"], *item["locals"]]
    g = len(item["globals"]) if n_global is None else n_global
    fig, axes = plt.subplots(1, len(views), figsize=(1.6 * len(views), 1.9), squeeze=False)
    for i, (ax, v) in enumerate(zip(axes[0], views)):
        _gray(ax, v[0], "global" if i < g else "local", size=8, vmin=0, vmax=1)
    return fig


@styled
def plot_loss_parts(steps: pd.DataFrame, parts: Sequence[str] = LOSS_PARTS) -> Figure:
    """Each loss part against the optimizer step, on one axis.

    Args:
        steps: per-step history (``History.to_frame()``) with ``step`` and the ``parts`` columns.
        parts: columns to draw (missing ones are skipped).
    """
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for k in parts:
        if k in steps:
            ax.plot(steps["step"], steps[k], label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def schedule_table(
    recorder: Sequence[Mapping[str, Any]],
    total_steps: int,
    weight_decay: float,
    weight_decay_end: float | None = None,
) -> pd.DataFrame:
    """The schedule values of each recorded step, plus the engine's weight decay at that step.

    Args:
        recorder: ``OpenUS.recorder`` (module docstring).
        total_steps: planned optimizer steps (the schedules' training fraction is step / total).
        weight_decay: start of the cosine weight-decay ramp.
        weight_decay_end: its end (None: constant ``weight_decay``, as the engine).

    Returns:
        One row per record: ``SCHEDULE_KEYS`` and ``weight_decay``.

    Ref: OpenUS notes §1.2.2-1.2.4 (momentum, temperatures, wd 0.04 -> 0.4), §1.3.3 (alpha, m_t).
    """
    rec = pd.DataFrame([{k: r[k] for k in SCHEDULE_KEYS} for r in recorder], columns=SCHEDULE_KEYS)
    end = weight_decay if weight_decay_end is None else weight_decay_end
    rec["weight_decay"] = [cosine_ramp(s / total_steps, weight_decay, end) for s in rec["step"]]
    return rec


@styled
def plot_schedules(rec: pd.DataFrame) -> Figure:
    """Three panels against the step: alpha and m_t; the teacher temperatures; EMA momentum
    (left axis) and weight decay (right axis, a twin).

    Args:
        rec: ``schedule_table`` output.

    Returns:
        A Figure with 4 axes (3 panels and the weight-decay twin).
    """
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    panels = [("alpha", "m_t"), ("teacher_temp", "teacher_patch_temp"), ("momentum",)]
    titles = ["mask blend and guided share", "teacher temperatures", "EMA momentum, weight decay"]
    for ax, keys, title in zip(axes, panels, titles):
        for k in keys:
            ax.plot(rec["step"], rec[k], marker=".", label=k)
        ax.set_xlabel("step")
        ax.set_title(title)
    twin = axes[2].twinx()
    twin.plot(rec["step"], rec["weight_decay"], marker=".", color="C1", label="weight_decay")
    twin.set_ylabel("weight_decay")
    for ax in axes[:2]:
        ax.legend()
    h1, l1 = axes[2].get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    axes[2].legend(h1 + h2, l1 + l2)
    fig.tight_layout()
    return fig


def pick_records(recorder: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The first, middle and last record (fewer when the recorder is shorter)."""
    if not recorder:
        raise ValueError("the recorder is empty: set method.recorder = [] before training")
    n = len(recorder)
    return [recorder[i] for i in sorted({0, n // 2, n - 1})]


@styled
def plot_attention_and_masks(
    recorder: Sequence[Mapping[str, Any]], grid: tuple[int, int]
) -> Figure:
    """For the first, middle and last record, image 0's first global crop, the teacher token
    attention, the loss map in use (zeros before the first feedback) and the mask (white =
    masked).

    Args:
        recorder: ``OpenUS.recorder`` (module docstring).
        grid: final-stage token grid ``(h, w)`` with ``h * w = L``.

    Returns:
        A Figure with one row of 4 axes per picked record.

    Ref: OpenUS notes §1.3.1 (attention), §1.3.3 (loss map, blend), Fig. 1b.
    """
    picks = pick_records(recorder)
    h, w = grid
    fig, axes = plt.subplots(len(picks), 4, figsize=(7.5, 1.9 * len(picks)), squeeze=False)
    for row, r in zip(axes, picks):
        lm = r["loss_map"] if r["loss_map"] is not None else torch.zeros(h * w)
        _gray(row[0], r["globals"][0, 0, 0], f"step {r['step']}, a={r['alpha']:.2f}")
        _gray(row[1], r["attn"][0].view(h, w), "attention", cmap="magma")
        _gray(row[2], lm.view(h, w), "loss map")
        _gray(row[3], r["mask"][0].view(h, w), "mask")
    fig.tight_layout()
    return fig


def mask_leadership(recorder: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Which signal led each recorded mask: the share of masked tokens among the top-n tokens.

    For each record with n masked tokens per image, ``attention_led`` is the mean over images
    of |mask ∩ top-n(attention)| / n, and ``loss_led`` the same with the top-n tokens of the
    loss map (absent where the step had none). 1 = fully led by that signal; a uniform random
    mask gives n / L on average.

    Args:
        recorder: ``OpenUS.recorder`` (module docstring).

    Returns:
        One row per record: ``step``, ``alpha``, ``m_t``, ``attention_led`` and, when any record
        has a loss map, ``loss_led`` (NaN on records without).

    Ref: OpenUS notes §1.3.2-1.3.3 (top-k by score, random fill).
    """
    rows = []
    for r in recorder:
        m, n = r["mask"], int(r["mask"][0].sum())
        top_a = r["attn"].argsort(1, descending=True)[:, :n]
        row = {"step": r["step"], "alpha": r["alpha"], "m_t": r["m_t"],
               "attention_led": float(m.gather(1, top_a).float().mean())}  # fmt: skip
        if r["loss_map"] is not None:
            top_r = r["loss_map"].argsort(descending=True)[:n].expand(len(m), n)
            row["loss_led"] = float(m.gather(1, top_r).float().mean())
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = [
    "LOSS_PARTS",
    "SCHEDULE_KEYS",
    "mask_leadership",
    "pick_records",
    "plot_attention_and_masks",
    "plot_loss_parts",
    "plot_schedules",
    "plot_views",
    "schedule_table",
]

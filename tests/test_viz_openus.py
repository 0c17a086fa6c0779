"""Notebook 03's figures and the mask-leadership table on a tiny fake OpenUS recorder."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from uslib.viz import openus as viz

GRID = (3, 3)  # L = 9 final-stage tokens
B, N_MASK = 2, math.ceil(0.6 * 9)


def _record(step: int, loss_map: bool, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    attn = torch.rand(B, 9, generator=gen)
    mask = torch.zeros(B, 9, dtype=torch.bool)
    for b in range(B):
        mask[b, torch.randperm(9, generator=gen)[:N_MASK]] = True
    return {
        "step": step, "alpha": 0.1 + 0.1 * step, "m_t": 0.1 + 0.05 * step,
        "teacher_temp": 0.04, "teacher_patch_temp": 0.04 + 0.01 * step,
        "momentum": 0.996 + 0.001 * step,
        "globals": torch.rand(B, 2, 1, 12, 12, generator=gen),
        "attn": attn, "score": attn, "mask": mask,
        "loss_map": torch.rand(9, generator=gen) if loss_map else None,
    }  # fmt: skip


@pytest.fixture
def recorder() -> list[dict]:
    return [_record(s, loss_map=s > 0, seed=s) for s in range(4)]


def _image_axes(fig: Figure) -> int:
    return sum(bool(ax.images) for ax in fig.axes)


def test_plot_views_one_axis_per_crop() -> None:
    item = {"globals": torch.rand(2, 1, 16, 16), "locals": torch.rand(3, 1, 8, 8)}
    fig = viz.plot_views(item)
    assert isinstance(fig, Figure) and len(fig.axes) == 5 and _image_axes(fig) == 5
    assert [ax.get_title() for ax in fig.axes] == ["global"] * 2 + ["local"] * 3
    plt.close(fig)


def test_plot_loss_parts_one_line_per_part() -> None:
    steps = pd.DataFrame(
        {"step": range(5), **{k: [1.0, 0.9, 0.8, 0.7, 0.6] for k in viz.LOSS_PARTS}}
    )
    fig = viz.plot_loss_parts(steps)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(viz.LOSS_PARTS)
    plt.close(fig)


def test_schedule_table_and_plot(recorder) -> None:
    rec = viz.schedule_table(recorder, total_steps=4, weight_decay=0.04, weight_decay_end=0.4)
    assert list(rec.columns) == [*viz.SCHEDULE_KEYS, "weight_decay"] and len(rec) == 4
    assert rec["weight_decay"].iloc[0] == pytest.approx(0.04)
    assert rec["weight_decay"].iloc[2] == pytest.approx(0.22)  # half-way of the cosine
    assert rec["weight_decay"].is_monotonic_increasing
    flat = viz.schedule_table(recorder, total_steps=4, weight_decay=0.05)
    assert (flat["weight_decay"] == 0.05).all()
    fig = viz.plot_schedules(rec)
    assert len(fig.axes) == 4  # three panels and the weight-decay twin
    assert [len(ax.lines) for ax in fig.axes] == [2, 2, 1, 1]
    plt.close(fig)


def test_plot_attention_and_masks_first_middle_last(recorder) -> None:
    assert [r["step"] for r in viz.pick_records(recorder)] == [0, 2, 3]
    assert [r["step"] for r in viz.pick_records(recorder[:1])] == [0]
    fig = viz.plot_attention_and_masks(recorder, GRID)
    assert len(fig.axes) == 12 and _image_axes(fig) == 12
    assert fig.axes[0].get_title().startswith("step 0")
    assert [ax.get_title() for ax in fig.axes[1:4]] == ["attention", "loss map", "mask"]
    assert fig.axes[2].images[0].get_array().sum() == 0  # step 0: no loss map yet
    plt.close(fig)
    with pytest.raises(ValueError, match="empty"):
        viz.plot_attention_and_masks([], GRID)


def test_mask_leadership_planted_top_attention_mask() -> None:
    r = _record(0, loss_map=True, seed=7)
    top = r["attn"].argsort(1, descending=True)[:, :N_MASK]
    r["mask"] = torch.zeros(B, 9, dtype=torch.bool).scatter(1, top, True)  # mask = top attention
    lm = torch.zeros(9)
    lm[r["mask"][0]] = -1.0  # loss map ranks image 0's masked tokens last
    r["loss_map"] = lm
    first = _record(0, loss_map=False, seed=8)
    lead = viz.mask_leadership([first, r])
    assert list(lead.columns) == ["step", "alpha", "m_t", "attention_led", "loss_led"]
    assert lead["attention_led"].iloc[1] == 1.0
    assert math.isnan(lead["loss_led"].iloc[0])  # the first step has no loss map
    # Image 0: the loss map's top 6 are its 3 unmasked tokens and 3 of its 6 masked ones.
    alone = viz.mask_leadership([{**r, "mask": r["mask"][:1], "attn": r["attn"][:1]}])
    assert alone["loss_led"].iloc[0] == pytest.approx(0.5)
    assert lead["loss_led"].iloc[1] < 1.0


def test_mask_leadership_without_loss_maps_has_no_loss_column(recorder) -> None:
    lead = viz.mask_leadership(recorder[:1])
    assert "loss_led" not in lead and lead["attention_led"].between(0, 1).all()

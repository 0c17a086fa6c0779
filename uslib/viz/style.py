"""The one plotting style of uslib's figures: fonts, the palette per method, encoder naming,
and score axes with their chance level.

Every plotting function of ``uslib.viz`` (and ``uslib.figures``) is wrapped in :func:`styled`,
so fonts and grids come from :data:`STYLE` without touching matplotlib's global state; colours
come from :func:`encoder_style`, so one method has one colour in every figure, and a random-init
encoder is always grey and dashed; names come from ``uslib.evaluation.report.human_name``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import matplotlib as mpl

from uslib.evaluation.metrics import PERCENT_METRICS

STYLE: dict[str, Any] = {
    "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "figure.titlesize": 10,
    "legend.fontsize": 7, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
    "legend.frameon": False, "lines.linewidth": 1.4, "lines.markersize": 4,
}  # fmt: skip
"""rcParams every figure is drawn with."""

METHOD_COLORS: dict[str, str] = {
    "02_uscl_sample_pairs": "#1f77b4", "03_openus_pretraining": "#ff7f0e",
    "04_mae_teacher": "#8c564b", "04_mae_student": "#c49c94", "04_dmae_student": "#2ca02c",
    "05_tinyusfm_teacher": "#c5b0d5", "05_tinyusfm_student": "#9467bd",
    "05_tinyusfm_scratch": "#e377c2", "06_spad_vit": "#d62728",
}  # fmt: skip
"""Run folder (07's encoder name) -> its colour; keys are those of ``report.RUN_LABELS``."""
RANDOM_COLOR, SUPERVISED_COLOR, OTHER_COLOR = "0.5", "0.1", "#17becf"

CI_CAPTION = "error bars: 95 % bootstrap CI over test images"
STD_CAPTION = "error bars: ± std over folds (no CI recorded)"
BAND_CAPTION = "band: ± std over folds"
CHANCE_LABEL = "chance (1/K)"

F = TypeVar("F", bound=Callable[..., Any])


def styled(fn: F) -> F:
    """Run a figure-making function under :data:`STYLE` (``matplotlib.rc_context``)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with mpl.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def encoder_style(encoder: str) -> dict[str, Any]:
    """Line/marker keywords of one encoder: its method's colour, grey dashed for random init,
    near-black dotted for a supervised reference."""
    kind = str(encoder).partition(":")[0]
    if kind == "random":
        return {"color": RANDOM_COLOR, "linestyle": "--"}
    if kind == "supervised":
        return {"color": SUPERVISED_COLOR, "linestyle": ":"}
    return {"color": METHOD_COLORS.get(str(encoder), OTHER_COLOR), "linestyle": "-"}


def metric_label(metric: str) -> str:
    return f"{metric} (%)" if metric in PERCENT_METRICS else f"{metric} (mm)"


def score_axis(ax: Any, metric: str, chance: float | None = None, *, axis: str = "y") -> None:
    """Scores in % run from 0 to 100 on ``axis``; ``chance`` (a fraction) is drawn dotted."""
    if metric not in PERCENT_METRICS:
        return
    (ax.set_ylim if axis == "y" else ax.set_xlim)(0, 100)
    if chance is not None:
        line = ax.axhline if axis == "y" else ax.axvline
        line(100 * chance, color="k", linestyle=":", linewidth=1.0, label=CHANCE_LABEL)

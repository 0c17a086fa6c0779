"""Result tables with the papers' numbers beside ours (CSV, Markdown, LaTeX) and the README block.

Our results travel as one long table (``RESULT_COLUMNS``: one row per task x protocol x encoder x
metric x label fraction). ``summary_table`` pivots it to encoders-as-columns, adds the published
reference (``published.REFERENCES``) and flags: the profile and data of every row, "smoke: not
meaningful" for smoke runs, a dagger on numbers measured on data the encoder was pretrained on, and
a note when the paper's number comes from real data while ours is synthetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from uslib.evaluation.metrics import PERCENT_METRICS, display_scale
from uslib.evaluation.published import REFERENCES, published_numbers, reference_for

RESULT_COLUMNS: tuple[str, ...] = (
    "task",
    "data",
    "kind",
    "protocol",
    "encoder",
    "source",
    "backbone",
    "metric",
    "value",
    "std",
    "ci_low",
    "ci_high",
    "n_folds",
    "n_test",
    "label_fraction",
    "profile",
    "contamination",
)
"""Columns of the long results table (``value``/``std``/CI as fractions for percent metrics)."""

SUMMARY_STEM = "07_summary"
"""File stem of the encoders-as-columns summary (``figures/07_summary.{csv,md,tex}``)."""
README_START = "<!-- results:start -->"
README_END = "<!-- results:end -->"
SMOKE_NOTE = "smoke: not meaningful"
CONTAMINATION_MARK = "†"


def results_frame(rows: list[dict]) -> pd.DataFrame:
    """Long results table from row dicts (missing columns filled with NaN / "")."""
    df = pd.DataFrame(rows)
    for col in RESULT_COLUMNS:
        if col not in df.columns:
            df[col] = "" if col in ("contamination", "source", "backbone", "kind") else math.nan
    return df[list(RESULT_COLUMNS)]


def format_value(metric: str, value: float, std: float | None = None) -> str:
    """``"90.3 ± 0.4"`` (percent metrics, x100) or ``"3.21 ± 0.40"`` (mm, other units)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    scale, digits = (100.0, 1) if metric in PERCENT_METRICS else (1.0, 2)
    text = f"{value * scale:.{digits}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {std * scale:.{digits}f}"
    return text


def _paper_cell(task: str, metric: str, protocol: str) -> str:
    refs = reference_for(task, metric, protocol)
    return "; ".join(
        f"{r.value:g} ({r.paper}, {r.dataset}, {r.source.split(' (')[0]})"
        for r in refs.itertuples()
    )


def _notes(profile: str, data: str, paper: str, contaminated: bool) -> str:
    notes = []
    if profile == "smoke":
        notes.append(SMOKE_NOTE)
    if paper and data.startswith("synthetic"):
        notes.append("paper: real data, ours: synthetic")
    if contaminated:
        notes.append(f"{CONTAMINATION_MARK} pretrained on this data")
    return "; ".join(notes)


HEADLINE_METRICS: tuple[str, ...] = ("accuracy", "dice", "hd95", "hc_error_mm")
"""Metrics of the compact summary (README and ``figures/07_summary``)."""


def summary_table(
    results: pd.DataFrame,
    *,
    label_fraction: float = 1.0,
    metrics: tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """Encoders-as-columns summary at one label fraction, with paper numbers and flags.

    Args:
        results: long table (``RESULT_COLUMNS``).
        label_fraction: which fraction to show (1.0 = all training labels).
        metrics: keep only these metrics (e.g. ``HEADLINE_METRICS``); None keeps all.

    Returns:
        String table: ``task, data, profile, protocol, metric, <encoder>..., paper, notes``;
        a ``†`` marks a number measured on data its encoder was pretrained on.
    """
    lf = results["label_fraction"].fillna(1.0)
    keep = (lf - label_fraction).abs() < 1e-9
    if metrics is not None:
        keep &= results["metric"].isin(metrics)
    df = results[keep].copy()
    if df.empty:
        return pd.DataFrame(columns=["task", "data", "profile", "protocol", "metric"])
    df["cell"] = [
        format_value(r.metric, r.value, r.std) + (CONTAMINATION_MARK if r.contamination else "")
        for r in df.itertuples()
    ]
    keys = ["task", "data", "profile", "protocol", "metric"]
    encoders = list(dict.fromkeys(df["encoder"]))
    wide = df.pivot_table(index=keys, columns="encoder", values="cell", aggfunc="first", sort=False)
    wide = wide.reindex(columns=encoders).fillna("").reset_index()
    wide.columns.name = None
    contaminated = df.groupby(keys, sort=False)["contamination"].apply(lambda s: bool(s.any()))
    wide["paper"] = [
        _paper_cell(t, m, p) for t, m, p in zip(wide["task"], wide["metric"], wide["protocol"])
    ]
    wide["notes"] = [
        _notes(
            r["profile"], r["data"], r["paper"], bool(contaminated.get(tuple(r[k] for k in keys)))
        )
        for _, r in wide.iterrows()
    ]
    return wide


RUN_LABELS: dict[str, str] = {
    "02_uscl_sample_pairs": "USCL",
    "03_openus_pretraining": "OpenUS teacher",
    "04_mae_teacher": "MAE teacher",
    "04_mae_student": "MAE student",
    "04_dmae_student": "DMAE student",
    "05_tinyusfm_teacher": "TinyUSFM teacher (MAE)",
    "05_tinyusfm_student": "TinyUSFM student",
    "05_tinyusfm_scratch": "TinyUSFM student, no teacher",
    "06_spad_vit": "PUMIT",
}
"""Run folder (the encoder's name in 07) -> the method it holds, for tables and legends."""
BACKBONE_LABELS: dict[str, str] = {
    "resnet18": "ResNet-18", "vmamba_small": "VMamba-S", "vmamba_tiny": "VMamba-T",
    "vit_small_patch8_64": "ViT-S/8", "vit_large_patch8_64": "ViT-L/8",
    "vit_tiny_usfm": "ViT-Tiny/16", "vit_base": "ViT-B/16", "vit_large": "ViT-L/16",
    "vit_small": "ViT-S/16", "vmamba_smoke": "VMamba-XS", "vit_smoke": "ViT-XXS",
    "vit_mae_smoke": "ViT-XXS (MAE)", "vit_mae_smoke_large": "ViT-XS (MAE)",
    "spad_vit_smoke": "SPAD-ViT-XXS", "spad_vit_cpu": "SPAD-ViT-XS",
    "spad_vit_base": "SPAD-ViT-B", "spad_vit_large": "SPAD-ViT-L",
}  # fmt: skip
"""Registry name -> human backbone name; others read as ``name`` with spaces (``vit cpu``).
XS / XXS are this project's small configurations for the ``cpu`` / ``smoke`` profiles (their
sizes: ``figures/07_cost.png``)."""


def backbone_label(backbone: str) -> str:
    """``"vmamba_small(img_size=64,...)"`` -> ``"VMamba-S"``; unknown names keep their words."""
    base = str(backbone).split("(")[0]
    return BACKBONE_LABELS.get(base, base.replace("_", " "))


def human_name(encoder: str, backbone: str = "") -> str:
    """``"02_uscl_sample_pairs"`` -> ``"USCL ResNet-18"``, ``"random:resnet18"`` -> ``"random init
    ResNet-18"``, ``"supervised:vit_smoke"`` -> ``"supervised vit smoke"``."""
    kind, _, arch = str(encoder).partition(":")
    if arch and kind in ("random", "supervised"):
        return f"{'random init' if kind == 'random' else 'supervised'} {backbone_label(arch)}"
    label = RUN_LABELS.get(encoder, encoder)
    return f"{label} {backbone_label(backbone)}" if backbone not in ("", "nan") else label


VS_RANDOM = "07_vs_random"
"""File stem of the pretrained-vs-random-init table (beside ``07_summary``)."""
HEADLINES: dict[tuple[str, str], str] = {
    ("linear probe", "accuracy"): "probe acc",
    ("frozen + SegDecoder", "dice"): "seg Dice",
}
"""(protocol, metric) -> column label of the pretrained-vs-random-init comparison (per task)."""


def ci_cell(metric: str, value: float, lo: float, hi: float) -> str:
    """``value [lo, hi]`` in the metric's display scale, one decimal (``value`` alone if no CI)."""
    scale = display_scale(metric)
    if any(isinstance(x, float) and math.isnan(x) for x in (lo, hi)):
        return f"{value * scale:.1f}"
    return f"{value * scale:.1f} [{lo * scale:.1f}, {hi * scale:.1f}]"


def separation(lo: float, hi: float, ref_lo: float, ref_hi: float) -> str:
    """``"▲"`` when the interval ``[lo, hi]`` lies wholly above ``[ref_lo, ref_hi]``, ``"▼"``
    wholly below, ``"≈"`` when they overlap (or a bound is missing)."""
    if any(math.isnan(x) for x in (lo, hi, ref_lo, ref_hi)):
        return "≈"
    return "▲" if lo > ref_hi else "▼" if hi < ref_lo else "≈"


def vs_random_table(results: pd.DataFrame, *, label_fraction: float = 1.0) -> pd.DataFrame:
    """Every pretrained encoder against the random-init encoder of the same backbone.

    One row per pretrained encoder, one column per task of the ``HEADLINES`` protocols (linear
    probe accuracy, frozen-encoder segmentation Dice) at ``label_fraction``. A cell reads
    ``"ours [95 % CI] vs random [95 % CI] ▲"``: the CIs are the results' bootstrap intervals over
    test items, ▲ / ▼ mark intervals that separate above / below, ≈ overlapping ones; ``†``
    marks data the encoder saw in pretraining.

    Returns:
        String table ``encoder, backbone, <task · protocol>...``; empty when no pretrained
        encoder has a random-init twin.
    """
    lf = results["label_fraction"].fillna(1.0)
    df = results[(lf - label_fraction).abs() < 1e-9]
    head = pd.Series(False, index=df.index)
    for protocol, metric in HEADLINES:  # (the dict's keys)
        head |= (df["protocol"] == protocol) & (df["metric"] == metric)
    df = df[head]
    rand = df[df["source"] == "random"].set_index(["backbone", "task", "protocol"])
    rows = []
    for enc, sub in df[df["source"] == "pretrained"].groupby("encoder", sort=False):
        row = {"encoder": human_name(enc), "backbone": backbone_label(sub["backbone"].iloc[0])}
        for r in sub.itertuples():
            key = (r.backbone, r.task, r.protocol)
            if key not in rand.index:
                continue
            q = rand.loc[key]
            q = q.iloc[0] if isinstance(q, pd.DataFrame) else q
            mark = separation(r.ci_low, r.ci_high, q["ci_low"], q["ci_high"])
            ours = ci_cell(r.metric, r.value, r.ci_low, r.ci_high)
            dagger = (
                CONTAMINATION_MARK if isinstance(r.contamination, str) and r.contamination else ""
            )
            theirs = ci_cell(r.metric, q["value"], q["ci_low"], q["ci_high"])
            label = HEADLINES[r.protocol, r.metric]
            row[f"{r.task} · {label}"] = f"{ours}{dagger} vs {theirs} {mark}"
        if len(row) > 2:
            rows.append(row)
    return pd.DataFrame(rows).fillna("") if rows else pd.DataFrame(columns=["encoder", "backbone"])


def write_tables(df: pd.DataFrame, folder: str | Path, name: str) -> dict[str, Path]:
    """Write ``<name>.csv``, ``.md`` and ``.tex`` into ``folder``; returns the paths by suffix."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {s: folder / f"{name}.{s}" for s in ("csv", "md", "tex")}
    df.to_csv(paths["csv"], index=False)
    paths["md"].write_text(to_markdown(df) + "\n")
    paths["tex"].write_text(df.to_latex(index=False, escape=True, na_rep=""))
    return paths


def to_markdown(df: pd.DataFrame) -> str:
    """GitHub Markdown of a table (empty cells for NaN)."""
    return df.fillna("").astype(str).to_markdown(index=False)


def readme_block(
    summary: pd.DataFrame,
    *,
    profile: str,
    source: str,
    vs_random: pd.DataFrame | None = None,
) -> str:
    """The README results section (without markers) for a summary table.

    Args:
        summary: ``summary_table`` output (as saved: the CSV read back gives the same text).
        profile: profile of the numbers.
        source: where the table lives (e.g. ``figures/07_summary.csv``).
        vs_random: ``vs_random_table`` output; when given and not empty the README shows it
            (one row per encoder: readable with many encoders) and links the wide summary
            instead of inlining it.
    """
    compact = vs_random is not None and not vs_random.empty
    made = f"Profile `{profile}`; generated by `python -m uslib.figures --profile {profile}` from "
    if compact:
        head = made + (
            f"`{source.replace(SUMMARY_STEM, VS_RANDOM)}`. Each cell: a pretrained encoder's score "
            "in % with its bootstrap 95 % CI over test items, **vs** the random-init encoder of "
            "the same backbone; ▲ / ▼ = the CIs separate (above / below), ≈ = they overlap. "
            f"{CONTAMINATION_MARK} = measured on data the encoder saw in pretraining (same "
            f"generator, other samples). Every protocol, metric and reference: "
            f"`{source.replace('.csv', '.md')}`."
        )
    else:
        head = made + (
            f"`{source}`. Scores in %, mean ± std over folds; HD95 and HC errors in mm (pixels "
            f"when the spacing is unknown). {CONTAMINATION_MARK} = measured on data the encoder "
            "saw in pretraining. Paper numbers are on real data."
        )
    if profile == "smoke":
        head += f" **{SMOKE_NOTE}** (tiny data, a few steps)."
    table = vs_random if compact else summary
    return head + "\n\n" + to_markdown(table.fillna(""))


def update_readme(
    readme: str | Path, block: str, start: str = README_START, end: str = README_END
) -> bool:
    """Replace the text between ``start`` and ``end`` (the results markers) with ``block``.

    Returns:
        True when the file changed.

    Raises:
        ValueError: the markers are missing or out of order (the file is named).
    """
    path = Path(readme)
    text = path.read_text()
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"{path}: needs '{start}' followed by '{end}'")
    new = text[: i + len(start)] + "\n" + block.strip() + "\n" + text[j:]
    if new != text:
        path.write_text(new)
    return new != text


def readme_section(readme: str | Path, start: str = README_START, end: str = README_END) -> str:
    """The text between the README markers (stripped)."""
    text = Path(readme).read_text()
    i, j = text.find(start), text.find(end)
    if i < 0 or j < i:
        raise ValueError(f"{readme}: markers {start} ... {end} not found")
    return text[i + len(start) : j].strip()


def read_vs_random(summary_csv: str | Path) -> pd.DataFrame | None:
    """The ``VS_RANDOM`` table saved beside ``summary_csv``, or None when there is none."""
    path = Path(summary_csv).with_name(f"{VS_RANDOM}.csv")
    return pd.read_csv(path, keep_default_na=False, dtype=str) if path.is_file() else None


def readme_agrees(readme: str | Path, summary_csv: str | Path, *, profile: str) -> bool:
    """Whether the README results section is exactly what ``summary_csv`` (and the
    ``VS_RANDOM`` table beside it, when saved) renders to."""
    summary = pd.read_csv(summary_csv, keep_default_na=False, dtype=str)
    try:
        source = Path(summary_csv).resolve().relative_to(Path(readme).resolve().parent)
    except ValueError:
        source = Path(summary_csv)
    expected = readme_block(
        summary, profile=profile, source=source.as_posix(), vs_random=read_vs_random(summary_csv)
    )
    return readme_section(readme) == expected.strip()


def published_table(tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """The published numbers set beside ``tasks`` (all rows when None), for the notebook."""
    cols = ["paper", "dataset", "protocol", "metric", "value", "std", "source"]
    df = published_numbers()
    if tasks is not None:
        ids = {i for (t, _, _), v in REFERENCES.items() if t in set(tasks) for i in v}
        df = df[df["id"].isin(ids)]
    return df[cols].reset_index(drop=True)

"""Re-render ``figures/`` from saved run records, without retraining: ``python -m uslib.figures``.

Reads ``papermill_runs/<profile>/*/`` (``history.csv``, ``tables/*.csv``), writes
``figures/NN_<slug>.png`` and the evaluation tables (``figures/07_summary.{csv,md,tex}``), and
rewrites the README results section between ``<!-- results:start -->`` and
``<!-- results:end -->`` from ``figures/07_summary.csv`` (the cebra-figures compute/plot split).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from uslib.evaluation.report import (
    HEADLINE_METRICS,
    RUN_LABELS,
    SUMMARY_STEM,
    VS_RANDOM,
    ci_cell,
    read_vs_random,
    readme_block,
    summary_table,
    update_readme,
    vs_random_table,
    write_tables,
)
from uslib.paths import run_set
from uslib.viz.evaluation import plot_cost_table, plot_label_efficiency, plot_metric_intervals
from uslib.viz.style import encoder_style, styled

EVAL_RUN = "07_evaluation"


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def _validation(run_dir: Path) -> pd.DataFrame | None:
    """The run's per-epoch validation loss (``step``, ``val_loss``), or None if it has none."""
    path = run_dir / "history_epochs.csv"
    ep = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    if "val_loss" not in ep.columns or not ep["val_loss"].notna().any():
        return None
    return ep.loc[ep["val_loss"].notna(), ["step", "val_loss"]]


@styled
def render_history(run_dir: Path, out_dir: Path) -> list[Path]:
    """``<run>_training_loss.png`` from a run's ``history.csv``: the training loss per optimizer
    step (thin) with its moving average (bold), and the validation loss per epoch (dots) from
    ``history_epochs.csv`` where the method records one; the fallback for run folders without a
    renderer of their own in ``RENDERERS``."""
    hist = run_dir / "history.csv"
    if not hist.is_file():
        return []
    df = pd.read_csv(hist)
    if not {"step", "loss"} <= set(df.columns):
        return []
    color = encoder_style(run_dir.name)["color"]
    fig = Figure(figsize=(4.8, 3.0), layout="constrained")
    ax = fig.subplots()
    window = max(1, len(df) // 25)
    ax.plot(df["step"], df["loss"], lw=0.6, alpha=0.35, color=color, label="train, per step")
    smooth = df["loss"].rolling(window, min_periods=1).mean()
    ax.plot(df["step"], smooth, lw=1.6, color=color, label=f"train, mean of {window} steps")
    val = _validation(run_dir)
    has_val = val is not None
    if val is not None:
        ax.plot(val["step"], val["val_loss"], "o-", ms=3, color="k", label="validation, per epoch")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("pretraining loss")
    ax.legend()
    what = "training and validation loss" if has_val else "training loss (no validation split)"
    ax.set_title(f"{RUN_LABELS.get(run_dir.name, run_dir.name)} pretraining: {what}")
    return [_save(fig, out_dir / f"{run_dir.name}_training_loss.png")]


@styled
def render_evaluation(run_dir: Path, out_dir: Path) -> list[Path]:
    """Notebook 07's figures and summary tables from ``tables/results.csv`` and ``cost.csv``."""
    res_path = run_dir / "tables" / "results.csv"
    if not res_path.is_file():
        return []
    results = pd.read_csv(res_path, keep_default_na=True)
    results["contamination"] = results["contamination"].fillna("")
    summary = summary_table(results, metrics=HEADLINE_METRICS)
    paths = list(write_tables(summary, out_dir, SUMMARY_STEM).values())
    paths += list(write_tables(vs_random_table(results), out_dir, VS_RANDOM).values())
    probe = results[(results["protocol"] == "linear probe") & (results["metric"] == "accuracy")]
    for task in dict.fromkeys(probe["task"]):
        fig = plot_label_efficiency(probe, task=task, metric="accuracy", protocol="linear probe")
        paths.append(_save(fig, out_dir / f"07_label_efficiency_{task}.png"))
    for metric, protocol in (("accuracy", "linear probe"), ("dice", "frozen + SegDecoder")):
        if ((results["metric"] == metric) & (results["protocol"] == protocol)).any():
            fig = plot_metric_intervals(results, metric=metric, protocol=protocol)
            paths.append(_save(fig, out_dir / f"07_{metric}_ci.png"))
    cost_path = run_dir / "tables" / "cost.csv"
    if cost_path.is_file():
        fig = plot_cost_table(pd.read_csv(cost_path), results=results)
        paths.append(_save(fig, out_dir / "07_cost.png"))
    return paths


def _rewrite_block(
    readme: Path, markers: tuple[str, str], needs: Sequence[Path], block: Callable[[], str]
) -> bool:
    """Replace the README text between ``markers`` with ``block()``; False (nothing written)
    when the README, its start marker or any of the ``needs`` files is missing."""
    if not readme.is_file() or markers[0] not in readme.read_text():
        return False
    if not all(p.exists() for p in needs):
        return False
    update_readme(readme, block(), *markers)
    return True


TIMINGS_START, TIMINGS_END = "<!-- timings:start -->", "<!-- timings:end -->"
"""README markers of the notebooks' wall times (``papermill_runs/<profile>/reproduce.json``)."""


def timings_block(record: dict[str, Any], profile: str) -> str:
    """README text for a ``reproduce.json`` record: the machine, then one row per notebook with
    its wall time, the commit and command that ran it and the load when it ended."""
    m = record["machine"]
    head = (
        f"Profile `{profile}`, from `papermill_runs/{profile}/reproduce.json` (written by "
        f"`uslib.reproduce`; record started {str(record['start'])[:16].replace('T', ' ')} UTC): "
        f"{m['cpu_count']} cores, {m['torch_threads']} torch threads, "
        f"{m['matmul_gflops_fp32']} GFLOP/s fp32 matmul and a 1-min load of "
        f"{m['loadavg_1min_at_start']} measured at the start. Total "
        f"{record['total_s'] / 60:.1f} min."
    )
    rows = [
        {"notebook": k, "minutes": f"{v['seconds'] / 60:.1f}", "commit": str(v["git_sha"])[:7],
         "command": f"`{v['command']}`", "1-min load at end": v["loadavg_1min_at_end"]}
        for k, v in sorted(record["notebooks"].items())
    ]  # fmt: skip
    return head + "\n\n" + pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)


def rewrite_timings(readme: Path, runs: Path, profile: str) -> bool:
    """Rewrite the README timings section from ``<runs>/reproduce.json``; False if either is
    absent or the README has no timings markers."""
    rec = runs / "reproduce.json"
    return _rewrite_block(readme, (TIMINGS_START, TIMINGS_END), [rec],
                          lambda: timings_block(json.loads(rec.read_text()), profile))  # fmt: skip


FIGURES_START, FIGURES_END = "<!-- figures:start -->", "<!-- figures:end -->"
"""README markers of the list of published figures (one line per PNG in ``figures/``)."""
CAPTIONS: tuple[tuple[str, str], ...] = (
    (r"07_label_efficiency_(?P<task>\w+)", "Linear-probe accuracy on the {task} task "
     "against the share of training labels (1-100 %), one panel per backbone: each pretrained "
     "encoder beside the random-init encoder of its backbone (grey, dashed); band ± std over "
     "folds; dotted line chance (1/K)."),
    (r"07_accuracy_ci", "Linear-probe accuracy at 100 % labels for every encoder and "
     "classification task: dots with 95 % bootstrap CIs over test images, grouped by backbone "
     "(random init last, hollow); dotted line chance (1/K)."),
    (r"07_dice_ci", "Dice of a segmentation decoder trained on each frozen encoder at 100 % "
     "labels, per segmentation task, with 95 % bootstrap CIs over test images."),
    (r"07_cost", "Parameters, forward GFLOPs per image (224 px) and inference images/s (64 px, "
     "2 CPU threads) per backbone, naming the encoders that share it."),
    (r"(?P<run>\d\d_\w+)_training_loss", "{label} pretraining loss per optimizer step with its "
     "moving average{val}."),
)  # fmt: skip
"""(file-stem pattern, caption template) of every figure ``make figures`` writes."""


def caption(png: Path, runs: Path) -> str:
    """The one-line caption of a figure written by this module, reading the run folders under
    ``runs`` where the caption depends on them (ValueError for an unknown figure, so none is
    published without saying what it shows)."""
    for pattern, template in CAPTIONS:
        m = re.fullmatch(pattern, png.stem)
        if m is None:
            continue
        fields = m.groupdict()
        if "run" in fields:
            fields["label"] = RUN_LABELS.get(fields["run"], fields["run"])
            has_val = _validation(runs / fields["run"]) is not None
            fields["val"] = ", and the validation loss per epoch" if has_val else ""
        return template.format(**fields)
    raise ValueError(f"{png}: no caption in uslib.figures.CAPTIONS; add one")


def figures_block(out_dir: Path, runs: Path, link_root: Path) -> str:
    """README list of the PNGs in ``out_dir``: a link (relative to ``link_root``) and a caption."""
    rows = []
    for png in sorted(out_dir.glob("*.png")):
        rel = png.resolve().relative_to(link_root.resolve()).as_posix()
        rows.append(f"- [`{png.name}`]({rel}): {caption(png, runs)}")
    return "\n".join(rows)


def rewrite_figures(readme: Path, out_dir: Path, runs: Path) -> bool:
    """Rewrite the README list of figures from the PNGs in ``out_dir``; False if the README has
    no figures markers."""
    return _rewrite_block(readme, (FIGURES_START, FIGURES_END), [],
                          lambda: figures_block(out_dir, runs, readme.parent))  # fmt: skip


POCUS_START, POCUS_END = "<!-- pocus:start -->", "<!-- pocus:end -->"
"""README markers of the USCL POCUS-protocol table (notebook 02's ``protocol_summary.csv``)."""
POCUS_RUNS = ("cpu", "cpu_real")
"""Profiles folders whose ``02_uscl_sample_pairs`` run the POCUS table shows, in order."""
POCUS_PAPER = (
    ("USCL, paper (224 px, US-4 pretraining, 300 epochs)", "uscl_pocus_acc_readme", "README"),
    ("", "uscl_pocus_acc_resultfile", "authors' result file"),
    ("ImageNet ResNet-18, paper", "uscl_pocus_imagenet_acc", "abstract"),
)
"""(row label, ``published.csv`` id, source) of the paper rows beside ours."""


def _papermill_command(nb: Path, params: dict[str, Any], root: Path) -> str:
    """The papermill command that made the executed notebook ``nb`` from its ``params`` (as
    recorded in its metadata; an absolute data path stays absolute: the README must not depend
    on where the checkout that renders it lives)."""
    args = " ".join(f"-p {k} {v}" for k, v in params.items())
    out = nb.resolve().relative_to(root.resolve()).as_posix()
    return f"papermill notebooks/{nb.name} {out} {args}"


def pocus_block(root: Path) -> str:
    """README table of notebook 02's POCUS protocol (mean ± std over folds under both epoch
    rules) for each run folder of ``POCUS_RUNS`` that exists, the paper's numbers beside it, and
    the command that made each folder (read from its executed notebook)."""
    from uslib.evaluation.published import published_value

    rows, commands = [], []
    for folder in POCUS_RUNS:
        run = root / "papermill_runs" / folder / "02_uscl_sample_pairs"
        if not (run / "tables" / "protocol_summary.csv").is_file():
            continue
        df = pd.read_csv(run / "tables" / "protocol_summary.csv")
        folds = pd.read_csv(run / "tables" / "protocol_per_fold.csv")
        metrics = json.loads((run / "metrics.json").read_text())
        nb = run.parent / "02_uscl_sample_pairs.ipynb"
        params = json.loads(nb.read_text())["metadata"].get("papermill", {}).get("parameters", {})
        real = params.get("data_root") is not None
        one = folds[(folds["init"] == df["init"].iloc[0]) & (folds["select"] == "test")]
        what = "real POCUS frames" if real else "synthetic lung stills"
        data = (f"{what}, {int(one['n_test'].sum()):,} test images over "
                f"{int(df['folds'].iloc[0])} folds (`papermill_runs/{folder}/`)")  # fmt: skip
        clips = "POCUS clips" if real else "synthetic videos"
        videos = f"{metrics.get('pretrain_videos', '?')} {clips}"
        for k, init in enumerate(dict.fromkeys(df["init"])):
            sub = df[df["init"] == init]
            cell = {r.select: f"{r.mean:.1f} ± {r.std:.1f}" for r in sub.itertuples()}
            name = "random init ResNet-18" if init.startswith("random") else (
                f"USCL ResNet-18 (pretrained on {videos}, unlabelled)")  # fmt: skip
            rows.append({"data (profile cpu)": data if k == 0 else "", "encoder": name,
                         "test-fold epoch (paper protocol)": cell.get("test", "-"),
                         "val epoch (honest)": cell.get("val", "-")})  # fmt: skip
        commands.append(f"- `papermill_runs/{folder}/`: `{_papermill_command(nb, params, root)}`")
    for label, id_, source in POCUS_PAPER:
        rows.append({"data (profile cpu)": "POCUS" if label else "", "encoder": label or "",
                     "test-fold epoch (paper protocol)": f"{published_value(id_):g} ({source})",
                     "val epoch (honest)": "-"})  # fmt: skip
    table = pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True)
    return (
        table
        + "\n\nMade by (the parameters are in each executed notebook's metadata):\n"
        + "\n".join(commands)
    )


def rewrite_pocus(readme: Path, root: Path) -> bool:
    """Rewrite the README POCUS table; False without markers or without any run."""
    if not any((root / "papermill_runs" / f / "02_uscl_sample_pairs").is_dir() for f in POCUS_RUNS):
        return False
    return _rewrite_block(readme, (POCUS_START, POCUS_END), [], lambda: pocus_block(root))


TINYUSFM_START, TINYUSFM_END = "<!-- tinyusfm:start -->", "<!-- tinyusfm:end -->"
"""README markers of notebook 05's arms (coreset vs random subset vs no teacher)."""
TINYUSFM_RUN = "05_tinyusfm_coreset_distillation"


def tinyusfm_block(runs: Path) -> str:
    """README table of notebook 05's own linear probe (every arm, accuracy in % with its
    bootstrap 95 % CI) and its coreset-coverage table, read from the run's ``tables/``."""
    tables = runs / TINYUSFM_RUN / "tables"
    probe = pd.read_csv(tables / "linear_probe.csv")
    cover = pd.read_csv(tables / "coreset_coverage.csv")
    metrics = json.loads((runs / TINYUSFM_RUN / "metrics.json").read_text())
    probe_rows = [{"encoder": r.encoder, f"{metrics['probe_task']} probe acc (%)":
                   ci_cell("accuracy", r.accuracy, r.ci_low, r.ci_high)}
                  for r in probe.itertuples()]  # fmt: skip
    cover_rows = [{**r, "size": int(r["size"]), "clusters covered": int(r["clusters covered"]),
                   "k-center radius": f"{r['k-center radius']:.3f}"}
                  for r in cover.to_dict("records")]  # fmt: skip
    where = f"`papermill_runs/{runs.name}/{TINYUSFM_RUN}/tables/`"
    return (
        f"Notebook 05's own probe ({where}: pool {metrics['pool']:,} stills, coreset "
        f"{metrics['coreset']:,}; each student trained for the same steps):\n\n"
        + pd.DataFrame(probe_rows).to_markdown(index=False, disable_numparse=True)
        + "\n\nCoverage of the teacher-embedding space by each selection of the same size:\n\n"
        + pd.DataFrame(cover_rows).to_markdown(index=False, disable_numparse=True)
    )


def rewrite_tinyusfm(readme: Path, runs: Path) -> bool:
    """Rewrite the README TinyUSFM-arms table; False without markers or without the run."""
    need = runs / TINYUSFM_RUN / "tables" / "linear_probe.csv"
    return _rewrite_block(readme, (TINYUSFM_START, TINYUSFM_END), [need],
                          lambda: tinyusfm_block(runs))  # fmt: skip


REAL_START, REAL_END = "<!-- real:start -->", "<!-- real:end -->"
"""README markers of the real-data track's table (``papermill_runs/<profile>_real/``)."""
REAL_PAPER = (
    (
        "USCL, paper: partial FT, best test-fold epoch, 224 px, US-4 pretraining",
        "uscl_pocus_acc_readme",
    ),
    ("ImageNet ResNet-18, paper (same protocol)", "uscl_pocus_imagenet_acc"),
    ("Meta-USCL ResNet-18 at 64 px (follow-up paper)", "metauscl_pocus_r18_64"),
)
"""(label, ``published.csv`` id) of the papers' POCUS numbers set beside the real-data table."""


def real_block(runs: Path) -> str:
    """README text of the real-data track: every pretrained encoder against the random-init
    encoder of its backbone on real POCUS (linear probe accuracy) and HC18 (Dice), with 95 % CIs
    and separation marks (``report.vs_random_table``), the setting of each row, the papers'
    numbers, and the run's wall time (``reproduce.json``)."""
    from uslib.evaluation.published import published_value

    results = pd.read_csv(runs / EVAL_RUN / "tables" / "results.csv", keep_default_na=False,
                          na_values=[""])  # fmt: skip
    results["contamination"] = results["contamination"].fillna("")
    table = vs_random_table(results)
    syn = table["encoder"].str.startswith("synthetic:")
    table.insert(1, "pretrained on", ["synthetic default (synthetic-to-real)" if s else
                                      "real POCUS frames, unlabelled" for s in syn])  # fmt: skip
    marks = table.drop(columns=["encoder", "pretrained on", "backbone"]).stack()
    n_up, n_cells = int(marks.str.endswith("▲").sum()), len(marks)
    rec = json.loads((runs / "reproduce.json").read_text())
    m = rec["machine"]
    papers = "; ".join(f"{label} {published_value(i):g} %" for label, i in REAL_PAPER)
    return (
        f"`papermill_runs/{runs.name}/` (`{rec['make']}`, commit {str(rec['git_sha'])[:7]}): "
        f"{rec['total_s'] / 60:.1f} min on {m['cpu_count']} cores ({m['torch_threads']} torch "
        f"threads, {m['matmul_gflops_fp32']} GFLOP/s fp32 matmul). Each cell: ours [95 % CI] vs "
        "random init of the same backbone [95 % CI]; ▲ / ▼ the CIs separate above / below, ≈ "
        "they overlap; † the encoder saw these images, unlabelled, in pretraining (POCUS rows "
        "of the POCUS-pretrained encoders: transductive); HC18 is cross-organ for every "
        f"encoder. **{n_up} of {n_cells} comparisons separate above random init.**\n\n"
        + table.to_markdown(index=False, disable_numparse=True)
        + f"\n\nPapers, POCUS accuracy (not like-for-like: 224 px, their corpora): {papers}. "
        "None of the five papers reports HC18."
    )


def rewrite_real(readme: Path, runs: Path) -> bool:
    """Rewrite the README real-data table from ``runs`` (a ``<profile>_real`` run set); False
    without markers or without its 07 results and ``reproduce.json``."""
    need = [runs / EVAL_RUN / "tables" / "results.csv", runs / "reproduce.json"]
    return _rewrite_block(readme, (REAL_START, REAL_END), need, lambda: real_block(runs))


LEVERS_START, LEVERS_END = "<!-- levers:start -->", "<!-- levers:end -->"
"""README markers of the real-data levers table (``benchmarks/results/real_levers.md``, written
by ``python -m benchmarks.real_levers``)."""


def rewrite_levers(readme: Path, table: Path) -> bool:
    """Copy the levers table ``table`` (the script's own Markdown) between the README's levers
    markers; False without markers or without the table."""
    return _rewrite_block(readme, (LEVERS_START, LEVERS_END), [table],
                          lambda: table.read_text().strip())  # fmt: skip


RENDERERS: dict[str, Callable[[Path, Path], list[Path]]] = {EVAL_RUN: render_evaluation}
"""Run-folder name -> ``renderer(run_dir, out_dir) -> written paths``; other notebooks may add
theirs (the default is ``render_history``)."""


def rewrite_readme(readme: Path, out_dir: Path, profile: str) -> bool:
    """Rewrite the README results section from ``<out_dir>/07_summary.csv``; False if absent."""
    summary_csv = out_dir / f"{SUMMARY_STEM}.csv"
    if not summary_csv.is_file() or not readme.is_file():
        return False
    summary = pd.read_csv(summary_csv, keep_default_na=False, dtype=str)
    try:
        source = summary_csv.resolve().relative_to(readme.resolve().parent).as_posix()
    except ValueError:
        source = summary_csv.as_posix()
    vs_random = read_vs_random(summary_csv)
    update_readme(
        readme, readme_block(summary, profile=profile, source=source, vs_random=vs_random)
    )
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu", help="smoke | cpu | paper (default cpu)")
    ap.add_argument("--root", default=None, help="repository root (default: this repository)")
    ap.add_argument("--out", default=None, help="figure folder (default <root>/figures)")
    ap.add_argument("--no-readme", action="store_true", help="leave README.md untouched")
    args = ap.parse_args(argv)
    if args.root is None:
        from uslib.runs import repo_root

        root = repo_root()
    else:
        root = Path(args.root)
    runs = root / "papermill_runs" / run_set(args.profile)
    # smoke numbers are not meaningful: they never replace the published figures or README table
    smoke = args.profile == "smoke"
    out_dir = Path(args.out) if args.out else (runs / "_figures" if smoke else root / "figures")
    if not runs.is_dir():
        print(f"no run records under {runs}; run the notebooks first (make reproduce)")
        return 1
    written: list[Path] = []
    for run_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
        written += RENDERERS.get(run_dir.name, render_history)(run_dir, out_dir)
    for p in written:
        print(f"wrote {p.relative_to(root) if p.is_relative_to(root) else p}")
    if not args.no_readme and not smoke:
        try:
            ok = rewrite_readme(root / "README.md", out_dir, args.profile)
        except ValueError as err:  # README without the results markers: warn, do not fail
            print(f"warning: README results table not written: {err}")
            return 0
        print("README results table rewritten" if ok else "README results table left as is")
        if rewrite_timings(root / "README.md", runs, args.profile):
            print("README timings rewritten from reproduce.json")
        if rewrite_figures(root / "README.md", out_dir, runs):
            print("README list of figures rewritten")
        if rewrite_pocus(root / "README.md", root):
            print("README POCUS table rewritten")
        if rewrite_tinyusfm(root / "README.md", runs):
            print("README TinyUSFM arms table rewritten")
        if rewrite_real(root / "README.md", runs.with_name(run_set(args.profile, real=True))):
            print("README real-data table rewritten")
        if rewrite_levers(root / "README.md", root / "benchmarks" / "results" / "real_levers.md"):
            print("README real-data levers table rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Re-render ``figures/`` from saved run records, without retraining: ``python -m uslib.figures``.

Reads ``papermill_runs/<profile>/*/`` (``history.csv``, ``tables/*.csv``), writes
``figures/NN_<slug>.png`` and the evaluation tables (``figures/07_summary.{csv,md,tex}``), and
rewrites the README results section between ``<!-- results:start -->`` and
``<!-- results:end -->`` from ``figures/07_summary.csv`` (the cebra-figures compute/plot split).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from uslib.evaluation.report import (
    HEADLINE_METRICS,
    SUMMARY_STEM,
    VS_RANDOM,
    read_vs_random,
    readme_block,
    summary_table,
    update_readme,
    vs_random_table,
    write_tables,
)
from uslib.viz.evaluation import plot_cost_table, plot_label_efficiency, plot_metric_bars

EVAL_RUN = "07_evaluation"


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def render_history(run_dir: Path, out_dir: Path) -> list[Path]:
    """``NN_training_loss.png`` from a run's ``history.csv`` (loss against optimizer step); the
    fallback for run folders without a renderer of their own in ``RENDERERS``."""
    hist = run_dir / "history.csv"
    if not hist.is_file():
        return []
    df = pd.read_csv(hist)
    if not {"step", "loss"} <= set(df.columns):
        return []
    fig = Figure(figsize=(4.5, 3.0), layout="constrained")
    ax = fig.subplots()
    ax.plot(df["step"], df["loss"], lw=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(run_dir.name, fontsize=9)
    ax.grid(alpha=0.3)
    return [_save(fig, out_dir / f"{run_dir.name}_training_loss.png")]


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
            fig = plot_metric_bars(results, metric=metric, protocol=protocol)
            paths.append(_save(fig, out_dir / f"07_{metric}_bars.png"))
    cost_path = run_dir / "tables" / "cost.csv"
    if cost_path.is_file():
        paths.append(_save(plot_cost_table(pd.read_csv(cost_path)), out_dir / "07_cost.png"))
    return paths


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
    if not rec.is_file() or not readme.is_file() or TIMINGS_START not in readme.read_text():
        return False
    block = timings_block(json.loads(rec.read_text()), profile)
    update_readme(readme, block, TIMINGS_START, TIMINGS_END)
    return True


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
    runs = root / "papermill_runs" / args.profile
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

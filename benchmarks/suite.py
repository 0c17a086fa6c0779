"""The benchmark suite: every method's training step, the data pipeline, the selective scan,
coreset selection and feature extraction, written to one JSON file and one Markdown table.

    python -m benchmarks [--quick] [--out DIR] [--only PATTERN] [--threads N] [--tiny]

Each row runs in a fresh worker process (``python -m benchmarks --worker ROW``, code in
``rows.py``) so that its peak memory is its own and a failure stays in its row; the parent
records around every row the torch thread count, the 1-minute load average before and after,
and the git commit (short hash and a dirty flag). The fp32 matmul peak (2048^3, best of 5, same
thread count) is measured in this process at the start and at the end; the larger of the two
is the peak that every "share of peak" refers to.

Writes ``DIR/suite.json`` and ``DIR/suite.md`` (``--quick``: ``suite_quick.*``; ``--tiny``:
``suite_tiny.*``); DIR defaults to ``benchmarks/results``. Row ids are
``kind/name/profile[/variant]`` (e.g. ``train_step/mae/cpu``, ``loader/spad/cpu/3d``,
``scan/L784_D192_N1``); ``--only`` takes comma-separated shell patterns over them.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import harness as h
from benchmarks import profiling

WORKER_FLAG = "--worker"
_MARK = "@@ROW "
MODES: dict[str, dict[str, Any]] = {
    # iters: timed steps (after one warm-up); batches: loader batches measured after start-up
    "tiny": {
        "iters": 1,
        "profiles": ("smoke",),
        "profile_profiles": ("smoke",),  # train_step rows profiled (profiling.py)
        "loader_profiles": ("smoke",),
        "batches": 1,
        "synthetic": ((32, 1),),
        "augment_n": 4,
        "scan": ((64, 16, 1),),
        "scan_repeats": 1,
        "coreset": (3_000,),
        "peak_n": 256,
        "timeout_s": 300,
    },
    "quick": {
        "iters": 3,
        "profiles": ("smoke", "cpu"),
        "profile_profiles": ("cpu",),
        "loader_profiles": ("cpu",),
        "batches": 3,
        "synthetic": ((64, 3), (128, 3)),
        "augment_n": 32,
        "scan": ((196, 384, 1), (784, 192, 1), (784, 24, 16)),
        "scan_repeats": 1,
        "coreset": (20_000, 100_000),
        "peak_n": 2048,
        "timeout_s": 600,
    },
    "full": {
        "iters": 10,
        "profiles": ("smoke", "cpu"),
        "profile_profiles": ("cpu",),
        "loader_profiles": ("smoke", "cpu"),
        "batches": 10,
        "synthetic": ((64, 30), (128, 30), (224, 15)),
        "augment_n": 128,
        "scan": None,
        "scan_repeats": 3,
        "coreset": (100_000, 1_000_000),
        "peak_n": 2048,
        "timeout_s": 1800,
    },
}
LOADER_WORKERS = (0, 1, 2)
TARGET_LOADER_RATIO = 2.0
PROJECT_N = 2_200_000


def _variants(method: str) -> tuple[str, ...]:
    return h.VARIANTS.get(method, ("",))


def _rid(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def plan(mode: str) -> list[dict[str, Any]]:
    """Every row of ``mode`` (``tiny``, ``quick`` or ``full``), in run order."""
    from benchmarks import bench_scan

    m = MODES[mode]
    rows: list[dict[str, Any]] = []
    for method in h.METHODS:
        for p in m["profiles"]:
            for v in _variants(method):
                rows.append(
                    {
                        "id": _rid("train_step", method, p, v),
                        "kind": "train_step",
                        "method": method,
                        "profile": p,
                        "variant": v,
                        "iters": m["iters"],
                        "profile_step": p in m["profile_profiles"],
                    }
                )
    for method in h.METHODS:
        for p in m["loader_profiles"]:
            for v in _variants(method):
                rows.append(
                    {
                        "id": _rid("loader", method, p, v),
                        "kind": "loader",
                        "method": method,
                        "profile": p,
                        "variant": v,
                        "workers": list(LOADER_WORKERS),
                        "batches": m["batches"],
                    }
                )
    for size, n in m["synthetic"]:
        rows.append(
            {"id": f"synthetic/{size}px", "kind": "synthetic", "size": size, "n_per_task": n}
        )
    for p in m["profiles"]:
        for which in ("uscl_spg", "openus_multicrop", "mae_crop"):
            rows.append(
                {
                    "id": _rid("augment", which, p),
                    "kind": "augment",
                    "which": which,
                    "profile": p,
                    "n": m["augment_n"],
                }
            )
    cases = m["scan"] if m["scan"] is not None else bench_scan.CASES
    for L, d, n in cases:
        rows.append(
            {
                "id": f"scan/L{L}_D{d}_N{n}",
                "kind": "scan",
                "L": L,
                "channels": d,
                "d_state": n,
                "repeats": m["scan_repeats"],
            }
        )
    for n in m["coreset"]:
        rows.append({"id": f"coreset/{n}", "kind": "coreset", "n": n})
    for method in h.METHODS:
        for p in m["profiles"]:
            rows.append(
                {
                    "id": _rid("features", method, p),
                    "kind": "features",
                    "method": method,
                    "profile": p,
                    "iters": m["iters"],
                }
            )
    return rows


def select(rows: list[dict[str, Any]], only: str | None) -> list[dict[str, Any]]:
    """Rows whose id matches one of the comma-separated shell patterns of ``only``."""
    if not only:
        return rows
    pats = [p.strip() for p in only.split(",") if p.strip()]
    return [r for r in rows if any(fnmatch.fnmatch(r["id"], p) for p in pats)]


def _worker_env(threads: int) -> dict[str, str]:
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in h.BENCH_ENV.items()}}
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_row(row: dict[str, Any], threads: int, git: dict[str, Any], timeout: float) -> dict:
    """One row in a fresh worker process, with threads, load average and commit around it."""
    row = {**row, "threads": threads}
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    cmd = [sys.executable, "-m", "benchmarks", WORKER_FLAG, json.dumps(row)]
    out: dict[str, Any] = {}
    try:
        proc = subprocess.run(
            cmd,
            cwd=h.REPO,
            env=_worker_env(threads),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        lines = [x for x in proc.stdout.splitlines() if x.startswith(_MARK)]
        if proc.returncode == 0 and lines:
            out = json.loads(lines[-1][len(_MARK) :])
        else:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            out = {"error": f"exit {proc.returncode}: " + " | ".join(tail)}
    except subprocess.TimeoutExpired:
        out = {"error": f"timed out after {timeout:.0f} s"}
    return {
        **row,
        **out,
        "wall_s": time.perf_counter() - t0,
        "loadavg_1min_before": load0,
        "loadavg_1min_after": os.getloadavg()[0],
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
    }


def _ok(r: dict[str, Any]) -> bool:
    return "error" not in r


def finish(rows: list[dict[str, Any]], peak: float) -> list[dict[str, Any]]:
    """Derived numbers: shares of the matmul peak (and ``profile_reported``: a profiled step
    below ``profiling.TARGET_SHARE`` of it), loader / step ratios, the coreset projection
    (appended as a ``coreset_projection`` row when at least one coreset size ran)."""
    steps = {
        (r["method"], r["profile"], r["variant"]): r
        for r in rows
        if r["kind"] == "train_step" and _ok(r)
    }
    for r in rows:
        if not _ok(r):
            continue
        if r["kind"] == "train_step":
            r["share_of_matmul_peak"] = h.share_of_peak(r["flops_per_step"], r["best_s"], peak)
            if "step_profile" in r:
                r["profile_reported"] = profiling.below_target(r["share_of_matmul_peak"])
        elif r["kind"] == "features":
            r["share_of_matmul_peak"] = h.share_of_peak(r["flops_per_batch"], r["best_s"], peak)
        elif r["kind"] == "loader":
            step = steps.get((r["method"], r["profile"], r["variant"]))
            r["step_images_per_s"] = step["images_per_s"] if step else None
            if step:
                ratios = {
                    w: v / step["images_per_s"] for w, v in r["images_per_s_by_workers"].items()
                }
                r["ratio_to_step_by_workers"] = ratios
                r["best_workers"] = max(ratios, key=ratios.get)
                r["ratio_to_step_best"] = ratios[r["best_workers"]]
                r["meets_2x"] = r["ratio_to_step_best"] >= TARGET_LOADER_RATIO
    sizes = sorted((r for r in rows if r["kind"] == "coreset" and _ok(r)), key=lambda r: r["n"])
    if sizes:
        rows.append(coreset_projection(sizes))
    return rows


def coreset_projection(sizes: list[dict[str, Any]], n_target: int = PROJECT_N) -> dict:
    """``bench_coreset.projection`` from the largest size (time linear in N, memory slope
    between the two largest sizes), plus the line through the two largest sizes
    (``scaling.two_point_fit``; fixed costs such as k-means++ over K = 1000 clusters dominate
    small N). A non-positive slope (the smaller size slower: warm-up, load) gives no affine
    projection (``select_s_affine`` None, the arithmetic says why) rather than a negative time."""
    from benchmarks import bench_coreset

    big, small = sizes[-1], (sizes[-2] if len(sizes) > 1 else None)
    out = {
        "id": f"coreset/projection_{n_target}",
        "kind": "coreset_projection",
        "from_n": [r["n"] for r in sizes],
        **bench_coreset.projection(big, small, n_target),
    }
    if small is not None and big["n"] > small["n"]:
        from benchmarks.scaling import two_point_fit

        fit = two_point_fit(small["n"], small["select_s"], big["n"], big["select_s"], n_target)
        out["select_s_affine"] = None if fit["value"] is None else round(fit["value"], 1)
        out["select_time_affine_arithmetic"] = fit["arithmetic"]
    return out


# ---------------------------------------------------------------- Markdown


def _f(x: Any, spec: str = ".1f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return format(x, spec)


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def _load(r: dict[str, Any]) -> str:
    return f"{r['loadavg_1min_before']:.2f} -> {r['loadavg_1min_after']:.2f}"


def _table(head: list[str], align: str, body: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(align) + "|",
        *("| " + " | ".join(row) + " |" for row in body),
    ]


def markdown(result: dict[str, Any]) -> str:
    """The Markdown report of a suite result (one table per row kind)."""
    rows, peak = result["rows"], result["matmul_peak"]
    by = {
        k: [r for r in rows if r["kind"] == k and _ok(r)]
        for k in (
            "train_step",
            "loader",
            "synthetic",
            "augment",
            "scan",
            "coreset",
            "coreset_projection",
            "features",
        )
    }
    g, mach = result["git"], result["machine"]
    out = [
        f"# Benchmark suite ({result['mode']})",
        "",
        f"Commit `{g['commit']}`{' (dirty tree)' if g['dirty'] else ''}, {result['created']}; "
        f"{mach['processor']}, {mach['cpu_count']} CPUs, torch {mach['torch']}, "
        f"{result['threads']} threads. fp32 matmul peak ({peak['n']}^3, best of "
        f"{peak['repeats']}): start {peak['start'] / 1e9:.1f}, end {peak['end'] / 1e9:.1f}; "
        f"used **{peak['used'] / 1e9:.1f} GFLOP/s**. Suite wall time {result['wall_s']:.0f} s.",
        "",
        f"Memory: {result['memory_measure']}. FLOPs: {result['flop_counter']}. Images/s: items "
        "per second as the engine counts them (leading batch size), best of the timed "
        "iterations. Load: 1-minute load average before -> after the row.",
    ]
    if by["train_step"]:
        body = [
            [
                r["method"],
                r["profile"],
                r["variant"],
                r["backbone"],
                str(r["img_size"]),
                str(r["items_per_step"]),
                _f(r["best_s"], ".3f"),
                _f(r["images_per_s"]),
                _f(r["peak_rss_delta_mib"], ".0f"),
                _f(r["flops_per_step"] / 1e9, ".3f"),
                _f(r["achieved_flops"] / 1e9),
                _pct(r["share_of_matmul_peak"]),
                _load(r),
            ]
            for r in by["train_step"]
        ]
        out += [
            "",
            "## Training step (forward + backward + optimizer step)",
            "",
            *_table(
                [
                    "method",
                    "profile",
                    "variant",
                    "backbone",
                    "px",
                    "items/step",
                    "step (s)",
                    "images/s",
                    "peak RSS delta (MiB)",
                    "GFLOP/step",
                    "GFLOP/s",
                    "% of matmul peak",
                    "load",
                ],
                ["---"] * 4 + ["---:"] * 8 + ["---"],
                body,
            ),
        ]
    out += profiling.markdown(rows)
    if by["loader"]:
        body = []
        for r in by["loader"]:
            ips = r["images_per_s_by_workers"]
            ratio = r.get("ratio_to_step_best")
            body.append(
                [
                    r["method"],
                    r["profile"],
                    r["variant"],
                    str(r["batch_size"]),
                    _f(r["cold_images_per_s"]),
                    *(_f(ips.get(str(w))) for w in LOADER_WORKERS),
                    _f(r.get("step_images_per_s")),
                    "" if ratio is None else f"{ratio:.1f}x ({r['best_workers']} w)",
                    {True: "yes", False: "**no**"}.get(r.get("meets_2x"), ""),
                    _load(r),
                ]
            )
        out += [
            "",
            "## DataLoader vs training step",
            "",
            "Cold: first pass at 0 workers (renders what the dataset memoizes); then 0 / 1 / "
            "2 workers over the same batches (steady state after worker start-up). Ratio: "
            "best loader images/s over the training step's images/s (target >= 2x at cpu "
            "size; measured separately, not while training).",
            "",
            *_table(
                [
                    "method",
                    "profile",
                    "variant",
                    "batch",
                    "cold 0 w",
                    "0 w",
                    "1 w",
                    "2 w",
                    "step images/s",
                    "loader / step",
                    ">= 2x",
                    "load",
                ],
                ["---"] * 3 + ["---:"] * 7 + ["---", "---"],
                body,
            ),
        ]
    if by["synthetic"] or by["augment"]:
        body = [
            [
                "generator stills (6 tasks)",
                f"{r['size']} px",
                _f(r["images_per_s"]),
                _f(r["images_per_s_cpu"]),
                _load(r),
            ]
            for r in by["synthetic"]
        ]
        body += [
            [
                r["which"],
                f"{r['profile']} ({r['img_size']} px, views: {r['views']})",
                _f(r["images_per_s"]),
                "",
                _load(r),
            ]
            for r in by["augment"]
        ]
        out += [
            "",
            "## Synthetic generator and augmentation (one process)",
            "",
            *_table(
                ["stage", "size", "images/s (wall)", "images/s (CPU time)", "load"],
                ["---", "---", "---:", "---:", "---"],
                body,
            ),
        ]
    if by["scan"]:
        body = [
            [
                str(r["L"]),
                str(r["channels"]),
                str(r["d_state"]),
                _f(r["ref"]["fwd_s"], ".4f"),
                _f(r["fast"]["fwd_s"], ".4f"),
                _f(r["ref"]["fwd_bwd_s"], ".4f"),
                _f(r["fast"]["fwd_bwd_s"], ".4f"),
                f"{r['speedup_fwd_bwd']:.1f}x",
                f"{r['max_rel_err_out']:.0e} / {r['max_rel_err_grad']:.0e}",
                _load(r),
            ]
            for r in by["scan"]
        ]
        out += [
            "",
            "## Selective scan (batch 2, 4 groups, fp32)",
            "",
            *_table(
                [
                    "L",
                    "channels",
                    "d_state",
                    "ref fwd (s)",
                    "fast fwd (s)",
                    "ref fwd+bwd (s)",
                    "fast fwd+bwd (s)",
                    "fwd+bwd speed-up",
                    "max rel. err out / grad",
                    "load",
                ],
                ["---:"] * 9 + ["---"],
                body,
            ),
        ]
    if by["coreset"]:
        body = [
            [
                str(r["n"]),
                _f(r["select_s"], ".2f"),
                _f(r["peak_alloc_mb"]),
                _f(r["peak_rss_mb"]),
                _load(r),
            ]
            for r in by["coreset"]
        ]
        out += [
            "",
            "## Coreset selection (dual rank, K = 1000, 384-d, 10 % budget)",
            "",
            *_table(
                ["N", "select (s)", "peak alloc (MB)", "peak RSS (MB)", "load"],
                ["---:"] * 4 + ["---"],
                body,
            ),
        ]
        for p in by["coreset_projection"]:
            out += [
                "",
                f"Projection to {p['n']:,} (from N = {p['from_n']}): "
                f"{p['select_time_arithmetic']}"
                + (
                    f"; line through the two largest sizes: {p['select_time_affine_arithmetic']}"
                    if "select_time_affine_arithmetic" in p
                    else ""
                )
                + (f"; memory: {p['memory_arithmetic']}" if "memory_arithmetic" in p else "")
                + ".",
            ]
    if by["features"]:
        body = [
            [
                r["method"],
                r["profile"],
                r["encoder"],
                str(r["img_size"]),
                str(r["batch"]),
                _f(r["best_s"], ".4f"),
                _f(r["images_per_s"]),
                _f(r["flops_per_batch"] / 1e9 / r["batch"], ".3f"),
                _f(r["achieved_flops"] / 1e9),
                _pct(r["share_of_matmul_peak"]),
                _load(r),
            ]
            for r in by["features"]
        ]
        out += [
            "",
            "## Evaluation feature extraction (frozen encoder, inference_mode)",
            "",
            *_table(
                [
                    "method",
                    "profile",
                    "encoder",
                    "px",
                    "batch",
                    "forward (s)",
                    "images/s",
                    "GFLOP/image",
                    "GFLOP/s",
                    "% of matmul peak",
                    "load",
                ],
                ["---"] * 3 + ["---:"] * 7 + ["---"],
                body,
            ),
        ]
    errors = [r for r in rows if not _ok(r)]
    if errors:
        out += ["", "## Rows that failed", ""]
        out += [f"* `{r['id']}`: {r['error']}" for r in errors]
    if result.get("notes"):
        out += ["", "## Notes", "", *(f"* {n}" for n in result["notes"])]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- entry point


def _default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_suite(
    mode: str, out_dir: Path, only: str | None, threads: int, iters: int | None = None
) -> dict[str, Any]:
    """Run the selected rows of ``mode``, write ``suite[_mode].json`` / ``.md``; returns it."""
    import torch

    from benchmarks import recording

    t_start = time.perf_counter()
    torch.set_num_threads(threads)
    cfg = MODES[mode]
    rows = select(plan(mode), only)
    if iters is not None:
        rows = [{**r, "iters": iters} if "iters" in r else r for r in rows]
    git = h.git_info()
    print(
        f"{len(rows)} rows, {threads} threads, commit {git['commit']}"
        f"{' (dirty)' if git['dirty'] else ''}",
        flush=True,
    )
    machine = recording.machine_info(threads)
    peak0 = h.matmul_peak(n=cfg["peak_n"], repeats=5, threads=threads)
    print(f"matmul peak (fp32 {cfg['peak_n']}^3): {peak0 / 1e9:.1f} GFLOP/s", flush=True)
    done = []
    for i, row in enumerate(rows, 1):
        r = run_row(row, threads, git, cfg["timeout_s"])
        done.append(r)
        what = r.get("error") or _summary(r)
        print(f"[{i}/{len(rows)}] {r['id']}: {what} ({r['wall_s']:.1f} s)", flush=True)
    peak1 = h.matmul_peak(n=cfg["peak_n"], repeats=5, threads=threads)
    peak = max(peak0, peak1)
    done = finish(done, peak)
    name = "suite" if mode == "full" else f"suite_{mode}"
    result = {
        "suite": "uslib benchmarks (python -m benchmarks)",
        "mode": mode,
        "only": only,
        "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": git,
        "threads": threads,
        "machine": machine,
        "matmul_peak": {
            "dtype": "float32",
            "n": cfg["peak_n"],
            "repeats": 5,
            "start": peak0,
            "end": peak1,
            "used": peak,
        },
        "memory_measure": h.MEMORY_CPU,
        "flop_counter": h.FLOP_COUNTER,
        "worker_env": h.BENCH_ENV,
        "notes": _notes(mode),
        "rows": done,
        "wall_s": time.perf_counter() - t_start,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(markdown(result))
    print(f"wrote {out_dir / name}.json and .md ({result['wall_s']:.0f} s)", flush=True)
    return result


def _summary(r: dict[str, Any]) -> str:
    if r["kind"] == "loader":
        return "images/s by workers " + ", ".join(
            f"{w}: {v:.0f}" for w, v in r["images_per_s_by_workers"].items()
        )
    if r["kind"] == "scan":
        return f"fwd+bwd ref {r['ref']['fwd_bwd_s']:.3f} s, fast {r['fast']['fwd_bwd_s']:.3f} s"
    if r["kind"] == "coreset":
        return f"select {r['select_s']} s, peak RSS {r['peak_rss_mb']} MB"
    return f"{r['images_per_s']:.1f} images/s"


def _notes(mode: str) -> list[str]:
    notes = [
        "Training-step batches are the first items of each method's own dataset (synthetic "
        "data, random weights: checkpoint paths cleared; TinyUSFM without its coreset stage, "
        "which the coreset rows time). SPAD batches hold one grid shape: 2d = stills (depth "
        "1), 3d = the first sweep shape, at most the preset's n_volumes per batch.",
        "Optimizer: the engine's (uslib.engine.optim.build_optimizer over the method's "
        "parameter groups), its clipping, then on_step_end (EMA teachers); fp32 on CPU.",
    ]
    if mode == "quick":
        notes.append(
            "Quick mode: 3 timed iterations, loaders at cpu size only (3 batches), selective "
            "scan at L <= 784 with 1/8 of the channels, coreset at 20 K and 100 K (the 2.2 M "
            "figure is a projection). No row is skipped."
        )
    return notes


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """CLI entry point (``python -m benchmarks``)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer iterations and smaller sizes")
    p.add_argument("--tiny", action="store_true", help="smoke size, 1 iteration (tests)")
    p.add_argument("--out", type=Path, default=h.RESULTS, help=f"folder (default {h.RESULTS})")
    p.add_argument("--only", default=None, help="comma-separated shell patterns over row ids")
    p.add_argument("--threads", type=int, default=_default_threads(), help="torch threads")
    p.add_argument("--iters", type=int, default=None, help="override timed iterations")
    p.add_argument("--list", action="store_true", help="print the selected row ids and exit")
    p.add_argument(WORKER_FLAG, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker is not None:
        from benchmarks import rows

        print(_MARK + json.dumps(rows.run(json.loads(a.worker))), flush=True)
        return None
    mode = "tiny" if a.tiny else "quick" if a.quick else "full"
    if a.list:
        print("\n".join(r["id"] for r in select(plan(mode), a.only)))
        return None
    return run_suite(mode, a.out, a.only, a.threads, a.iters)

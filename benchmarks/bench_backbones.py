"""Backbones on CPU: training-step throughput, peak memory and achieved FLOP/s.

For every registered backbone (``uslib.models.list_backbones()``; paper-size ones, > 25 M
parameters, skipped except ``vmamba_small``) at the smoke (64 px) and cpu (128 px) sizes, batch
8, and for ``vmamba_small`` at 224 px, batch 2, with the fast scan and with the naive sequential
scan of the same block (``scan_impl="ref"``), this measures one forward+backward:

* images/s: batch / best wall time of the timed iterations (after one warm-up iteration);
* peak memory: the peak resident set size during the first (warm-up) iteration minus the RSS just
  before it, in a fresh process per configuration: the kernel's peak-RSS mark (``VmHWM``, what
  ``resource.getrusage(...).ru_maxrss`` reports) is reset through ``/proc/self/clear_refs`` first
  (plain ru_maxrss delta where that is not possible). It counts activations, gradients and
  allocator caching of one training step, not the weights;
* FLOP/s: FLOPs of one forward+backward counted by ``torch.utils.flop_counter.FlopCounterMode``
  (matmuls and convolutions only, with a groups-aware count for the convolution backward; the
  scan's and norms' elementwise work is not counted) divided by the
  best time, as a share of this machine's matmul peak measured here (fp32, 2048^3, best of 10 at
  the start and 10 at the end, same thread count).

Usage: python benchmarks/bench_backbones.py [--only PATTERN] [--quick] [--no-ref] [--threads 2]
Writes benchmarks/results/backbones.json (``--quick`` only prints unless ``--out``).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from recording import machine_info, write_result
from torch.utils.flop_counter import FlopCounterMode

from uslib.models import create_backbone, list_backbones

OUT = Path(__file__).resolve().parent / "results" / "backbones.json"
SIZES = {"smoke": (64, 8), "cpu": (128, 8)}  # profile -> (img px, batch)
PAPER_SIZE_PARAMS = 25e6
OPENUS_REF_S = 31.0  # OpenUS's own pure-PyTorch CPU path, vmamba_small 224 px b2 (ARCHITECTURE.md)
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000"}


def matmul_peak(threads: int, n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 matmul FLOP/s of an n x n x n product on ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _build(name: str, img: int, scan_impl: str | None) -> torch.nn.Module:
    kw: dict[str, Any] = {"scan_impl": scan_impl} if scan_impl else {}
    try:
        return create_backbone(name, img_size=img, **kw)
    except TypeError:  # size-agnostic backbones (ResNet) may not take img_size
        return create_backbone(name, **kw)


def _conv_backward_flops(
    grad_out_shape: list[int], x_shape: list[int], w_shape: list[int], *args: Any, **kwargs: Any
) -> int:
    # torch's formula ignores `groups` and counts a depthwise conv's weight gradient C times too
    # often (45.9 of 94.5 GFLOP for vmamba_small fwd+bwd); count each requested gradient as one
    # forward conv: 2 * |grad_out| * (C_in / groups) * k_h * k_w (non-transposed convs).
    output_mask = args[7]
    fwd = 2 * math.prod(grad_out_shape) * math.prod(w_shape[1:])
    return fwd * (int(output_mask[0]) + int(output_mask[1]))


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward+backward (matmuls and convolutions, groups-aware conv backward)."""
    mapping = {torch.ops.aten.convolution_backward: _conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(x).float().sum().backward()
    model.zero_grad(set_to_none=False)
    return counter.get_total_flops()


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM, what getrusage's maxrss reports); Linux only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_kib(field: str) -> int:
    """``VmRSS`` (current) or ``VmHWM`` (peak since reset) of this process, KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def worker(cfg: dict[str, Any]) -> dict[str, Any]:
    """One configuration in this (fresh) process: time, memory, FLOPs."""
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    model = _build(cfg["name"], cfg["img"], cfg.get("scan_impl")).train()
    x = torch.randn(cfg["batch"], model.in_chans, cfg["img"], cfg["img"])

    def step() -> float:
        t0 = time.perf_counter()
        model(x).float().sum().backward()
        model.zero_grad(set_to_none=False)
        return time.perf_counter() - t0

    reset = _reset_peak_rss()
    rss0 = _rss_kib("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    warm = step()
    peak = _rss_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mib = (peak - rss0) / 1024
    times = [step() for _ in range(cfg["iters"])]
    flops = None
    if cfg.get("count_flops", True):
        flops = count_flops(model, x)
    best = min(times)
    return {**cfg, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "warmup_s": warm, "best_s": best, "median_s": sorted(times)[len(times) // 2],
            "images_per_s": cfg["batch"] / best, "peak_rss_delta_mib": peak_mib,
            "peak_measure": "VmHWM reset" if reset else "ru_maxrss", "loadavg": os.getloadavg()[0],
            "flops_fwd_bwd": flops}  # fmt: skip


def _run_isolated(cfg: dict[str, Any]) -> dict[str, Any]:
    env = {**MALLOC_ENV, **os.environ}
    cmd = [sys.executable, __file__, "--worker", json.dumps(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {**cfg, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _plan(
    only: str, quick: bool, threads: int, no_ref: bool
) -> tuple[list[dict[str, Any]], list[str]]:
    iters = 1 if quick else 5
    plan, skipped = [], []
    for name in list_backbones():
        if not fnmatch.fnmatch(name, only):
            continue
        with torch.device("meta"):
            n_params = sum(p.numel() for p in create_backbone(name).parameters())
        if n_params > PAPER_SIZE_PARAMS:
            skipped.append(f"{name} ({n_params / 1e6:.1f} M params)")
            continue
        for profile, (img, batch) in SIZES.items():
            if quick and profile != "smoke":
                continue
            plan.append({"name": name, "profile": profile, "img": img, "batch": batch,
                         "iters": iters, "threads": threads})  # fmt: skip
    if fnmatch.fnmatch("vmamba_small", only):
        arms = ["fast"] if quick or no_ref else ["fast", "ref"]
        for impl in arms:
            plan.append({"name": "vmamba_small", "profile": "paper", "img": 224, "batch": 2,
                         "iters": 1 if impl == "ref" else iters, "threads": threads,
                         "scan_impl": impl, "count_flops": impl == "fast"})  # fmt: skip
    return plan, skipped


def _table(rows: list[dict[str, Any]], peak: float) -> str:
    lines = [
        "| backbone | scan | px | batch | params (M) | fwd+bwd (s) | images/s | peak RSS "
        "delta (MiB) | GFLOP/step | GFLOP/s | % of matmul peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | | {r['img']} | {r['batch']} | error: {r['error']} |")
            continue
        gf = (r["flops_fwd_bwd"] or 0) / 1e9
        lines.append(
            f"| {r['name']} | {r.get('scan_impl', '')} | {r['img']} | {r['batch']} | "
            f"{r['params_m']:.1f} | {r['best_s']:.3f} | {r['images_per_s']:.1f} | "
            f"{r['peak_rss_delta_mib']:.0f} | {gf:.2f} | {gf / r['best_s']:.1f} | "
            f"{100 * gf * 1e9 / r['best_s'] / peak:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="*", help="shell pattern over backbone names")
    p.add_argument("--quick", action="store_true", help="smoke size, 1 iteration, no ref arm")
    p.add_argument("--threads", type=int, default=2, help="torch threads (models and peak)")
    p.add_argument("--no-ref", action="store_true", help="skip the sequential-scan arm (~30 s+)")
    p.add_argument("--out", type=Path, default=None, help=f"default {OUT} (not written if --quick)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(worker(json.loads(a.worker))))
        return
    peak = matmul_peak(a.threads, n=1024 if a.quick else 2048)
    print(f"matmul peak: {peak / 1e9:.1f} GFLOP/s ({a.threads} threads)", flush=True)
    plan, skipped = _plan(a.only, a.quick, a.threads, a.no_ref)
    rows = []
    for cfg in plan:
        rows.append(_run_isolated(cfg))
        print(_table(rows[-1:], peak).splitlines()[-1], flush=True)
    # a shared machine can depress the first measurement: keep the best of a start and end one
    peak = max(peak, matmul_peak(a.threads, n=1024 if a.quick else 2048))
    fast = {r["img"]: r for r in rows if r.get("scan_impl") == "fast" and "error" not in r}
    for r in rows:
        if "error" in r:
            continue
        if r.get("scan_impl") == "ref" and r["img"] in fast:  # same model: same FLOP count
            r["flops_fwd_bwd"] = fast[r["img"]]["flops_fwd_bwd"]
        r["achieved_flops"] = (r["flops_fwd_bwd"] or 0) / r["best_s"]
        r["share_of_matmul_peak"] = r["achieved_flops"] / peak
    summary = {}
    if 224 in fast:
        summary["vmamba_small_224_b2_fast_s"] = fast[224]["best_s"]
        summary["speedup_vs_openus_cpu_31s"] = OPENUS_REF_S / fast[224]["best_s"]
        ref = [r for r in rows if r.get("scan_impl") == "ref" and "error" not in r]
        if ref:
            summary["vmamba_small_224_b2_ref_s"] = ref[0]["best_s"]
            summary["speedup_fast_vs_ref"] = ref[0]["best_s"] / fast[224]["best_s"]
    result = {"benchmark": "backbones", "quick": a.quick, "matmul_peak_flops": peak,
              "memory_measure": "peak RSS (VmHWM, reset) minus RSS before the first fwd+bwd",
              "flop_counter": "torch.utils.flop_counter.FlopCounterMode (mm/conv only)",
              "machine": machine_info(a.threads), "worker_env": MALLOC_ENV,
              "skipped_paper_size": skipped,
              "summary": summary, "rows": rows}  # fmt: skip
    print("\n" + _table(rows, peak) + "\n", json.dumps(summary, indent=2))
    out = a.out or (None if a.quick else OUT)
    write_result(out, result)


if __name__ == "__main__":
    main()

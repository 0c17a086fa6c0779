"""GPU benchmark: every method's paper-size training step in bf16 autocast, and mamba-ssm's CUDA
selective scan against our pure-PyTorch path. Run it through ``benchmarks/gpu.sh``.

    python -m benchmarks.gpu [--out DIR] [--steps 20] [--only PATTERN] [--dry-run]

* **Training step** (per method; SPAD and its tokenizer: a 2-D and a 3-D batch): the ``paper``
  preset's model and image size, random weights, one item of the method's own dataset repeated
  to the batch (compute does not depend on pixel values; masks are drawn inside the methods),
  the engine's optimizer and clipping, forward under ``torch.autocast("cuda", torch.bfloat16)``
  (the engine's ``mixed_precision="auto"`` on GPU). ``--warmup`` steps, then ``--steps`` timed
  steps with a synchronisation after each. Reported: images/s (batch / mean step time; best
  too), peak memory (``torch.cuda.max_memory_allocated`` over warm-up and timed steps: weights,
  optimizer state, activations), FLOPs per step (``FlopCounterMode``, as the CPU suite) and the
  model FLOP utilisation: achieved FLOP/s over the GPU's dense bf16 peak from ``BF16_PEAK``
  (keyed by device name), or, for a device not in it, a bf16 matmul measured here (said so in
  ``peak_source``). The batch is the paper's per-step batch capped by ``GPU_BATCH``; a CUDA
  out-of-memory error halves it (recorded in ``notes``).
* **Selective scan**: for VMamba-S's shapes (``bench_scan.CASES``, fp32), mamba-ssm's
  ``selective_scan_fn`` against ``uslib.ops.selective_scan.selective_scan_fast`` on the same
  inputs: max abs / relative difference of the output and of the input gradients (relative to
  the largest mamba-ssm value; tolerances ``SCAN_TOL``) and the speed ratio (ours / mamba-ssm,
  forward and forward+backward, best of ``--scan-repeats``). Skipped when mamba-ssm is not
  importable.
* ``--dry-run``: the same code on CPU at the ``smoke`` size in fp32 (2 steps), the scan compared
  against the sequential reference instead of mamba-ssm, and the peak a measured fp32 matmul;
  it checks the script, it measures nothing of interest.

Writes ``DIR/gpu.json`` and ``DIR/gpu.md`` (default ``benchmarks/results/gpu/``).
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from benchmarks import harness as h

OUT = h.RESULTS / "gpu"
# dense bf16 tensor-core peaks (no sparsity), FLOP/s, by the name torch reports
BF16_PEAK = {"H100 SXM": 989e12, "H100 PCIe": 756e12, "H200": 989e12}
# per-step batch on one GPU: the paper's (optim.batch_size / accumulate_steps) capped here
GPU_BATCH = {
    "uscl": 32,
    "openus": 32,
    "mae": 64,
    "dmae": 64,
    "tinyusfm": 64,
    "spad": 8,
    "spad_tokenizer": 8,
}
SCAN_TOL = {"out": 1e-3, "grad": 1e-2}  # max |ours - mamba| / max |mamba|, fp32


def bf16_peak(device_name: str) -> tuple[float | None, str | None]:
    """``(peak FLOP/s, table key)`` of a device name, or ``(None, None)`` when unknown.

    ``"NVIDIA H100 80GB HBM3"`` is the SXM part; ``"NVIDIA H100 PCIe"`` the PCIe one.
    """
    n = device_name.upper()
    if "H200" in n:
        key = "H200"
    elif "H100" in n and "PCIE" in n:
        key = "H100 PCIe"
    elif "H100" in n and ("SXM" in n or "HBM3" in n):
        key = "H100 SXM"
    else:
        return None, None
    return BF16_PEAK[key], key


def _free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def _targets(only: str | None) -> list[tuple[str, str]]:
    out = [(m, v) for m in h.METHODS for v in h.VARIANTS.get(m, ("",))]
    if only:
        pats = [p.strip() for p in only.split(",")]
        out = [
            (m, v) for m, v in out if any(fnmatch.fnmatch(f"{m}/{v}".rstrip("/"), p) for p in pats)
        ]
    return out


def step_row(
    name: str, variant: str, a: argparse.Namespace, device: str, peak: float | None
) -> dict[str, Any]:
    """One method's training step (see the module docstring)."""
    profile = "smoke" if a.dry_run else "paper"
    autocast = None if a.dry_run else torch.bfloat16
    torch.manual_seed(0)
    _, cfg, method, data = h.method_setup(name, profile, 1, variant, device=device)
    paper_batch = max(1, cfg.optim.batch_size // cfg.optim.accumulate_steps)
    bs = a.batch or min(paper_batch, GPU_BATCH[name])
    item = data.train[h.variant_indices(data, variant)[0]]  # rendered once, repeated
    notes: list[str] = []
    while True:
        try:
            batch = h.to_device(h.collate(data, [item] * bs), device)
            step = h.make_step(method, cfg, batch, autocast=autocast)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                mem0 = torch.cuda.memory_allocated()
                t = h.time_calls(step, a.steps, a.warmup, device)
                peak_mem = torch.cuda.max_memory_allocated()
                mem = {
                    "peak_memory_mib": peak_mem / 2**20,
                    "memory_before_mib": mem0 / 2**20,
                    "memory_measure": "torch.cuda.max_memory_allocated",
                }
            else:
                with h.PeakRSS() as rss:
                    t = h.time_calls(step, a.steps, a.warmup, device)
                mem = {"peak_memory_mib": rss.delta_mib, "memory_measure": rss.how}
            flops = h.count_flops(step)
            break
        except torch.OutOfMemoryError:
            batch = step = None
            for q in method.parameters():
                q.grad = None  # a backward cut short leaves gradients behind
            _free(device)
            if bs == 1:
                raise
            notes.append(f"CUDA out of memory at batch {bs}; halved")
            bs //= 2
    n = h.batch_items(batch)
    mfu = h.share_of_peak(flops, t["mean_s"], peak)
    row = {
        "method": name,
        "variant": variant,
        "profile": profile,
        "backbone": cfg.backbone,
        "img_size": cfg.data.img_size,
        "batch": n,
        "paper_batch_per_step": paper_batch,
        "paper_precision": cfg.optim.mixed_precision,
        "dtype": "bf16 autocast" if autocast else "fp32",
        "steps": a.steps,
        "warmup": a.warmup,
        **t,
        "images_per_s": n / t["mean_s"],
        "images_per_s_best": n / t["best_s"],
        **mem,
        "flops_per_step": flops,
        "achieved_flops": flops / t["mean_s"],
        "mfu": mfu,
        "notes": notes,
        "input_shapes": h.tensor_shapes(batch),
    }
    del method, batch, step
    _free(device)
    return row


def _scan_call(fn: Any, ts: list[torch.Tensor]) -> torch.Tensor:
    u, delta, A, B, C, D, bias = ts
    return fn(u, delta, A, B, C, D, None, bias, True)


def _scan_times(fn: Any, ts: list[torch.Tensor], repeats: int, device: str) -> dict[str, float]:
    """Best forward (no grad) and forward+backward seconds of one scan implementation."""

    def fwd() -> None:
        with torch.no_grad():
            _scan_call(fn, ts)

    def fwd_bwd() -> None:
        torch.autograd.grad(_scan_call(fn, ts).sum(), ts)

    return {
        "fwd_s": h.time_calls(fwd, repeats, warmup=1, device=device)["best_s"],
        "fwd_bwd_s": h.time_calls(fwd_bwd, repeats, warmup=1, device=device)["best_s"],
    }


def scan_compare(a: argparse.Namespace, device: str) -> dict[str, Any]:
    """mamba-ssm (dry run: the sequential reference) vs our fast path, same inputs."""
    from benchmarks import bench_scan
    from uslib.ops.selective_scan import (
        mamba_ssm_available,
        selective_scan_fast,
        selective_scan_ref,
    )

    if device == "cuda" and mamba_ssm_available():
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as kernel

        other, cases = "mamba_ssm.ops.selective_scan_interface.selective_scan_fn", bench_scan.CASES
    elif a.dry_run:
        kernel, other = selective_scan_ref, "selective_scan_ref (dry run: stands in for mamba-ssm)"
        cases = [(64, 16, 1), (32, 8, 4)]
    else:
        return {"skipped": "mamba_ssm is not importable (install the project's `gpu` extra)"}
    rows = []
    for L, d, n in cases:
        ts = [t.detach().to(device).requires_grad_() for t in bench_scan._inputs(L, d, n)]
        outs, grads = [], []
        for fn in (kernel, selective_scan_fast):
            out = _scan_call(fn, ts)
            w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
            grads.append(torch.autograd.grad((out * w).sum(), ts))
            outs.append(out.detach())

        def diff(x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
            e = float((x.float() - ref.float()).abs().max())
            return e, e / max(float(ref.float().abs().max()), 1e-30)

        abs_out, rel_out = diff(outs[1], outs[0])
        g = [diff(x, r) for x, r in zip(grads[1], grads[0])]
        abs_grad, rel_grad = max(e for e, _ in g), max(r for _, r in g)
        times = {
            "other": _scan_times(kernel, ts, a.scan_repeats, device),
            "ours": _scan_times(selective_scan_fast, ts, a.scan_repeats, device),
        }
        ok = rel_out <= SCAN_TOL["out"] and rel_grad <= SCAN_TOL["grad"]
        rows.append(
            {
                "L": L,
                "channels": d,
                "d_state": n,
                "batch": 2,
                "groups": 4,
                "dtype": "float32",
                "max_abs_diff_out": abs_out,
                "max_rel_diff_out": rel_out,
                "max_abs_diff_grad": abs_grad,
                "max_rel_diff_grad": rel_grad,
                "within_tolerance": ok,
                "seconds": times,
                "ours_over_other_fwd": times["ours"]["fwd_s"] / times["other"]["fwd_s"],
                "ours_over_other_fwd_bwd": times["ours"]["fwd_bwd_s"] / times["other"]["fwd_bwd_s"],
            }
        )
    return {
        "compared_with": other,
        "ours": "uslib.ops.selective_scan.selective_scan_fast",
        "tolerance_rel_to_max_other": SCAN_TOL,
        "cases": rows,
    }


def markdown(res: dict[str, Any]) -> str:
    """The Markdown report of a GPU result."""
    lines = [
        f"# GPU benchmark{' (dry run, CPU)' if res['dry_run'] else ''}",
        "",
        f"{res['device']}; torch {res['torch']} (CUDA {res['cuda']}); commit "
        f"`{res['git']['commit']}`{' (dirty)' if res['git']['dirty'] else ''}; {res['created']}. "
        f"Peak for MFU: {res['peak_flops'] / 1e12:.1f} TFLOP/s ({res['peak_source']}). "
        f"Selective scan in VMamba: {res['vmamba_scan']}. Wall time {res['wall_s']:.0f} s.",
        "",
        "| method | variant | backbone | px | batch | dtype | step (s, mean) | images/s | "
        "peak memory (MiB) | GFLOP/step | TFLOP/s | MFU (%) | notes |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in res["rows"]:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['method']} | {r['variant']} | {r.get('error', r.get('skipped'))} |")
            continue
        mfu = "" if r["mfu"] is None else f"{100 * r['mfu']:.1f}"
        lines.append(
            f"| {r['method']} | {r['variant']} | {r['backbone']} | {r['img_size']} | {r['batch']}"
            f" | {r['dtype']} | {r['mean_s']:.4f} | {r['images_per_s']:.1f} | "
            f"{r['peak_memory_mib']:.0f} | {r['flops_per_step'] / 1e9:.1f} | "
            f"{r['achieved_flops'] / 1e12:.2f} | {mfu} | {'; '.join(r['notes'])} |"
        )
    s = res["scan"]
    lines += ["", "## Selective scan: ours vs " + s.get("compared_with", "mamba-ssm"), ""]
    if "skipped" in s:
        lines.append(f"Skipped: {s['skipped']}.")
    else:
        tol = s["tolerance_rel_to_max_other"]
        lines += [
            f"Tolerance: max |ours - other| / max |other| <= {tol['out']} (output), "
            f"<= {tol['grad']} (gradients of all inputs).",
            "",
            "| L | channels | d_state | max abs / rel diff out | max abs / rel diff grad | "
            "within tol. | fwd ours / other | fwd+bwd ours / other |",
            "|---:|---:|---:|---|---|---|---:|---:|",
        ]
        for c in s["cases"]:
            lines.append(
                f"| {c['L']} | {c['channels']} | {c['d_state']} | {c['max_abs_diff_out']:.1e} / "
                f"{c['max_rel_diff_out']:.1e} | {c['max_abs_diff_grad']:.1e} / "
                f"{c['max_rel_diff_grad']:.1e} | {'yes' if c['within_tolerance'] else '**no**'} | "
                f"{c['ours_over_other_fwd']:.2f}x | {c['ours_over_other_fwd_bwd']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """CLI entry point (``benchmarks/gpu.sh`` runs ``python -m benchmarks.gpu``)."""
    p = argparse.ArgumentParser(prog="benchmarks/gpu.sh", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path(os.environ.get("USLIB_GPU_BENCH_OUT", OUT)))
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20; dry run 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 3; dry 1)")
    p.add_argument("--batch", type=int, default=None, help="batch for every method")
    p.add_argument("--only", default=None, help="patterns over method[/variant], e.g. 'spad/*'")
    p.add_argument("--scan-repeats", type=int, default=10)
    p.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="skip the remaining training steps after this many seconds",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (dry run)")
    p.add_argument("--dry-run", action="store_true", help="CPU, smoke size, fp32, seconds")
    a = p.parse_args(argv)
    t_start = time.perf_counter()
    a.steps = a.steps or (2 if a.dry_run else 20)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.dry_run else 3)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.dry_run:
        device, a.scan_repeats = "cpu", min(a.scan_repeats, 2)
        dev_name = "CPU (dry run)"
        peak = h.matmul_peak(n=256, repeats=3)
        peak_src = "dry run: measured fp32 matmul 256^3 on the CPU"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --dry-run to check the script on CPU")
        device, dev_name = "cuda", torch.cuda.get_device_name()
        measured = h.matmul_peak("cuda", torch.bfloat16, n=8192, repeats=10)
        peak, key = bf16_peak(dev_name)
        peak_src = (
            f"table: {key} dense bf16"
            if key
            else "measured bf16 matmul 8192^3 (device not in table)"
        )
        peak = peak or measured
    from uslib.ops.selective_scan import mamba_ssm_available

    scan_impl = (
        "mamba-ssm CUDA kernel"
        if device == "cuda" and mamba_ssm_available()
        else "pure-PyTorch fast path (uslib.ops.selective_scan)"
    )
    rows = []
    for name, variant in _targets(a.only):
        if time.perf_counter() - t_start > a.budget_s:
            rows.append({"method": name, "variant": variant, "skipped": "time budget"})
            continue
        try:
            rows.append(step_row(name, variant, a, device, peak))
        except Exception as err:  # noqa: BLE001 - one failing method must not lose the others
            rows.append(
                {"method": name, "variant": variant, "error": f"{type(err).__name__}: {err}"[:300]}
            )
            _free(device)
        r = rows[-1]
        print(
            f"{name} {variant}: "
            + (
                r.get("error")
                or r.get("skipped")
                or f"{r['images_per_s']:.1f} images/s, MFU {r['mfu'] or 0:.3f}"
            ),
            flush=True,
        )
    scan = scan_compare(a, device)
    res = {
        "benchmark": "gpu",
        "dry_run": a.dry_run,
        "device": dev_name,
        "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": h.git_info(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "peak_flops": peak,
        "peak_source": peak_src,
        "measured_bf16_matmul_flops": None if a.dry_run else measured,
        "vmamba_scan": scan_impl,
        "flop_counter": h.FLOP_COUNTER,
        "rows": rows,
        "scan": scan,
        "wall_s": time.perf_counter() - t_start,
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "gpu.json").write_text(json.dumps(res, indent=2) + "\n")
    (a.out / "gpu.md").write_text(markdown(res))
    print(f"wrote {a.out}/gpu.json and gpu.md ({res['wall_s']:.0f} s)", flush=True)
    return res


if __name__ == "__main__":
    main()

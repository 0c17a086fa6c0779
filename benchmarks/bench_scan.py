"""Selective scan on CPU: the sequential reference vs the chunked fast path and the fused kernel.

Two parts, one run, one thread count (``--threads``, default 2); the model first, and the JSON
written after each part (``"complete": false`` until the kernel cases are in):

* **Kernel cases.** Shapes of VMamba-S (OpenUS) at 224 px, batch 2, d_state 1, 4 scan directions
  as groups: L = 3136 (stage 1, 4 x 192 channels), 784 (stage 2, 4 x 384), 196 (stage 3,
  4 x 768), plus one d_state = 16 case. Forward-only (``torch.no_grad()``: the fast path's
  forward-only branch) and forward+backward, best of ``--repeats`` after a warm-up (the
  reference's forward+backward runs once at L >= 784: seconds, ~15 s at L = 3136).
* **Model** (``--no-model`` skips it). ``vmamba_small`` at 224 px, batch 2: forward-only (eval,
  ``torch.no_grad()``) and forward+backward (train, backward of ``(out * w).sum()``) with
  ``scan_impl="fused"`` (the default CPU path: SS2D's four directions, scan and merge in one
  numba kernel, :mod:`uslib.ops.ss2d_scan`), ``"fast"`` (the chunked PyTorch scan inside the
  PyTorch cross-scan / merge) and ``"ref"`` (the sequential definition), same weights, and a
  fourth arm, the PyTorch path with its scan replaced by ``u * D`` (no scan at all): the cost of
  the rest of that path, which bounds its ratio, since ref / fast <= ref / no-scan (the fused
  arm also drops the cross-scan copies, so it is not bounded by it). The arms run interleaved
  so that the load of a shared machine hits them alike; best of ``--model-repeats`` (forward)
  and ``--model-repeats-bwd`` (forward+backward) rounds.

Usage: python benchmarks/bench_scan.py [--quick] [--threads 2] [--no-model]
Writes benchmarks/results/selective_scan.json (``--quick`` only prints unless ``--out``), with the
machine, the torch threads, the load average before and after, and the commit.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from recording import machine_info, write_result

import uslib.models.vmamba as vmamba
from uslib.models import create_backbone
from uslib.ops.selective_scan import selective_scan_fast, selective_scan_ref
from uslib.ops.ss2d_scan import fused_scan_available

OUT = Path(__file__).resolve().parent / "results" / "selective_scan.json"
# (L, channels = 4 directions x d_inner, d_state) at VMamba-S stage resolutions
CASES = [(196, 3072, 1), (784, 1536, 1), (3136, 768, 1), (784, 192, 16)]


def _inputs(L: int, d: int, n: int, batch: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, d, L, generator=g)
    delta = torch.randn(batch, d, L, generator=g) * 0.5 - 2.0  # softplus -> dt ~ 0.1 (VMamba init)
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)  # A_log = log(1..N)
    B = torch.randn(batch, 4, n, L, generator=g)
    C = torch.randn(batch, 4, n, L, generator=g)
    D = torch.ones(d)
    bias = torch.randn(d, generator=g) * 0.1
    return [t.requires_grad_() for t in (u, delta, A, B, C, D, bias)]


def _call(fn: Callable[..., torch.Tensor], ts: list[torch.Tensor]) -> torch.Tensor:
    u, delta, A, B, C, D, bias = ts
    return fn(u, delta, A, B, C, D, None, bias, True)


def _time(
    fn: Callable[..., torch.Tensor],
    ts: list[torch.Tensor],
    repeats: int,
    repeats_bwd: int | None = None,
) -> dict:
    """Best forward-only (no grad) and forward+backward times of ``repeats`` runs each
    (``repeats_bwd`` forward+backward runs when given)."""
    fwd, fwd_bwd = [], []
    for i in range(repeats):
        with torch.no_grad():
            t0 = time.perf_counter()
            _call(fn, ts)
            fwd.append(time.perf_counter() - t0)
        if repeats_bwd is not None and i >= repeats_bwd:
            continue
        t0 = time.perf_counter()
        out = _call(fn, ts)
        torch.autograd.grad(out.sum(), ts)
        fwd_bwd.append(time.perf_counter() - t0)
    return {"fwd_s": min(fwd), "fwd_bwd_s": min(fwd_bwd)}


def _rel_err(ts: list[torch.Tensor]) -> tuple[float, float]:
    outs = [_call(fn, ts) for fn in (selective_scan_ref, selective_scan_fast)]
    w = torch.randn_like(outs[0])
    grads = [torch.autograd.grad((o * w).sum(), ts) for o in outs]

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))

    g_err = max(rel(a, b) for a, b in zip(grads[1], grads[0]))
    return rel(outs[1].detach(), outs[0].detach()), g_err


def _rel_err_nograd(ts: list[torch.Tensor]) -> float:
    """max |fast - ref| / max |ref| of the forward-only output (the no-grad branch)."""
    with torch.no_grad():
        fast, ref = (
            _call(f, [t.detach() for t in ts]) for f in (selective_scan_fast, selective_scan_ref)
        )
    return float((fast - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def _no_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    *args: Any,
    **kw: Any,
) -> torch.Tensor:
    """The no-scan arm: ``u * D`` plus zero-weighted terms so every input still gets a gradient."""
    zero = 0 * (delta.sum() + A.sum() + B.sum() + C.sum())
    return u * D[:, None] + zero if D is not None else u + zero  # fmt: skip


def _git_commit() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=root, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "-uno"))}


def model_compare(img: int, batch: int, repeats: int, repeats_bwd: int) -> dict[str, Any]:
    """``vmamba_small`` forward-only and forward+backward: fused vs fast vs ref vs no-scan,
    interleaved (no fused arm without numba)."""
    torch.manual_seed(0)
    models = {"fast": create_backbone("vmamba_small", img_size=img, scan_impl="fast")}
    if fused_scan_available():
        models["fused"] = create_backbone("vmamba_small", img_size=img, scan_impl="fused")
    models["ref"] = create_backbone("vmamba_small", img_size=img, scan_impl="ref")
    models["no_scan"] = create_backbone("vmamba_small", img_size=img, scan_impl="fast")
    for m in list(models.values())[1:]:
        m.load_state_dict(models["fast"].state_dict())
    x = torch.randn(batch, 1, img, img, generator=torch.Generator().manual_seed(0))
    # a generic cotangent: out.sum() would be nearly constant in the input (the last LayerNorm's
    # weights start at 1 and sum(LN(x)) does not depend on x), leaving only roundoff gradients
    w = torch.randn(batch, models["fast"].num_features, generator=torch.Generator().manual_seed(2))
    real_scan = vmamba.selective_scan_fn

    def run(arm: str, backward: bool) -> tuple[float, torch.Tensor]:
        m = models[arm].train(backward)
        vmamba.selective_scan_fn = _no_scan if arm == "no_scan" else real_scan
        torch.manual_seed(1)  # the same DropPath masks (drop_path_rate 0.3) in every arm
        try:
            t0 = time.perf_counter()
            if backward:
                out = m(x)
                (out * w).sum().backward()
            else:
                with torch.no_grad():
                    out = m(x)
            return time.perf_counter() - t0, out.detach()
        finally:
            vmamba.selective_scan_fn = real_scan

    res: dict[str, Any] = {"model": "vmamba_small", "img": img, "batch": batch}
    for key, backward, n in (("fwd", False, repeats), ("fwd_bwd", True, repeats_bwd)):
        times: dict[str, list[float]] = {arm: [] for arm in models}
        outs: dict[str, torch.Tensor] = {}
        for arm in models:  # warm-up (the reference's forward+backward: skipped, it takes ~20 s)
            if not (backward and arm == "ref"):
                run(arm, backward)
            models[arm].zero_grad(set_to_none=True)
        for _ in range(n):
            for arm in models:
                models[arm].zero_grad(set_to_none=True)
                t, outs[arm] = run(arm, backward)
                times[arm].append(t)
        best = {arm: min(v) for arm, v in times.items()}
        err = float((outs["fast"] - outs["ref"]).abs().max() / outs["ref"].abs().max())
        row = {"best_s": best, "all_s": times, "ref_over_fast": best["ref"] / best["fast"],
               "ceiling_ref_over_no_scan": best["ref"] / best["no_scan"],
               "max_rel_err_out": err}  # fmt: skip
        if "fused" in outs:
            row["ref_over_fused"] = best["ref"] / best["fused"]
            row["max_rel_err_out_fused"] = float(
                (outs["fused"] - outs["ref"]).abs().max() / outs["ref"].abs().max()
            )
        if backward:  # the gradients of the last round (same weights, same input)
            pr = dict(models["ref"].named_parameters())
            for arm, key_ in (
                ("fast", "max_rel_err_param_grad"),
                ("fused", "max_rel_err_param_grad_fused"),
            ):
                if arm not in models:
                    continue
                pf = dict(models[arm].named_parameters())
                row[key_] = max(
                    float((pf[k].grad - p.grad).abs().max() / p.grad.abs().max().clamp_min(1e-30))
                    for k, p in pr.items()
                    if p.grad is not None and float(p.grad.abs().max()) > 0
                )
        res[key] = row
        ceiling = row["ceiling_ref_over_no_scan"]
        fused = (f"fused {best['fused']:.3f}s (ref/fused x{row['ref_over_fused']:.2f}) "
                 if "fused" in best else "")  # fmt: skip
        print(f"vmamba_small {img}px b{batch} {key:7s}: {fused}fast {best['fast']:.3f}s ref "
              f"{best['ref']:.3f}s no-scan {best['no_scan']:.3f}s | ref/fast "
              f"x{row['ref_over_fast']:.2f} (ceiling ref/no-scan x{ceiling:.2f})"
              f" | rel err out {err:.1e} | load {os.getloadavg()[0]:.2f}", flush=True)  # fmt: skip
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1/8 of the channels, one repeat, 64 px")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model-repeats", type=int, default=5, help="forward-only rounds")
    p.add_argument("--model-repeats-bwd", type=int, default=2, help="forward+backward rounds")
    p.add_argument("--no-model", action="store_true", help="kernel cases only")
    p.add_argument("--out", type=Path, default=None, help=f"default {OUT} (not written if --quick)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    load_before = os.getloadavg()
    git = _git_commit()  # at the start: the run's own output would make the tree dirty later
    repeats = 1 if a.quick else a.repeats
    out = a.out or (None if a.quick else OUT)
    result: dict[str, Any] = {"benchmark": "selective_scan", "dtype": "float32",
                              "quick": a.quick, "repeats": repeats}  # fmt: skip

    def write(part: str) -> None:  # after each part: a run cut short keeps what it measured
        machine = {**machine_info(a.threads), "loadavg_before": load_before,
                   "loadavg_after": os.getloadavg(), "git": git}  # fmt: skip
        write_result(out, {**result, "machine": machine, "complete": part == "cases"})

    if not a.no_model:  # first: the model-level comparison (issue 15's acceptance line)
        img = 64 if a.quick else 224
        result["vmamba_small"] = model_compare(img, 2, 1 if a.quick else a.model_repeats,
                                               1 if a.quick else a.model_repeats_bwd)  # fmt: skip
        write("model")
    _time(selective_scan_fast, _inputs(256, 64, 1), 1)  # warm-up
    rows = result["cases"] = []
    for L, d, n in CASES:
        d = max(8, d // 8) if a.quick else d
        ts = _inputs(L, d, n)
        fast = _time(selective_scan_fast, ts, repeats)
        ref = _time(selective_scan_ref, ts, repeats, 1 if L >= 784 else None)
        err_out, err_grad = _rel_err(ts)
        err_nograd = _rel_err_nograd(ts)
        row = {"L": L, "batch": 2, "channels": d, "d_state": n, "groups": 4, "ref": ref,
               "fast": fast, "speedup_fwd": ref["fwd_s"] / fast["fwd_s"],
               "speedup_fwd_bwd": ref["fwd_bwd_s"] / fast["fwd_bwd_s"],
               "max_rel_err_out": err_out, "max_rel_err_out_nograd": err_nograd,
               "max_rel_err_grad": err_grad}  # fmt: skip
        rows.append(row)
        print(
            f"L={L:5d} D={d:5d} N={n:2d}  ref fwd {ref['fwd_s']:.3f}s fwd+bwd "
            f"{ref['fwd_bwd_s']:.3f}s | fast fwd {fast['fwd_s']:.4f}s fwd+bwd "
            f"{fast['fwd_bwd_s']:.4f}s | x{row['speedup_fwd']:.1f} / x{row['speedup_fwd_bwd']:.1f}"
            f" | rel err out {err_out:.1e} (no grad {err_nograd:.1e}) grad {err_grad:.1e}",
            flush=True,
        )
    write("cases")


if __name__ == "__main__":
    main()

"""Selective scan on CPU: the sequential reference vs the chunked fast path (same results).

Shapes are those of VMamba-S (OpenUS) at 224 px, batch 2, d_state 1, 4 scan directions as
groups: L = 3136 (stage 1, 4 x 192 channels), 784 (stage 2, 4 x 384), 196 (stage 3, 4 x 768),
plus one d_state = 16 case. Times are the best of ``--repeats`` runs after a warm-up (the
reference's forward+backward runs once at L >= 3136: it takes ~30 s).

Usage: python benchmarks/bench_scan.py [--quick] [--threads 1]
Writes benchmarks/results/selective_scan.json (``--quick`` only prints unless ``--out``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from recording import machine_info, write_result

from uslib.ops.selective_scan import selective_scan_fast, selective_scan_ref

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


def _time(fn: Callable[..., torch.Tensor], ts: list[torch.Tensor], repeats: int) -> dict:
    fwd, fwd_bwd = [], []
    for _ in range(repeats):
        with torch.no_grad():
            t0 = time.perf_counter()
            _call(fn, ts)
            fwd.append(time.perf_counter() - t0)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1/8 of the channels, one repeat")
    p.add_argument("--threads", type=int, default=1, help="1: robust on a shared 2-core box")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=None, help=f"default {OUT} (not written if --quick)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    repeats = 1 if a.quick else a.repeats
    _time(selective_scan_fast, _inputs(256, 64, 1), 1)  # warm-up
    rows = []
    for L, d, n in CASES:
        d = max(8, d // 8) if a.quick else d
        ts = _inputs(L, d, n)
        fast = _time(selective_scan_fast, ts, repeats)
        ref = _time(selective_scan_ref, ts, 1 if L >= 3136 else repeats)
        err_out, err_grad = _rel_err(ts)
        row = {"L": L, "batch": 2, "channels": d, "d_state": n, "groups": 4, "ref": ref,
               "fast": fast, "speedup_fwd": ref["fwd_s"] / fast["fwd_s"],
               "speedup_fwd_bwd": ref["fwd_bwd_s"] / fast["fwd_bwd_s"],
               "max_rel_err_out": err_out, "max_rel_err_grad": err_grad}  # fmt: skip
        rows.append(row)
        print(
            f"L={L:5d} D={d:5d} N={n:2d}  ref fwd {ref['fwd_s']:.3f}s fwd+bwd "
            f"{ref['fwd_bwd_s']:.3f}s | fast fwd {fast['fwd_s']:.4f}s fwd+bwd "
            f"{fast['fwd_bwd_s']:.4f}s | x{row['speedup_fwd']:.1f} / x{row['speedup_fwd_bwd']:.1f}"
            f" | rel err out {err_out:.1e} grad {err_grad:.1e}",
            flush=True,
        )
    result = {"benchmark": "selective_scan", "dtype": "float32", "quick": a.quick,
              "repeats": repeats, "machine": machine_info(a.threads), "cases": rows}  # fmt: skip
    out = a.out or (None if a.quick else OUT)
    write_result(out, result)


if __name__ == "__main__":
    main()

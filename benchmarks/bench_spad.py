"""SPAD (PUMIT) training steps on 2-D and 3-D batches: tokens/s and peak memory.

For the ``smoke`` and ``cpu`` preset sizes and three batch kinds (2-D stills as depth-1
volumes, isotropic sweeps, anisotropic sweeps at slice ratio 4), one training step (forward +
backward + AdamW) of the ``spad_tokenizer`` and of the ``spad`` MIM method, best of the timed
iterations after a warm-up. Tokens = token-grid cells (the ViT's, = the tokenizer's codes).
Each case runs in a fresh subprocess so its peak resident memory (``ru_maxrss``; CUDA: peak
allocated) is its own.

Usage: python benchmarks/bench_spad.py [--threads 2] [--iters 3] [--batch 8]
Writes benchmarks/results/spad.json (load average recorded: a shared box is slower).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from pathlib import Path
from typing import Any

import torch
from recording import machine_info, write_result

OUT = Path(__file__).resolve().parent / "results" / "spad.json"
KINDS = {"2d": (None, 5), "3d_isotropic": (0, 0), "3d_aniso_r4": (1, 2)}  # volumes.depths index


def _case(profile: str, method_name: str, kind: str, batch: int, iters: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    from uslib.methods import spad, spad_tokenizer

    mod = spad if method_name == "spad" else spad_tokenizer
    cfg_cls = mod.SPADConfig if method_name == "spad" else mod.SPADTokenizerConfig
    cfg = cfg_cls.preset(profile)
    method = mod.build(cfg).train()
    s, p = cfg.data.img_size, cfg.tokenizer.strides
    patch = int(torch.tensor(p).prod())
    which, aniso = KINDS[kind]
    depth = 1 if which is None else cfg.volumes.depths[which]
    x = torch.rand(batch, 1, depth, s, s)
    b = {"image": x, "aniso_d": torch.full((batch,), aniso)}
    opt = torch.optim.AdamW([q for q in method.parameters() if q.requires_grad], lr=1e-4)
    times = []
    for _ in range(iters + 1):
        t0 = time.perf_counter()
        loss = method.training_step(b)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    d_eff = max(patch >> aniso, 1)
    tokens = batch * (depth // d_eff) * (s // patch) ** 2
    best = min(times[1:])
    return {"profile": profile, "method": method_name, "kind": kind,
            "input": [batch, 1, depth, s, s], "tokens_per_batch": tokens, "step_s": best,
            "tokens_per_s": tokens / best,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip


def _run(args: tuple, q: Any) -> None:
    q.put(_case(*args))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    for profile in ("smoke", "cpu"):
        for name in ("spad_tokenizer", "spad"):
            for kind in KINDS:
                q = ctx.Queue()
                proc = ctx.Process(target=_run, args=((profile, name, kind, a.batch, a.iters,
                                                       a.threads), q))  # fmt: skip
                proc.start()
                rows.append(q.get())
                proc.join()
                r = rows[-1]
                print(f"{profile:5s} {name:14s} {kind:12s} {r['input']} "
                      f"{r['tokens_per_s']:9.0f} tok/s  {r['peak_rss_mb']:.0f} MB")  # fmt: skip
    write_result(a.out, {"machine": machine_info(a.threads), "results": rows})


if __name__ == "__main__":
    main()

"""OpenUS training step: images/s, peak memory and the teacher attention map's share of the step.

For the ``smoke`` and ``cpu`` presets (and ``--profiles paper`` on a GPU): forward + backward +
AdamW step of ``OpenUS`` on one multi-crop batch (2 global + ``n_local`` local views per image,
the preset's batch size); best of the timed iterations after one warm-up. Separately timed: the
teacher's implicit-attention map (``VMamba.token_attention`` on the 2B global crops, chunked over
channels) plus the score blend and the mask draw, the part OpenUS adds to iBOT; its share is that
time over the step time. Peak memory: ``torch.cuda.max_memory_allocated`` on GPU; on CPU the
process's peak RSS (``ru_maxrss``) minus the RSS before the first step, each profile in a fresh
subprocess so the peaks do not mix.

Usage: python benchmarks/bench_openus.py [--threads 2] [--iters 3] [--profiles smoke cpu]
Writes benchmarks/results/openus.json (the machine may be shared: the load average is recorded).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from recording import machine_info, write_result

from uslib.methods import openus
from uslib.methods import openus_masking as om

OUT = Path(__file__).resolve().parent / "results" / "openus.json"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(profile: str, iters: int, device: str) -> dict[str, Any]:
    cfg = openus.OpenUSConfig.preset(profile)
    method = openus.build(cfg).to(device).train()
    data = openus.train_data(cfg)
    batch = torch.utils.data.default_collate([data.train[i] for i in range(cfg.optim.batch_size)])
    batch = {k: v.to(device) for k, v in batch.items()}
    opt = torch.optim.AdamW(method.parameters(), lr=cfg.optim.lr)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rss0 = _rss_mb()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step, attn = [], []
    g = method.normalise(batch["globals"].transpose(0, 1).flatten(0, 1))
    for _ in range(iters + 1):
        sync()
        t0 = time.perf_counter()
        loss = method.training_step(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()
        step.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            a = method.teacher.backbone.token_attention(g)
            om.adaptive_mask(om.blend_scores(a, method.loss_map.map(), 0.5), 0.6, 0.5)
        sync()
        attn.append(time.perf_counter() - t0)
    best, best_attn = min(step[1:]), min(attn[1:])
    n = cfg.optim.batch_size
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0)  # fmt: skip
    return {"profile": profile, "backbone": cfg.backbone, "global_px": cfg.data.img_size,
            "local_px": cfg.local_size, "n_local": cfg.n_local, "batch_images": n,
            "views_per_image": 2 + cfg.n_local, "step_s": best, "images_per_s": n / best,
            "attention_mask_s": best_attn, "attention_share_of_step": best_attn / best,
            "peak_memory_mb": peak, "memory_kind": "cuda_max_allocated" if device == "cuda"
            else "peak_rss_minus_start", "device": device}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--profiles", nargs="+", default=["smoke", "cpu"])
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child: one profile
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.one:
        print(json.dumps(measure(args.one, args.iters, device)))
        return
    rows = []
    for p in args.profiles:
        cmd = [sys.executable, __file__, "--one", p, "--threads", str(args.threads),
               "--iters", str(args.iters)]  # fmt: skip
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(rows[-1])
    write_result(args.out, {"machine": machine_info(args.threads), "steps": rows})


if __name__ == "__main__":
    main()

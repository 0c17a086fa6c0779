"""USCL on CPU: sample-pair generation throughput and one training step per profile size.

* SPG items/s: ``SamplePairDataset`` items (3 frames augmented + 2 mixups + the un-mixed pair)
  per second from in-memory uint8 videos, at 64 and 224 px;
* training step: forward + backward + Adam step of ``USCL`` (ResNet-18) on a batch of N videos
  (2N views), at the smoke (32 px, N 4) and cpu (64 px, N 16) preset sizes; best of the timed
  iterations after one warm-up.

Usage: python benchmarks/bench_uscl.py [--threads 2] [--iters 3]
Writes benchmarks/results/uscl.json. The machine may be shared: the 1-minute load average is
recorded beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uslib.data.video import SamplePairDataset
from uslib.methods.uscl import USCLConfig, build

OUT = Path(__file__).resolve().parent / "results" / "uscl.json"


class _Videos:
    """In-memory random videos (T frames of side ``src``), so only SPG itself is timed."""

    def __init__(self, n: int, t: int, src: int) -> None:
        rng = np.random.default_rng(0)
        self.frames = [rng.integers(0, 256, (t, src, src), dtype=np.uint8) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.frames)

    def video(self, i: int) -> dict[str, Any]:
        return {"frames": self.frames[i], "label": i % 3, "video_id": f"v{i}", "patient_id": ""}


def spg_rate(size: int, src: int, n: int = 32) -> float:
    ds = SamplePairDataset(_Videos(n, 10, src), img_size=size)
    ds[0]
    t0 = time.perf_counter()
    for i in range(n):
        ds[i]
    return n / (time.perf_counter() - t0)


def step_time(profile: str, iters: int) -> dict[str, Any]:
    cfg = USCLConfig.preset(profile)
    method = build(cfg)
    ds = SamplePairDataset(_Videos(cfg.optim.batch_size, 10, cfg.data.img_size), cfg.data.img_size)
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    opt = torch.optim.Adam(method.parameters(), lr=cfg.optim.lr)
    times = []
    for _ in range(iters + 1):
        t0 = time.perf_counter()
        loss = method.training_step(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    best = min(times[1:])
    n = cfg.optim.batch_size
    return {"img_size": cfg.data.img_size, "videos_per_batch": n, "step_s": best,
            "views_per_s": 2 * n / best}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = {
        "threads": args.threads,
        "load_avg_1min": os.getloadavg()[0],
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "spg_items_per_s": {"64px_from_64": spg_rate(64, 64), "224px_from_480": spg_rate(224, 480)},
        "train_step": {p: step_time(p, args.iters) for p in ("smoke", "cpu")},
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

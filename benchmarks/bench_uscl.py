"""USCL on CPU: sample-pair generation throughput and one training step per profile size.

* SPG items/s: ``SamplePairDataset`` items (3 frames augmented + 2 mixups + the un-mixed pair)
  per second from in-memory uint8 videos, at 64 and 224 px;
* training step: forward + backward + Adam step of ``USCL`` (ResNet-18) on a batch of N videos
  (2N views), at the smoke (32 px, N 4) and cpu (64 px, N 16) preset sizes; best of the timed
  iterations after one warm-up.

With ``--pipeline`` it instead runs notebook 02's ``cpu`` profile end to end (synthetic lung
videos -> USCL pretraining -> the POCUS-style protocol for random init and USCL) and records the
wall time of each phase and the accuracies in ``benchmarks/results/uscl_cpu_pipeline.json``.

Usage: python benchmarks/bench_uscl.py [--threads 2] [--iters 3] [--pipeline]
Writes benchmarks/results/uscl.json. The machine may be shared: the 1-minute load average is
recorded beside the numbers (a loaded 2-core box runs these 5-40x slower).
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
OUT_PIPELINE = OUT.with_name("uscl_cpu_pipeline.json")


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


def pipeline() -> dict[str, Any]:
    """Notebook 02's cpu profile without the notebook: timings and protocol summary."""
    import tempfile

    import pandas as pd

    from uslib import runs
    from uslib.evaluation import pocus
    from uslib.methods import uscl
    from uslib.models import create_backbone

    cfg = USCLConfig.preset("cpu")
    run = runs.start("bench_uscl", cfg, profile="cpu", out_dir=tempfile.mkdtemp(), verbose=False)
    times, t0 = {}, time.perf_counter()
    train_ds, val_ds = uscl.train_data(cfg)
    for ds in (train_ds, val_ds):
        [ds.videos.video(i) for i in range(len(ds))]  # render once (cached in memory)
    times["render_videos_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    method, history = uscl.pretrain(cfg, run, data=(train_ds, val_ds))
    times["pretrain_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    folds = pocus.protocol_folds(cfg)
    torch.manual_seed(cfg.seed)
    rnd = create_backbone(cfg.backbone, in_chans=cfg.data.in_chans)
    per_fold = pd.concat(
        [
            pocus.pocus_protocol(rnd, folds, cfg, init="random"),
            pocus.pocus_protocol(method.encoder, folds, cfg, init="uscl"),
        ]
    )
    times["protocol_s"] = time.perf_counter() - t0
    best = history.best_epoch("val_nt_xent")
    return {**times, "total_min": sum(times.values()) / 60, "best_epoch": int(best["epoch"]),
            "best_val_nt_xent": float(best["val_nt_xent"]),
            "summary": pocus.summarize_protocol(per_fold).round(2).to_dict("records"),
            "per_fold": per_fold.round(4).to_dict("records")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--pipeline", action="store_true", help="run the cpu profile end to end")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    head = {"threads": args.threads, "load_avg_1min": os.getloadavg()[0]}
    if args.pipeline:
        out = {**head, **pipeline(), "load_avg_1min_end": os.getloadavg()[0]}
        OUT_PIPELINE.parent.mkdir(exist_ok=True)
        OUT_PIPELINE.write_text(json.dumps(out, indent=2))
        print(json.dumps({k: v for k, v in out.items() if k != "per_fold"}, indent=2))
        return
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

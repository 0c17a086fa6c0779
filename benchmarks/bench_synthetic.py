"""Throughput of the synthetic B-mode generator on one core (numpy/scipy path, no torch).

Targets (issue / synthetic_ultrasound.md §1.3): stills >= 50 images/s at 128^2 and >= 20 images/s
at 224^2; video frames/s is measured too. Throughput is reported from process CPU time (the
design's "one core, CPU time"; insensitive to other jobs on a shared box) and from wall time.

Run: ``python benchmarks/bench_synthetic.py`` (writes benchmarks/results/synthetic.json).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: set before numpy is imported

import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402

from uslib.data.synthetic import SyntheticConfig, class_names, render_still, render_video  # noqa: E402

TASK_LIST = ("breast", "thyroid", "liver", "lung", "fetal_head", "cardiac")
OUT = Path(__file__).resolve().parent / "results" / "synthetic.json"


def _timed(fn, n: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of ``n`` calls of ``fn(i)``."""
    c0, w0 = time.process_time(), time.perf_counter()
    for i in range(n):
        fn(i)
    return time.process_time() - c0, time.perf_counter() - w0


def bench_stills(size: int, n_per_task: int) -> dict:
    """Images/s of ``render_still`` over every task and class at ``size`` px."""
    cfg = SyntheticConfig(img_size=size)
    render_still("breast", 0, 0, cfg)  # warm the texture bank
    per_task = {}
    cpu_all = wall_all = 0.0
    for task in TASK_LIST:
        k = len(class_names(task))
        cpu, wall = _timed(lambda i, t=task, k=k: render_still(t, i % k, [1, i], cfg), n_per_task)
        per_task[task] = round(n_per_task / cpu, 1)
        cpu_all, wall_all = cpu_all + cpu, wall_all + wall
    n = n_per_task * len(TASK_LIST)
    return {
        "images_per_s_cpu": round(n / cpu_all, 1),
        "images_per_s_wall": round(n / wall_all, 1),
        "ms_per_image_cpu": round(1000 * cpu_all / n, 2),
        "per_task_images_per_s_cpu": per_task,
    }


def bench_videos(size: int, n_frames: int, tasks: tuple[str, ...]) -> dict:
    """Frames/s of ``render_video`` (tissue-locked scatterers) at ``size`` px."""
    cfg = SyntheticConfig(img_size=size)
    per_task = {}
    cpu_all = wall_all = 0.0
    for task in tasks:
        cpu, wall = _timed(lambda i, t=task: render_video(t, i % 2, n_frames, [2, i], cfg), 2)
        per_task[task] = round(2 * n_frames / cpu, 1)
        cpu_all, wall_all = cpu_all + cpu, wall_all + wall
    n = 2 * n_frames * len(tasks)
    return {
        "frames_per_s_cpu": round(n / cpu_all, 1),
        "frames_per_s_wall": round(n / wall_all, 1),
        "n_frames_per_video": n_frames,
        "per_task_frames_per_s_cpu": per_task,
    }


def main() -> dict:
    """Run every benchmark and write ``benchmarks/results/synthetic.json``."""
    results = {
        "stills_128": bench_stills(128, 30),
        "stills_224": bench_stills(224, 15),
        "video_128": bench_videos(128, 8, ("breast", "liver", "lung", "cardiac")),
        "video_224": bench_videos(224, 8, ("breast", "liver", "lung")),
    }
    results["targets"] = {
        "stills_128_images_per_s": 50,
        "stills_224_images_per_s": 20,
        "met_128": results["stills_128"]["images_per_s_cpu"] >= 50,
        "met_224": results["stills_224"]["images_per_s_cpu"] >= 20,
    }
    results["env"] = {
        "threads": 1,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "note": "throughput from process CPU time of one thread; wall time includes other jobs",
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))

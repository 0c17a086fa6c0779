"""Coreset selection at scale: time and peak memory of TinyUSFM's dual rank at 100 K and 1 M.

The paper's pool is 2.2 M images reduced to 200 K (notes §2.3). This script times
``uslib.data.coreset.dual_rank_select`` on synthetic teacher embeddings of dimension 384 (a
clustered Gaussian mixture written to a ``numpy.memmap`` on disk, as a real embedding dump would
be) with gradient curves of 3 warm-up epochs, at the paper's knobs: K = 1000 clusters, 4
distance quantiles, a 10 % budget, chunks of 65 536 rows, k-means mini-batches of 4096.

Each size runs in a fresh subprocess so that its peak memory is its own:

* ``peak_rss_mb``: the child's ``ru_maxrss`` (includes the memmap pages it touched, which the
  kernel can drop, and the Python/NumPy/scikit-learn runtime);
* ``peak_alloc_mb``: the peak of NumPy allocations traced by ``tracemalloc`` during the
  selection (the working memory the algorithm itself asks for).

The projection to 2.2 M scales the measured 1 M time linearly (every pass is O(N K D) or
O(N log N) with N log N ~ linear over this range: the sorts are a few percent of the time) and
the memory as ``O(N)`` vectors plus one chunk (arithmetic written into the JSON).

Usage: python benchmarks/bench_coreset.py [--sizes 100000 1000000] [--threads 2]
Writes benchmarks/results/coreset.json (merging sizes already there). Run it under
``flock /tmp/uslib_heavy.lock``; the 1-minute load average is recorded beside the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
from recording import machine_info, write_result

OUT = Path(__file__).resolve().parent / "results" / "coreset.json"
DIM, EPOCHS, K, BINS, BUDGET, CHUNK, KM_BATCH = 384, 3, 1000, 4, 0.1, 65536, 4096


def make_embeddings(path: Path, n: int, seed: int = 0) -> np.memmap:
    """A (n, DIM) float32 memmap: 2000 Gaussian clusters, written chunk by chunk."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2000, DIM)).astype(np.float32)
    emb = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    for i in range(0, n, CHUNK):
        m = min(CHUNK, n - i)
        lab = rng.integers(0, len(centres), m)
        emb[i : i + m] = centres[lab] + 0.5 * rng.normal(size=(m, DIM)).astype(np.float32)
    emb.flush()
    return emb


def child(n: int, threads: int) -> dict[str, Any]:
    """Runs in the subprocess: build the memmap, time the selection, report memory."""
    from threadpoolctl import threadpool_limits

    from uslib.data import coreset

    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(threads):
        t0 = time.perf_counter()
        make_embeddings(Path(tmp) / "emb.npy", n)
        emb = np.load(Path(tmp) / "emb.npy", mmap_mode="r")
        curves = np.abs(np.random.default_rng(1).normal(1.0, 0.3, size=(n, EPOCHS)))
        curves = curves.astype(np.float32)
        t_make = time.perf_counter() - t0
        tracemalloc.start()
        t0 = time.perf_counter()
        sel = coreset.dual_rank_select(emb, BUDGET, curves=curves, n_clusters=K,
                                       distance_bins=BINS, chunk_size=CHUNK,
                                       kmeans_batch=KM_BATCH, seed=0)  # fmt: skip
        t_sel = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "n": n, "dim": DIM, "clusters": K, "distance_bins": BINS, "budget": BUDGET,
        "chunk_size": CHUNK, "kmeans_batch": KM_BATCH, "warmup_epochs": EPOCHS,
        "selected": int(len(sel.indices)), "clusters_covered": int((sel.per_cluster > 0).sum()),
        "select_s": round(t_sel, 2), "make_embeddings_s": round(t_make, 2),
        "peak_alloc_mb": round(peak / 2**20, 1), "peak_rss_mb": round(rss_kb / 1024, 1),
        "embeddings_mb": round(n * DIM * 4 / 2**20, 1),
    }  # fmt: skip


def projection(
    r: dict[str, Any], small: dict[str, Any] | None, n_target: int = 2_200_000
) -> dict[str, Any]:
    """Projection of the measured 1 M row to ``n_target`` with the arithmetic spelled out.

    Time: linear in N (every pass is O(N K D); the O(N log N) sorts are a few percent).
    Memory: the peak is one chunk's (chunk x K) distance block and its temporaries (constant)
    plus O(N) vectors; the per-row slope is measured between the two sizes.
    """
    f = n_target / r["n"]
    t = r["select_s"] * f
    out = {
        "n": n_target,
        "select_s": round(t, 1),
        "select_time_arithmetic": f"{r['select_s']} s x {n_target} / {r['n']} = {t:.1f} s",
        "embeddings_mb": round(n_target * DIM * 4 / 2**20, 1),
        "note": "embeddings stay on disk (memmap); only O(N) vectors and one chunk are resident",
    }
    if small is not None:
        slope = (r["peak_alloc_mb"] - small["peak_alloc_mb"]) / (r["n"] - small["n"])
        alloc = r["peak_alloc_mb"] + slope * (n_target - r["n"])
        rss = r["peak_rss_mb"] + (r["peak_rss_mb"] - small["peak_rss_mb"]) / (
            r["n"] - small["n"]) * (n_target - r["n"])  # fmt: skip
        out |= {
            "peak_alloc_mb": round(alloc, 1),
            "peak_rss_mb": round(rss, 1),
            "memory_arithmetic": (
                f"alloc slope ({r['peak_alloc_mb']} - {small['peak_alloc_mb']}) MB / "
                f"{r['n'] - small['n']} rows = {slope * 2**20:.0f} B/row; {r['peak_alloc_mb']} MB"
                f" + {slope * 2**20:.0f} B x {n_target - r['n']} = {alloc:.0f} MB; RSS likewise "
                f"(includes touched memmap pages) -> {rss:.0f} MB"
            ),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.child, a.threads)))
        return
    result = json.loads(OUT.read_text()) if OUT.is_file() else {"sizes": {}}
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads)}
    for n in a.sizes:
        cmd = [sys.executable, __file__, "--child", str(n), "--threads", str(a.threads)]
        row = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True,
                                        text=True).stdout.strip().splitlines()[-1])  # fmt: skip
        row["machine"] = machine_info(a.threads)
        print(row)
        result["sizes"][str(n)] = row
    if "1000000" in result["sizes"]:
        r = result["sizes"]["1000000"]
        result["projection_2_2M"] = projection(r, result["sizes"].get("100000"))
        result["target_1M"] = {
            "time_under_10_min": r["select_s"] < 600,
            "peak_rss_under_4_GB": r["peak_rss_mb"] < 4096,
        }
    result["library"] = (
        "scikit-learn MiniBatchKMeans.partial_fit + kmeans_plusplus (see coreset.py)"
    )
    write_result(OUT, result)


if __name__ == "__main__":
    main()

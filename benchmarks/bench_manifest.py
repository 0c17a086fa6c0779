"""Manifest build throughput on the real POCUS frames (validation + pHash, optional ROI and cache).

Usage: ``python benchmarks/bench_manifest.py [--limit N] [--out benchmarks/results/manifest.json]``.
Needs ``shared/data/pocus_lung`` (or ``USLIB_SHARED_DATA``); writes images/s for each variant.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch

from uslib.data.dedup import near_duplicates
from uslib.data.manifest import build_manifest
from uslib.data.sources import RecordDataset, pocus_items

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("USLIB_SHARED_DATA", REPO.parent / "shared" / "data"))


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N frames")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "manifest.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    items = pocus_items(SHARED / "pocus_lung", "frames", include_viral=True, include_uncertain=True)
    items = items[: args.limit] if args.limit else items
    n = len(items)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        variants = {
            "validate+phash": {},
            "validate+phash+roi": {"roi_crop": True},
            "validate+phash+roi+cache128": {
                "roi_crop": True,
                "cache_dir": Path(tmp) / "c",
                "cache_size": 128,
            },  # fmt: skip
        }
        for name, kw in variants.items():
            m, dt = _timed(lambda kw=kw: build_manifest(items, **kw))
            results[name] = {"seconds": round(dt, 2), "images_per_s": round(n / dt, 1),
                             "rows": len(m), "rejects": len(m.rejects)}  # fmt: skip
        df = m.to_pandas()
        _, dt = _timed(lambda: near_duplicates(df, 6))
        results["near_duplicates (pairs over all rows)"] = {"seconds": round(dt, 2)}
        for label, ds in (("source", RecordDataset(pocus_items(SHARED / "pocus_lung"), 128)),
                          ("cache", RecordDataset(m.items(), 128))):  # fmt: skip
            k = min(300, len(ds))
            _, dt = _timed(lambda ds=ds, k=k: [ds[i] for i in range(k)])
            results[f"record load 128 px from {label}"] = {"images_per_s": round(k / dt, 1)}
    report = {
        "benchmark": "manifest build on POCUS frames (JPEG, 139-1080 px)",
        "n_images": n,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],  # shared machine
        "machine": platform.platform(),
        "python": platform.python_version(),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

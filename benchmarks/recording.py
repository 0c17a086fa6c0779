"""What every benchmark records beside its numbers, and how it writes them.

Imported by the ``bench_*.py`` scripts, which run as ``python benchmarks/bench_x.py`` (this
folder is then first on ``sys.path``).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch


def machine_info(threads: int) -> dict[str, Any]:
    """Host, torch version, threads and load, recorded with every benchmark result."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "loadavg_1min": os.getloadavg()[0],
        "malloc_env": {
            k: os.environ.get(k) for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
        },
    }


def write_result(out: Path | None, result: dict[str, Any]) -> None:
    """Write ``result`` as indented JSON to ``out`` (nothing when ``out`` is None)."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")

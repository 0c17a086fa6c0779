"""Training FLOPs per item of every method at its ``paper`` preset (for ``scaling.py``).

    python -m benchmarks.paper_flops [--only openus,dmae] [--out PATH] [--threads 1]

One real CPU step of the suite's own closure (``harness.make_step``: forward, backward, clipping,
optimizer, EMA) on the paper-size model with random weights, at batch 1 (2 where a batch of 1
is refused, e.g. BatchNorm over one sample), counted with ``harness.count_flops``
(``FlopCounterMode``: matmul, convolution and attention, groups-aware convolution backward).
FLOPs per item = FLOPs per step / items per step (counts are linear in the batch). SPAD's
variants: one 2-D still and one 3-D sweep of the first sweep shape. Nothing is timed.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from benchmarks import harness as h

OUT = h.RESULTS / "paper_flops.json"


def method_flops(name: str, variant: str = "", profile: str = "paper") -> dict[str, Any]:
    """FLOPs of one training step of ``name`` at ``profile`` and per item (see module doc)."""
    last: Exception | None = None
    for bs in (1, 2):
        try:
            torch.manual_seed(0)
            _, cfg, method, data = h.method_setup(name, profile, bs, variant)
            batch = h.method_batch(data, variant, bs)
            n = h.batch_items(batch)
            t0 = time.perf_counter()
            flops = h.count_flops(h.make_step(method, cfg, batch))
            return {
                "backbone": cfg.backbone, "img_size": cfg.data.img_size, "batch": bs,
                "items_per_step": n, "item": h.ITEM_KIND[name],
                "input_shapes": h.tensor_shapes(batch), "flops_per_step": flops,
                "flops_per_item": flops / n, "counted_step_s": time.perf_counter() - t0,
            }  # fmt: skip
        except (RuntimeError, ValueError) as e:  # batch of 1 refused: try 2
            last = e
    raise RuntimeError(f"{name} {variant}: {last}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="comma-separated methods (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    names = a.only.split(",") if a.only else list(h.METHODS)
    old = json.loads(a.out.read_text()) if a.out.exists() else {}
    rows = dict(old.get("methods", {})) if a.only else {}
    t0 = time.perf_counter()
    for name in names:
        for v in h.VARIANTS.get(name, ("",)):
            key = f"{name}/{v}" if v else name
            try:
                rows[key] = {**method_flops(name, v), "git": h.git_info()}
            except Exception as e:  # noqa: BLE001 - recorded, the other methods go on
                rows[key] = {"error": f"{type(e).__name__}: {e}", "git": h.git_info()}
            r = rows[key]
            what = r.get("error") or f"{r['flops_per_item'] / 1e9:.1f} GFLOP/item"
            print(f"{key}: {what}", flush=True)
    res = {
        "what": "training FLOPs (forward + backward) per item at the paper presets, random "
        "weights, one CPU step counted with " + h.FLOP_COUNTER,
        "command": "python -m benchmarks.paper_flops " + shlex.join(argv or sys.argv[1:]),
        "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": h.git_info(),
        "torch": torch.__version__,
        "wall_s": time.perf_counter() - t0,
        "methods": rows,
    }
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {a.out}")
    return res


if __name__ == "__main__":
    main()

"""Effect of ``OptimConfig.compile`` (torch.compile) on a method's training step, side by side.

    python benchmarks/bench_compile.py [--method uscl] [--profile cpu] [--steps 40]

Runs ``engine.fit`` for the same steps eagerly and compiled, and compares the steady-state
images/s (the first ``--warmup`` logged steps, which include compilation, are left out), plus the
compile overhead in wall time. Writes ``benchmarks/results/compile_<method>.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from recording import machine_info, write_result

from uslib.engine import fit
from uslib.methods import get_method


def _run(name: str, profile: str, steps: int, compile_: bool) -> dict:
    spec = get_method(name)
    cfg = spec.config_cls.preset(profile, **{"optim.max_steps": steps, "optim.compile": compile_})
    method = spec.build(cfg)
    data = spec.train_data(cfg, method)
    t0 = time.perf_counter()
    hist = fit(method, data.train, cfg.optim, collate_fn=data.collate_fn,
               batch_sampler=data.batch_sampler, progress=False, seed=cfg.seed)  # fmt: skip
    return {"wall_s": time.perf_counter() - t0, "steps": hist.steps, "batch": cfg.optim.batch_size}


def _steady_rate(run: dict, warmup: int) -> float:
    """images/s between logged step ``warmup`` and the last one. The engine logs the cumulative
    rate ``seen / elapsed``, so the elapsed time at a step is ``step * batch / rate``."""
    a, b = run["steps"][warmup - 1], run["steps"][-1]
    t_a = a["step"] * run["batch"] / a["images_per_s"]
    t_b = b["step"] * run["batch"] / b["images_per_s"]
    return (b["step"] - a["step"]) * run["batch"] / (t_b - t_a)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--method", default="uscl")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows = {}
    for mode, flag in (("eager", False), ("compiled", True)):
        r = _run(args.method, args.profile, args.steps, flag)
        rows[mode] = {"wall_s": round(r["wall_s"], 2),
                      "steady_images_per_s": round(_steady_rate(r, args.warmup), 2)}  # fmt: skip
        print(mode, rows[mode], flush=True)
    eager, comp = rows["eager"], rows["compiled"]
    result = {
        "method": args.method, "profile": args.profile, "steps": args.steps, "warmup": args.warmup,
        **rows,
        "speedup_steady": round(comp["steady_images_per_s"] / eager["steady_images_per_s"], 3),
        "compile_overhead_s": round(comp["wall_s"] - eager["wall_s"], 1),
        "machine": {**machine_info(args.threads), "loadavg_1min_before": load_before},
    }  # fmt: skip
    write_result(Path(__file__).parent / "results" / f"compile_{args.method}.json", result)


if __name__ == "__main__":
    main()

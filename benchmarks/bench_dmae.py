"""DMAE on CPU: the partially executed teacher against the released code's full teacher + decoder,
and one MAE training step at the upstream size.

* **Teacher cost** (notes D-1): at the paper pairing (ViT-L/16 teacher, block 18 of 24 -> ViT-B/16
  student, 224 px, 75 % masking, batch 2) and at notebook 04's cpu scale (192-d x 8 teacher,
  block 6 of 8, 64 px / patch 8, batch 64): the teacher's forward alone and the whole DMAE step
  (teacher forward + student forward/backward + AdamW step), with ``teacher_mode="partial"`` and
  ``"full"``, measured side by side (alternating repetitions, best of N after a warm-up), with
  FLOPs from ``torch.utils.flop_counter.FlopCounterMode`` and the partial/full ratios.
* **MAE step** (ViT-B/16, 224 px, 75 %, decoder 512 x 8, batch 2): images/s, GFLOP per step,
  achieved GFLOP/s and its share of this machine's fp32 matmul peak (2048^3, same threads),
  the figure the upstream anchor is quoted in (``benchmarks/README.md``).

Usage: python benchmarks/bench_dmae.py [--threads 2] [--repeats 3] [--quick]
Writes benchmarks/results/dmae.json (``--quick``: cpu scale only, printed, not written). Run it
under ``flock /tmp/uslib_heavy.lock``; the 1-minute load average is recorded beside the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from recording import machine_info, write_result
from torch.utils.flop_counter import FlopCounterMode

from uslib.methods.dmae import DMAEConfig
from uslib.methods.dmae import build as build_dmae
from uslib.methods.mae import MAEConfig
from uslib.methods.mae import build as build_mae

OUT = Path(__file__).resolve().parent / "results" / "dmae.json"
SCALES = {"paper": ("paper", 2), "cpu": ("cpu", 64)}  # scale -> (preset, batch)


def matmul_peak(threads: int, n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 matmul FLOP/s of an n x n x n product on ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _step_fn(method: Any, batch: dict[str, torch.Tensor], teacher_only: bool) -> Any:
    """A closure running one teacher forward, or one full training step with AdamW."""
    opt = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)

    def run() -> None:
        torch.manual_seed(0)  # the same masks for every arm and repetition
        if teacher_only:
            x = method.normalise(batch["image"])
            _, keep, restore = method.draw_mask(x)
            method.teacher_features(x, keep, restore)
            return
        loss = method.training_step(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


def _flops(fn: Any) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _time_side_by_side(fns: dict[str, Any], repeats: int) -> dict[str, float]:
    """Best wall time of each closure; arms alternate within every repetition."""
    for fn in fns.values():
        fn()  # warm-up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def teacher_cost(scale: str, repeats: int) -> dict[str, Any]:
    """Partial vs full teacher (forward alone and the whole DMAE step) at one scale."""
    preset, batch_size = SCALES[scale]
    methods = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mode in ("partial", "full"):  # random teacher weights: the cost does not depend on them
            cfg = DMAEConfig.preset(preset, teacher_mode=mode)
            cfg = dataclasses.replace(cfg, teacher_checkpoint=None)  # (preset() drops None)
            methods[mode] = build_dmae(cfg).train()
    cfg = methods["partial"].cfg
    batch = {"image": torch.rand(batch_size, 1, cfg.data.img_size, cfg.data.img_size)}
    fns = {f"{what}_{mode}": _step_fn(m, batch, what == "teacher")
           for what in ("teacher", "step") for mode, m in methods.items()}  # fmt: skip
    flops = {k: _flops(f) for k, f in fns.items()}
    times = _time_side_by_side(fns, repeats)
    t = methods["partial"].teacher
    out: dict[str, Any] = {
        "scale": scale, "teacher": cfg.teacher_backbone, "student": cfg.backbone,
        "teacher_blocks_run": f"{cfg.teacher_block + 1} of {len(t.blocks)}",
        "img_size": cfg.data.img_size, "batch": batch_size, "mask_ratio": cfg.mask_ratio,
        "seconds": times, "gflop": {k: v / 1e9 for k, v in flops.items()},
    }  # fmt: skip
    for what in ("teacher", "step"):
        out[f"{what}_time_ratio_partial_over_full"] = (
            times[f"{what}_partial"] / times[f"{what}_full"]
        )
        out[f"{what}_flop_ratio_partial_over_full"] = (
            flops[f"{what}_partial"] / flops[f"{what}_full"]
        )
    return out


def mae_step(repeats: int, peak: float) -> dict[str, Any]:
    """One MAE ViT-B/16 training step at 224 px, batch 2 (the upstream anchor's size)."""
    cfg = MAEConfig.preset("paper")
    method = build_mae(cfg).train()
    batch = {"image": torch.rand(2, 1, 224, 224)}
    opt = torch.optim.AdamW(method.parameters(), lr=1e-4)

    def step() -> None:
        torch.manual_seed(0)
        loss = method.training_step(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    flops = _flops(step)
    best = _time_side_by_side({"mae": step}, repeats)["mae"]
    return {"backbone": cfg.backbone, "img_size": 224, "batch": 2, "mask_ratio": cfg.mask_ratio,
            "step_s": best, "images_per_s": 2 / best, "gflop_per_step": flops / 1e9,
            "gflop_per_s": flops / best / 1e9, "share_of_matmul_peak": flops / best / peak,
            "upstream_anchor_share": 0.55}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns (and unless ``--quick`` writes) the result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="cpu scale only; print, do not write")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    peak = matmul_peak(a.threads)
    scales = ["cpu"] if a.quick else ["cpu", "paper"]
    result: dict[str, Any] = {
        "benchmark": "dmae", "machine": machine_info(a.threads), "matmul_peak_gflop_s": peak / 1e9,
        "flop_counter": "torch.utils.flop_counter.FlopCounterMode (forward + backward ops)",
        "teacher_cost": [teacher_cost(s, a.repeats) for s in scales],
    }  # fmt: skip
    if not a.quick:
        result["mae_step"] = mae_step(a.repeats, peak)
    result["matmul_peak_gflop_s_end"] = matmul_peak(a.threads) / 1e9
    result["loadavg_1min_end"] = machine_info(a.threads)["loadavg_1min"]
    print(json.dumps(result, indent=2))
    write_result(None if a.quick else OUT, result)
    return result


if __name__ == "__main__":
    main()

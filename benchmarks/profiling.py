"""Where a training step's time goes: one profiled step (``torch.profiler``, CPU activities).

``train_step`` rows of the profiled profiles (``suite.MODES[mode]["profile_profiles"]``: cpu in
quick and full mode, smoke in tiny mode) run one more step of the row's own closure
(``harness.make_step``) under ``torch.profiler.profile`` after their warm-up, timed and counted
steps, and record the top ops by self CPU time (``profile_step``). ``suite.finish`` flags the
rows whose step is below ``TARGET_SHARE`` of the matmul-peak-bound rate; ``markdown`` writes one
table per flagged row (issue 15: "reaches at least 30 % ... or the README explains the gap with
a profile").

Self CPU time is an op's time on the calling thread minus that of the ops it calls, so the
self times add up without double counting; intra-op threads (OpenMP) run inside their op's
interval. The share of the step is self time over the profiled step's wall time (the profiler
adds overhead to both; ``profiled_step_s`` against the row's ``best_s`` says how much).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import flop_registry

TARGET_SHARE = 0.30  # issue 15: share of the matmul-peak-bound rate a cpu-size step must reach
TOP_OPS = 8


# the CPU kernels ``aten::convolution`` (counted) dispatches to: the profiler's self time sits
# in them, not in the counted op
_CPU_CONV_KERNELS = ("aten::mkldnn_convolution", "aten::_conv_depthwise2d",
                     "aten::slow_conv3d_forward", "aten::_nnpack_spatial_convolution",
                     "aten::slow_conv_dilated2d", "aten::slow_conv_dilated3d")  # fmt: skip


def _flop_counted_ops() -> set[str]:
    """Profiler names (``aten::mm``) of the ops ``harness.count_flops`` counts, plus the CPU
    convolution kernels behind the counted ``aten::convolution``."""
    from benchmarks.harness import FLOP_MAPPING

    names = set(_CPU_CONV_KERNELS)
    for op in (*flop_registry, *FLOP_MAPPING):
        q = getattr(op, "_qualified_op_name", None) or getattr(op, "name", lambda: None)()
        if isinstance(q, str):
            names.add(q.split(".")[0] if "::" in q else q)
    return names


def profile_step(step: Callable[[], Any], top: int = TOP_OPS) -> dict[str, Any]:
    """Profile one call of ``step``; the ``top`` ops by self CPU time and their shares.

    Returns ``{"profiled_step_s", "ops_self_s", "ops": [{"op", "calls", "self_s",
    "share_of_step", "flops_counted"}, ...], "other_share", "profiler"}``; shares are of
    ``profiled_step_s``.
    """
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        step()
        wall = time.perf_counter() - t0
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    counted = _flop_counted_ops()
    total_self = sum(e.self_cpu_time_total for e in events) / 1e6
    ops = [
        {
            "op": e.key,
            "calls": int(e.count),
            "self_s": e.self_cpu_time_total / 1e6,
            "share_of_step": e.self_cpu_time_total / 1e6 / wall,
            "flops_counted": e.key in counted,
        }
        for e in events[:top]
    ]
    return {
        "profiled_step_s": wall,
        "ops_self_s": total_self,
        "ops": ops,
        "other_share": max(0.0, 1.0 - sum(o["share_of_step"] for o in ops)),
        "profiler": "torch.profiler.profile(activities=[CPU]), one step after the timed ones; "
        "self CPU time per op (key_averages), share = self time / profiled step wall time",
    }


def below_target(share: float | None, target: float = TARGET_SHARE) -> bool:
    """Whether a step's share of the matmul-peak-bound rate is below ``target`` (or unknown)."""
    return share is None or share < target


def markdown(rows: list[dict[str, Any]], target: float = TARGET_SHARE) -> list[str]:
    """Markdown lines: one top-ops table per ``train_step`` row with a profile that is flagged
    ``profile_reported`` (below ``target`` of the matmul-peak-bound rate)."""
    flagged = [r for r in rows if r.get("profile_reported") and r.get("step_profile")]
    if not flagged:
        return []
    out = [
        "",
        f"## Profiles of the training steps below {100 * target:.0f} % of the matmul peak",
        "",
        "One step after the timed ones under `torch.profiler` (CPU activities): the top ops by "
        "self CPU time, as a share of the profiled step's wall time. `FLOPs counted`: the op is "
        "one `FlopCounterMode` counts (matmul, convolution, attention); the others (elementwise, "
        "norms, the scan's loops, copies, Python overhead) are the work the GFLOP/s column "
        "does not see.",
    ]
    for r in flagged:
        p = r["step_profile"]
        share = r.get("share_of_matmul_peak")
        pct = "?" if share is None else f"{100 * share:.1f}"
        wall, ops_pct = p["profiled_step_s"], 100 * p["ops_self_s"] / p["profiled_step_s"]
        out += [
            "",
            f"### `{r['id']}`: {pct} % of the matmul peak; profiled step {wall:.3f} s "
            f"(unprofiled best {r['best_s']:.3f} s), ops {ops_pct:.0f} % of it",
            "",
            "| op | calls | self (ms) | share of step | FLOPs counted |",
            "|---|---:|---:|---:|---|",
        ]
        out += [
            f"| `{o['op']}` | {o['calls']} | {1e3 * o['self_s']:.1f} | "
            f"{100 * o['share_of_step']:.1f} % | {'yes' if o['flops_counted'] else ''} |"
            for o in p["ops"]
        ]
        out.append(f"| (all other ops and gaps) | | | {100 * p['other_share']:.1f} % | |")
    return out

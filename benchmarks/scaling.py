"""Scaling notes for the README, generated from the committed benchmark JSON files.

    python -m benchmarks.scaling                       # print the block
    python -m benchmarks.scaling --readme README.md [--suite benchmarks/results/suite_quick.json]

``block()`` turns the suite JSON (``suite_quick.json`` by default), ``paper_flops.json``
(``python -m benchmarks.paper_flops``), ``coreset.json`` and ``selective_scan.json`` into one
Markdown block: each method's measured cost per item at cpu size, its training FLOPs per item
at the paper preset, a GPU projection of the paper-scale runs with the arithmetic written out
(``gpu_projection``), the coreset selection at 2.2 M projected from the two largest measured
sizes (``two_point_fit``, which refuses a non-positive slope), the profiles of the cpu-size
steps below 30 % of the matmul peak, and the selective-scan targets against their ceilings.
``--readme`` replaces what lies between ``<!-- bench:start -->`` and ``<!-- bench:end -->``;
``tests/test_benchmarks.py`` checks that the README's block is what this module generates.

Recipe numbers come from the uslib presets (``<Method>Config.preset("paper")``) where they
exist there, and otherwise from the paper notes in ``../shared/papers/`` (section cited).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from benchmarks import harness as h

SUITE = h.RESULTS / "suite_quick.json"
PAPER_FLOPS = h.RESULTS / "paper_flops.json"
CORESET = h.RESULTS / "coreset.json"
SCAN = h.RESULTS / "selective_scan.json"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
H100_SXM = "H100 SXM"  # benchmarks.gpu.BF16_PEAK key: dense bf16 peak, FLOP/s
ASSUMED_MFU = 0.35  # an assumption until benchmarks/gpu.sh has measured MFU on a GPU
GPU_COUNTS = (1, 8, 16)
TARGET_SHARE = 0.30  # issue 15: cpu-size step vs its matmul-peak-bound rate
# issue 15: vmamba_small 224 px, batch 2, 2 threads, fast vs sequential scan
SCAN_TARGETS = {"fwd_bwd": 15.0, "fwd": 3.0}
# numbers the presets do not hold, from the notes (../shared/papers/)
OPENUS_IMAGES = 309_364  # openus_tinyusfm.md §1.4 and §4: 42 datasets, "308K" stated
OPENUS_IMAGES_SRC = 'openus_tinyusfm.md §1.4/§4: 309,364 images (stated "308K")'
TINYUSFM_POOL = 2_200_000  # openus_tinyusfm.md §2.3: the 2.2 M-image source pool
TINYUSFM_POOL_SRC = "openus_tinyusfm.md §2.3: 2.2 M source pool"
IMAGENET_TRAIN = 1_281_167  # ILSVRC-2012 train images; dmae_uscl_pumit.md §A.5 names the set
IMAGENET_SRC = 'dmae_uscl_pumit.md §A.5: "ImageNet-1k train only" (1,281,167 images)'


def h100_peak() -> float:
    """Dense bf16 peak of an H100 SXM, from ``benchmarks.gpu.BF16_PEAK`` (989 TFLOP/s)."""
    from benchmarks.gpu import BF16_PEAK

    return BF16_PEAK[H100_SXM]


# ---------------------------------------------------------------- arithmetic (pure)


def _hours(h_: float) -> str:
    return f"{h_ * 60:.0f} min" if h_ < 1 else f"{h_:.1f} h" if h_ < 48 else f"{h_ / 24:.1f} d"


def gpu_projection(
    images: float,
    epochs: float,
    flops_per_image: float,
    peak: float,
    mfu: float = ASSUMED_MFU,
    gpus: tuple[int, ...] = GPU_COUNTS,
) -> dict[str, Any]:
    """GPU time of ``images x epochs`` training items at ``flops_per_image`` each.

    ``GPU-hours = images x epochs x FLOPs/image / (peak x mfu) / 3600``; wall time on n GPUs
    = GPU-hours / n (linear data-parallel scaling assumed). Example: 1,000 images x 10
    epochs x 1 TFLOP = 1e16 FLOP; at a 1 PFLOP/s peak and MFU 0.5 that is 20 GPU-seconds, 2.5 s
    of wall time on 8 GPUs.
    """
    total = images * epochs * flops_per_image
    gpu_s = total / (peak * mfu)
    gpu_h = gpu_s / 3600
    return {
        "total_flops": total,
        "gpu_seconds": gpu_s,
        "gpu_hours": gpu_h,
        "wall_hours": {n: gpu_h / n for n in gpus},
        "arithmetic": (
            f"{images:,.0f} x {epochs:g} x {flops_per_image / 1e9:.1f} GFLOP = "
            f"{total:.3g} FLOP; / ({peak / 1e12:.0f} TFLOP/s x {mfu:g}) = {gpu_s:,.0f} GPU-s = "
            f"{gpu_h:,.1f} GPU-h"
        ),
    }


def two_point_fit(
    n_small: float, v_small: float, n_big: float, v_big: float, n_target: float, unit: str = "s"
) -> dict[str, Any]:
    """``v(n_target)`` on the line through the two largest measured sizes.

    ``b = (v_big - v_small) / (n_big - n_small)``, ``v = v_big + b (n_target - n_big)``.
    A non-positive slope (the smaller size paid a fixed warm-up cost, or noise) is refused:
    ``value`` is ``None`` and the arithmetic says why, instead of a negative time.
    """
    if n_big <= n_small:
        return {"value": None, "slope": None, "arithmetic": "needs two distinct sizes"}
    b = (v_big - v_small) / (n_big - n_small)
    head = (
        f"b = ({v_big:g} - {v_small:g}) {unit} / ({n_big:,.0f} - {n_small:,.0f}) = "
        f"{b * 1e6:.3g} {unit} per M rows"
    )
    if b <= 0:
        return {"value": None, "slope": b, "arithmetic": head + " <= 0: no projection "
                "(the smaller size is dominated by fixed costs; measure larger sizes)"}  # fmt: skip
    v = v_big + b * (n_target - n_big)
    return {
        "value": v,
        "slope": b,
        "arithmetic": f"{head}; {v_big:g} {unit} + b x {n_target - n_big:,.0f} = {v:.1f} {unit}",
    }


# ---------------------------------------------------------------- inputs


def recipes() -> list[dict[str, Any]]:
    """The paper-scale runs to project: images, epochs and global batch, with their sources."""
    from uslib.methods.dmae import DMAEConfig
    from uslib.methods.openus import OpenUSConfig
    from uslib.methods.tinyusfm import TinyUSFMConfig

    o, t, d = (c.preset("paper") for c in (OpenUSConfig, TinyUSFMConfig, DMAEConfig))
    return [
        {"run": "OpenUS pretraining (VMamba-S)", "key": "openus", "images": OPENUS_IMAGES,
         "images_src": OPENUS_IMAGES_SRC, "epochs": o.optim.epochs,
         "batch": o.optim.batch_size * o.optim.accumulate_steps,
         "src": 'OpenUSConfig.preset("paper")', "precision": o.optim.mixed_precision,
         "note": " (fp32 as the paper ran; the projection assumes bf16)"},
        {"run": "TinyUSFM distillation (USFM ViT-B -> ViT-tiny)", "key": "tinyusfm",
         "images": int(t.coreset_budget), "images_src": 'TinyUSFMConfig.preset("paper")'
         ".coreset_budget", "epochs": t.optim.epochs,
         "batch": t.optim.batch_size * t.optim.accumulate_steps,
         "src": 'TinyUSFMConfig.preset("paper")', "precision": t.optim.mixed_precision},
        {"run": "TinyUSFM coreset warm-up on the pool (upper bound)", "key": "tinyusfm",
         "images": TINYUSFM_POOL, "images_src": TINYUSFM_POOL_SRC,
         "epochs": t.coreset_warmup_epochs,
         "batch": t.optim.batch_size * t.optim.accumulate_steps,
         "src": 'TinyUSFMConfig.preset("paper").coreset_warmup_epochs',
         "precision": t.optim.mixed_precision,
         "note": "; upper bound: the distillation step's FLOPs, whose teacher forward the "
         "warm-up pays once for its targets, not every epoch"},
        {"run": "DMAE distillation (ViT-L -> ViT-B)", "key": "dmae", "images": IMAGENET_TRAIN,
         "images_src": IMAGENET_SRC, "epochs": d.optim.epochs,
         "batch": d.optim.batch_size * d.optim.accumulate_steps,
         "src": 'DMAEConfig.preset("paper")', "precision": d.optim.mixed_precision},
    ]  # fmt: skip


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(h.REPO))
    except ValueError:
        return str(path)


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _key(r: dict[str, Any]) -> str:
    return f"{r['method']}/{r['variant']}" if r.get("variant") else r["method"]


def _cpu_steps(suite: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in suite["rows"] if r["kind"] == "train_step" and r["profile"] == "cpu"
            and "error" not in r]  # fmt: skip


def _label(path: Path, suite: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    g = suite["git"]
    loads = [r["loadavg_1min_before"] for r in rows] + [r["loadavg_1min_after"] for r in rows]
    load = f"{min(loads):.2f}-{max(loads):.2f}" if loads else "?"
    return (
        f"from `{_rel(path)}` ({suite['mode']} mode, commit `{g['commit']}`"
        f"{' (dirty tree)' if g['dirty'] else ''}, {suite['created']}, {suite['threads']} "
        f"threads, 1-min load {load} over its cpu-size training-step rows)"
    )


# ---------------------------------------------------------------- Markdown


def _cost_table(rows: list[dict[str, Any]], flops: dict[str, Any]) -> list[str]:
    out = [
        "| method | cpu-size backbone, px | items/step | step (s) | s/item | % of matmul peak "
        "| paper backbone, px | paper GFLOP/item (fwd+bwd) |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        f = flops.get(_key(r), {})
        share = r.get("share_of_matmul_peak")
        paper = (f"{f['backbone']}, {f['img_size']}", f"{f['flops_per_item'] / 1e9:.1f}") if (
            "flops_per_item" in f) else ("", "not counted")  # fmt: skip
        out.append(
            f"| {_key(r)} | {r['backbone']}, {r['img_size']} | {r['items_per_step']} | "
            f"{r['best_s']:.3f} | {r['best_s'] / r['items_per_step']:.4f} | "
            f"{'' if share is None else f'{100 * share:.1f}'} | {paper[0]} | {paper[1]} |"
        )
    return out


def _projection_lines(flops: dict[str, Any], peak: float, mfu: float) -> list[str]:
    head = " | ".join(f"wall, {n} GPU{'s' if n > 1 else ''}" for n in GPU_COUNTS)
    table = [
        f"| run | images x epochs | GFLOP/image | global batch | GPU-hours | {head} |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(GPU_COUNTS),
    ]
    notes = []
    for rec in recipes():
        f = flops.get(rec["key"], {})
        if "flops_per_item" not in f:
            table.append(f"| {rec['run']} | | not counted | | | " + "| " * len(GPU_COUNTS))
            continue
        p = gpu_projection(rec["images"], rec["epochs"], f["flops_per_item"], peak, mfu)
        walls = " | ".join(_hours(p["wall_hours"][n]) for n in GPU_COUNTS)
        per_gpu = rec["batch"] / GPU_COUNTS[-1]
        table.append(
            f"| {rec['run']} | {rec['images']:,} x {rec['epochs']} | "
            f"{f['flops_per_item'] / 1e9:.1f} | {rec['batch']} | {p['gpu_hours']:,.1f} | {walls} |"
        )
        notes.append(
            f"* {rec['run']}: {p['arithmetic']} (images: {rec['images_src']}; epochs, batch: "
            f"`{rec['src']}`; {per_gpu:g} per GPU at {GPU_COUNTS[-1]} GPUs; the preset's "
            f'`mixed_precision="{rec["precision"]}"`{rec.get("note", "")}).'
        )
    return table + [""] + notes


def _coreset_lines(coreset: dict[str, Any], path: Path, n_target: int) -> list[str]:
    sizes = sorted(coreset["sizes"].values(), key=lambda r: r["n"])
    if len(sizes) < 2:
        return [f"Coreset: fewer than two sizes in `{_rel(path)}`; no projection."]
    s, b = sizes[-2], sizes[-1]
    t = two_point_fit(s["n"], s["select_s"], b["n"], b["select_s"], n_target)
    m = two_point_fit(s["n"], s["peak_rss_mb"], b["n"], b["peak_rss_mb"], n_target, "MB")

    def val(x: dict[str, Any], spec: str) -> str:
        return "no projection" if x["value"] is None else format(x["value"], spec)

    return [
        f"**Coreset selection** (TinyUSFM dual rank, K = {b['clusters']}, {b['dim']}-d, "
        f"{100 * b['budget']:.0f} % budget; CPU, {b['machine']['torch_threads']} threads; "
        f"`{_rel(path)}`): measured {s['select_s']} s / {s['peak_rss_mb']} MB RSS at "
        f"{s['n']:,} and {b['select_s']} s / {b['peak_rss_mb']} MB at {b['n']:,}. At "
        f"{n_target:,} ({TINYUSFM_POOL_SRC}), on the line through the two largest sizes: "
        f"time {t['arithmetic']}; peak RSS {m['arithmetic']}. So about "
        f"{val(t, '.0f')} s and {val(m, ',.0f')} MB on one CPU box: selection itself needs no "
        "GPU; its GPU-side inputs (teacher embeddings, proxy warm-up) are the warm-up row above.",
    ]


def _profile_lines(rows: list[dict[str, Any]]) -> list[str]:
    low = [r for r in rows if (r.get("share_of_matmul_peak") or 0.0) < TARGET_SHARE]
    if not low:
        return [f"Every cpu-size training step reaches {100 * TARGET_SHARE:.0f} % of its "
                "matmul-peak-bound rate."]  # fmt: skip
    out = [
        f"**Steps below {100 * TARGET_SHARE:.0f} % of the matmul-peak-bound rate** (cpu size): "
        "their FLOPs are few and the time goes to ops `FlopCounterMode` does not count "
        "(elementwise, norms, the scan, copies, Python overhead). Top ops by self CPU time, "
        "share of one profiled step (`torch.profiler`; full tables in the suite's Markdown):",
        "",
        "| step | % of peak | top ops by self CPU time (share of step) |",
        "|---|---:|---|",
    ]
    for r in low:
        p = r.get("step_profile")
        ops = (
            ", ".join(f"`{o['op']}` {100 * o['share_of_step']:.0f} %" for o in p["ops"][:6])
            if p
            else "no profile in this JSON (it predates the profiling; re-run the suite)"
        )
        share = r.get("share_of_matmul_peak")
        out.append(f"| {_key(r)} | {'' if share is None else f'{100 * share:.1f}'} | {ops} |")
    return out


def _scan_lines(scan: dict[str, Any], path: Path) -> list[str]:
    v, mach = scan["vmamba_small"], scan["machine"]
    g = mach.get("git", {})
    fused = "fused" in v["fwd"]["best_s"]
    out = [
        f"**Selective scan targets** ({v['model']} {v['img']} px, batch {v['batch']}, "
        f"{mach['torch_threads']} threads, against the sequential scan; from `{_rel(path)}`, "
        f"commit `{str(g.get('commit', '?'))[:7]}`{' (dirty tree)' if g.get('dirty') else ''}, "
        f"1-min load {mach['loadavg_before'][0]:.2f} before):",
        "",
        "| pass | sequential (s) | fused kernel (s) | fused vs sequential | chunked PyTorch (s) | "
        "chunked vs sequential | its ceiling (scan costs 0) | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    met: dict[str, list[str]] = {"fused": [], "fast": []}
    for key, name in (("fwd_bwd", "forward+backward"), ("fwd", "forward")):
        r, b, tgt = v[key], v[key]["best_s"], SCAN_TARGETS[key]
        fcols = f"{b['fused']:.3f} | **{r['ref_over_fused']:.1f}x**" if fused else "- | -"
        for arm, ratio in (("fused", r.get("ref_over_fused", 0.0)), ("fast", r["ref_over_fast"])):
            if ratio >= tgt:
                met[arm].append(name)
        out.append(
            f"| {name} | {b['ref']:.3f} | {fcols} | {b['fast']:.3f} | {r['ref_over_fast']:.1f}x "
            f"| {r['ceiling_ref_over_no_scan']:.1f}x | {tgt:g}x |"
        )

    def verdict(arm: str) -> str:
        got = met[arm]
        if len(got) == 2:
            return "meets both targets"
        return f"meets {' and '.join(got) + ' only' if got else 'neither target'}"

    fused_says = (
        f"the fused kernel (SS2D's default CPU path) {verdict('fused')}"
        if fused
        else "this JSON has no fused arm (numba was missing when it ran)"
    )
    out += [
        "",
        f"Reading: {fused_says}; the chunked PyTorch scan (the path without numba, for float64 "
        f"and for d_state > 1) {verdict('fast')}, its ratio bounded by the ceiling of its own "
        "no-scan arm: the cross-scan copies, the merge and the rest of the block. The "
        "fused kernel removes those copies as well as the scan's elementwise passes "
        "(`uslib/ops/ss2d_scan.py`). The sequential scan's forward+backward time, whose "
        "autograd zero-fills a full gradient at every position, varies most between machines.",
    ]
    return out


def block(
    suite_path: Path = SUITE,
    flops_path: Path = PAPER_FLOPS,
    coreset_path: Path = CORESET,
    scan_path: Path = SCAN,
    mfu: float = ASSUMED_MFU,
) -> str:
    """The generated Markdown block (markers included)."""
    from benchmarks.suite import PROJECT_N

    suite, pf = _load(suite_path), _load(flops_path)
    rows, peak = _cpu_steps(suite), h100_peak()
    flops = pf["methods"]
    out = [
        START,
        f"<!-- generated by `python -m benchmarks.scaling --readme README.md --suite "
        f"{_rel(suite_path)}`; edit benchmarks/scaling.py, not this block -->",
        "",
        "### Cost per item and scaling to the paper runs (generated)",
        "",
        f"Measured cost {_label(suite_path, suite, rows)}; paper FLOPs from `{_rel(flops_path)}` "
        f"(commit `{pf['git']['commit']}`, `{pf['command'].strip()}`: one step of each paper "
        "preset at batch 1 under `FlopCounterMode`, matmul/conv/attention only).",
        "",
        *_cost_table(rows, flops),
        "",
        f"**Projection** to the paper-scale runs: GPU-hours = images x epochs x FLOPs/image / "
        f"(peak x MFU) with the {H100_SXM} dense bf16 peak ({peak / 1e12:.0f} TFLOP/s) and an "
        f"**assumed MFU of {mfu:g}** (an assumption until `benchmarks/gpu.sh` has measured MFU "
        "on a GPU); wall time = GPU-hours / GPUs (linear data-parallel scaling assumed, no input "
        "or communication stalls). The multi-GPU and multi-node `accelerate launch` / `torchrun`"
        " commands are under [Running on a GPU box](#running-on-a-gpu-box).",
        "",
        *_projection_lines(flops, peak, mfu),
        "",
        *_coreset_lines(_load(coreset_path), coreset_path, PROJECT_N),
        "",
        *_profile_lines(rows),
        "",
        *_scan_lines(_load(scan_path), scan_path),
        END,
    ]
    return "\n".join(out) + "\n"


def readme_block(text: str) -> str | None:
    """The block between the markers (markers included, trailing newline), or ``None``."""
    m = re.search(re.escape(START) + r".*?" + re.escape(END) + r"\n?", text, flags=re.S)
    return None if m is None else m.group(0).rstrip("\n") + "\n"


def block_suite(text: str) -> Path | None:
    """The ``--suite`` path a README block was generated from (its generated comment)."""
    m = re.search(r"--suite (\S+?)`", text)
    return None if m is None else h.REPO / m.group(1)


def write_readme(readme: Path, new: str) -> bool:
    """Replace the block in ``readme``; returns whether it changed. Markers must exist."""
    text = readme.read_text()
    old = readme_block(text)
    if old is None:
        raise SystemExit(f"{readme}: no {START} ... {END} markers")
    updated = text.replace(old, new, 1)
    readme.write_text(updated)
    return updated != text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scaling",
                                description=__doc__.splitlines()[0])  # fmt: skip
    p.add_argument("--suite", type=Path, default=SUITE, help=f"suite JSON (default {SUITE})")
    p.add_argument("--flops", type=Path, default=PAPER_FLOPS, help="paper_flops.json")
    p.add_argument("--readme", type=Path, default=None, help="write the block into this file")
    p.add_argument("--mfu", type=float, default=ASSUMED_MFU, help="assumed MFU")
    a = p.parse_args(argv)
    text = block(a.suite, a.flops, mfu=a.mfu)
    if a.readme is None:
        print(text, end="")
        return
    changed = write_readme(a.readme, text)
    print(f"{a.readme}: block {'updated' if changed else 'unchanged'}")


if __name__ == "__main__":
    main()

"""The suite's measurements, one function per row kind; each runs in a fresh worker process
(``python -m benchmarks --worker ROW``) started by ``suite.py``, which adds the load average,
threads and commit to what these return.

Kinds (``ROW_KINDS``): ``train_step``, ``loader``, ``synthetic``, ``augment``, ``scan``,
``coreset``, ``features``. The measuring code of the ``bench_*.py`` scripts is reused where it
exists (selective scan: ``bench_scan``; coreset: ``bench_coreset``; generator:
``bench_synthetic``; USCL's sample-pair generation: ``bench_uscl``; FLOP and RSS helpers:
``bench_backbones``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks import harness as h


def _params_m(module: torch.nn.Module, trainable: bool = False) -> float:
    ps = [p for p in module.parameters() if p.requires_grad or not trainable]
    return sum(p.numel() for p in ps) / 1e6


def _batch_size(name: str, profile: str, variant: str) -> int:
    """The preset's batch size; SPAD's 3-D batches hold at most ``volumes.n_volumes`` sweeps
    (the sampler never mixes shapes, so that is the largest 3-D batch training sees)."""
    _, cfg = h.method_config(name, profile)
    bs = cfg.optim.batch_size
    return min(bs, cfg.volumes.n_volumes) if variant == "3d" else bs


def train_step(row: dict[str, Any]) -> dict[str, Any]:
    """Forward + backward + optimizer step of one method at a profile's size (``make_step``).

    The batch holds the first ``optim.batch_size`` items of the method's own dataset (for SPAD's
    3-D variant: of one sweep shape, at most the preset's ``n_volumes``). Memory: ``PeakRSS``
    around the first (warm-up) step; time: ``iters`` more steps; FLOPs: one step counted after;
    with ``row["profile_step"]`` one more step under ``torch.profiler`` (``profiling``).
    """
    name, profile, variant = row["method"], row["profile"], row.get("variant", "")
    bs = _batch_size(name, profile, variant)
    torch.manual_seed(0)
    _, cfg, method, data = h.method_setup(name, profile, bs, variant)
    batch = h.method_batch(data, variant, bs)
    n = h.batch_items(batch)
    step = h.make_step(method, cfg, batch)
    with h.PeakRSS() as mem:
        t0 = time.perf_counter()
        step()
        warm = time.perf_counter() - t0
    t = h.time_calls(step, row["iters"], warmup=0)
    flops = h.count_flops(step)
    prof = {}
    if row.get("profile_step"):
        from benchmarks import profiling

        prof = {"step_profile": profiling.profile_step(step)}
    return {
        "backbone": cfg.backbone, "img_size": cfg.data.img_size, "items_per_step": n,
        "item": h.ITEM_KIND[name], "input_shapes": h.tensor_shapes(batch),
        "params_m": _params_m(method), "trainable_params_m": _params_m(method, trainable=True),
        "warmup_step_s": warm, **t, "images_per_s": n / t["best_s"],
        "images_per_s_median": n / t["median_s"], "peak_rss_delta_mib": mem.delta_mib,
        "memory_measure": mem.how, "flops_per_step": flops,
        "achieved_flops": flops / t["best_s"], **prof,
    }  # fmt: skip


def _loader_pass(data: Any, batches: list[list[int]], workers: int) -> dict[str, float]:
    """One pass of a DataLoader over fixed index batches; steady-state items/s after the first
    ``max(1, workers)`` batches (they overlap the workers' start-up)."""
    dl = DataLoader(data.train, batch_sampler=batches, collate_fn=data.collate_fn,
                    num_workers=workers)  # fmt: skip
    stamps, sizes = [], []
    t0 = time.perf_counter()
    for b in dl:
        stamps.append(time.perf_counter())
        sizes.append(h.batch_items(b))
    skip = max(1, workers)
    return {
        "images_per_s": sum(sizes[skip:]) / (stamps[-1] - stamps[skip - 1]),
        "images_per_s_incl_startup": sum(sizes) / (stamps[-1] - t0),
        "first_batch_s": stamps[0] - t0,
    }


def loader(row: dict[str, Any]) -> dict[str, Any]:
    """The method's dataset through a ``DataLoader`` (its collate function) at 0/1/2 workers.

    Batches are fixed index lists (the same items for every worker count): consecutive chunks of
    a seeded permutation, ``optim.batch_size`` each, or for SPAD's variants batches of one grid
    shape as ``GridBatchSampler`` cuts them (3-D: at most the preset's ``n_volumes``; more
    sweeps are declared so that there are enough batches; they render lazily). The first pass
    at 0 workers is "cold" (renders what the dataset memoizes, e.g. USCL's videos); the
    numbers per worker count come after it, so they are what a later epoch pays.
    """
    name, profile, variant = row["method"], row["profile"], row.get("variant", "")
    workers, n_batches = list(row["workers"]), int(row["batches"])
    bs = _batch_size(name, profile, variant)
    total = max(1, max(workers)) + n_batches
    _, cfg, _, data = h.method_setup(name, profile, items=total * bs, variant=variant)
    idx = h.variant_indices(data, variant)
    if not variant:
        idx = [idx[i] for i in np.random.default_rng(0).permutation(len(idx))]
    batches = [idx[i : i + bs] for i in range(0, len(idx) - bs + 1, bs)][:total]
    if len(batches) < total:
        raise ValueError(f"{len(idx)} items make {len(batches)} batches of {bs}, need {total}")
    cold = _loader_pass(data, batches, 0)
    by_workers = {str(w): _loader_pass(data, batches, w) for w in workers}
    return {
        "batch_size": bs, "batches": total, "measured_batches": n_batches,
        "dataset": type(data.train).__name__, "item": h.ITEM_KIND[name],
        "cold_images_per_s": cold["images_per_s"],
        "images_per_s_by_workers": {w: r["images_per_s"] for w, r in by_workers.items()},
        "detail_by_workers": by_workers,
        "start_method": torch.multiprocessing.get_start_method(),
    }  # fmt: skip


def synthetic(row: dict[str, Any]) -> dict[str, Any]:
    """``bench_synthetic.bench_stills``: stills of every task, one thread, CPU and wall rates."""
    from benchmarks import bench_synthetic

    r = bench_synthetic.bench_stills(row["size"], row["n_per_task"])
    return {"images_per_s": r["images_per_s_wall"], **r}


def _rate(fn: Callable[[int], Any], n: int) -> float:
    fn(0)  # warm-up
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t0)


def augment(row: dict[str, Any]) -> dict[str, Any]:
    """Per-item augmentation on in-memory uint8 frames (no rendering), one process.

    ``uscl_spg``: ``bench_uscl.spg_rate`` (3 frames augmented + 2 mixups per pair);
    ``openus_multicrop``: ``MultiCropImages`` (2 global + n_local local crops, local masks);
    ``mae_crop``: ``MAEImages`` (random resized crop + flip).
    """
    which, profile, n = row["which"], row["profile"], int(row["n"])
    if which == "uscl_spg":
        from benchmarks import bench_uscl

        _, cfg = h.method_config("uscl", profile)
        s = cfg.data.img_size
        return {"img_size": s, "views": 2, "images_per_s": bench_uscl.spg_rate(s, s, n)}
    if which == "openus_multicrop":
        from uslib.data.transforms import dino_multicrop
        from uslib.methods import openus
        from uslib.methods import openus_masking as om

        _, cfg = h.method_config("openus", profile)
        s = cfg.data.img_size
        frames = np.random.default_rng(0).integers(0, 256, (n, s, s), dtype=np.uint8)
        views = dino_multicrop(s, cfg.local_size, cfg.n_local, cfg.global_scale, cfg.local_scale)
        ds = om.MultiCropImages(frames, views, cfg.local_mask_ratio, openus.STRIDE, seed=0)
        return {"img_size": s, "local_size": cfg.local_size, "views": 2 + cfg.n_local,
                "images_per_s": _rate(ds.__getitem__, n)}  # fmt: skip
    if which == "mae_crop":
        from uslib.methods.mae import MAEImages

        _, cfg = h.method_config("mae", profile)
        s = cfg.data.img_size
        frames = np.random.default_rng(0).integers(0, 256, (n, s, s), dtype=np.uint8)
        ds = MAEImages(frames, s, cfg.crop_scale, seed=0)
        return {"img_size": s, "views": 1, "images_per_s": _rate(ds.__getitem__, n)}
    raise ValueError(f"unknown augmentation {which!r}")


def scan(row: dict[str, Any]) -> dict[str, Any]:
    """``bench_scan``: sequential reference vs chunked fast selective scan, same inputs."""
    from benchmarks import bench_scan
    from uslib.ops.selective_scan import selective_scan_fast, selective_scan_ref

    L, d, n, repeats = row["L"], row["channels"], row["d_state"], row["repeats"]
    bench_scan._time(selective_scan_fast, bench_scan._inputs(64, 16, 1), 1)  # warm-up
    ts = bench_scan._inputs(L, d, n)
    fast = bench_scan._time(selective_scan_fast, ts, repeats)
    ref = bench_scan._time(selective_scan_ref, ts, 1 if L >= 3136 else repeats)
    err_out, err_grad = bench_scan._rel_err(ts)
    return {"batch": 2, "groups": 4, "dtype": "float32", "ref": ref, "fast": fast,
            "speedup_fwd": ref["fwd_s"] / fast["fwd_s"],
            "speedup_fwd_bwd": ref["fwd_bwd_s"] / fast["fwd_bwd_s"],
            "max_rel_err_out": err_out, "max_rel_err_grad": err_grad}  # fmt: skip


def coreset(row: dict[str, Any]) -> dict[str, Any]:
    """``bench_coreset.child``: TinyUSFM's dual-rank selection on N synthetic embeddings."""
    from benchmarks import bench_coreset

    return bench_coreset.child(int(row["n"]), int(row["threads"]))


def features(row: dict[str, Any]) -> dict[str, Any]:
    """The method's frozen encoder (eval mode) forward under ``torch.inference_mode`` on an
    evaluation batch (``eval.batch_size`` images of the profile's size)."""
    name, profile = row["method"], row["profile"]
    spec, cfg = h.method_config(name, profile)
    torch.manual_seed(0)
    enc = spec.build(cfg).encoder.eval()
    bs, s = cfg.eval.batch_size, cfg.data.img_size
    x = torch.rand(bs, cfg.data.in_chans, s, s)

    def fwd() -> None:
        with torch.inference_mode():
            enc(x)

    t = h.time_calls(fwd, row["iters"], warmup=1)
    flops = h.count_flops(fwd)
    return {"encoder": type(enc).__name__, "img_size": s, "batch": bs,
            "params_m": _params_m(enc), **t, "images_per_s": bs / t["best_s"],
            "flops_per_batch": flops, "achieved_flops": flops / t["best_s"]}  # fmt: skip


ROW_KINDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "train_step": train_step,
    "loader": loader,
    "synthetic": synthetic,
    "augment": augment,
    "scan": scan,
    "coreset": coreset,
    "features": features,
}


def run(row: dict[str, Any]) -> dict[str, Any]:
    """Run one row in this process (``row["threads"]`` torch threads)."""
    torch.set_num_threads(int(row["threads"]))
    return ROW_KINDS[row["kind"]](row)

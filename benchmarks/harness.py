"""What the suite (``suite.py``, ``rows.py``) and the GPU benchmark (``gpu.py``) share.

* a method at a profile's size, with random weights and the engine's optimizer
  (``method_setup``), one batch of its own dataset (``method_batch``) and one engine-like
  training step (``make_step``: forward under optional autocast, backward, per-parameter or
  global clipping, the optimizer step, ``on_step_end`` for EMA teachers);
* FLOPs of a closure (``count_flops``: ``torch.utils.flop_counter.FlopCounterMode``, matmuls,
  convolutions and attention only, groups-aware convolution backward from ``bench_backbones``);
* the machine's matmul peak measured in the same run (``matmul_peak``) and the share of it a
  step achieves (``share_of_peak``, a pure function);
* CPU peak memory: the kernel's peak-RSS mark ``VmHWM`` reset through ``/proc/self/clear_refs``
  (``PeakRSS``; plain ``ru_maxrss`` growth where the reset is refused);
* the git commit and dirty flag recorded in every row (``git_info``).
"""

from __future__ import annotations

import dataclasses
import math
import resource
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils import flop_counter
from torch.utils.data import default_collate
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import bench_backbones

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BENCH_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "100000000000",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "MPLBACKEND": "Agg",
}
METHODS = ("uscl", "openus", "mae", "dmae", "tinyusfm", "spad", "spad_tokenizer")
# SPAD's batches hold one grid shape each: 2-D stills (depth 1) or 3-D sweeps
VARIANTS: dict[str, tuple[str, ...]] = {"spad": ("2d", "3d"), "spad_tokenizer": ("2d", "3d")}
ITEM_KIND = {
    "uscl": "sample pair (USCL SPG: 2 mixed views of one video)",
    "openus": "image (2 global + n_local local crops)",
    "mae": "image",
    "dmae": "image",
    "tinyusfm": "image",
    "spad": "2-D still (2d) / 3-D sweep (3d)",
    "spad_tokenizer": "2-D still (2d) / 3-D sweep (3d)",
}
# fields holding checkpoint paths: cleared, every model runs from random weights (the cost
# does not depend on them); TinyUSFM: no coreset stage (a one-off, timed by the coreset rows),
# teacher format "encoder" so that the paper's USFM teacher may be random
_CHECKPOINT_FIELDS = ("teacher_checkpoint", "init_checkpoint", "tokenizer_encoder")
CONFIG_OVERRIDES: dict[str, dict[str, Any]] = {
    "tinyusfm": {"coreset": "none", "teacher_format": "encoder"},
}
# methods whose TrainData renders every pretraining image up front (mae.pretrain_images): their
# pool is cut to what a benchmark reads; the others render lazily (per item)
_EAGER_POOLS = ("mae", "dmae", "openus")
FLOP_COUNTER = (
    "torch.utils.flop_counter.FlopCounterMode over one step (forward + backward; matmul, "
    "convolution and attention ops only, groups-aware convolution backward)"
)
MEMORY_CPU = (
    "peak RSS growth: VmHWM (the kernel's peak-RSS mark, what getrusage ru_maxrss reports) "
    "reset through /proc/self/clear_refs, minus VmRSS just before the first step, in a fresh "
    "process per row (activations, gradients, optimizer state, allocator caching; not weights)"
)


def git_info() -> dict[str, Any]:
    """``{"commit": short hash, "dirty": tracked files modified}`` (``None`` outside git)."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        except OSError:
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "--short", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def share_of_peak(flops: float | None, seconds: float, peak_flops: float | None) -> float | None:
    """Achieved FLOP/s (``flops / seconds``) as a fraction of ``peak_flops``.

    ``None`` when a number is missing or not positive. Example: 2 GFLOP in 0.5 s on an
    8 GFLOP/s peak is 4 GFLOP/s, a share of 0.5.
    """
    if not flops or not peak_flops or seconds <= 0 or peak_flops <= 0:
        return None
    return flops / seconds / peak_flops


def matmul_peak(
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    n: int = 2048,
    repeats: int = 5,
    threads: int | None = None,
) -> float:
    """Best FLOP/s of an ``n x n @ n x n`` matmul (``2 n^3`` FLOP) over ``repeats`` runs.

    CPU fp32 is ``bench_backbones.matmul_peak`` (after a warm-up); other devices synchronise
    around each product.
    """
    if device == "cpu" and dtype == torch.float32:
        return bench_backbones.matmul_peak(threads or torch.get_num_threads(), n, repeats)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = _sync(device)
    a @ b
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _sync(device: str | torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)


def _sdpa_cpu_flops(q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any) -> int:
    return flop_counter.sdpa_flop_count(q, k, v)


def _sdpa_cpu_backward_flops(
    grad_out: Any, q: Any, k: Any, v: Any, *args: Any, out_shape: Any = None, **kw: Any
) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, q, k, v)


# ops FlopCounterMode leaves out or miscounts: a depthwise convolution's backward (groups), and
# CPU attention (F.scaled_dot_product_attention dispatches to the ``_for_cpu`` flash kernels,
# which torch's table lacks: counted as 0 otherwise), with torch's own SDPA formulas
FLOP_MAPPING: dict[Any, Callable[..., int]] = {
    torch.ops.aten.convolution_backward: bench_backbones._conv_backward_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flops,
}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (see the module docstring for what is counted; CPU attention
    kernels included, ``FLOP_MAPPING``)."""
    mapping = FLOP_MAPPING
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


class PeakRSS:
    """CPU peak memory of a block: ``with PeakRSS() as m: ...``; then ``m.delta_mib``."""

    def __enter__(self) -> PeakRSS:
        self.reset = bench_backbones._reset_peak_rss()
        self.rss0 = (
            bench_backbones._rss_kib("VmRSS")
            if self.reset
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        )
        return self

    def __exit__(self, *exc: object) -> None:
        peak = (
            bench_backbones._rss_kib("VmHWM")
            if self.reset
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        )
        self.delta_mib = (peak - self.rss0) / 1024
        self.how = "VmHWM reset" if self.reset else "ru_maxrss growth (VmHWM reset refused)"


def method_config(name: str, profile: str, **overrides: Any) -> tuple[Any, Any]:
    """``(MethodSpec, config)`` of method ``name`` at ``profile`` with random weights."""
    from uslib.methods import get_method

    spec = get_method(name)
    cfg = spec.config_cls.preset(profile, **{**CONFIG_OVERRIDES.get(name, {}), **overrides})
    cleared = {f: None for f in _CHECKPOINT_FIELDS if getattr(cfg, f, None) is not None}
    return spec, dataclasses.replace(cfg, **cleared) if cleared else cfg


def pool_overrides(name: str, cfg: Any, items: int, variant: str = "") -> dict[str, Any]:
    """Config overrides giving a pool of about ``items`` items (of ``variant``).

    Eagerly rendered pools (MAE, DMAE, OpenUS: ``mae.pretrain_images``) are cut (or grown) to
    what is read; lazily rendered ones (per item) are only grown when too small.
    """
    from uslib.data.synthetic import class_names

    d = cfg.data
    if name in _EAGER_POOLS:
        per = sum(len(class_names(t)) for t in cfg.tasks)  # images per unit of n_per_class
        return {"data.n_per_class": max(1, math.ceil(items / per))}
    if name == "uscl":  # SPG items = training videos (the rest is the validation split)
        need = math.ceil(items / (1.0 - d.val_fraction)) + 2
        return {"data.n_videos": need} if need > d.n_videos else {}
    if variant == "3d":  # one grid shape: n_volumes sweeps of the first (depth, ratio)
        return {"volumes.n_volumes": max(cfg.volumes.n_volumes, items)}
    need = math.ceil(items / len(class_names(d.task)))  # tinyusfm's pool, SPAD's 2-D stills
    return {"data.n_per_class": need} if need > d.n_per_class else {}


def method_setup(
    name: str, profile: str, items: int, variant: str = "", device: str = "cpu", **overrides: Any
) -> tuple[Any, Any, Any, Any]:
    """``(spec, cfg, method, train_data)`` with a pool of about ``items`` (``pool_overrides``)."""
    import warnings

    from uslib import pretraining

    _, cfg = method_config(name, profile, **overrides)
    pool = pool_overrides(name, cfg, items, variant)
    spec, cfg = method_config(name, profile, **{**overrides, **pool})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DMAE's "random teacher" warning: intended here
        method = spec.build(cfg).to(device).train()
        data = pretraining.train_data(name, cfg, method)
    return spec, cfg, method, data


def variant_indices(data: Any, variant: str) -> list[int]:
    """Dataset indices of a variant: all items, or SPAD's 2-D (depth 1) / 3-D items."""
    n = len(data.train)
    if not variant:
        return list(range(n))
    keys = data.train.grid_keys()
    first = next((k for k in keys if (k[1] == 1) == (variant == "2d")), None)
    if first is None:
        raise ValueError(f"no {variant} item in the dataset")
    return [i for i in range(n) if keys[i] == first]  # one grid shape (as the sampler batches)


def collate(data: Any, items: list[Any]) -> Any:
    """A batch of ``items`` through the method's collate function (default: torch's)."""
    return (data.collate_fn or default_collate)(items)


def method_batch(data: Any, variant: str, batch_size: int, distinct: bool = True) -> Any:
    """One batch of the method's dataset: the first ``batch_size`` items of the variant, or
    (``distinct=False``) its first item repeated (compute does not depend on pixel values)."""
    idx = variant_indices(data, variant)
    idx = idx[:batch_size] if distinct else [idx[0]] * batch_size
    item = None if distinct else data.train[idx[0]]
    return collate(data, [data.train[i] for i in idx] if distinct else [item] * batch_size)


def batch_items(batch: Any) -> int:
    """Items of a batch as the engine counts them: the leading size of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    values = batch.values() if isinstance(batch, dict) else batch
    for v in values:
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            return int(v.shape[0])
    return 0


def tensor_shapes(batch: Any) -> dict[str, list[int]]:
    """Shapes of a dict batch's image-like tensors (more than 2 dims), for the record."""
    if not isinstance(batch, dict):
        return {}
    return {
        k: list(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor) and v.ndim > 2
    }


def to_device(batch: Any, device: str | torch.device) -> Any:
    """Tensors of a (nested) batch moved to ``device``; everything else as is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def make_step(
    method: Any, cfg: Any, batch: Any, autocast: torch.dtype | None = None
) -> Callable[[], float]:
    """One training step as ``uslib.engine.fit`` takes it; returns the loss.

    The engine's optimizer over the method's parameter groups (``build_optimizer``), the
    forward (``training_step``) under ``torch.autocast(autocast)`` when given, backward, the
    configured clipping (global norm or per parameter), the optimizer step and
    ``on_step_end`` (EMA teachers). Progress is set mid-run (epoch 1 of 2), so warm-up-only
    branches (frozen last layers) are not what is timed.
    """
    from uslib.engine.optim import build_optimizer, clip_per_parameter
    from uslib.methods import Progress

    opt = build_optimizer(method, cfg.optim)
    params = [p for g in opt.param_groups for p in g["params"]]
    method.set_progress(Progress(step=50, total_steps=100, epoch=1, steps_per_epoch=50))
    device = next(iter(params)).device.type
    clip, mode = cfg.optim.grad_clip, cfg.optim.grad_clip_mode

    def step() -> float:
        if autocast is not None:
            with torch.autocast(device, dtype=autocast):
                loss = method.training_step(batch)["loss"]
        else:
            loss = method.training_step(batch)["loss"]
        loss.backward()
        if clip is not None and mode == "per_parameter":
            clip_per_parameter(params, clip)
        elif clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.on_step_end()
        return float(loss.detach())

    return step


def time_calls(
    fn: Callable[[], Any], iters: int, warmup: int = 1, device: str = "cpu"
) -> dict[str, Any]:
    """Wall time of ``iters`` calls after ``warmup`` ones: best, median, mean, all."""
    sync = _sync(device)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    s = sorted(times)
    return {"best_s": s[0], "median_s": s[len(s) // 2], "mean_s": sum(s) / len(s), "times_s": times}

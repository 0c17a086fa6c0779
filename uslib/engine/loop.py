"""``fit``: the project's only training loop, on Hugging Face ``accelerate``.

A method implements ``training_step(batch) -> {"loss": ..., **parts}`` (called through
``Method.forward`` so DDP's hooks run); ``fit`` sets its ``progress`` (step, total steps, epoch)
before every forward and calls ``on_step_end()`` after every optimizer step (EMA teachers). The
loop adds optimisation (the method's parameter groups, warmup + hold + cosine, layer-wise
``lr_scale``, frozen-group epochs), gradient accumulation and clipping (global or per
parameter), bf16 autocast on GPU, progress bars, a CSV history, a NaN/inf guard, atomic
checkpoints every N steps and exact resume (model with its EMA teachers and buffers, optimizer,
scaler, RNG states of every rank, data position; the learning-rate, weight-decay and method
schedules are pure functions of the step, so they need no saved state).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from uslib.config import OptimConfig
from uslib.engine.callbacks import EpochCallback
from uslib.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from uslib.engine.optim import build_optimizer, clip_per_parameter, drop_frozen_grads
from uslib.methods.base import Method, Progress
from uslib.ops.schedules import warmup_cosine


class NonFiniteLossError(FloatingPointError):
    """Raised by the NaN/inf guard; the message names the step and the loss parts."""


@dataclass
class History:
    """What ``fit`` logged: one row per logged optimizer step and one per finished epoch."""

    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)

    def to_frame(self, which: str = "steps") -> pd.DataFrame:
        """The step (default) or epoch rows as a DataFrame."""
        return pd.DataFrame(self.steps if which == "steps" else self.epochs)

    def best_epoch(self, key: str, mode: str = "min") -> dict[str, Any]:
        """The epoch row with the lowest (``mode="min"``) or highest value of ``key``."""
        rows = [r for r in self.epochs if key in r and math.isfinite(r[key])]
        if not rows:
            raise KeyError(f"no epoch row has a finite {key!r}")
        pick = min if mode == "min" else max
        return pick(rows, key=lambda r: r[key])


def _batch_size(batch: Any) -> int:
    """Number of items in a batch: the leading size of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    values: Iterable[Any] = batch.values() if isinstance(batch, dict) else batch
    for v in values:
        if isinstance(v, torch.Tensor) and v.ndim > 0:
            return int(v.shape[0])
    return 0


def _floats(parts: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v.detach().float().mean()) for k, v in parts.items()}


def _mixed_precision(name: str) -> str:
    if name == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return name


def _set_lr(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, step: int, total: int, steps_per_epoch: int
) -> float:
    """Apply the warmup + hold + cosine schedule (and the weight-decay schedule) for ``step``."""
    sched = dict(
        step=step,
        total_steps=total,
        warmup_steps=round(cfg.warmup_epochs * steps_per_epoch),
        hold_steps=round(cfg.hold_epochs * steps_per_epoch),
        kind=cfg.schedule,
    )
    lr = warmup_cosine(base=cfg.lr, final=cfg.min_lr, **sched)
    wd = cfg.weight_decay
    if cfg.weight_decay_end is not None:
        wd = warmup_cosine(
            **{**sched, "warmup_steps": 0, "hold_steps": 0, "kind": "cosine"},
            base=cfg.weight_decay,
            final=cfg.weight_decay_end,
        )
    for g in optimizer.param_groups:
        g["lr"] = lr * float(g.get("lr_scale", 1.0))
        if g.get("apply_decay"):
            g["weight_decay"] = wd
    return lr


@torch.no_grad()
def _validate(method: Method, loader: DataLoader, accelerator: Accelerator) -> dict[str, float]:
    """Mean of ``validation_step`` parts over ``loader`` (keys prefixed ``val_``)."""
    method.eval()
    sums: dict[str, float] = {}
    n = 0
    for batch in loader:
        batch = _to_device(batch, accelerator.device)
        with accelerator.autocast():
            parts = _floats(method.validation_step(batch))
        bs = max(1, _batch_size(batch))
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * bs
        n += bs
    method.train()
    return {f"val_{k}": v / max(1, n) for k, v in sums.items()}


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _write_history(run_dir: Path | None, history: History) -> None:
    if run_dir is None:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    history.to_frame("steps").to_csv(run_dir / "history.csv", index=False)
    if history.epochs:
        history.to_frame("epochs").to_csv(run_dir / "history_epochs.csv", index=False)


def fit(
    method: Method,
    train_data: Dataset,
    optim: OptimConfig,
    *,
    val_data: Dataset | None = None,
    run_dir: str | Path | None = None,
    resume: bool = True,
    seed: int = 0,
    callbacks: Sequence[EpochCallback] = (),
    collate_fn: Callable[[list[Any]], Any] | None = None,
    batch_sampler: Any = None,
    val_batch_sampler: Any = None,
    progress: bool = True,
    stop_at_step: int | None = None,
    accelerator: Accelerator | None = None,
) -> History:
    """Train ``method`` on ``train_data`` with the settings of ``optim``.

    Args:
        method: a ``Method`` (its ``forward`` calls ``training_step``).
        train_data: map-style dataset; batches come from a seedable shuffled DataLoader.
        optim: optimizer, schedule, batch size, epochs/max_steps, accumulation, clipping,
            precision and checkpoint settings.
        val_data: optional dataset for ``validation_step`` at every epoch end (``val_*`` keys).
        run_dir: folder for ``history.csv`` and ``checkpoints/``; ``None`` keeps all in memory.
        resume: continue from ``run_dir/checkpoints/latest`` when present.
        seed: seeds every RNG and the sampler (the same seed gives the same run).
        callbacks: ``cb(epoch, method, row) -> dict | None`` called in order at each epoch end
            (eval mode, no grad) with the epoch's row so far; returned floats join the row. See
            ``uslib.engine.callbacks`` (``KeepBest``; ``restore`` after a resume).
        collate_fn: DataLoader collate function.
        batch_sampler: yields index lists (replaces shuffled ``optim.batch_size`` batches, e.g.
            one token-grid shape per batch); its ``set_epoch(epoch)`` is called every epoch.
        val_batch_sampler: the same for ``val_data``.
        progress: show a ``tqdm.auto`` bar with loss and images/s.
        stop_at_step: stop (after checkpointing) once this optimizer step is reached, as an
            interruption would; the schedule still spans the full run.
        accelerator: an existing ``Accelerator`` (default: a new one, CPU unless CUDA exists).

    Returns:
        The ``History`` of logged steps and epochs (restored rows included after a resume).

    Raises:
        NonFiniteLossError: the loss became NaN/inf; the last good checkpoint is kept.
    """
    set_seed(seed)
    accel = accelerator or Accelerator(
        mixed_precision=_mixed_precision(optim.mixed_precision),
        cpu=not torch.cuda.is_available(),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed),
    )
    run_path = Path(run_dir) if run_dir is not None else None
    ckpt_root = run_path / "checkpoints" if run_path is not None else None
    loader = _train_loader(train_data, optim, seed, collate_fn, batch_sampler)
    val_loader = None
    if val_data is not None:
        val_kw: dict[str, Any] = (
            {"batch_sampler": val_batch_sampler}
            if val_batch_sampler is not None
            else {"batch_size": optim.batch_size, "shuffle": False}
        )
        val_loader = DataLoader(val_data, collate_fn=collate_fn, **val_kw)
    optimizer = build_optimizer(method, optim)
    model, optimizer, loader = accel.prepare(method, optimizer, loader)
    raw: Method = accel.unwrap_model(model)

    micro_per_epoch = len(loader)
    acc = optim.accumulate_steps
    steps_per_epoch = micro_per_epoch // acc
    if steps_per_epoch == 0:
        raise ValueError(
            f"an epoch has {micro_per_epoch} batches, fewer than accumulate_steps="
            f"{acc}: use more data or a smaller batch_size ({optim.batch_size})"
        )
    total = optim.max_steps or optim.epochs * steps_per_epoch

    history, step = History(), 0
    if resume and ckpt_root is not None and (last := latest_checkpoint(ckpt_root)) is not None:
        state = load_checkpoint(accel, last)
        step, history = state["step"], History(state["steps"], state["epochs"])
        accel.print(f"resumed from {last} at step {step}/{total}")
        raw.set_progress(Progress(step, total, step // steps_per_epoch, steps_per_epoch))
        for cb in callbacks:
            if callable(getattr(cb, "restore", None)):
                cb.restore(history.epochs)

    def checkpoint() -> None:
        if ckpt_root is not None:
            save_checkpoint(
                accel,
                ckpt_root,
                step,
                {"step": step, "steps": history.steps, "epochs": history.epochs},
            )
            if accel.is_main_process:
                _write_history(run_path, history)

    bar = tqdm(
        total=total,
        initial=step,
        disable=not (progress and accel.is_main_process),
        desc="fit",
        dynamic_ncols=True,
    )
    model.train()
    t0, seen = time.perf_counter(), 0
    while step < total and (stop_at_step is None or step < stop_at_step):
        epoch, skip = divmod(step * acc, steps_per_epoch * acc)
        loader.set_epoch(epoch)
        for obj in (train_data, batch_sampler):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        if skip == 0:
            raw.on_epoch_start(epoch)
        batches = accel.skip_first_batches(loader, skip) if skip else loader
        micro = skip
        parts_acc: dict[str, float] = {}
        for batch in batches:
            if micro >= steps_per_epoch * acc:
                break  # drop the remainder micro-batches that do not fill an optimizer step
            micro += 1
            lr = _set_lr(optimizer, optim, step, total, steps_per_epoch)
            raw.set_progress(Progress(step, total, epoch, steps_per_epoch))
            last_micro = micro % acc == 0
            with accel.no_sync(model) if not last_micro else _null():
                with accel.autocast():
                    out = model(batch)
                loss = out["loss"]
                if not torch.isfinite(loss.detach()).all():
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step} (epoch {epoch}, micro-batch {micro}): "
                        f"{_floats(out)}; last good checkpoint kept in {ckpt_root}"
                    )
                accel.backward(loss / acc)
            for k, v in _floats(out).items():
                parts_acc[k] = parts_acc.get(k, 0.0) + v / acc
            seen += _batch_size(batch) * accel.num_processes
            if not last_micro:
                continue
            drop_frozen_grads(optimizer, epoch)
            _clip(accel, model, optim)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            raw.on_step_end()  # progress still names the step just taken
            step += 1
            if step % optim.log_every == 0 or step == total:
                ips = seen / max(1e-9, time.perf_counter() - t0)
                history.steps.append(
                    {"step": step, "epoch": epoch, "lr": lr, **parts_acc, "images_per_s": ips}
                )
                bar.set_postfix(loss=f"{parts_acc['loss']:.4f}", img_s=f"{ips:.1f}")
            parts_acc = {}
            bar.update(1)
            if micro == steps_per_epoch * acc:  # epoch finished: validate before checkpointing
                raw.set_progress(Progress(step, total, epoch, steps_per_epoch))
                history.epochs.append(_epoch_end(epoch, step, raw, val_loader, callbacks, accel))
            if optim.checkpoint_every and step % optim.checkpoint_every == 0:
                checkpoint()
            if step >= total or (stop_at_step is not None and step >= stop_at_step):
                break
    bar.close()
    if not (optim.checkpoint_every and step % optim.checkpoint_every == 0):
        checkpoint()
    elif accel.is_main_process:
        _write_history(run_path, history)
    return history


def _train_loader(
    data: Dataset,
    optim: OptimConfig,
    seed: int,
    collate_fn: Callable[[list[Any]], Any] | None,
    batch_sampler: Any,
) -> DataLoader:
    """Shuffled fixed-size batches, or the method's own ``batch_sampler``."""
    kw: dict[str, Any] = (
        {"batch_sampler": batch_sampler}
        if batch_sampler is not None
        else {"batch_size": optim.batch_size, "shuffle": True, "drop_last": optim.drop_last}
    )
    # own generator: creating an iterator must not draw from the global RNG, or a resumed run
    # (which creates one more iterator) would drift from the uninterrupted one
    return DataLoader(
        data,
        collate_fn=collate_fn,
        num_workers=optim.num_workers,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


def _clip(accel: Accelerator, model: torch.nn.Module, optim: OptimConfig) -> None:
    """Gradient clipping: one global norm (default) or each parameter's own (DINO/iBOT)."""
    if optim.grad_clip is None:
        return
    if optim.grad_clip_mode == "per_parameter":
        accel.unscale_gradients()
        clip_per_parameter(list(model.parameters()), optim.grad_clip)
    elif optim.grad_clip_mode == "global":
        accel.clip_grad_norm_(model.parameters(), optim.grad_clip)
    else:
        raise ValueError(
            f"grad_clip_mode must be 'global' or 'per_parameter', got {optim.grad_clip_mode!r}"
        )


def _epoch_end(
    epoch: int,
    step: int,
    method: Method,
    val_loader: DataLoader | None,
    callbacks: Sequence[EpochCallback],
    accel: Accelerator,
) -> dict[str, Any]:
    row: dict[str, Any] = {"epoch": epoch, "step": step}
    if val_loader is not None:
        row.update(_validate(method, val_loader, accel))
    method.eval()
    with torch.no_grad():
        for cb in callbacks:
            row.update(cb(epoch, method, row) or {})
    method.train()
    return row


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None

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

import json
import math
import os
import time
import warnings
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

PROGRESS_FILE = "progress.json"
PROGRESS_EVERY_S = 5.0


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
    compiled = optim.compile and _try_compile(method)
    model, optimizer, loader = accel.prepare(method, optimizer, loader)
    loop = _Loop(accel, model, optimizer, loader, val_loader, optim, callbacks, run_dir)
    loop.compile_pending = compiled
    if resume:
        loop.resume()
    loop.run((train_data, batch_sampler), stop_at_step, progress)
    return loop.history


class _Loop:
    """The state of one ``fit`` call and its steps (split out of ``fit`` to keep each part
    short); not public: ``fit`` is the only entry point."""

    def __init__(
        self,
        accel: Accelerator,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loader: DataLoader,
        val_loader: DataLoader | None,
        optim: OptimConfig,
        callbacks: Sequence[EpochCallback],
        run_dir: str | Path | None,
    ) -> None:
        self.accel, self.model, self.optimizer, self.loader = accel, model, optimizer, loader
        self.raw: Method = accel.unwrap_model(model)
        self.val_loader, self.optim, self.callbacks = val_loader, optim, callbacks
        self.run_path = Path(run_dir) if run_dir is not None else None
        self.ckpt_root = self.run_path / "checkpoints" if self.run_path is not None else None
        self.acc = optim.accumulate_steps
        self.steps_per_epoch = len(loader) // self.acc
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"an epoch has {len(loader)} batches, fewer than accumulate_steps="
                f"{self.acc}: use more data or a smaller batch_size ({optim.batch_size})"
            )
        self.total = optim.max_steps or optim.epochs * self.steps_per_epoch
        self.history, self.step = History(), 0
        self.t0, self.seen, self.last_beat = time.perf_counter(), 0, 0.0
        self.compile_pending = False  # compiled, and the first step has not run yet

    def progress_at(self, epoch: int) -> Progress:
        return Progress(self.step, self.total, epoch, self.steps_per_epoch)

    def resume(self) -> None:
        """Restore the newest checkpoint (if any), the method's progress and callback state."""
        if self.ckpt_root is None or (last := latest_checkpoint(self.ckpt_root)) is None:
            return
        state = load_checkpoint(self.accel, last)
        self.step, self.history = state["step"], History(state["steps"], state["epochs"])
        self.accel.print(f"resumed from {last} at step {self.step}/{self.total}")
        self.raw.set_progress(self.progress_at(self.step // self.steps_per_epoch))
        for cb in self.callbacks:
            if callable(getattr(cb, "restore", None)):
                cb.restore(self.history.epochs)

    def checkpoint(self) -> None:
        if self.ckpt_root is None:
            return
        state = {"step": self.step, "steps": self.history.steps, "epochs": self.history.epochs}
        save_checkpoint(self.accel, self.ckpt_root, self.step, state)
        if self.accel.is_main_process:
            _write_history(self.run_path, self.history)

    def run(self, epoch_aware: tuple[Any, ...], stop_at_step: int | None, progress: bool) -> None:
        """Epochs until ``total`` (or ``stop_at_step``) optimizer steps, then a last checkpoint."""
        end = self.total if stop_at_step is None else min(self.total, stop_at_step)
        bar = tqdm(
            total=self.total,
            initial=self.step,
            disable=not (progress and self.accel.is_main_process),
            desc="fit",
            dynamic_ncols=True,
        )
        self.model.train()
        while self.step < end:
            epoch, skip = divmod(self.step * self.acc, self.steps_per_epoch * self.acc)
            self.loader.set_epoch(epoch)
            for obj in epoch_aware:  # the dataset and the batch sampler
                if hasattr(obj, "set_epoch"):
                    obj.set_epoch(epoch)
            if skip == 0:
                self.raw.on_epoch_start(epoch)
            self.run_epoch(epoch, skip, end, bar)
        bar.close()
        every = self.optim.checkpoint_every
        if not (every and self.step % every == 0):
            self.checkpoint()
        elif self.accel.is_main_process:
            _write_history(self.run_path, self.history)

    def run_epoch(self, epoch: int, skip: int, end: int, bar: Any) -> None:
        """Micro-batches of one epoch from ``skip`` on; stops at the epoch end or at ``end``."""
        batches = self.accel.skip_first_batches(self.loader, skip) if skip else self.loader
        micro, per_epoch = skip, self.steps_per_epoch * self.acc
        parts: dict[str, float] = {}
        for batch in batches:
            if micro >= per_epoch:
                break  # drop the remainder micro-batches that do not fill an optimizer step
            micro += 1
            lr = _set_lr(self.optimizer, self.optim, self.step, self.total, self.steps_per_epoch)
            self.raw.set_progress(self.progress_at(epoch))
            last_micro = micro % self.acc == 0
            for k, v in self.forward_backward(batch, epoch, micro, last_micro).items():
                parts[k] = parts.get(k, 0.0) + v / self.acc
            if not last_micro:
                continue
            self.optimizer_step(epoch)
            self.log(epoch, lr, parts, bar)
            parts = {}
            if micro == per_epoch:  # epoch finished: validate before checkpointing
                self.raw.set_progress(self.progress_at(epoch))
                self.history.epochs.append(
                    _epoch_end(epoch, self.step, self.raw, self.val_loader, self.callbacks,
                               self.accel)
                )  # fmt: skip
            every = self.optim.checkpoint_every
            if every and self.step % every == 0:
                self.checkpoint()
            if self.step >= end:
                break

    def forward_backward(
        self, batch: Any, epoch: int, micro: int, last_micro: bool
    ) -> dict[str, float]:
        """One micro-batch: forward under autocast, NaN/inf guard, scaled backward."""
        with self.accel.no_sync(self.model) if not last_micro else _null():
            with self.accel.autocast():
                out = self.forward(batch)
            loss = out["loss"]
            if not torch.isfinite(loss.detach()).all():
                raise NonFiniteLossError(
                    f"non-finite loss at step {self.step} (epoch {epoch}, micro-batch {micro}): "
                    f"{_floats(out)}; last good checkpoint kept in {self.ckpt_root}"
                )
            self.accel.backward(loss / self.acc)
        self.seen += _batch_size(batch) * self.accel.num_processes
        return _floats(out)

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        """The method's forward; a failure of the first compiled call falls back to eager."""
        if not self.compile_pending:
            return self.model(batch)
        try:
            out = self.model(batch)
        except Exception as err:  # noqa: BLE001 - any compiler failure: warn, then run eagerly
            warnings.warn(
                f"torch.compile failed on the first step ({type(err).__name__}: {err}); "
                "training continues eagerly (OptimConfig.compile=False hides this)",
                stacklevel=2,
            )
            self.raw._compiled_call_impl = None  # undo nn.Module.compile
            out = self.model(batch)
        self.compile_pending = False
        return out

    def optimizer_step(self, epoch: int) -> None:
        """Frozen-group gradients dropped, clipping, the step, then the method's step end."""
        drop_frozen_grads(self.optimizer, epoch)
        _clip(self.accel, self.model, self.optim)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.raw.on_step_end()  # progress still names the step just taken
        self.step += 1

    def log(self, epoch: int, lr: float, parts: dict[str, float], bar: Any) -> None:
        ips = self.seen / max(1e-9, time.perf_counter() - self.t0)
        if self.step % self.optim.log_every == 0 or self.step == self.total:
            row = {"step": self.step, "epoch": epoch, "lr": lr, **parts, "images_per_s": ips}
            self.history.steps.append(row)
            bar.set_postfix(loss=f"{parts['loss']:.4f}", img_s=f"{ips:.1f}")
        bar.update(1)
        now = time.time()
        if now - self.last_beat >= PROGRESS_EVERY_S or self.step == self.total:
            self.last_beat = now
            self.write_progress(epoch, parts.get("loss", math.nan), ips)

    def write_progress(self, epoch: int, loss: float, ips: float) -> None:
        """``run_dir/progress.json``: where training stands, for a watcher outside the kernel
        (``make reproduce`` prints it while a notebook runs); written atomically."""
        if self.run_path is None or not self.accel.is_main_process:
            return
        state = {"step": self.step, "total_steps": self.total, "epoch": epoch,
                 "epochs": math.ceil(self.total / self.steps_per_epoch), "loss": loss,
                 "images_per_s": ips, "time": time.time()}  # fmt: skip
        self.run_path.mkdir(parents=True, exist_ok=True)
        tmp = self.run_path / "progress.json.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.run_path / PROGRESS_FILE)


def _try_compile(method: Method) -> bool:
    """``nn.Module.compile`` in place (state-dict keys unchanged); ``False`` with a warning when
    torch.compile is unavailable here."""
    try:
        method.compile()
    except Exception as err:  # noqa: BLE001
        warnings.warn(f"torch.compile unavailable ({err}); training eagerly", stacklevel=3)
        return False
    return True


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

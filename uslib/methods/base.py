"""The Method contract: what every paper's method exposes to the driver, ``engine.fit`` and
``evaluation``, and the data bundle a method trains on.

* ``training_step(batch) -> {"loss", **parts}``; ``validation_step`` (default: the same, no
  grad).
* ``progress``: set by ``fit`` before every forward (step, total steps, epoch), restored on
  resume because it is a pure function of the step; per-step schedules (teacher momentum,
  temperatures, mask ratios, loss weights) read it, so they are computed before the step that
  uses them and need no saved state.
* ``on_step_end()``: after each optimizer step, with ``progress`` still naming that step; the
  default updates every ``ema_pairs()`` teacher with ``teacher_momentum()``.
* ``param_groups(weight_decay)``: optimizer groups (default: no decay on norms and biases); group
  keys ``lr_scale`` and ``freeze_epochs`` are applied by the engine (``uslib.models.params``).
* ``select_on``: ``(key, "min" | "max")`` of the epoch row that picks the saved encoder, or
  ``None``: keep the last epoch.
* ``encoder`` and ``encoder_spec()``: the backbone handed to evaluation and how to rebuild it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from uslib.models.params import ema_update_, weight_decay_groups


@dataclass(frozen=True)
class Progress:
    """Where training stands: the optimizer step being taken (0-based) out of ``total_steps``.

    Attributes:
        step: optimizer steps completed before the current one.
        total_steps: planned optimizer steps of the whole run.
        epoch: the current epoch (0-based).
        steps_per_epoch: optimizer steps per epoch.
    """

    step: int = 0
    total_steps: int = 1
    epoch: int = 0
    steps_per_epoch: int = 1

    @property
    def fraction(self) -> float:
        """``step / total_steps`` in [0, 1] (0 at the first step)."""
        return min(1.0, self.step / max(1, self.total_steps))

    @property
    def epoch_float(self) -> float:
        """Fractional epochs completed (``step / steps_per_epoch``)."""
        return self.step / max(1, self.steps_per_epoch)


@dataclass
class TrainData:
    """What a method trains on, as returned by its ``MethodSpec.train_data``.

    Randomness in ``__getitem__`` (augmentations, masks, crops) must come from
    ``uslib.data.video.item_rng(seed, epoch, index)`` with the epoch set by ``set_epoch``, never
    from the global RNGs: accelerate's loader fetches one batch ahead, so a global-RNG draw made
    before a checkpoint would be drawn again after the resume (``tests/test_methods.py`` catches
    it), and per-item seeds also make batches independent of the number of loader workers.

    Attributes:
        train: map-style training dataset.
        val: optional validation dataset (``validation_step`` at each epoch end).
        collate_fn: batch collation (e.g. multi-crop views of several sizes).
        batch_sampler: yields lists of indices (e.g. one token-grid shape per batch); replaces
            the engine's shuffled fixed-size batches. Needs ``__len__`` and, for exact resume,
            ``set_epoch(epoch)`` making each epoch's order a function of the epoch.
        val_batch_sampler: the same for ``val``.
        provenance: the datasets the method saw, e.g. ``("synthetic:lung",)`` or
            ``("real:pocus",)`` (written into ``encoder.yaml``; evaluation's contamination flag).
        data_root: the local root actually used (``None``: the synthetic generator).
    """

    train: Any
    val: Any = None
    collate_fn: Callable[[list[Any]], Any] | None = None
    batch_sampler: Any = None
    val_batch_sampler: Any = None
    provenance: tuple[str, ...] = ()
    data_root: str | None = None


class Method(nn.Module):
    """Base class of a pretraining method (timm ``TrainingTask`` idea, without Lightning).

    Subclasses implement ``training_step`` and ``encoder``; they hold no loops, no I/O and no
    plotting. Frozen teachers are kept as submodules with ``requires_grad_(False)``, listed by
    ``frozen_modules`` and kept in ``eval()`` mode (see ``train``).
    """

    select_on: ClassVar[tuple[str, str] | None] = None
    input_norm: ClassVar[tuple[float, float] | None] = None

    def __init__(self) -> None:
        super().__init__()
        self.progress = Progress()

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        """Alias of ``training_step``, so DDP wrappers see a normal forward call."""
        return self.training_step(batch)

    def training_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One forward pass on a batch; returns ``{"loss": scalar, **named_parts}``."""
        raise NotImplementedError

    def validation_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """Loss parts on a validation batch (default: the training objective, no grad)."""
        return self.training_step(batch)

    def set_progress(self, progress: Progress) -> None:
        """Called by ``fit`` before each forward (and after a resume)."""
        self.progress = progress

    def ema_pairs(self) -> Sequence[tuple[nn.Module, nn.Module]]:
        """``(teacher, student)`` pairs updated by EMA after each step (default: none)."""
        return ()

    def teacher_momentum(self) -> float:
        """EMA momentum for the current ``progress`` (methods with ``ema_pairs`` override)."""
        raise NotImplementedError(f"{type(self).__name__} has EMA pairs but no momentum schedule")

    def on_step_end(self) -> None:
        """After each optimizer step: EMA update of every ``ema_pairs()`` teacher."""
        pairs = self.ema_pairs()
        if pairs:
            m = self.teacher_momentum()
            for teacher, student in pairs:
                ema_update_(teacher, student, m)

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of each epoch; not when a resume lands mid-epoch (the
        checkpoint then holds the state of the epoch already begun)."""

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer groups; default: no decay on biases, norms, tokens and position embeddings."""
        return weight_decay_groups(self, weight_decay)

    @property
    def encoder(self) -> nn.Module:
        """The backbone that downstream evaluation uses."""
        raise NotImplementedError

    @property
    def encoder_kwargs(self) -> dict[str, Any]:
        """``create_backbone`` kwargs that rebuild ``encoder`` (besides its registry name)."""
        return {}

    def encoder_spec(self) -> dict[str, Any]:
        """How to rebuild ``encoder``: backbone name, constructor kwargs, input normalisation.

        The driver adds the method name, the selected epoch and the pretraining data's
        provenance before writing it as ``encoder.yaml``.
        """
        cfg = getattr(self, "cfg", None)
        backbone = getattr(cfg, "backbone", None)
        if backbone is None:
            raise NotImplementedError(f"{type(self).__name__} has no cfg.backbone; override")
        norm = self.input_norm
        return {
            "backbone": str(backbone),
            "kwargs": dict(self.encoder_kwargs),
            "input_norm": [float(norm[0]), float(norm[1])] if norm is not None else None,
        }

    def frozen_modules(self) -> list[nn.Module]:
        """Submodules that must stay frozen and in eval mode (teachers)."""
        return []

    def train(self, mode: bool = True) -> Method:
        """Switch to train/eval mode, keeping frozen teachers in eval mode."""
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self

"""The Method contract: what every paper's method exposes to ``engine.fit`` and ``evaluation``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class Method(nn.Module):
    """Base class of a pretraining method (timm ``TrainingTask`` idea, without Lightning).

    Subclasses implement ``training_step`` (and optionally ``validation_step`` and
    ``on_step_end``); they hold no loops, no I/O and no plotting. Frozen teachers are kept as
    submodules with ``requires_grad_(False)`` and in ``eval()`` mode (see ``train``).
    """

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        """Alias of ``training_step``, so DDP wrappers see a normal forward call."""
        return self.training_step(batch)

    def training_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One forward pass on a batch; returns ``{"loss": scalar, **named_parts}``."""
        raise NotImplementedError

    def validation_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """Loss parts on a validation batch (default: the training objective, no grad)."""
        return self.training_step(batch)

    def on_step_end(self, step: int, max_steps: int) -> None:
        """Called after each optimizer step (EMA teachers, momentum/temperature schedules)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of each epoch; not when a resume lands mid-epoch (the
        checkpoint then holds the state of the epoch already begun)."""

    @property
    def encoder(self) -> nn.Module:
        """The backbone that downstream evaluation uses."""
        raise NotImplementedError

    def frozen_modules(self) -> list[nn.Module]:
        """Submodules that must stay frozen and in eval mode (teachers)."""
        return []

    def train(self, mode: bool = True) -> Method:
        """Switch to train/eval mode, keeping frozen teachers in eval mode."""
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self

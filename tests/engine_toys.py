"""Toy methods and datasets for the engine tests (also run by the 2-process script)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from uslib.methods.base import Method


class ToyImages(Dataset):
    """``n`` fixed random 1x8x8 images with a scalar regression target each."""

    def __init__(self, n: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 1, 8, 8, generator=g)
        self.y = torch.randn(n, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.x[i], "target": self.y[i]}


class ToyRegressor(Method):
    """A small MLP (no batch norm, so 1- and 2-process runs agree) with an MSE loss."""

    def __init__(
        self, seed: int = 0, nan_at_call: int | None = None, noise: float = 0.01, cfg: Any = None
    ) -> None:
        super().__init__()
        self.cfg = cfg  # a MethodConfig naming the backbone, when the driver saves the encoder
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 1))
        self.nan_at_call = nan_at_call
        self.calls = 0
        self.noise = noise

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls += 1
        # input noise from the global RNG, so exact resume must restore RNG states
        x = batch["image"] + self.noise * torch.randn_like(batch["image"])
        pred = self.net(x).squeeze(-1)
        loss = ((pred - batch["target"]) ** 2).mean()
        if self.nan_at_call is not None and self.calls == self.nan_at_call:
            loss = loss * float("nan")
        return {"loss": loss, "mse": loss.detach()}

    @property
    def encoder(self) -> nn.Module:
        return self.net

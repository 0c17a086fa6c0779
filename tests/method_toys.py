"""A toy second method with an EMA teacher (BYOL-like), registered as ``toy_ema`` for the
method-contract tests, and a planted broken variant whose "frozen" teacher receives gradients."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from uslib.config import DataConfig, MethodConfig, OptimConfig
from uslib.data.video import item_rng
from uslib.methods import METHODS, Method, MethodSpec, TrainData
from uslib.models import create_backbone
from uslib.ops.schedules import cosine_ramp


@dataclass(frozen=True)
class ToyEMAConfig(MethodConfig):
    backbone: str = "resnet18_smoke"
    momentum: tuple[float, float] = (0.9, 1.0)  # cosine ramp over the run, as DINO's
    data: DataConfig = field(default_factory=lambda: DataConfig(img_size=16, n_per_class=12))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(epochs=2, batch_size=4))


class ToyViews(Dataset):
    """``n`` fixed random images; two views each, the first with noise drawn from
    ``item_rng(seed, epoch, index)`` (the project's rule for augmentations: never the global
    RNG, which the loader's one-batch look-ahead would make resume-inexact)."""

    def __init__(self, n: int, size: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 1, size, size, generator=g)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = self.x[i]
        noise = item_rng(self.seed, self.epoch, i).standard_normal(x.shape).astype("float32")
        return {"view1": x + 0.1 * torch.from_numpy(noise), "view2": x.flip(-1)}


class ToyEMA(Method):
    """Student backbone + projector; EMA teacher copy; loss 2 - 2 cos(student(v1), teacher(v2))."""

    def __init__(self, cfg: ToyEMAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        backbone = create_backbone(cfg.backbone, in_chans=1)
        self.student = nn.Sequential(backbone, nn.Linear(backbone.num_features, 16))
        self.predictor = nn.Linear(16, 16)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)

    @property
    def encoder(self) -> nn.Module:
        return self.student[0]

    @property
    def encoder_kwargs(self) -> dict[str, Any]:
        return {"in_chans": 1}

    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher]

    def ema_pairs(self) -> Sequence[tuple[nn.Module, nn.Module]]:
        return [(self.teacher, self.student)]

    def teacher_momentum(self) -> float:
        return cosine_ramp(self.progress.fraction, *self.cfg.momentum)

    def _target(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher(x)

    def training_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        p = self.predictor(self.student(batch["view1"]))
        t = self._target(batch["view2"])
        cos = F.cosine_similarity(p, t, dim=-1).mean()
        loss = 2 - 2 * cos
        return {"loss": loss, "cosine": cos.detach()}


class LeakyTeacherEMA(ToyEMA):
    """Planted bug: the teacher is listed as frozen but trainable, and the target not detached."""

    def __init__(self, cfg: ToyEMAConfig) -> None:
        super().__init__(cfg)
        self.teacher.requires_grad_(True)

    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher(x)


def build(cfg: ToyEMAConfig) -> ToyEMA:
    torch.manual_seed(cfg.seed)
    return ToyEMA(cfg)


def train_data(cfg: ToyEMAConfig, method: Method | None = None) -> TrainData:
    n = 2 * cfg.data.n_per_class
    return TrainData(
        ToyViews(n, cfg.data.img_size, cfg.data.seed),
        ToyViews(8, cfg.data.img_size, cfg.data.seed + 1),
        provenance=("toy:noise",),
    )


if "toy_ema" not in METHODS:
    METHODS.register("toy_ema")(
        lambda: MethodSpec("toy_ema", ToyEMAConfig, build=build, train_data=train_data)
    )

"""SPAD-VT tokenizer training (PUMIT stage 1): reconstruct 2-D images and volumes through a soft
codebook; the trained tokenizer is then the frozen MIM target of ``spad`` (``uslib.methods.spad``).

Generator loss (§C.5): ``L = |x - x_hat|_1 + w_lpips * LPIPS + w_q * sum_k pbar_k log pbar_k
+ w_H * mean H(p)`` with the README's ``w_q = 0.03`` and ``w_H = 1``; LPIPS only with a local
weight file (``lpips_weights``, needs the ``lpips`` package); the gated GAN term is not
implemented (``gan_weight > 0`` raises). Data: synthetic stills as depth-1 volumes plus
elevational sweeps at the configured slice spacings, batches of one grid shape (§C.4).

Ref: PUMIT notes §C.4 (data, bucketing), §C.5 (SPAD-VT, losses, training).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from uslib.config import (
    CPU_FRAMES_PER_CLIP,
    ConfigBase,
    ConfigError,
    DataConfig,
    MethodConfig,
    OptimConfig,
)
from uslib.data.sources import FrameArray, pocus_frame_array
from uslib.data.volumes import DepthOneImages, GridBatchSampler, VolumeMix, synthetic_volume_mix
from uslib.methods import METHODS, MethodSpec
from uslib.methods.base import Method, TrainData
from uslib.models import create_backbone
from uslib.models.spad_tokenizer import LocalLPIPS, codebook_usage_loss, confidence_loss
from uslib.ops.anisotropy import depth_patch

TOKENIZER_BACKBONE = "spad_tokenizer"


@dataclass(frozen=True)
class TokenizerArch(ConfigBase):
    """SPAD-VT architecture (smoke defaults; §C.5: channels 128/256/512, strides 4/2/2, 1024 x
    512 codebook). ``prod(strides)`` must equal the ViT patch size."""

    channels: tuple[int, ...] = (8, 16, 16)
    strides: tuple[int, ...] = (2, 2, 2)
    codebook_size: int = 32
    code_dim: int = 16

    def kwargs(self, in_chans: int) -> dict[str, Any]:
        """``create_backbone("spad_tokenizer", **kwargs)`` arguments."""
        return {
            "in_chans": in_chans,
            "channels": list(self.channels),
            "strides": list(self.strides),
            "codebook_size": self.codebook_size,
            "code_dim": self.code_dim,
        }


@dataclass(frozen=True)
class VolumeData(ConfigBase):
    """The volume mix: 2-D stills (``data.n_per_class`` per class) as depth-1 volumes, plus
    ``n_volumes`` sweeps for each ``(depth, slice_ratio)`` pair (ratio = z / xy spacing)."""

    depths: tuple[int, ...] = (8, 4)
    slice_ratios: tuple[float, ...] = (1.0, 4.0)  # aniso_d 0 (isotropic) and 2 (§C.2)
    n_volumes: int = 2


def volume_train_data(cfg: Any, patch: int) -> TrainData:
    """Synthetic 2-D + 3-D mix of ``cfg.data`` / ``cfg.volumes`` with a ``GridBatchSampler``.

    With ``data.data_root`` (a POCUS layout, or a folder holding one): its extracted frames as
    2-D depth-1 items only (``data.frames_per_clip`` per clip), provenance ``real:pocus``; the
    shipped real sets hold no volumes, so ``volumes`` is unused there.

    Raises:
        ConfigError: a depth the token grid cannot cut.
        FileNotFoundError: ``data_root`` holds no POCUS layout (the path is named).
    """
    d, v = cfg.data, cfg.volumes
    if d.data_root is not None:
        frames, root = pocus_frame_array(d.data_root, d.img_size, d.frames_per_clip)
        mix = VolumeMix([DepthOneImages(FrameArray(frames, "pocus"), d.img_size)])
        sampler = GridBatchSampler(mix.grid_keys(), cfg.optim.batch_size, seed=cfg.seed)
        return TrainData(mix, batch_sampler=sampler, provenance=("real:pocus",),
                         data_root=str(root))  # fmt: skip
    from uslib.ops.anisotropy import aniso_d

    for depth, ratio in zip(v.depths, v.slice_ratios, strict=True):
        dp = depth_patch(patch, aniso_d(ratio, 1.0))
        if depth % dp:
            raise ConfigError(f"volume depth {depth} at slice_ratio {ratio} is not a multiple "
                              f"of the depth patch {dp} (patch {patch})")  # fmt: skip
    mix = synthetic_volume_mix(
        d.task, "train", d.n_per_class, v.n_volumes, v.depths, v.slice_ratios, d, d.seed
    )
    sampler = GridBatchSampler(mix.grid_keys(), cfg.optim.batch_size, seed=cfg.seed)
    kinds = "2d" if d.n_per_class else ""
    kinds += "+3d" if v.n_volumes else ""
    return TrainData(mix, batch_sampler=sampler, provenance=(f"synthetic:{d.task}:{kinds}",))


def batch_aniso(batch: dict[str, Any]) -> int:
    """The one aniso_d of a batch (the sampler never mixes grid shapes)."""
    a = batch["aniso_d"]
    if isinstance(a, torch.Tensor):
        if not bool((a == a[0]).all()):
            raise ValueError(f"batch mixes aniso_d values {a.tolist()}")
        return int(a[0])
    return int(a)


@dataclass(frozen=True)
class SPADTokenizerConfig(MethodConfig):
    """SPAD-VT training; defaults are the smoke profile, ``PRESETS`` cpu and paper (§C.5)."""

    backbone: str = TOKENIZER_BACKBONE
    tokenizer: TokenizerArch = field(default_factory=TokenizerArch)
    volumes: VolumeData = field(default_factory=VolumeData)
    l1_weight: float = 1.0  # §C.5: |x - x_hat|_1
    quant_weight: float = 0.03  # §C.5 README command: codebook usage -H(pbar)
    entropy_weight: float = 1.0  # §C.5 README command: per-token confidence H(p)
    lpips_weight: float = 1.0  # §C.5: used only when lpips_weights is set
    lpips_weights: str | None = None  # local LPIPS(vgg) state dict; None -> no LPIPS term
    gan_weight: float = 0.0  # §C.5 gated GAN term: not implemented, must stay 0
    data: DataConfig = field(
        default_factory=lambda: DataConfig(task="breast", img_size=16, n_per_class=2)
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.05, epochs=2, batch_size=4)
    )

    PRESETS = {
        # cpu: the data of spad's cpu preset (64 px breast stills + sweeps at ratios 1 and 4),
        # a 32/64/64-wide tokenizer with 128 x 64 codes, 12 epochs (~8 GFLOP per epoch).
        # entropy_weight 0.03, not §C.5's 1: over these ~360 steps w_H = 1 collapses the codebook
        # (perplexity 1.06 of 128, I(token; code) = H(pbar) - E H(p) ~ 0 nats: a constant MIM
        # target). Swept here (seed 0, 12 epochs): w_H 1 -> 0.00 nats, 0.1 -> 0.54, 0.03 -> 1.61,
        # 0 -> 0.07 (near-uniform p); 0.03 gives the most informative target.
        "cpu": {
            "entropy_weight": 0.03,
            "tokenizer": {"channels": [32, 64, 64], "strides": [4, 2, 2],
                          "codebook_size": 128, "code_dim": 64},
            "volumes": {"depths": [16, 8], "slice_ratios": [1.0, 4.0], "n_volumes": 12},
            "data": {"task": "breast", "img_size": 64, "n_per_class": 150,
                     "frames_per_clip": CPU_FRAMES_PER_CLIP},
            "optim": {"lr": 1e-3, "epochs": 12, "batch_size": 16, "warmup_epochs": 1.0},
        },
        # paper §C.5: 128/256/512, strides 4/2/2, 1024 x 512 soft codebook; AdamW 1e-4, wd 0.05,
        # warmup 25k of 500k steps, floor 1e-6; batch 8 (README); crops 4 x 128 x 128 (train_tz 4
        # x train_tx 8); fp16
        "paper": {
            "tokenizer": {"channels": [128, 256, 512], "strides": [4, 2, 2],
                          "codebook_size": 1024, "code_dim": 512},
            "volumes": {"depths": [64, 16], "slice_ratios": [1.0, 4.0], "n_volumes": 256},
            "data": {"task": "breast", "img_size": 128, "n_per_class": 2000},
            "optim": {"lr": 1e-4, "min_lr": 1e-6, "weight_decay": 0.05, "max_steps": 500_000,
                      "warmup_epochs": 1.0, "batch_size": 8, "mixed_precision": "fp16",
                      "epochs": 100},
        },
    }  # fmt: skip


class SPADTokenizerMethod(Method):
    """Trains ``SPADTokenizer`` with the §C.5 generator loss (no GAN).

    Args:
        cfg: a ``SPADTokenizerConfig``.

    Raises:
        ConfigError: ``gan_weight > 0`` (the discriminator-gated GAN term is not implemented).
    """

    def __init__(self, cfg: SPADTokenizerConfig) -> None:
        super().__init__()
        if cfg.gan_weight > 0:
            raise ConfigError(
                f"gan_weight={cfg.gan_weight}: the SPAD-VT GAN term (§C.5, on only while the "
                "discriminator loss <= 0.025) is not implemented; use gan_weight=0"
            )
        self.cfg = cfg
        self.tokenizer = create_backbone(TOKENIZER_BACKBONE, **self.encoder_kwargs)
        self.lpips: nn.Module | None = (
            LocalLPIPS(cfg.lpips_weights) if cfg.lpips_weights is not None else None
        )

    @property
    def encoder(self) -> nn.Module:
        """The whole tokenizer (saved so ``spad`` can load it as its frozen target)."""
        return self.tokenizer

    @property
    def encoder_kwargs(self) -> dict[str, Any]:
        """Architecture kwargs of ``create_backbone("spad_tokenizer", ...)``."""
        return self.cfg.tokenizer.kwargs(self.cfg.data.in_chans)

    def frozen_modules(self) -> list[nn.Module]:
        """The LPIPS network, when used."""
        return [self.lpips] if self.lpips is not None else []

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss on a batch of one grid shape.

        Args:
            batch: ``image`` (B, C, D, H, W) in [0, 1], ``aniso_d`` (B,).

        Returns:
            ``{"loss", "l1", "usage", "confidence", "perplexity"[, "lpips"]}``; ``usage`` is
            sum pbar log pbar (-H(pbar)), ``perplexity`` exp(H(pbar)) (codes in use).
        """
        out = self.tokenizer.tokenize(batch["image"], batch_aniso(batch))
        probs = out["logits"].softmax(-1)
        l1 = (out["recon"] - out["target"]).abs().mean()
        usage, conf = codebook_usage_loss(probs), confidence_loss(probs)
        c = self.cfg
        loss = c.l1_weight * l1 + c.quant_weight * usage + c.entropy_weight * conf
        parts = {"l1": l1.detach(), "usage": usage.detach(), "confidence": conf.detach()}
        if self.lpips is not None:
            lp = self.lpips(out["recon"], out["target"])
            loss = loss + c.lpips_weight * lp
            parts["lpips"] = lp.detach()
        return {"loss": loss, **parts, "perplexity": (-usage.detach()).exp()}


def build(cfg: SPADTokenizerConfig) -> SPADTokenizerMethod:
    """The tokenizer method of ``cfg`` (weights seeded from ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    return SPADTokenizerMethod(cfg)


def train_data(cfg: SPADTokenizerConfig, method: Method | None = None) -> TrainData:
    """The 2-D + 3-D synthetic mix, one grid shape per batch (``volume_train_data``)."""
    import math

    return volume_train_data(cfg, math.prod(cfg.tokenizer.strides))


METHODS.register("spad_tokenizer")(
    lambda: MethodSpec(
        name="spad_tokenizer", config_cls=SPADTokenizerConfig, build=build, train_data=train_data
    )
)

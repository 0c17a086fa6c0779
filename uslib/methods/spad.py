"""SPAD-ViT masked image modelling (PUMIT stage 2): predict the frozen SPAD-VT tokenizer's soft
code distribution at masked tokens of 2-D images and anisotropic volumes.

Zhou et al., "Pre-training on Medical Images with Spatially Adaptive Networks" (PUMIT, arXiv
2312.07630); recipe from ``dmae_uscl_pumit.md`` part C. Per sample, ``L - int(L * 0.45)`` of the
L tokens (55 %) are replaced by the mask token (BEiT style, every block sees the full
sequence, as PUMIT ViT-B; mask tokens carry no absolute position); a head Linear-GELU-Linear
maps the final-normed states at masked tokens to K code logits; the loss is the soft-label
cross-entropy to the tokenizer's softmax (D-16), KL logged. The tokenizer sees ``2x - 1``, the
ViT ``(x - mean) / std`` (ImageNet statistics in grey, D-12).

Ref: PUMIT notes §C.6 (SPAD-ViT), §C.7 (objective, hyper-parameters), D-13 (EVA-02 init).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from uslib.config import CPU_FRAMES_PER_CLIP, ConfigError, DataConfig, MethodConfig, OptimConfig
from uslib.losses.token_prediction import soft_token_cross_entropy, soft_token_kl
from uslib.methods import METHODS, MethodSpec
from uslib.methods.base import Method, TrainData
from uslib.methods.spad_tokenizer import (
    TOKENIZER_BACKBONE,
    TokenizerArch,
    VolumeData,
    batch_aniso,
    volume_train_data,
)
from uslib.models import create_backbone
from uslib.ops.masking import random_token_mask

# ImageNet mean / std in grey (BT.601 weights 0.299, 0.587, 0.114 of the RGB values, §C.3)
GREY_IMAGENET_MEAN = 0.299 * 0.485 + 0.587 * 0.456 + 0.114 * 0.406
GREY_IMAGENET_STD = 0.299 * 0.229 + 0.587 * 0.224 + 0.114 * 0.225


@dataclass(frozen=True)
class SPADConfig(MethodConfig):
    """SPAD-ViT MIM; defaults are the smoke profile, ``PRESETS`` cpu and paper.

    Fields beyond ``MethodConfig``: ``mask_ratio`` (§C.7), ``tokenizer_encoder`` (the
    ``encoder.yaml`` of a ``spad_tokenizer`` run; ``None``: a randomly initialised frozen
    tokenizer of shape ``tokenizer``, for tests only), ``volumes`` (the 2-D + 3-D mix),
    ``init_checkpoint`` / ``init_kind`` (a local EVA-02 / PUMIT file through
    ``uslib.models.checkpoints.load_official``, D-13; ``None``: random init).
    """

    backbone: str = "spad_vit_smoke"
    mask_ratio: float = 0.55  # §C.7 item 2
    tokenizer_encoder: str | None = None
    tokenizer: TokenizerArch = field(default_factory=TokenizerArch)
    volumes: VolumeData = field(default_factory=VolumeData)
    init_checkpoint: str | None = None  # §C.6: eva02_B_pt_in21k_p14.pt (local file)
    init_kind: str = "pumit"  # load_official kind (EVA-02 / PUMIT key names)
    drop_path: float = 0.0
    data: DataConfig = field(
        default_factory=lambda: DataConfig(task="breast", img_size=16, n_per_class=2)
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.05, epochs=2, batch_size=4)
    )

    PRESETS = {
        # cpu: 6-block 192-wide SPAD-ViT (patch 16) from scratch on 1,200 breast stills + 24
        # sweeps at 64 px (~20 k tokens, ~310 GFLOP per epoch); the tokenizer of spad_tokenizer's
        # cpu preset (trained on 450 of these stills + the sweeps). n_per_class 400, not 150:
        # measured with 07's linear probe (seed 0, 5 folds, 95 % CI): 150/class, 20 epochs ->
        # lung 46.0 [40.3, 51.3]; 150/class, 40 epochs -> 44.7 [39.0, 50.3]; 400/class, 20
        # epochs -> 48.3 [42.3, 54.3], vs random init 35.3 [30.3, 40.7] (more images, not more
        # epochs, is what helped)
        "cpu": {
            "backbone": "spad_vit_cpu",
            "tokenizer": {"channels": [32, 64, 64], "strides": [4, 2, 2],
                          "codebook_size": 128, "code_dim": 64},
            "volumes": {"depths": [16, 8], "slice_ratios": [1.0, 4.0], "n_volumes": 12},
            "data": {"task": "breast", "img_size": 64, "n_per_class": 400,
                     "frames_per_clip": CPU_FRAMES_PER_CLIP},
            "optim": {"lr": 5e-4, "epochs": 20, "batch_size": 32, "warmup_epochs": 2.0,
                      "grad_clip": 0.5},
        },
        # paper §C.6-C.7: ViT-B from EVA-02-B (init_checkpoint), AdamW lr 2e-5, wd 0.05, warmup
        # 10k of 300k steps, floor 1e-6, batch 8/GPU, 16-mixed, grad-norm clip 0.5, seed 666;
        # crops 5 x d_eff x 160 x 160 (3-D) or 1 x 160 x 160 (2-D); tokenizer 1024 x 512
        "paper": {
            "backbone": "spad_vit_base",
            "seed": 666,
            "tokenizer": {"channels": [128, 256, 512], "strides": [4, 2, 2],
                          "codebook_size": 1024, "code_dim": 512},
            "volumes": {"depths": [80, 20], "slice_ratios": [1.0, 4.0], "n_volumes": 256},
            "data": {"task": "breast", "img_size": 160, "n_per_class": 2000},
            "optim": {"optimizer": "adamw", "lr": 2e-5, "min_lr": 1e-6, "weight_decay": 0.05,
                      "max_steps": 300_000, "warmup_epochs": 1.0, "batch_size": 8,
                      "grad_clip": 0.5, "mixed_precision": "fp16", "epochs": 100},
        },
    }  # fmt: skip


def load_tokenizer(spec_path: str) -> nn.Module:
    """The tokenizer saved by a ``spad_tokenizer`` run (its ``checkpoints/encoder.yaml``).

    Raises:
        ConfigError: the file holds another backbone (its name and the file are given).
    """
    from uslib import runs

    tok, spec = runs.load_encoder(spec_path)
    if spec["backbone"] != TOKENIZER_BACKBONE:
        raise ConfigError(
            f"tokenizer_encoder={spec_path!r} holds a {spec['backbone']!r}, not a "
            f"{TOKENIZER_BACKBONE!r} (train it with the spad_tokenizer method)"
        )
    return tok


class SPAD(Method):
    """SPAD-ViT + MIM head, with a frozen SPAD-VT tokenizer as the target (§C.7).

    Args:
        cfg: a ``SPADConfig``.

    Raises:
        ConfigError: a mask ratio outside (0, 1), or tokenizer stride != ViT patch.
    """

    input_norm: ClassVar[tuple[float, float] | None] = (GREY_IMAGENET_MEAN, GREY_IMAGENET_STD)

    def __init__(self, cfg: SPADConfig) -> None:
        super().__init__()
        if not 0.0 < cfg.mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio must be in (0, 1), got {cfg.mask_ratio}")
        self.cfg = cfg
        self.vit = create_backbone(cfg.backbone, **self.encoder_kwargs)
        if cfg.init_checkpoint is not None:
            from uslib.models.checkpoints import load_official

            self.init_report = load_official(
                self.vit, cfg.init_checkpoint, cfg.init_kind, strict=False
            )  # EVA-02 has no mask token / 3-D table: missing keys are allowed, none-loaded not
            if not self.init_report.loaded:
                raise ConfigError(f"init_checkpoint={cfg.init_checkpoint!r}: no key fits the ViT")
        if cfg.tokenizer_encoder is not None:
            self.tokenizer = load_tokenizer(cfg.tokenizer_encoder)
        else:
            kw = cfg.tokenizer.kwargs(cfg.data.in_chans)
            self.tokenizer = create_backbone(TOKENIZER_BACKBONE, **kw)
        self.tokenizer.requires_grad_(False).eval()
        p_vit, p_tok = self.vit.patch_embed.patch_size, self.tokenizer.patch_size
        if p_vit != p_tok:
            raise ConfigError(f"tokenizer stride {p_tok} != ViT patch {p_vit}: token grids differ")
        d, k = int(self.vit.embed_dim), int(self.tokenizer.codebook_size)
        self.head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, k))  # §C.7 item 5

    @property
    def encoder(self) -> nn.Module:
        """The SPAD-ViT (images (B, C, H, W) -> cls token; volumes via ``forward_volume``)."""
        return self.vit

    @property
    def encoder_kwargs(self) -> dict[str, Any]:
        """``create_backbone`` kwargs of the SPAD-ViT (mask token included)."""
        kw: dict[str, Any] = {"in_chans": self.cfg.data.in_chans, "use_mask_token": True}
        if self.cfg.drop_path:
            kw["drop_path_rate"] = self.cfg.drop_path
        return kw

    def frozen_modules(self) -> list[nn.Module]:
        """The tokenizer: eval mode, no gradient (§C.5 'MIM target')."""
        return [self.tokenizer]

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """MIM loss on a batch of one grid shape.

        Args:
            batch: ``image`` (B, C, D, H, W) in [0, 1] and ``aniso_d`` (B,).

        Returns:
            ``{"loss" (soft CE), "kl", "acc" (argmax agreement at masked tokens),
            "target_entropy"}``.
        """
        x, a = batch["image"], batch_aniso(batch)
        with torch.no_grad():
            target = self.tokenizer.soft_tokens(x, a)  # (B, L, K)
        b, n = target.shape[:2]
        mask, _, _ = random_token_mask(b, n, self.cfg.mask_ratio, device=x.device)
        xn = (x - GREY_IMAGENET_MEAN) / GREY_IMAGENET_STD
        h = self.vit.forward_encoder(xn, mask=mask, aniso=a)[:, 1:]  # (B, L, E), cls dropped
        logits = self.head(h[mask])  # (M, K) at masked tokens only
        tm = target[mask]
        loss = soft_token_cross_entropy(logits, tm)
        with torch.no_grad():
            kl = soft_token_kl(logits, tm)
            acc = (logits.argmax(-1) == tm.argmax(-1)).float().mean()
            ent = -(tm * tm.clamp_min(1e-12).log()).sum(-1).mean()
        return {"loss": loss, "kl": kl, "acc": acc, "target_entropy": ent}


def build(cfg: SPADConfig) -> SPAD:
    """The SPAD-ViT MIM method of ``cfg`` (weights seeded from ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    return SPAD(cfg)


def train_data(cfg: SPADConfig, method: Method | None = None) -> TrainData:
    """The 2-D + 3-D synthetic mix, one grid shape per batch (§C.4)."""
    patch = math.prod(cfg.tokenizer.strides)
    if method is not None:
        patch = int(method.vit.patch_embed.patch_size)  # type: ignore[union-attr]
    return volume_train_data(cfg, patch)


METHODS.register("spad")(
    lambda: MethodSpec(name="spad", config_cls=SPADConfig, build=build, train_data=train_data)
)

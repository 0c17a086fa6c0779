"""TinyUSFM: a 5.5 M ViT distilled from USFM on a coreset, with domain-separated masks.

Ma et al., "TinyUSFM", arXiv 2510.19239 / IEEE JBHI 2026; facts in the reproduction notes
``openus_tinyusfm.md`` §2.1-2.7. The distillation code was never released, so this module is a
**documented reconstruction** (notes §2.3, "An implementable reconstruction"): every choice the
paper leaves open is a config field.

* data: a candidate pool reduced by a coreset (``tinyusfm_coreset.select``: dual rank,
  random or k-center) computed from the built method's frozen teacher in ``train_data``;
* each image gives two separate inputs, spatially masked (patches -> image mean, ratio rho_s)
  and frequency masked (band-stop annulus), ``uslib.ops.domain_masks``;
* the frozen teacher runs on both; at the distilled blocks the per-sample consistency
  ``c = cos(h_t^spa, h_t^freq)`` sets the weight of that sample and block
  (``uslib.losses.dynamic_distillation``), faded in over training;
* the student's block tokens go through linear projectors to the teacher width; a linear
  (SimMIM-style) decoder adds a pixel loss on the masked patches (spatial input) and USFM's
  frequency-domain loss (frequency input).

``teacher_backbone="none"`` drops the teacher: the remaining objective is USFM's own
domain-masked reconstruction, which notebook 05 uses to pretrain its small teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from uslib.config import CPU_FRAMES_PER_CLIP, DataConfig, MethodConfig, OptimConfig
from uslib.losses.dynamic_distillation import (
    consistency,
    consistency_weights,
    feature_mse,
    frequency_loss,
)
from uslib.losses.reconstruction import masked_mse
from uslib.methods import METHODS, MethodSpec
from uslib.methods.base import Method, TrainData
from uslib.methods.tinyusfm_data import TeacherInfo, build_teacher, pool_dataset
from uslib.models import create_backbone
from uslib.ops.domain_masks import frequency_mask, spatial_mask
from uslib.ops.masking import patchify, unpatchify
from uslib.ops.schedules import cosine_ramp


@dataclass(frozen=True)
class TinyUSFMConfig(MethodConfig):
    """TinyUSFM settings; defaults are the smoke profile, ``PRESETS`` hold cpu and paper.

    Paper facts (notes §2.1-2.3): student ViT(192, 12 blocks, 12 heads, p16), teacher USFM
    ViT-B/16, distillation after blocks 4/8/12, a 10 % coreset (200 K of 2.2 M). Everything
    else (mask ratio, band, weighting, temperatures, loss weights, coreset knobs) is ours.
    Block numbers are 1-based ("after block 4").
    """

    backbone: str = "vit_smoke"  # the student
    teacher_backbone: str = "usfm_smoke"  # "none": no teacher (USFM-style MIM only)
    teacher_checkpoint: str | None = None  # None: random-init teacher (smoke only)
    teacher_format: str = "encoder"  # "encoder" (uslib encoder.yaml) | load_official kind
    student_blocks: tuple[int, ...] = (1, 2)  # paper (4, 8, 12) (§2.1 figure)
    teacher_blocks: tuple[int, ...] = ()  # (): the student blocks' depth fractions (ours)
    spatial_ratio: float = 0.5  # rho_s (ours; USFM's value unknown)
    mask_patch: int = 0  # side of a masked square; 0 = the student's patch size
    freq_band: tuple[float, float] = (0.1, 0.4)  # removed annulus [r1, r2], Nyquist units (ours)
    weighting: str = "softmax"  # softmax | power | uniform
    weight_temperature: float = 0.1  # tau of softmax(c / tau)
    weight_gamma: float = 2.0  # gamma of max(0, c)^gamma
    weight_strength: tuple[float, float] = (0.0, 1.0)  # lambda cosine ramp over training
    consistency_on: str = "pooled"  # pooled | tokens
    target_norm: str = "layernorm"  # layernorm | none (teacher tokens)
    kd_weight: float = 1.0
    rec_weights: tuple[float, float] = (1.0, 1.0)  # (pixel on masked patches, frequency)
    coreset: str = "dual_rank"  # dual_rank | random | k_center | none
    coreset_budget: float = 0.5  # fraction (< 1) or count; paper 200 K of 2.2 M (~0.09)
    coreset_clusters: int = 3
    coreset_bins: int = 2  # distance quantiles per cluster
    coreset_weights: tuple[float, float] = (0.5, 0.5)  # rank fusion (distance, quality)
    coreset_noise_quantile: float = 0.0
    coreset_embed: str = "final"  # final | blocks
    coreset_warmup_epochs: int = 2
    coreset_proxy_backbone: str | None = None  # None: the student architecture
    coreset_proxy_lr: float = 1e-3
    coreset_chunk: int = 65536
    coreset_kmeans_batch: int = 4096
    data: DataConfig = field(
        default_factory=lambda: DataConfig(task="organ", img_size=32, n_per_class=4)
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-3, epochs=2, batch_size=4, weight_decay=0.05)
    )

    PRESETS = {
        # cpu: the paper's student (vit_tiny_usfm, p16) at 64 px (4 x 4 tokens); the teacher is
        # notebook 04's MAE teacher (192-d x 8, p8), found in the run folders or trained by 05
        # with 04's recipe; 1200-image multi-organ pool, 30 % coreset, 12 epochs (notebook 05:
        # 8.1 min on 2 cores; at 6 epochs the distilled student was not ahead of the no-teacher
        # one in 07's lung probe, at 12 it is, CIs apart: README "TinyUSFM arms")
        "cpu": {
            "backbone": "vit_tiny_usfm", "teacher_backbone": "vit_large_patch8_64",
            "student_blocks": (4, 8, 12),  # teacher: same depth fractions (3/5/8 of 04's 8)
            "data": {"img_size": 64, "n_per_class": 200, "frames_per_clip": CPU_FRAMES_PER_CLIP},
            "optim": {"epochs": 12, "batch_size": 32, "lr": 1e-3, "warmup_epochs": 1.0},
            "coreset_budget": 0.3, "coreset_clusters": 12, "coreset_bins": 4,
            "coreset_warmup_epochs": 2,
        },
        "paper": {
            "backbone": "vit_tiny_usfm",  # §2.1: ViT(192, 12, 12 heads, p16), 5,524,416 params
            "teacher_backbone": "usfm_vit_base", "teacher_format": "usfm",  # §2.1-2.2
            "student_blocks": (4, 8, 12), "teacher_blocks": (4, 8, 12),  # §2.3 figure
            "data": {"img_size": 224, "n_per_class": 200},  # 224² (§2.1)
            "coreset_budget": 200_000,  # §2.3: 200 K of the 2.2 M pool ("down to 10 %")
            "coreset_clusters": 1000, "coreset_bins": 4, "coreset_warmup_epochs": 3,
            "optim": {"epochs": 100, "batch_size": 256, "lr": 1.5e-4, "warmup_epochs": 5.0},
        },
    }  # fmt: skip


def proportional_blocks(blocks: tuple[int, ...], depth: int, target_depth: int) -> tuple[int, ...]:
    """1-based blocks of a ``depth``-block net mapped to the same depth fractions of a
    ``target_depth``-block one: ``max(1, round(b * target_depth / depth))`` (4/8/12 of 12 -> 3/5/8
    of 8; identity for equal depths)."""
    return tuple(max(1, min(target_depth, round(b * target_depth / depth))) for b in blocks)


class TinyUSFM(Method):
    """Student ViT + projectors + linear decoder, distilled from a frozen teacher.

    ``L = kd_w * sum_l mean_b w_bl [mse(P_l s^spa_l, t^spa_l) + mse(P_l s^freq_l, t^freq_l)]
    + a * L_pix(spa) + b * L_freq(freq)`` with ``w_bl = (1 - lam) + lam * w(c_bl)``.

    Args:
        cfg: a ``TinyUSFMConfig``.
        teacher: the frozen teacher (``build_teacher``), or ``None`` (MIM only).

    Ref: notes §2.3 (reconstruction items 2-3).
    """

    input_norm: ClassVar[tuple[float, float] | None] = None

    def __init__(self, cfg: TinyUSFMConfig, teacher: TeacherInfo | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.data
        self.student = create_backbone(cfg.backbone, in_chans=d.in_chans, img_size=d.img_size)
        self.patch = int(self.student.patch_size)
        self.mask_patch = cfg.mask_patch or self.patch
        self.decoder = nn.Linear(self.student.embed_dim, self.patch**2 * d.in_chans)
        self.student_idx = self._indices(cfg.student_blocks, len(self.student.blocks), "student")
        self.teacher = None if teacher is None else teacher.module.requires_grad_(False)
        self.teacher_norm = None if teacher is None else teacher.input_norm
        self.teacher_idx: list[int] = []
        if self.teacher is not None:
            t_depth = len(self.teacher.blocks)
            t_blocks = cfg.teacher_blocks or proportional_blocks(
                cfg.student_blocks, len(self.student.blocks), t_depth
            )
            self.teacher_blocks = tuple(t_blocks)
            self.teacher_idx = self._indices(self.teacher_blocks, t_depth, "teacher")
            if len(self.teacher_idx) != len(self.student_idx):
                raise ValueError(f"student_blocks {cfg.student_blocks} and teacher_blocks "
                                 f"{cfg.teacher_blocks} must pair up one to one")  # fmt: skip
            dt = int(self.teacher.embed_dim)
            self.projectors = nn.ModuleList(
                nn.Linear(self.student.embed_dim, dt) for _ in self.student_idx
            )

    @staticmethod
    def _indices(blocks: tuple[int, ...], depth: int, who: str) -> list[int]:
        bad = [b for b in blocks if not 1 <= b <= depth]
        if bad or not blocks:
            raise ValueError(f"{who}_blocks {blocks}: 1-based block numbers in [1, {depth}]")
        return [b - 1 for b in blocks]

    @property
    def encoder(self) -> nn.Module:
        """The student ViT (mean pool + fc_norm for ``vit_tiny_usfm``)."""
        return self.student

    @property
    def encoder_kwargs(self) -> dict[str, Any]:
        """``create_backbone`` kwargs that rebuild the student."""
        return {"in_chans": self.cfg.data.in_chans, "img_size": self.cfg.data.img_size}

    def frozen_modules(self) -> list[nn.Module]:
        """The teacher, if any."""
        return [] if self.teacher is None else [self.teacher]

    def teacher_input(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the teacher's recorded input normalisation."""
        if self.teacher_norm is None:
            return x
        return (x - self.teacher_norm[0]) / self.teacher_norm[1]

    def strength(self) -> float:
        """lambda of the dynamic weighting at the current ``progress`` (cosine ramp)."""
        return cosine_ramp(self.progress.fraction, *self.cfg.weight_strength)

    def _teacher_tokens(self, x: torch.Tensor, grid: tuple[int, int]) -> list[torch.Tensor]:
        with torch.no_grad():
            _, hs = self.teacher.forward_intermediates(
                self.teacher_input(x), indices=self.teacher_idx, stop_early=True
            )
        out = []
        for h in hs:
            t = h[:, 1:]
            side = int(round(t.shape[1] ** 0.5))
            if (side, side) != grid:  # other patch grid: resample the teacher token map
                m = t.transpose(1, 2).reshape(t.shape[0], -1, side, side)
                m = F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
                t = m.flatten(2).transpose(1, 2)
            out.append(t)
        return out

    def _distill(
        self, hs: dict[str, list[torch.Tensor]], x: dict[str, torch.Tensor], grid: tuple[int, int]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ts = {k: self._teacher_tokens(x[k], grid) for k in ("spa", "freq")}
        lam, kd, parts, ws = self.strength(), x["spa"].new_zeros(()), {}, []
        for j, proj in enumerate(self.projectors):
            c = consistency(ts["spa"][j], ts["freq"][j], self.cfg.consistency_on)
            w = consistency_weights(c, self.cfg.weighting, temperature=self.cfg.weight_temperature,
                                    gamma=self.cfg.weight_gamma, strength=lam)  # fmt: skip
            per = sum(feature_mse(proj(hs[k][j][:, 1:]), ts[k][j], self.cfg.target_norm)
                      for k in ("spa", "freq"))  # fmt: skip
            kd = kd + (w * per).mean()
            parts[f"consistency_b{self.cfg.student_blocks[j]}"] = c.mean()
            ws.append(w)
        q = torch.quantile(torch.cat(ws), torch.tensor([0.1, 0.5, 0.9]))
        parts.update(w_q10=q[0], w_q50=q[1], w_q90=q[2], strength=torch.tensor(lam))
        return kd, parts

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss on a batch of pool images.

        Args:
            batch: ``image`` (B, C, H, W) in [0, 1] (``index`` is ignored).

        Returns:
            ``{"loss", "kd", "rec_pix", "rec_freq", "consistency_b<l>", "w_q10/50/90",
            "strength"}`` (distillation parts only with a teacher).
        """
        x = batch["image"]
        x_spa, mask = spatial_mask(x, self.cfg.spatial_ratio, self.mask_patch)
        x_freq, _ = frequency_mask(x, *self.cfg.freq_band)
        grid = (x.shape[-2] // self.patch, x.shape[-1] // self.patch)
        inputs = {"spa": x_spa, "freq": x_freq}
        finals, hs = {}, {}
        for k, xi in inputs.items():
            finals[k], hs[k] = self.student.forward_intermediates(xi, indices=self.student_idx)
        target = patchify(x, self.patch)
        pix_mask = self._token_mask(mask, grid)
        rec_pix = masked_mse(self.decoder(finals["spa"][:, 1:]), target, pix_mask)
        recon = unpatchify(self.decoder(finals["freq"][:, 1:]), self.patch, grid)
        rec_freq = frequency_loss(recon, x)
        a, b = self.cfg.rec_weights
        loss = a * rec_pix + b * rec_freq
        out: dict[str, torch.Tensor] = {"rec_pix": rec_pix.detach(), "rec_freq": rec_freq.detach()}
        if self.teacher is not None:
            kd, parts = self._distill(hs, inputs, grid)
            loss = loss + self.cfg.kd_weight * kd
            out.update(kd=kd.detach(), **{k: v.detach() for k, v in parts.items()})
        return {"loss": loss, **out}

    def _token_mask(self, mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Spatial mask (B, L_mask) on the mask grid -> (B, L) on the student's token grid."""
        if self.mask_patch == self.patch:
            return mask
        gh, gw = (
            (grid[0] * self.patch) // self.mask_patch,
            (grid[1] * self.patch) // self.mask_patch,
        )
        m = mask.reshape(-1, 1, gh, gw).float()
        return F.interpolate(m, size=grid, mode="area").flatten(1) > 0


def build(cfg: TinyUSFMConfig) -> TinyUSFM:
    """The TinyUSFM method of ``cfg`` (weights seeded from ``cfg.seed``; teacher loaded)."""
    torch.manual_seed(cfg.seed)
    teacher = build_teacher(cfg)
    return TinyUSFM(cfg, teacher)


def train_data(
    cfg: TinyUSFMConfig, method: TinyUSFM | None = None, *, fit: Callable[..., Any] | None = None
) -> TrainData:
    """The candidate pool reduced to the coreset of ``cfg.coreset`` by ``method``'s teacher.

    Without a teacher (``teacher_backbone="none"``) or with ``coreset="none"`` the whole pool
    is used. The selection is attached to the dataset as ``train.selection``. ``fit``
    (``uslib.engine.fit``) trains the quality rank's proxy student.
    """
    from uslib.methods import tinyusfm_coreset

    pool, provenance, root = pool_dataset(cfg.data)
    selection = None
    if cfg.coreset != "none" and (
        cfg.coreset == "random" or getattr(method, "teacher", None) is not None
    ):
        if method is None:
            method = build(cfg)
        selection = tinyusfm_coreset.select(cfg, method, pool, fit=fit)
    from uslib.methods.tinyusfm_data import Subset

    train = Subset(pool, None if selection is None else selection.indices, selection)
    return TrainData(train, provenance=provenance, data_root=root)


METHODS.register("tinyusfm")(
    lambda: MethodSpec(
        name="tinyusfm",
        config_cls=TinyUSFMConfig,
        build=build,
        train_data=train_data,
        data_needs_fit=True,
    )
)

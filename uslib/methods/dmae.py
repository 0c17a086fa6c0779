"""DMAE: MAE whose student also matches a frozen, partially executed teacher's features.

Bai et al., "Masked Autoencoders Enable Efficient Knowledge Distillers", CVPR 2023 (arXiv
2208.12256); recipe from the reproduction notes ``dmae_uscl_pumit.md`` part A and table D.
Teacher and student see the same visible patches; the teacher (frozen, eval mode) runs only
its first ``teacher_block + 1`` blocks (the paper's partial execution; the released code runs
all of them plus its decoder, D-1: ``teacher_mode="full"``); the student's block
``student_block`` output goes through a Linear projection to the teacher width, and the loss
is the MAE pixel loss plus the L1 distance of the L2-normalised features (§A.4).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from uslib import runs
from uslib.losses.distillation import DISTILL_KINDS, feature_distill
from uslib.methods import METHODS, MethodSpec
from uslib.methods.base import Method, TrainData
from uslib.methods.mae import MAE, MAEConfig
from uslib.methods.mae import train_data as mae_train_data
from uslib.models import create_backbone
from uslib.models.checkpoints import load_official
from uslib.models.heads import MAEDecoder
from uslib.paths import repo_relative, resolve_repo_path

TEACHER_MODES: tuple[str, ...] = ("partial", "full")
"""``partial``: blocks 0..k only (paper, notes D-1); ``full``: the released code's full teacher
and teacher decoder, whose outputs the loss never uses (same loss, more compute)."""

OFFICIAL_TEACHER = "mae_visualize_vit_large.pth"
"""The FAIR MAE ViT-L visualisation checkpoint DMAE distils from (notes §A.2)."""
OFFICIAL_URL = "https://dl.fbaipublicfiles.com/mae/visualize/mae_visualize_vit_large.pth"


@dataclass(frozen=True)
class DMAEConfig(MAEConfig):
    """DMAE settings: the MAE ones (student = ``backbone``) plus the teacher and distillation.

    ``teacher_checkpoint`` names the teacher: an ``encoder.yaml`` written by the pretraining
    driver (or its run folder), e.g. notebook 04's ``04_mae_teacher`` run; an official MAE
    ``.pth`` (loaded by ``load_official(kind="mae")``); or ``None``: a randomly initialised
    teacher (tests only; ``train_data`` warns). Relative paths start at the repository root.
    ``teacher_pretrain_epochs`` is read by notebook 04 only, which pretrains the smoke/cpu
    teacher (an MAE of ``teacher_backbone``) when no checkpoint is given.
    ``teacher_block`` / ``student_block`` are 0-based block indices (the code's
    ``--teacher_aligned_blks_indices`` / ``--aligned_blks_indices``, §A.2).
    """

    teacher_backbone: str = "vit_mae_smoke_large"
    teacher_checkpoint: str | None = None
    teacher_block: int = 2  # 3rd of 4 blocks (0.75 depth, as 18 of 24)
    student_block: int = 2  # 3rd of 4 blocks (0.75 depth, as 9 of 12)
    teacher_mode: str = "partial"  # paper (D-1) | "full": the released code's compute
    distill_weight: float = 1.0  # §A.4: hard-coded 1
    distill_loss: str = "l1"  # §A.4: nn.L1Loss | "l2" (--embedding_distillation_func L2)
    teacher_pretrain_epochs: int = 2  # notebook 04 only: epochs of the MAE teacher it trains

    PRESETS = {
        # cpu: the MAE cpu student (128-d x 4, patch 8) distils block 6 of 8 of the 192-d MAE
        # teacher trained first in notebook 04 (path passed by the notebook), block 3 of 4
        "cpu": {
            **MAEConfig.PRESETS["cpu"],
            "teacher_backbone": "vit_large_patch8_64", "teacher_block": 5, "student_block": 2,
            "teacher_pretrain_epochs": 15,  # the teacher trains longer than the students
        },
        "paper": {
            **MAEConfig.PRESETS["paper"],
            "norm_pix_loss": False,  # D-2: the released pretrain.sh (pre-cleanup script: on)
            "teacher_backbone": "vit_large",  # §A.2: ViT-L/16 teacher
            "teacher_checkpoint": f"checkpoints/{OFFICIAL_TEACHER}",  # §A.2, local file only
            "teacher_block": 17, "student_block": 8,  # §A.2: 18th of 24 -> 9th of 12
        },
    }  # fmt: skip


def load_teacher(cfg: DMAEConfig) -> tuple[nn.Module, str]:
    """Build the teacher encoder named by ``cfg.teacher_checkpoint``; returns (module, source).

    Raises:
        FileNotFoundError: the checkpoint is missing (names the parameter and the file
            expected). ValueError: a uslib encoder of another backbone or input normalisation.
    """
    kw = {"img_size": cfg.data.img_size, "in_chans": cfg.data.in_chans}
    if cfg.teacher_checkpoint is None:
        return create_backbone(cfg.teacher_backbone, **kw), "random"
    path = resolve_repo_path(cfg.teacher_checkpoint)
    if path.is_dir():
        path = path / "checkpoints" / runs.ENCODER_SPEC
    if not path.is_file():
        expected = (
            "an encoder.yaml written by the pretraining driver (e.g. "
            "papermill_runs/<profile>/04_mae_teacher/checkpoints/encoder.yaml)"
            if path.suffix in (".yaml", ".yml")
            else f"the official MAE ViT-L checkpoint {OFFICIAL_TEACHER} ({OFFICIAL_URL}; "
            "uslib never downloads: fetch it and pass its local path)"
        )
        raise FileNotFoundError(
            f"DMAEConfig.teacher_checkpoint (notebook parameter `teacher_checkpoint`) = "
            f"{cfg.teacher_checkpoint!r}: {path} not found; expected {expected}"
        )
    if path.suffix in (".yaml", ".yml"):
        teacher, spec = runs.load_encoder(path, raw=True)
        if spec["backbone"] != cfg.teacher_backbone:
            raise ValueError(
                f"teacher {path} is a {spec['backbone']!r}, but teacher_backbone is "
                f"{cfg.teacher_backbone!r}; set teacher_backbone to match"
            )
        norm = spec.get("input_norm")
        if norm is not None and tuple(norm) != tuple(DMAE.input_norm or ()):
            raise ValueError(f"teacher {path} was trained with input_norm {norm}, not "
                             f"{DMAE.input_norm}")  # fmt: skip
        return teacher, repo_relative(path)
    teacher = create_backbone(cfg.teacher_backbone, **kw)
    load_official(teacher, path, "mae")
    return teacher, repo_relative(path)


class DMAE(MAE):
    """MAE student + frozen teacher's block-``k`` features, distilled through a Linear layer.

    ``L = L_rec + w * mean | n(F_t) - n(W F_s) |`` over the class token and the visible tokens
    (§A.4, D-3), with ``F_t`` the teacher's raw block-``teacher_block`` output (before the final
    norm), ``F_s`` the student's block-``student_block`` output and ``n`` the per-token L2
    normalisation. The mask is drawn once and shared by both (§A.3 step 4).

    Args:
        cfg: a ``DMAEConfig``.

    Ref: DMAE notes §A.2 (layers, projection), §A.3 (step), §A.4 (objective), D-1, D-3, D-5.
    """

    def __init__(self, cfg: DMAEConfig) -> None:
        if cfg.teacher_mode not in TEACHER_MODES:
            raise ValueError(f"teacher_mode must be one of {list(TEACHER_MODES)}, got "
                             f"{cfg.teacher_mode!r}")  # fmt: skip
        if cfg.distill_loss not in DISTILL_KINDS:
            raise ValueError(f"distill_loss must be one of {list(DISTILL_KINDS)}, got "
                             f"{cfg.distill_loss!r}")  # fmt: skip
        super().__init__(cfg)
        self.cfg: DMAEConfig = cfg
        teacher, self.teacher_source = load_teacher(cfg)
        _check_pair(self.backbone, teacher, cfg)
        self.teacher: Any = teacher.requires_grad_(False).eval()
        # one Linear per aligned block, PyTorch's default init (created after MAE init, D-5)
        self.projector = nn.Linear(int(self.backbone.embed_dim), int(teacher.embed_dim))
        self.teacher_decoder: nn.Module | None = None
        if cfg.teacher_mode == "full":  # the code's unused teacher decoder (D-1)
            dec = MAEDecoder(self.grid, self.patch_size, cfg.data.in_chans,
                             int(teacher.embed_dim), cfg.decoder_dim, cfg.decoder_depth,
                             cfg.decoder_heads)  # fmt: skip
            self.teacher_decoder = dec.requires_grad_(False).eval()

    def frozen_modules(self) -> list[nn.Module]:
        """The teacher (and its decoder in ``full`` mode)."""
        return [m for m in (self.teacher, self.teacher_decoder) if m is not None]

    @torch.no_grad()
    def teacher_features(
        self, x: torch.Tensor, ids_keep: torch.Tensor, ids_restore: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher block-``teacher_block`` output on the visible tokens: (B, 1 + K, D_t), fp32.

        ``partial`` runs blocks ``0..teacher_block`` only; ``full`` runs every block, the final
        norm and the teacher decoder (needs ``ids_restore``) and drops their outputs.
        """
        partial = self.cfg.teacher_mode == "partial"
        final, outs = self.teacher.forward_intermediates(
            x, ids_keep, indices=[self.cfg.teacher_block], stop_early=partial
        )
        if not partial and self.teacher_decoder is not None:
            self.teacher_decoder(final, ids_restore)  # computed and unused, as in the code
        return outs[0].float()

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss on ``{"image": (B, C, H, W) in [0, 1]}``; returns ``{"loss", "rec", "distill"}``."""
        x = self.normalise(batch["image"])
        mask, ids_keep, ids_restore = self.draw_mask(x)  # shared by teacher and student
        target = self.teacher_features(x, ids_keep, ids_restore)
        final, (feat,) = self.backbone.forward_intermediates(
            x, ids_keep, indices=[self.cfg.student_block]
        )
        rec = self.pixel_loss(x, self.decoder(final, ids_restore), mask)
        dist = feature_distill(self.projector(feat), target, kind=self.cfg.distill_loss)
        loss = rec + self.cfg.distill_weight * dist
        return {"loss": loss, "rec": rec.detach(), "distill": dist.detach()}


def _check_pair(student: Any, teacher: Any, cfg: DMAEConfig) -> None:
    """Teacher and student must share the patch grid; aligned blocks must exist."""
    if not hasattr(teacher, "forward_intermediates"):
        raise ValueError(f"teacher {cfg.teacher_backbone!r} has no forward_intermediates")
    if int(teacher.patch_size) != int(student.patch_size):
        raise ValueError(
            f"teacher patch {teacher.patch_size} != student patch {student.patch_size}: they "
            f"must see the same visible patches (§A.3 step 4)"
        )
    for name, idx, model in (("teacher_block", cfg.teacher_block, teacher),
                             ("student_block", cfg.student_block, student)):  # fmt: skip
        if not 0 <= idx < len(model.blocks):
            raise ValueError(f"{name}={idx} out of range for depth {len(model.blocks)}")


def build(cfg: DMAEConfig) -> DMAE:
    """The DMAE method of ``cfg`` (student weights seeded from ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    return DMAE(cfg)


def train_data(cfg: DMAEConfig, method: Method | None = None) -> TrainData:
    """MAE's augmented unlabelled frames; checks the built method's teacher first.

    Raises:
        ValueError: the teacher's grid cannot tile ``cfg.data.img_size``.
    """
    if isinstance(method, DMAE):
        p = int(method.teacher.patch_size)
        if cfg.data.img_size % p:
            raise ValueError(f"img_size {cfg.data.img_size} not divisible by teacher patch {p}")
        if method.teacher_source == "random":
            warnings.warn(
                "DMAE teacher is randomly initialised (teacher_checkpoint=None): the "
                "distillation target is meaningless; pass a trained teacher outside tests",
                stacklevel=2,
            )
    return mae_train_data(cfg, method)


METHODS.register("dmae")(
    lambda: MethodSpec(name="dmae", config_cls=DMAEConfig, build=build, train_data=train_data)
)

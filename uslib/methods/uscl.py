"""USCL: semi-supervised video contrastive pretraining with sample-pair generation.

Chen et al., "USCL: Pretraining Deep Ultrasound Image Diagnosis Model through Video Contrastive
Representation Learning", MICCAI 2021 (arXiv 2011.13066); recipe from the reproduction notes
``dmae_uscl_pumit.md`` part B. A ResNet-18 sees two mixed positive views per video (SPG,
``uslib.data.video``); the loss is NT-Xent plus a weighted CE on the labelled videos; the
encoder is then judged by partial fine-tuning on POCUS (5 patient-grouped folds, §B.8;
``uslib.evaluation.pocus``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from uslib.config import DataConfig, EvalConfig, MethodConfig, OptimConfig
from uslib.data.sources import pocus_root, pocus_videos
from uslib.data.synthetic import SyntheticVideos
from uslib.data.transforms import USCL_MEAN, USCL_STD
from uslib.data.video import ConcatVideos, SamplePairDataset, VideoSubset, split_videos
from uslib.losses import masked_cross_entropy, nt_xent
from uslib.methods import METHODS, MethodSpec
from uslib.methods.base import Method, TrainData
from uslib.models import create_backbone
from uslib.models.heads import ProjectionHead

CLASSIFIER_PLACEMENTS: tuple[str, ...] = ("projection", "feature")


@dataclass(frozen=True)
class USCLConfig(MethodConfig):
    """USCL settings; defaults are the smoke profile, ``PRESETS`` hold cpu and paper.

    Fields beyond ``MethodConfig``: projection sizes (§B.3), ``temperature`` and ``ce_weight``
    (§B.6), ``classifier_on`` (``"projection"``: the code's fc on z, §B.3/D-6; ``"feature"``:
    the paper figure's head on the backbone feature), ``num_classes`` of the CE head,
    ``pair_mode`` / ``mix_beta`` / ``max_dist`` of SPG (§B.4), ``label_fraction`` (the label
    rate of ``run.py``, §B.6) and ``protocol_val_fraction`` (validation share of the training
    folds for the honest downstream protocol, D-8).
    """

    backbone: str = "resnet18_smoke"
    proj_hidden: int = 512  # §B.3: Linear(512, 512) -> ReLU -> Linear(512, 256)
    proj_dim: int = 256  # §B.3: out_dim 256
    temperature: float = 0.5  # §B.6: tau
    ce_weight: float = 0.2  # §B.6: lambda of the CE terms ("small value is better")
    classifier_on: str = "projection"  # §B.3, D-6: the code's placement
    num_classes: int = 3  # CE head: 3 synthetic lung patterns (US-4 needs 12, §B.2)
    pair_mode: str = "uscl"  # §B.4 (USCL code) | "meta_uscl" (D-7)
    mix_beta: tuple[float, float] = (0.5, 0.5)  # §B.4 step 4
    max_dist: int = 16  # Meta-USCL only (§B.4)
    label_fraction: float = 1.0  # §B.6: label rate 1 by default
    protocol_val_fraction: float = 0.2  # honest protocol: val share of the training folds
    protocol_shared_run: bool = True  # one fine-tuning run per fold reports both selections
    data: DataConfig = field(
        default_factory=lambda: DataConfig(
            task="lung", img_size=32, n_videos=16, frames_per_video=6, n_per_class=15
        )
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            optimizer="adam", lr=3e-4, weight_decay=1e-4, epochs=2, batch_size=4
        )
    )
    eval: EvalConfig = field(
        default_factory=lambda: EvalConfig(folds=2, epochs=2, lr=1e-3, batch_size=16)
    )

    PRESETS = {
        # cpu: sized for ~8 min on 2 idle cores. At 60 pretraining epochs, 20 fine-tuning epochs
        # and one fine-tuning run per selection rule notebook 02 took 22.1 min (pretraining
        # 470 s, the 5-fold protocol 846 s; papermill_runs/cpu at dfd620f), hence 30 epochs, 10
        # fine-tuning epochs and one run per fold serving both rules (the test rule then trains
        # on the 80 % of the training folds that the val rule trains on, not on all of them).
        # Fine-tuning lr 1e-3: at this scale §B.8's 0.01 wipes out the pretrained last block in
        # the first epochs (measured on one encoder: USCL 61 % vs random 51 % with 0.01, best
        # epoch often 0; 75 % vs 45 % with 1e-3)
        "cpu": {
            "backbone": "resnet18",
            "data": {"img_size": 64, "n_videos": 300, "frames_per_video": 8, "n_per_class": 150},
            "optim": {"epochs": 30, "batch_size": 16, "hold_epochs": 3, "lr": 1e-3},
            "eval": {"folds": 5, "epochs": 10, "lr": 1e-3, "batch_size": 32},
            "protocol_shared_run": True,
        },
        "paper": {
            "backbone": "resnet18",  # §B.3: torchvision ResNet-18, random init
            # §B.5 / §B.7: 224 px, 20 % of videos held out; synthetic fallback: ~22 frames (§B.2)
            "data": {"img_size": 224, "val_fraction": 0.2, "n_videos": 256,
                     "frames_per_video": 22, "n_per_class": 200},
            # §B.7: Adam 3e-4, wd 1e-4, 300 epochs, 32 videos (64 views), 10 constant epochs
            # then cosine to eta_min 0, no warmup
            "optim": {"optimizer": "adam", "lr": 3e-4, "weight_decay": 1e-4, "epochs": 300,
                      "batch_size": 32, "hold_epochs": 10, "schedule": "cosine",
                      "warmup_epochs": 0.0, "min_lr": 0.0},
            # §B.8: 5 folds, Adam 0.01, wd 1e-4, cosine over 100 epochs, batch 32
            "eval": {"folds": 5, "epochs": 100, "lr": 0.01, "weight_decay": 1e-4,
                     "batch_size": 32},
            "protocol_shared_run": False,  # §B.8: the test-selected number trains on all folds
        },
    }  # fmt: skip


class USCL(Method):
    """Backbone + projection head g + classifier; NT-Xent on SPG pairs plus CE on labels.

    ``L = NT-Xent(z1, z2; tau) + w * (CE(fc(z1)[lab], y) + CE(fc(z2)[lab], y))`` with z the
    projection of each view (§B.6). The two views go through the backbone in separate calls,
    as in the code (so BatchNorm statistics are per view), but each only once: the code's
    second forward pass for the CE term (D-9) is not repeated, which changes nothing in value.
    A batch without labelled video gives ``ce == 0`` (the code's NaN, D-9, is not reproduced).

    Args:
        cfg: a ``USCLConfig``.

    Model selection: the encoder of the epoch with the lowest validation NT-Xent on the
    held-out videos is kept (§B.7); input normalisation ``(x - 0.5) / 0.25`` (§B.8).

    Ref: USCL §B.3 (model), §B.6 (objective), §B.7 (selection), D-6, D-9.
    """

    select_on: ClassVar[tuple[str, str] | None] = ("val_nt_xent", "min")
    input_norm: ClassVar[tuple[float, float] | None] = (USCL_MEAN, USCL_STD)

    def __init__(self, cfg: USCLConfig) -> None:
        super().__init__()
        if cfg.classifier_on not in CLASSIFIER_PLACEMENTS:
            raise ValueError(
                f"classifier_on must be one of {list(CLASSIFIER_PLACEMENTS)}, got "
                f"{cfg.classifier_on!r}"
            )
        self.cfg = cfg
        self.backbone = create_backbone(cfg.backbone, in_chans=cfg.data.in_chans)
        feat = int(self.backbone.num_features)
        self.projector = ProjectionHead(feat, cfg.proj_hidden, cfg.proj_dim)
        cls_in = cfg.proj_dim if cfg.classifier_on == "projection" else feat
        self.classifier = nn.Linear(cls_in, cfg.num_classes)

    @property
    def encoder(self) -> nn.Module:
        """The ResNet backbone (its pooled 512-d feature is what downstream tasks use)."""
        return self.backbone

    @property
    def encoder_kwargs(self) -> dict[str, Any]:
        """``create_backbone`` kwargs that rebuild ``encoder`` (stored with its checkpoint)."""
        return {"in_chans": self.cfg.data.in_chans}

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x)  # (B, 512) pooled feature
        return h, self.projector(h)  # z: (B, proj_dim), not normalised

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss on a batch of SPG items.

        Args:
            batch: ``view1``, ``view2`` (B, 1, S, S); ``label1``, ``label2`` (B,) with -1 for
                unlabelled videos.

        Returns:
            ``{"loss", "nt_xent", "ce"}``; ``ce`` is the unweighted sum of both views' CE.
        """
        h1, z1 = self._embed(batch["view1"])
        h2, z2 = self._embed(batch["view2"])
        con = nt_xent(z1, z2, self.cfg.temperature)
        c1, c2 = (z1, z2) if self.cfg.classifier_on == "projection" else (h1, h2)
        ce = masked_cross_entropy(self.classifier(c1), batch["label1"].long()) + (
            masked_cross_entropy(self.classifier(c2), batch["label2"].long())
        )
        loss = con + self.cfg.ce_weight * ce
        return {"loss": loss, "nt_xent": con.detach(), "ce": ce.detach()}

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """NT-Xent on the un-mixed augmented pair ``(raw1, raw2)`` (model selection, §B.7)."""
        con = nt_xent(
            self._embed(batch["raw1"])[1], self._embed(batch["raw2"])[1], self.cfg.temperature
        )
        return {"loss": con, "nt_xent": con}


def build(cfg: USCLConfig) -> USCL:
    """The USCL method of ``cfg`` (weights seeded from ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    return USCL(cfg)


def train_data(
    cfg: USCLConfig, method: USCL | None = None, *, extra_videos: Mapping[str, Any] | None = None
) -> TrainData:
    """SPG datasets of the pretraining videos and of the 20 % held-out videos (§B.7).

    Videos: synthetic lung videos (``cfg.data.data_root=None``), or the POCUS clips of a POCUS
    layout at ``cfg.data.data_root``, used *unlabelled*: the downstream folds hold the same
    patients, so their labels must not reach pretraining (USCL pretrains on US-4, §B.2, which
    is not public).

    Args:
        extra_videos: more collections to pretrain on, keyed by their provenance tag (e.g.
            ``{"synthetic:lung": SyntheticVideos(...)}``, the synthetic + real mix of
            ``benchmarks/real_levers.py``). They join the training split only; the held-out
            validation videos stay those of the main collection.

    Returns:
        ``TrainData`` with ``val=None`` when ``cfg.data.val_fraction == 0`` and provenance
        ``("synthetic:<task>",)`` or ``("real:pocus",)``, followed by the extra tags.

    Raises:
        FileNotFoundError: ``data_root`` is set but holds no POCUS layout.
    """
    d, root = cfg.data, pocus_root(cfg.data.data_root)
    if root is None:
        coll: Any = SyntheticVideos(d.task, "train", d.n_videos, d.frames_per_video, d, d.seed)
    else:
        coll = pocus_videos(root, img_size=d.img_size)
    tr, va = split_videos(len(coll), d.val_fraction, seed=d.seed)
    kw: dict[str, Any] = dict(
        img_size=d.img_size, pair_mode=cfg.pair_mode, beta=cfg.mix_beta, max_dist=cfg.max_dist,
        label_fraction=cfg.label_fraction if root is None else 0.0,
    )  # fmt: skip
    extra = dict(extra_videos or {})
    train_videos: Any = VideoSubset(coll, tr)
    if extra:
        train_videos = ConcatVideos(train_videos, *extra.values())
    train = SamplePairDataset(train_videos, seed=cfg.seed, **kw)
    val = SamplePairDataset(VideoSubset(coll, va), seed=cfg.seed + 1, **kw) if va else None
    provenance = (f"synthetic:{d.task}",) if root is None else ("real:pocus",)
    return TrainData(
        train, val, provenance=provenance + tuple(extra),
        data_root=None if root is None else str(root),
    )  # fmt: skip


METHODS.register("uscl")(
    lambda: MethodSpec(name="uscl", config_cls=USCLConfig, build=build, train_data=train_data)
)

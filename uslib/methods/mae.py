"""MAE: masked autoencoding with a ViT that encodes only the visible patches.

He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022, as run inside DMAE
(Bai et al., CVPR 2023, arXiv 2208.12256); recipe from the reproduction notes
``dmae_uscl_pumit.md`` part A (A.2 architecture, A.3 one step, A.4 objective, A.5 optimiser).
Per image, a random ``mask_ratio`` of the patches is hidden (argsort of uniform noise), the
encoder sees the visible ones (plus the class token), a light decoder fills the rest with mask
tokens and predicts every patch's pixels, and the loss is the MSE on the masked patches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from uslib.config import CPU_FRAMES_PER_CLIP, DataConfig, MethodConfig, OptimConfig
from uslib.data.sources import pocus_frame_array
from uslib.data.synthetic import SyntheticConfig, SyntheticStills
from uslib.data.transforms import random_resized_crop_box, resize
from uslib.data.video import item_rng
from uslib.losses.reconstruction import masked_mse
from uslib.methods import METHODS, MethodSpec
from uslib.methods.base import Method, TrainData
from uslib.models import create_backbone
from uslib.models.heads import MAEDecoder
from uslib.ops.masking import num_kept, patchify, random_token_mask, unpatchify

MAE_MEAN, MAE_STD = 0.449, 0.226
"""ImageNet mean/std averaged over RGB: the §A.3 input normalisation for grey images."""


@dataclass(frozen=True)
class MAEConfig(MethodConfig):
    """MAE settings; defaults are the smoke profile, ``PRESETS`` hold cpu and paper.

    Fields beyond ``MethodConfig``: ``mask_ratio`` (§A.3 step 2), ``norm_pix_loss`` (per-patch
    normalised targets, §A.4), the decoder size (§A.2), the crop scale of the augmentation
    (§A.3 step 1) and ``tasks``, the synthetic tasks whose unlabelled train-split stills are
    pretrained on (``data.n_per_class`` each class of each task).
    """

    backbone: str = "vit_mae_smoke"
    mask_ratio: float = 0.75  # §A.5: 0.75 by default
    norm_pix_loss: bool = True  # MAE's best setting; DMAE's released script has it off (D-2)
    decoder_dim: int = 32  # §A.2: 512 at paper scale
    decoder_depth: int = 1  # §A.2: 8
    decoder_heads: int = 2  # §A.2: 16
    crop_scale: tuple[float, float] = (0.2, 1.0)  # §A.3 step 1: RandomResizedCrop scale
    tasks: tuple[str, ...] = ("lung",)
    data: DataConfig = field(
        default_factory=lambda: DataConfig(task="lung", img_size=32, n_per_class=4)
    )
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(
            lr=1.5e-3, betas=(0.9, 0.95), weight_decay=0.05, epochs=2, batch_size=4
        )
    )

    PRESETS = {
        # cpu: 64 px, patch 8 (8 x 8 = 64 tokens vs 224/16's 14 x 14), ViT 128-d x 4, decoder
        # 64-d x 2 (half the encoder width, as 512 of ViT-L's 1024); 3 tasks x 150 stills per
        # class (1650); batch 64, 10 epochs (250 steps, ~30 s on 2 cores). lr 1.5e-3, 1 warmup
        # epoch: §A.5's 2.4e-3 is for batch 4096 and 100 epochs; linearly scaled to batch 64
        # (3.75e-5) nothing is learnt in 250 steps.
        "cpu": {
            "backbone": "vit_small_patch8_64", "decoder_dim": 64, "decoder_depth": 2,
            "decoder_heads": 2, "tasks": ("lung", "breast", "liver"),
            "data": {"img_size": 64, "n_per_class": 150, "frames_per_clip": CPU_FRAMES_PER_CLIP},
            "optim": {"epochs": 10, "batch_size": 64, "warmup_epochs": 1.0},
        },
        "paper": {
            "backbone": "vit_base",  # §A.2: ViT-B/16, sin-cos pos, MAE init
            "decoder_dim": 512, "decoder_depth": 8, "decoder_heads": 16,  # §A.2
            "mask_ratio": 0.75,  # §A.5
            "tasks": ("lung", "breast", "liver", "thyroid", "fetal_head"),
            "data": {"img_size": 224, "n_per_class": 2000},  # §A.3: 224 px (ImageNet absent)
            # §A.5: AdamW (0.9, 0.95), wd 0.05, blr 1.5e-4 -> 2.4e-3 at batch 4096 (here 512 x
            # 8 accumulation), 20 warmup epochs then half-cosine to 0, 100 epochs
            "optim": {"optimizer": "adamw", "lr": 2.4e-3, "min_lr": 0.0, "betas": (0.9, 0.95),
                      "weight_decay": 0.05, "warmup_epochs": 20.0, "epochs": 100,
                      "batch_size": 512, "accumulate_steps": 8},
        },
    }  # fmt: skip


class MAEImages(Dataset):
    """Unlabelled grey images with MAE's augmentation: random resized crop + horizontal flip.

    Randomness comes from ``item_rng(seed, epoch, index)`` only (epoch set by ``set_epoch``).

    Args:
        images: (N, H, W) uint8 frames.
        size: output side.
        scale: crop area fraction range (§A.3 step 1: (0.2, 1.0)).
        seed: augmentation seed.

    Shape: item ``{"image": (1, size, size) float32 in [0, 1]}``. Ref: DMAE notes §A.3 step 1.
    """

    def __init__(
        self, images: np.ndarray, size: int, scale: tuple[float, float], seed: int = 0
    ) -> None:
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be (N, H, W) uint8, got {images.shape} {images.dtype}")
        self.images, self.size, self.scale = images, int(size), scale
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops ``__getitem__`` draws."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = item_rng(self.seed, self.epoch, i)
        img = torch.from_numpy(self.images[i]).float().div_(255.0)[None]
        h, w = img.shape[-2:]
        top, left, ch, cw = random_resized_crop_box(h, w, rng, self.scale, (3 / 4, 4 / 3))
        x = resize(img[:, top : top + ch, left : left + cw], self.size)
        if rng.random() < 0.5:
            x = x.flip(-1)
        return {"image": x.contiguous()}


class MAE(Method):
    """ViT encoder on the visible patches + ``MAEDecoder``; MSE on the masked patches.

    ``L_rec = (1/|M|) sum_{i in M} mean_p (yhat_i - T_i)^2`` with ``T = patchify(x)`` of the
    normalised image, each patch normalised to zero mean / unit variance when
    ``norm_pix_loss`` (§A.4). The mask is drawn per image with ``random_token_mask``
    (``K = int(L (1 - r))`` visible patches, §A.3 step 2).

    Args:
        cfg: an ``MAEConfig``.

    Ref: DMAE notes §A.2-A.4 (the MAE part of DMAE's model).
    """

    input_norm: ClassVar[tuple[float, float] | None] = (MAE_MEAN, MAE_STD)

    def __init__(self, cfg: MAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone: Any = create_backbone(cfg.backbone, **self.encoder_kwargs)
        p = int(self.backbone.patch_size)
        if cfg.data.img_size % p:
            raise ValueError(f"img_size {cfg.data.img_size} is not divisible by patch size {p}")
        self.patch_size, self.grid = p, (cfg.data.img_size // p, cfg.data.img_size // p)
        check_mask_ratio(cfg.mask_ratio, self.grid[0] * self.grid[1])
        self.decoder = MAEDecoder(
            self.grid, p, cfg.data.in_chans, int(self.backbone.embed_dim), cfg.decoder_dim,
            cfg.decoder_depth, cfg.decoder_heads,
        )  # fmt: skip

    @property
    def encoder(self) -> nn.Module:
        """The ViT (class token after the final norm is its pooled feature)."""
        return self.backbone

    @property
    def encoder_kwargs(self) -> dict[str, Any]:
        """``create_backbone`` kwargs that rebuild ``encoder``."""
        return {"img_size": self.cfg.data.img_size, "in_chans": self.cfg.data.in_chans}

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, C, H, W) -> the encoder's input ``(x - mean) / std`` (§A.3)."""
        mean, std = self.input_norm or (0.0, 1.0)
        return (images - mean) / std

    def draw_mask(
        self, x: torch.Tensor, mask_ratio: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-image random mask of the patch grid of ``x`` (B, C, H, W) (global torch RNG).

        Returns:
            ``(mask (B, L) bool True = masked, ids_keep (B, K), ids_restore (B, L))``.
        """
        ratio = self.cfg.mask_ratio if mask_ratio is None else mask_ratio
        n = (x.shape[-2] // self.patch_size) * (x.shape[-1] // self.patch_size)
        check_mask_ratio(ratio, n)
        return random_token_mask(x.shape[0], n, ratio, device=x.device)

    def pixel_loss(self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``masked_mse`` of the decoder output (B, L, P) against ``patchify(x)``."""
        return masked_mse(pred, patchify(x, self.patch_size), mask, self.cfg.norm_pix_loss)

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss on a batch ``{"image": (B, C, H, W) in [0, 1]}``; returns ``{"loss", "rec"}``."""
        x = self.normalise(batch["image"])
        mask, ids_keep, ids_restore = self.draw_mask(x)
        tokens = self.backbone.forward_encoder(x, ids_keep)  # (B, 1 + K, D)
        rec = self.pixel_loss(x, self.decoder(tokens, ids_restore), mask)
        return {"loss": rec, "rec": rec.detach()}

    @torch.no_grad()
    def reconstruct(
        self, images: torch.Tensor, mask_ratio: float, seed: int = 0
    ) -> dict[str, torch.Tensor]:
        """Masked input, reconstruction and original in [0, 1] pixel space (for figures).

        With ``norm_pix_loss`` the prediction is de-normalised with each target patch's own
        mean and std (the MAE demo's convention); visible patches show the input.

        Args:
            images: (B, C, H, W) in [0, 1].
            mask_ratio: fraction of patches hidden.
            seed: seed of the mask (a local generator; the global RNG is untouched).

        Returns:
            ``{"masked", "reconstruction", "pasted", "original"}`` each (B, C, H, W), plus
            ``"mask"`` (B, L) bool.
        """
        was = self.training
        self.eval()
        x = self.normalise(images)
        n = self.grid[0] * self.grid[1]
        check_mask_ratio(mask_ratio, n)
        g = torch.Generator().manual_seed(seed)
        mask, ids_keep, ids_restore = random_token_mask(len(x), n, mask_ratio, g)
        pred = self.decoder(self.backbone.forward_encoder(x, ids_keep), ids_restore)
        target = patchify(x, self.patch_size)
        if self.cfg.norm_pix_loss:
            mu, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            pred = pred * (var + 1e-6).sqrt() + mu
        m = mask.unsqueeze(-1).to(pred.dtype)
        mean, std = self.input_norm or (0.0, 1.0)
        out = {
            "masked": target * (1 - m) + m * (-mean / std),  # masked patches shown black
            "reconstruction": pred,
            "pasted": target * (1 - m) + pred * m,
            "original": target,
        }
        res = {k: (unpatchify(v, self.patch_size, self.grid) * std + mean).clamp(0, 1)
               for k, v in out.items()}  # fmt: skip
        self.train(was)
        return {**res, "mask": mask}


def check_mask_ratio(mask_ratio: float, num_tokens: int) -> int:
    """Visible patches ``int(L (1 - r))`` (notes D-4); raises when none would stay visible."""
    keep = num_kept(num_tokens, mask_ratio)
    if keep < 1:
        raise ValueError(
            f"mask_ratio {mask_ratio} leaves no visible patch of {num_tokens}: use a finer "
            f"patch grid or a lower ratio"
        )
    return keep


def build(cfg: MAEConfig) -> MAE:
    """The MAE method of ``cfg`` (weights seeded from ``cfg.seed``)."""
    torch.manual_seed(cfg.seed)
    return MAE(cfg)


def pretrain_images(cfg: MAEConfig) -> tuple[np.ndarray, tuple[str, ...], str | None]:
    """The unlabelled pretraining frames of ``cfg``: (N, H, W) uint8, provenance, data root.

    Synthetic (``cfg.data.data_root=None``): train-split stills of every task in ``cfg.tasks``
    (``n_per_class`` per class; labels unused; notebook 07 evaluates on the test split). A POCUS
    layout at ``data_root``: the extracted frames of its clips (all, or ``data.frames_per_clip``
    evenly spaced per clip), unlabelled.
    """
    d = cfg.data
    if d.data_root is not None:
        images, root = pocus_frame_array(d.data_root, d.img_size, d.frames_per_clip)
        return images, ("real:pocus",), str(root)
    syn = SyntheticConfig(img_size=d.img_size)
    images = []
    for task in cfg.tasks:
        ds = SyntheticStills(task, "train", d.n_per_class, syn, d.seed)
        images += [ds.raw(i)["image"] for i in range(len(ds))]
    return np.stack(images).astype(np.uint8), tuple(f"synthetic:{t}" for t in cfg.tasks), None


def train_data(cfg: MAEConfig, method: Method | None = None) -> TrainData:
    """Augmented unlabelled frames (``MAEImages``); no validation set (the last epoch is kept)."""
    images, provenance, root = pretrain_images(cfg)
    train = MAEImages(images, cfg.data.img_size, cfg.crop_scale, seed=cfg.seed)
    return TrainData(train, provenance=provenance, data_root=root)


METHODS.register("mae")(
    lambda: MethodSpec(name="mae", config_cls=MAEConfig, build=build, train_data=train_data)
)

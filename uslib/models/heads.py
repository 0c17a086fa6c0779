"""Heads composed with the backbones: projection/prediction MLPs, DINO/iBOT, MAE decoder, linear
classifier and a light segmentation decoder over ``forward_features`` maps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from uslib.ops.masking import restore_tokens
from uslib.ops.pos_embed import sincos_2d


def _mlp(dims: Sequence[int], batch_norm: bool, act: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:  # no norm/activation after the output layer
            if batch_norm:
                layers.append(nn.BatchNorm1d(b))
            layers.append(act())
    return nn.Sequential(*layers)


class ProjectionHead(nn.Module):
    """SimCLR/USCL projection head g: Linear -> [BN] -> ReLU -> ... -> Linear.

    Args:
        in_dim: backbone feature width (512 for ResNet-18).
        hidden_dim: hidden width (512 in USCL).
        out_dim: projection width (256 in USCL).
        num_layers: number of Linear layers (2 in USCL).
        batch_norm: BatchNorm1d after hidden layers (off in USCL).

    Shape: (B, in_dim) -> (B, out_dim). Ref: USCL notes §B.3 (Linear 512->512, ReLU, 512->256).
    """

    def __init__(
        self,
        in_dim: int = 512,
        hidden_dim: int = 512,
        out_dim: int = 256,
        num_layers: int = 2,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = _mlp(dims, batch_norm, nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        return self.layers(x)


class PredictionHead(nn.Module):
    """BYOL/SimSiam-style predictor: Linear -> BN -> ReLU -> Linear.

    Shape: (B, in_dim) -> (B, out_dim).
    """

    def __init__(self, in_dim: int = 256, hidden_dim: int = 1024, out_dim: int = 256) -> None:
        super().__init__()
        self.layers = _mlp([in_dim, hidden_dim, out_dim], True, nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        return self.layers(x)


class DINOHead(nn.Module):
    """DINO/iBOT head: MLP -> L2-normalise -> weight-normalised linear layer (no bias).

    Args:
        in_dim: token width (768 for VMamba-S stage 4).
        out_dim: number of prototypes K (8192 in OpenUS).
        hidden_dim: MLP width (2048).
        bottleneck_dim: width before the last layer (256).
        num_layers: MLP layers (3: in -> 2048 -> 2048 -> 256, GELU, no norm).
        norm_last_layer: freeze the weight-norm gain g at 1 (``norm_last_layer=True``).

    Shape: (..., in_dim) -> (..., out_dim); works on (B, D) class tokens and (B, N, D) patches.
    Ref: OpenUS notes §1.2.2 (iBOTHead).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 8192,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        self.mlp = _mlp(dims, False, nn.GELU)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim) prototype logits."""
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class LinearHead(nn.Module):
    """Linear classifier for probing, optionally after a non-affine BatchNorm (MAE linear probe).

    Args:
        in_dim: feature width.
        num_classes: outputs.
        batch_norm: BatchNorm1d(affine=False, eps=1e-6) before the Linear (MAE linprobe).
        init_std: weight init N(0, std) (0.01 in OpenUS ``eval_linear``), bias 0.

    Shape: (B, in_dim) -> (B, num_classes).
    """

    def __init__(
        self, in_dim: int, num_classes: int, batch_norm: bool = False, init_std: float = 0.01
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim, affine=False, eps=1e-6) if batch_norm else nn.Identity()
        self.linear = nn.Linear(in_dim, num_classes)
        nn.init.normal_(self.linear.weight, std=init_std)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, num_classes) logits."""
        return self.linear(self.norm(x))


class MAEDecoder(nn.Module):
    """MAE decoder: embed visible tokens, insert mask tokens, unshuffle, fixed sin-cos, blocks,
    predict the pixels of every patch.

    Submodule names mirror MAE's ``decoder_*`` keys (``embed``, ``mask_token``, ``pos_embed``,
    ``blocks``, ``norm``, ``pred``) so official decoders load by renaming only.

    Args:
        grid_size: (h, w) token grid of the encoder input.
        patch_size: p.
        out_chans: image channels predicted per pixel.
        embed_dim: encoder width.
        decoder_dim: decoder width (512 in MAE/DMAE).
        depth: decoder blocks (8).
        num_heads: decoder heads (16).

    Ref: DMAE notes §A.2 (decoder 512-d, 8 blocks, 16 heads, linear to p*p*3), §A.3 step 4.
    """

    def __init__(
        self,
        grid_size: tuple[int, int],
        patch_size: int,
        out_chans: int = 1,
        embed_dim: int = 768,
        decoder_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.grid_size, self.patch_size = tuple(grid_size), patch_size
        self.embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        table = sincos_2d(decoder_dim, grid_size, cls_token=True).unsqueeze(0)
        self.pos_embed = nn.Parameter(table, requires_grad=False)  # fixed sin-cos, as in MAE
        self.blocks = nn.ModuleList(
            Block(decoder_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm)
            for _ in range(depth)
        )
        self.norm = LayerNorm(decoder_dim)
        self.pred = nn.Linear(decoder_dim, patch_size * patch_size * out_chans)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(
        self,
        tokens: torch.Tensor,
        ids_restore: torch.Tensor | None = None,
        grid_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Predict patch pixels.

        Args:
            tokens: (B, 1 + K, embed_dim) encoder output, class token first.
            ids_restore: (B, L) from the mask; ``None`` when nothing was masked (K = L).
            grid_size: token grid if it differs from the one built for (sin-cos recomputed).

        Returns:
            (B, L, p*p*out_chans) per-patch predictions in raster order (class token dropped);
            compare with ``patchify(images, p)``.
        """
        x = self.embed(tokens)
        cls, vis = x[:, :1], x[:, 1:]
        if ids_restore is not None:
            vis = restore_tokens(vis, ids_restore, self.mask_token)
        grid = self.grid_size if grid_size is None else tuple(grid_size)
        pos: torch.Tensor = self.pos_embed
        if grid != self.grid_size:
            pos = sincos_2d(pos.shape[-1], grid, cls_token=True).to(x.device).unsqueeze(0)
        if vis.shape[1] != pos.shape[1] - 1:
            raise ValueError(f"{vis.shape[1]} tokens do not fill the {grid} grid")
        x = torch.cat([cls, vis], dim=1) + pos.to(x.dtype)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))[:, 1:]


def _groups(ch: int) -> int:
    return math.gcd(8, ch)


def _conv_gn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
        nn.GroupNorm(_groups(cout), cout),
        nn.ReLU(inplace=True),
    )


class SegDecoder(nn.Module):
    """Light segmentation decoder for frozen encoders (FPN-lite fusion + progressive upsampling).

    Each map gets a 1x1 lateral conv to ``dim`` channels; all maps are resized to the finest one
    and summed (a ViT's equal-stride maps, or a pyramid's); ``x2`` upsampling stages
    (bilinear + 3x3 conv + GN + ReLU) bring stride 16/32 maps down to stride 4; a 1x1 conv
    gives class logits, bilinearly resized to the input size. Works on any backbone exposing
    ``forward_features`` + ``feature_info`` (ViT, VMamba, ResNet).

    Args:
        feature_info: the backbone's list of ``{"num_chs", "reduction"}``.
        num_classes: output channels (including background).
        dim: decoder width.
        dropout: Dropout2d before the classifier (0.1 as in TinyUSFM's FPN head).

    Ref: TinyUSFM notes §2.4 (frozen/fine-tuned FPN head on blocks 3/5/7/11), OpenUS §1.5.
    """

    def __init__(
        self,
        feature_info: Sequence[dict[str, int]],
        num_classes: int,
        dim: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if not feature_info:
            raise ValueError("feature_info is empty")
        self.feature_info = [dict(f) for f in feature_info]
        self.lateral = nn.ModuleList(_conv_gn_relu(f["num_chs"], dim, 1) for f in feature_info)
        self.min_reduction = min(f["reduction"] for f in feature_info)
        n_up = max(0, int(round(math.log2(self.min_reduction))) - 2)
        self.up = nn.ModuleList(_conv_gn_relu(dim, dim, 3) for _ in range(n_up))
        self.drop = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(dim, num_classes, 1)

    def forward(
        self, features: Sequence[torch.Tensor], size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Feature maps -> logits.

        Args:
            features: ``backbone.forward_features(x)``, shallow to deep, (B, C_i, H_i, W_i).
            size: output (H, W); ``None`` -> finest map size times its reduction.

        Returns:
            (B, num_classes, H, W) logits.
        """
        if len(features) != len(self.lateral):
            raise ValueError(
                f"got {len(features)} feature maps, feature_info lists {len(self.lateral)}"
            )
        finest = max(features, key=lambda f: f.shape[-2] * f.shape[-1]).shape[-2:]
        maps = []
        for f, lat in zip(features, self.lateral):
            y = lat(f)
            if y.shape[-2:] != finest:
                y = F.interpolate(y, size=finest, mode="bilinear", align_corners=False)
            maps.append(y)
        x = torch.stack(maps).sum(dim=0)
        for stage in self.up:
            x = stage(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        logits = self.cls(self.drop(x))
        if size is None:
            size = (finest[0] * self.min_reduction, finest[1] * self.min_reduction)
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

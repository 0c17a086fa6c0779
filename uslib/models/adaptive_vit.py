"""SPAD-ViT (PUMIT): a spatially adaptive 3-D patch embedding and an EVA-02-style ViT.

One set of weights serves 2-D images, isotropic volumes and anisotropic (thick-slice) volumes:

* ``aniso_d = floor(log2(clip(z_spacing / xy_spacing, 1, 32)))`` counts the in-plane-only x2
  downsamplings needed before voxels are roughly isotropic (2-D images: depth 1 with z spacing
  1e8, so ``aniso_d = 5``);
* the patch embedding is a 3-D conv with kernel = stride = p (16) on every axis; at run time its
  depth stride becomes ``d = max(p >> aniso_d, 1)`` and groups of ``p / d`` consecutive depth taps
  of the kernel are **summed**, so a kernel learned on volumes applies to slices unchanged;
* tokens form a (D/d, H/p, W/p) grid with a learned 3-D position volume resampled to it (area
  when shrinking, trilinear when enlarging) and an optional 3-D rotary embedding on q and k.

Ref: PUMIT notes §C.2 (aniso_d), §C.3 (SPAD conv, effective patch table), §C.6 (SPAD-ViT), §C.7
(MIM: mask tokens carry no absolute position).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm, trunc_normal_
from timm.models.eva import EvaBlock
from torch import nn

from uslib.models import BACKBONES
from uslib.models.vit import TokenBackbone, resolve_indices
from uslib.ops.anisotropy import depth_patch, reduce_depth_kernel
from uslib.ops.masking import gather_tokens
from uslib.ops.pos_embed import resample_pos_embed_3d


class SPADPatchEmbed(nn.Module):
    """Spatially adaptive patch embedding: Conv3d(k = s = p) whose depth taps are summed.

    Args:
        in_chans: input channels.
        embed_dim: token width.
        patch_size: p, isotropic kernel and stride of the stored 3-D weight.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor, aniso: int) -> torch.Tensor:
        """(B, C, D, H, W) -> (B, E, D/d, H/p, W/p) with ``d = depth_patch(p, aniso)``."""
        p = self.patch_size
        d = depth_patch(p, aniso)
        if x.ndim != 5 or x.shape[2] % d or x.shape[3] % p or x.shape[4] % p:
            raise ValueError(
                f"expected (B, C, D, H, W) with D divisible by {d} (aniso_d={aniso}) and H, W "
                f"by {p}; got {tuple(x.shape)}"
            )
        w = self.proj.weight if d == p else reduce_depth_kernel(self.proj.weight, d)
        return F.conv3d(x, w, self.proj.bias, stride=(d, p, p))


def rope_3d(grid: Sequence[int], head_dim: int) -> torch.Tensor:
    """EVA-02-compatible "2+1-D" rotary table for a (d, h, w) token grid, tokens row-major.

    Rotation pairs (interleaved channels) ``0 .. n/2-1`` turn with the row index and
    ``n/2 .. n-1`` with the column index, frequencies ``10000^(-2k/n)`` (n = head_dim/2 pairs);
    a depth angle ``z * 2333^(-(2i+1)/n)``, each frequency used by two consecutive pairs, is
    added to every pair. [NOT VERIFIED] against PUMIT's ``rope.py``: written from the notes' text.

    Returns:
        (d*h*w, 2 * head_dim): ``cat([sin, cos])`` in timm's interleaved layout.

    Ref: PUMIT notes §C.6 item 2.
    """
    if head_dim % 4:
        raise ValueError(f"3-D RoPE needs head_dim divisible by 4, got {head_dim}")
    n = head_dim // 2
    d, h, w = (int(s) for s in grid)
    zz, yy, xx = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
    k = torch.arange(n // 2, dtype=torch.float64)
    f_hw = 10000.0 ** (-2 * k / n)  # (n/2,)
    f_z = (2333.0 ** (-(2 * k + 1) / n)).repeat_interleave(2)[:n]  # (n,)
    ang_hw = torch.cat([yy.reshape(-1, 1) * f_hw, xx.reshape(-1, 1) * f_hw], dim=1)
    ang = ang_hw + zz.reshape(-1, 1).double() * f_z  # (L, n)
    ang = ang.repeat_interleave(2, dim=1).float()  # one angle per channel pair
    return torch.cat([ang.sin(), ang.cos()], dim=1)


class SPADViT(TokenBackbone, nn.Module):
    """SPAD-ViT: SPAD patch embedding + class token + EVA-02 blocks (SwiGLU, sub-LN, q/v bias).

    2-D images (B, C, H, W) follow the uslib backbone contract (depth-1 volumes, aniso_d 5);
    volumes (B, C, D, H, W) go through ``forward_volume`` / ``forward_encoder(..., aniso=...)``.

    Args:
        in_chans: input channels (1 = grey).
        patch_size: isotropic 3-D patch p (16 in PUMIT).
        embed_dim, depth, num_heads: transformer size (B: 768/12/12, L: 1024/24/16).
        mlp_hidden: SwiGLU hidden width; ``None`` -> ``dim * 8 // 3`` (2048 for B).
        pos_grid: learned 3-D position volume (5, 10, 10) in PUMIT (160 px, 5 depth tokens).
        rope: apply the 3-D rotary embedding to q and k of patch tokens.
        use_mask_token: create the MIM ``mask_token`` (BEiT-style masking via ``mask=``).
        out_indices: blocks exposed by ``forward_features`` (default 4 evenly spaced).
        drop_path_rate: stochastic depth.
    """

    def __init__(
        self,
        in_chans: int = 1,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_hidden: int | None = None,
        pos_grid: Sequence[int] = (5, 10, 10),
        rope: bool = True,
        use_mask_token: bool = False,
        out_indices: Sequence[int] | None = None,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_chans, self.num_features, self.embed_dim = in_chans, embed_dim, embed_dim
        self.num_heads, self.use_rope, self.global_pool = num_heads, rope, "token"
        self.patch_embed = SPADPatchEmbed(in_chans, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *pos_grid))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if use_mask_token else None
        hidden = embed_dim * 8 // 3 if mlp_hidden is None else mlp_hidden
        norm = partial(LayerNorm, eps=1e-6)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            EvaBlock(
                embed_dim,
                num_heads,
                qkv_fused=False,  # separate q/k/v projections, q and v biases (EVA-02)
                mlp_ratio=(hidden + 0.5) / embed_dim,  # int(dim * ratio) == hidden exactly
                swiglu_mlp=True,
                scale_mlp=True,  # sub-LN inside the SwiGLU MLP
                scale_attn_inner=True,  # sub-LN before the attention output projection
                num_prefix_tokens=1,
                drop_path=dpr[i],
                norm_layer=norm,
            )
            for i in range(depth)
        )
        self.norm = norm(embed_dim)
        self.fc_norm = nn.Identity()
        self._set_contract(patch_size, embed_dim, out_indices)
        for t in (self.cls_token, self.pos_embed, self.mask_token):
            if t is not None:
                trunc_normal_(t, std=0.02)

    @staticmethod
    def _as_volume(x: torch.Tensor, aniso: int | None) -> tuple[torch.Tensor, int]:
        if x.ndim == 4:  # 2-D image = depth-1 volume with z spacing 1e8 -> aniso_d 5
            return x.unsqueeze(2), 5
        if x.ndim == 5 and aniso is not None:
            return x, aniso
        raise ValueError(f"expected (B, C, H, W), or (B, C, D, H, W) with aniso; got {x.shape}")

    def encode(
        self,
        x: torch.Tensor,
        aniso: int | None = None,
        ids_keep: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        indices: int | Sequence[int] | None = None,
        stop_early: bool = False,
    ) -> tuple[torch.Tensor | None, list[torch.Tensor], tuple[int, int, int]]:
        """Tokens through the blocks (see ``forward_encoder``) -> (final, intermediates, grid)."""
        vol, a = self._as_volume(x, aniso)
        emb = self.patch_embed(vol, a)  # (B, E, d, h, w)
        grid = (int(emb.shape[2]), int(emb.shape[3]), int(emb.shape[4]))
        pos = resample_pos_embed_3d(self.pos_embed, grid)
        tokens = (emb + pos).flatten(2).transpose(1, 2)  # (B, L, E)
        rope = (
            rope_3d(grid, self.embed_dim // self.num_heads).to(x.device) if self.use_rope else None
        )
        if mask is not None:  # BEiT/PUMIT MIM: mask tokens carry no absolute position
            if self.mask_token is None:
                raise ValueError("build with use_mask_token=True to encode with mask=")
            fill = self.mask_token.to(tokens.dtype).expand_as(tokens)
            tokens = torch.where(mask.reshape(*tokens.shape[:2], 1), fill, tokens)
        if ids_keep is not None:
            tokens = gather_tokens(tokens, ids_keep)
            if rope is not None:
                rope = rope[ids_keep].unsqueeze(1)  # (B, 1, K, 2*hd), broadcast over heads
        h = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        take = resolve_indices(len(self.blocks), indices)
        last = max(take) if (stop_early and take) else len(self.blocks) - 1
        outs = []
        for i in range(last + 1):
            h = self.blocks[i](h, rope=rope)
            if i in take:
                outs.append(h)
        final = self.norm(h) if last == len(self.blocks) - 1 else None
        return final, outs, grid

    def forward_intermediates(
        self,
        x: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        indices: int | Sequence[int] | None = None,
        *,
        norm: bool = False,
        stop_early: bool = False,
        aniso: int | None = None,
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """As ``ViT.forward_intermediates``; volumes need ``aniso`` (their aniso_d)."""
        final, outs, _ = self.encode(x, aniso, ids_keep, None, indices, stop_early)
        return final, [self.norm(o) for o in outs] if norm else outs

    def forward_encoder(
        self,
        x: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
        aniso: int | None = None,
    ) -> torch.Tensor:
        """Encode images or volumes into (B, 1 + K, E) tokens after the final norm, cls first.

        Args:
            x: (B, C, H, W) image or (B, C, D, H, W) volume (then ``aniso`` is required).
            ids_keep: (B, K) visible tokens (MAE-style; PUMIT ViT-L's first 18 blocks).
            mask: (B, L) bool, True = replace by ``mask_token`` (PUMIT ViT-B: all blocks see
                the full sequence; masked tokens get position from RoPE only).
            aniso: aniso_d of a volume batch (batches are bucketed by aniso_d, §C.4).
        """
        final, _, _ = self.encode(x, aniso, ids_keep, mask, indices=[])
        assert final is not None
        return final

    def forward_volume(self, x: torch.Tensor, aniso: int) -> torch.Tensor:
        """(B, C, D, H, W) volume with aniso_d ``aniso`` -> (B, E) class token after the norm."""
        return self.pool(self.forward_encoder(x, aniso=aniso))


def _spad(defaults: dict[str, Any], kwargs: dict[str, Any]) -> SPADViT:
    return SPADViT(**{**defaults, **kwargs})


@BACKBONES.register()
def spad_vit_smoke(**kwargs: Any) -> SPADViT:
    """Tiny SPAD-ViT for tests: patch 8, dim 32, depth 2, 2 heads, pos grid (2, 4, 4)."""
    return _spad(dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, pos_grid=(2, 4, 4)), kwargs)


@BACKBONES.register()
def spad_vit_base(**kwargs: Any) -> SPADViT:
    """SPAD-ViT-B (PUMIT): 768 / 12 / 12, SwiGLU 2048, pos (5, 10, 10), 3-D RoPE. Ref: §C.6."""
    return _spad(dict(embed_dim=768, depth=12, num_heads=12), kwargs)


@BACKBONES.register()
def spad_vit_large(**kwargs: Any) -> SPADViT:
    """SPAD-ViT-L (PUMIT): 1024 / 24 / 16, SwiGLU 2730. Ref: PUMIT notes §C.6."""
    return _spad(dict(embed_dim=1024, depth=24, num_heads=16), kwargs)


@BACKBONES.register()
def spad_tokenizer(**kwargs: Any) -> nn.Module:
    """SPAD-VT tokenizer (``uslib.models.spad_tokenizer.SPADTokenizer``; paper size by default:
    128/256/512, strides 4/2/2, 1024 x 512 soft codebook). Ref: PUMIT notes §C.5."""
    from uslib.models.spad_tokenizer import SPADTokenizer

    return SPADTokenizer(**kwargs)


@BACKBONES.register()
def spad_vit_cpu(**kwargs: Any) -> SPADViT:
    """SPAD-ViT for the 2-core cpu profile: patch 16, 192 / 6 / 3, pos grid (2, 4, 4)."""
    return _spad(dict(embed_dim=192, depth=6, num_heads=3, pos_grid=(2, 4, 4)), kwargs)

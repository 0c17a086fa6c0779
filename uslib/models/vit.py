"""Vision Transformers on timm: MAE/DMAE ViTs, the TinyUSFM student and the USFM (BEiT) teacher.

Every class here keeps timm's parameter names, so official state dicts map onto it with prefix
stripping only (see ``uslib.models.checkpoints``), and adds the ``uslib`` backbone contract:

* ``forward(x)`` -> pooled (B, D): class token after the final norm (``global_pool="token"``, MAE
  linear probe) or mean of patch tokens followed by ``fc_norm`` (``"avg"``: TinyUSFM, USFM);
* ``forward_features(x)`` -> raw outputs of ``out_indices`` blocks (default: 4 evenly spaced)
  reshaped to (B, D, H/p, W/p), described by ``feature_info`` (reduction = patch size p);
* ``forward_encoder(x, ids_keep)`` -> (B, 1 + K, D) tokens after the final token norm, class token
  at index 0, then the visible patch tokens in ``ids_keep`` order (MAE); ``ids_keep=None`` keeps
  all L tokens in raster order. Mean-pooling variants have no final token norm (their norm is the
  ``fc_norm`` applied after pooling, as in the official checkpoints);
* ``forward_intermediates(x, ids_keep, indices)`` -> (final tokens, raw block outputs incl. cls);
* ``last_block()`` -> the last transformer block plus the final norms (for partial fine-tuning).

Images are grey, so ``in_chans`` defaults to 1 for every name; the paper parameter counts are those
of ``in_chans=3`` (the official checkpoints' RGB patch embedding is summed to one channel on load).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from timm.models.beit import Beit
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from uslib.models import BACKBONES
from uslib.ops.masking import gather_tokens
from uslib.ops.pos_embed import resample_pos_embed, sincos_2d


def default_out_indices(depth: int, n: int = 4) -> tuple[int, ...]:
    """``n`` evenly spaced 0-based block indices ending at the last block (12 -> 2, 5, 8, 11)."""
    return tuple(sorted({max(0, math.ceil((i + 1) * depth / n) - 1) for i in range(n)}))


def resolve_indices(depth: int, indices: int | Sequence[int] | None) -> list[int]:
    """Block indices: ``None`` all, an int n the last n, a sequence as given (negatives allowed)."""
    if indices is None:
        return list(range(depth))
    if isinstance(indices, int):
        if not 0 <= indices <= depth:
            raise ValueError(f"cannot take the last {indices} of {depth} blocks")
        return list(range(depth - indices, depth))
    out = [i + depth if i < 0 else i for i in indices]
    bad = [i for i, j in zip(indices, out) if not 0 <= j < depth]
    if bad:
        raise ValueError(f"block indices {bad} out of range for depth {depth}")
    return out


class TokenBackbone:
    """Mixin implementing the backbone contract for class-token transformers.

    Subclasses provide ``_embed(x) -> (patch tokens + pos (B, L, D), grid)``,
    ``_prefix(batch) -> (B, 1, D)`` and ``_block(i, tokens, ids_keep)``; they own ``blocks``,
    ``norm``, ``fc_norm``, ``global_pool`` and ``out_indices``.
    """

    blocks: Any
    norm: nn.Module
    fc_norm: nn.Module
    global_pool: str
    out_indices: tuple[int, ...]
    patch_size: int

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        raise NotImplementedError

    def _prefix(self, batch: int) -> torch.Tensor:
        raise NotImplementedError

    def _block(self, i: int, h: torch.Tensor, ids_keep: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward_intermediates(
        self,
        x: torch.Tensor,
        ids_keep: torch.Tensor | None = None,
        indices: int | Sequence[int] | None = None,
        *,
        norm: bool = False,
        stop_early: bool = False,
    ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        """Encode (visible) tokens and return block outputs.

        Args:
            x: images (B, C, H, W).
            ids_keep: (B, K) visible patch indices (MAE); ``None`` = all tokens.
            indices: blocks whose outputs to return (0-based; int n = last n; None = all).
            norm: apply the final token norm to the returned intermediates.
            stop_early: skip blocks after the last requested index (DMAE's partially executed
                teacher, notes D-1); the final output is then ``None``.

        Returns:
            ``(final, intermediates)``: final (B, 1 + K, D) tokens after the final norm (or None),
            intermediates a list of raw block outputs (B, 1 + K, D), class token included (DMAE
            distils them with the class token, notes §A.2).
        """
        depth = len(self.blocks)
        take = resolve_indices(depth, indices)
        last = max(take) if (stop_early and take) else depth - 1
        tokens, _ = self._embed(x)
        if ids_keep is not None:
            tokens = gather_tokens(tokens, ids_keep)
        h = torch.cat([self._prefix(tokens.shape[0]).to(tokens.dtype), tokens], dim=1)
        outs = []
        for i in range(last + 1):
            h = self._block(i, h, ids_keep)
            if i in take:
                outs.append(self.norm(h) if norm else h)
        final = self.norm(h) if last == depth - 1 else None
        return final, outs

    def forward_encoder(
        self, x: torch.Tensor, ids_keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """MAE-style encoding of the visible tokens: (B, C, H, W) -> (B, 1 + K, D), cls first."""
        final, _ = self.forward_intermediates(x, ids_keep, indices=[])
        assert final is not None
        return final

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, 1 + K, D) encoder tokens -> (B, D): class token, or patch mean + ``fc_norm``."""
        pooled = tokens[:, 1:].mean(dim=1) if self.global_pool == "avg" else tokens[:, 0]
        return self.fc_norm(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> pooled features (B, num_features)."""
        return self.pool(self.forward_encoder(x))

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Images -> raw token grids of ``out_indices`` blocks, each (B, D, H/p, W/p)."""
        _, outs = self.forward_intermediates(x, indices=self.out_indices, stop_early=True)
        gh, gw = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        return [o[:, 1:].transpose(1, 2).reshape(o.shape[0], -1, gh, gw) for o in outs]

    def last_block(self) -> nn.Module:
        """The last transformer block plus the final norms (``norm``, ``fc_norm``) as one module."""
        return nn.ModuleList([self.blocks[-1], self.norm, self.fc_norm])

    def _set_contract(self, patch_size: int, dim: int, out_indices: Sequence[int] | None) -> None:
        depth = len(self.blocks)
        self.patch_size = patch_size
        self.out_indices = (
            default_out_indices(depth)
            if out_indices is None
            else tuple(resolve_indices(depth, out_indices))
        )
        self.feature_info = [{"num_chs": dim, "reduction": patch_size} for _ in self.out_indices]


def _mae_init(module: nn.Module) -> None:
    """MAE init: xavier-uniform Linear (bias 0), LayerNorm (1, 0). Ref: DMAE notes §A.2."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ViT(TokenBackbone, VisionTransformer):  # type: ignore[misc]  # contract overrides
    """timm ``VisionTransformer`` with a class token and the uslib backbone contract.

    Args:
        img_size: input size the position table is built for; other sizes divisible by the patch
            size are accepted (learned tables are resampled bicubically, sin-cos recomputed).
        patch_size: p (reduction of every feature map).
        in_chans: input channels (1 = grey ultrasound).
        embed_dim, depth, num_heads, mlp_ratio: transformer size (qkv bias, LayerNorm eps 1e-6).
        global_pool: ``"token"`` (class token after ``norm``) or ``"avg"`` (mean + ``fc_norm``).
        pos_embed: ``"learn"`` (trained table) or ``"sincos"`` (MAE's fixed 2-D table, frozen).
        weight_init: ``"timm"`` or ``"mae"`` (xavier Linear/patch-embed, N(0, 0.02) cls token).
        out_indices: blocks exposed by ``forward_features`` (default 4 evenly spaced).
        drop_path_rate: stochastic depth.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        global_pool: Literal["token", "avg"] = "token",
        pos_embed: str = "learn",
        weight_init: str = "timm",
        out_indices: Sequence[int] | None = None,
        drop_path_rate: float = 0.0,
    ) -> None:
        if global_pool not in ("token", "avg") or pos_embed not in ("learn", "sincos"):
            raise ValueError(f"bad global_pool={global_pool!r} or pos_embed={pos_embed!r}")
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=0,
            global_pool=global_pool,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            drop_path_rate=drop_path_rate,
        )
        self.patch_embed.strict_img_size = False  # any size divisible by p (pos table resampled)
        self.pos_embed_type = pos_embed
        self._set_contract(patch_size, embed_dim, out_indices)
        cls, pos = self._tables()
        if weight_init == "mae":
            self.apply(_mae_init)
            w = self.patch_embed.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.normal_(cls, std=0.02)
        elif weight_init != "timm":
            raise ValueError(f"weight_init must be 'timm' or 'mae', got {weight_init!r}")
        if pos_embed == "sincos":  # fixed sin-cos; not learned, as in MAE
            table = sincos_2d(embed_dim, self.patch_embed.grid_size, cls_token=True)
            with torch.no_grad():
                pos.copy_(table.unsqueeze(0))
            pos.requires_grad_(False)

    def _tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(class token (1, 1, D), position table (1, 1 + L, D)); both always exist here."""
        assert self.cls_token is not None and self.pos_embed is not None
        return self.cls_token, self.pos_embed

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        p = self.patch_size
        if x.ndim != 4 or x.shape[1] != self.in_chans or x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(
                f"expected (B, {self.in_chans}, H, W) with H, W divisible by {p}; "
                f"got {tuple(x.shape)}"
            )
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        tokens = self.patch_embed(x)
        return tokens + self._patch_pos(grid).to(tokens.dtype), grid

    def _patch_pos(self, grid: tuple[int, int]) -> torch.Tensor:
        pos = self._tables()[1]
        built = tuple(self.patch_embed.grid_size)
        if grid == built:
            return pos[:, 1:]
        if self.pos_embed_type == "sincos":
            return sincos_2d(self.embed_dim, grid).to(pos.device).unsqueeze(0)
        return resample_pos_embed(pos, grid, built, num_prefix_tokens=1)[:, 1:]

    def _prefix(self, batch: int) -> torch.Tensor:
        cls, pos = self._tables()
        return (cls + pos[:, :1]).expand(batch, -1, -1)

    def _block(self, i: int, h: torch.Tensor, ids_keep: torch.Tensor | None) -> torch.Tensor:
        blk: Any = self.blocks[i]
        return blk(h)


def _subset_rel_bias(attn: Any, ids_keep: torch.Tensor) -> torch.Tensor:
    """A BEiT block's relative-position bias for [cls] + visible tokens: (B, nH, K+1, K+1)."""
    full = attn._get_rel_pos_bias()[0]  # (nH, L+1, L+1), index 0 = cls
    cls = torch.zeros_like(ids_keep[:, :1])
    idx = torch.cat([cls, ids_keep + 1], dim=1)  # (B, K+1)
    return full[:, idx.unsqueeze(2), idx.unsqueeze(1)].permute(1, 0, 2, 3)


def _beit_block_with_bias(blk: Any, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """A timm BEiT block forward with an explicit (B, nH, N, N) attention bias (visible tokens)."""
    attn = blk.attn
    b, n, _ = x.shape
    y = blk.norm1(x)
    qkv_bias = None
    if attn.q_bias is not None:  # BEiT: q and v biases, no k bias
        qkv_bias = torch.cat((attn.q_bias, torch.zeros_like(attn.v_bias), attn.v_bias))
    qkv = F.linear(y, attn.qkv.weight, qkv_bias).reshape(b, n, 3, attn.num_heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    drop = attn.attn_drop.p if attn.training else 0.0
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=drop)
    y = attn.proj_drop(attn.proj(y.transpose(1, 2).reshape(b, n, -1)))
    x = x + blk.drop_path1(y if blk.gamma_1 is None else blk.gamma_1 * y)
    y = blk.mlp(blk.norm2(x))
    return x + blk.drop_path2(y if blk.gamma_2 is None else blk.gamma_2 * y)


class USFMViT(TokenBackbone, Beit):  # type: ignore[misc]  # contract overrides
    """USFM teacher: BEiT-style ViT with per-block relative position bias and LayerScale.

    q/v biases (no k bias), no absolute position embedding, LayerScale ``init_values`` (0.1), mean
    pooling + ``fc_norm``. The relative-position tables fix the token grid, so inputs must have
    ``img_size`` (tables are resized on checkpoint load instead). ``forward_encoder(x, ids_keep)``
    gathers each block's bias for the visible tokens, so MAE-style encoding works here too.

    Ref: OpenUS/TinyUSFM notes §2.1 (teacher), §2.2 (checkpoint keys).
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 1,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        init_values: float = 0.1,
        out_indices: Sequence[int] | None = None,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=0,
            global_pool="avg",
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            init_values=init_values,
            use_abs_pos_emb=False,
            use_rel_pos_bias=True,
            drop_path_rate=drop_path_rate,
        )
        self._set_contract(patch_size, embed_dim, out_indices)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        built = tuple(self.patch_embed.img_size)
        if x.ndim != 4 or x.shape[1] != self.in_chans or tuple(x.shape[-2:]) != built:
            raise ValueError(
                f"USFM ViT built for (B, {self.in_chans}, {built[0]}, {built[1]}) (relative "
                f"position tables fix the grid); got {tuple(x.shape)}: build it with "
                f"img_size={x.shape[-1]}"
            )
        tokens = self.patch_embed(x)
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed[:, 1:]
        return tokens, tuple(self.patch_embed.grid_size)

    def _prefix(self, batch: int) -> torch.Tensor:
        cls = self.cls_token if self.pos_embed is None else self.cls_token + self.pos_embed[:, :1]
        return cls.expand(batch, -1, -1)

    def _block(self, i: int, h: torch.Tensor, ids_keep: torch.Tensor | None) -> torch.Tensor:
        blk: Any = self.blocks[i]
        if ids_keep is None:
            return blk(h)
        return _beit_block_with_bias(blk, h, _subset_rel_bias(blk.attn, ids_keep))


def _build(cls: type, defaults: dict[str, Any], kwargs: dict[str, Any]) -> Any:
    return cls(**{**defaults, **kwargs})


@BACKBONES.register()
def vit_smoke(**kwargs: Any) -> ViT:
    """Tiny ViT for tests: 32 px, patch 8, dim 32, depth 2, 2 heads, class-token pooling."""
    cfg = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    return _build(ViT, cfg, kwargs)


@BACKBONES.register()
def vit_tiny_usfm(**kwargs: Any) -> ViT:
    """TinyUSFM student: ViT(192, 12 layers, **12 heads**, p16), mean pool + fc_norm.

    5,524,416 parameters with ``in_chans=3`` (notes §2.1). Not timm's 3-head ViT-Ti.
    """
    cfg = dict(embed_dim=192, depth=12, num_heads=12, global_pool="avg")
    return _build(ViT, cfg, kwargs)


@BACKBONES.register()
def vit_small(**kwargs: Any) -> ViT:
    """MAE-style ViT-S/16 (384, 12, 6 heads), fixed sin-cos pos, MAE init (DMAE small demo)."""
    cfg = dict(embed_dim=384, depth=12, num_heads=6, pos_embed="sincos", weight_init="mae")
    return _build(ViT, cfg, kwargs)


@BACKBONES.register()
def vit_base(**kwargs: Any) -> ViT:
    """MAE/DMAE ViT-B/16 (768, 12, 12 heads), fixed sin-cos pos, MAE init. Ref: notes §A.2."""
    cfg = dict(embed_dim=768, depth=12, num_heads=12, pos_embed="sincos", weight_init="mae")
    return _build(ViT, cfg, kwargs)


@BACKBONES.register()
def vit_large(**kwargs: Any) -> ViT:
    """MAE/DMAE ViT-L/16 teacher (1024, 24, 16 heads), fixed sin-cos pos. Ref: notes §A.2."""
    cfg = dict(embed_dim=1024, depth=24, num_heads=16, pos_embed="sincos", weight_init="mae")
    return _build(ViT, cfg, kwargs)


@BACKBONES.register()
def usfm_vit_base(**kwargs: Any) -> USFMViT:
    """USFM teacher: BEiT ViT-B/16, rel-pos bias, LayerScale 0.1, mean pool (~85.8 M, §2.1)."""
    return _build(USFMViT, dict(drop_path_rate=0.1), kwargs)


@BACKBONES.register()
def usfm_smoke(**kwargs: Any) -> USFMViT:
    """Tiny USFM-style BEiT for tests: 64 px (fixed grid), patch 8, dim 32, depth 2, 2 heads."""
    cfg = dict(img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    return _build(USFMViT, cfg, kwargs)


@BACKBONES.register()
def vit_mae_smoke(**kwargs: Any) -> ViT:
    """Tiny MAE-style ViT for tests (DMAE smoke student): 32 px, patch 4 (64 tokens), dim 32,
    depth 4, 2 heads, fixed sin-cos, MAE init."""
    cfg = dict(img_size=32, patch_size=4, embed_dim=32, depth=4, num_heads=2,
               pos_embed="sincos", weight_init="mae")  # fmt: skip
    return _build(ViT, cfg, kwargs)


@BACKBONES.register()
def vit_mae_smoke_large(**kwargs: Any) -> ViT:
    """Tiny MAE-style teacher for tests (DMAE smoke): 32 px, patch 4, dim 48, depth 4, 2 heads."""
    cfg = dict(img_size=32, patch_size=4, embed_dim=48, depth=4, num_heads=2,
               pos_embed="sincos", weight_init="mae")  # fmt: skip
    return _build(ViT, cfg, kwargs)


@BACKBONES.register()
def vit_small_patch8_64(**kwargs: Any) -> ViT:
    """DMAE cpu student: ViT-B/16 scaled to 64 px: patch 8 (8x8 tokens), dim 128, depth 4,
    4 heads, fixed sin-cos, MAE init (half the teacher's depth, 2/3 of its width; notes §A.2)."""
    cfg = dict(img_size=64, patch_size=8, embed_dim=128, depth=4, num_heads=4,
               pos_embed="sincos", weight_init="mae")  # fmt: skip
    return _build(ViT, cfg, kwargs)


@BACKBONES.register()
def vit_large_patch8_64(**kwargs: Any) -> ViT:
    """DMAE cpu teacher: ViT-L/16 scaled to 64 px: patch 8, dim 192, depth 8, 3 heads, fixed
    sin-cos, MAE init (the student's partner, twice its depth as ViT-L/ViT-B; notes §A.2)."""
    cfg = dict(img_size=64, patch_size=8, embed_dim=192, depth=8, num_heads=3,
               pos_embed="sincos", weight_init="mae")  # fmt: skip
    return _build(ViT, cfg, kwargs)

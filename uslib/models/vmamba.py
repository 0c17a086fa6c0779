"""VMamba (v2, SS2D with a 4-direction cross-scan): the OpenUS backbone, in pure PyTorch.

Architecture per OpenUS notes §1.1 (VMamba-S, ``vssm_small_0229``): two-conv stem (patch 4),
four stages of VSS blocks ``x + DropPath(SS2D(LN(x)))``, ``x + DropPath(MLP(LN(x)))`` with MLP ratio
4, conv3x3/s2 + LN patch merging between stages, a LayerNorm on every stage output, and a global
average pool of the last map as the pooled feature. SS2D (``v05_noz``): in_proj (no gate z),
depthwise 3x3 conv + SiLU, four scan directions (row-major, column-major and their reverses) each
with its own selective-scan parameters, d_state = 1, cross-merge by summation, LayerNorm, out_proj.
The scan itself is :func:`uslib.ops.selective_scan.selective_scan_fn` (mamba-ssm on GPU when
installed, the chunked pure-PyTorch path otherwise). Tensors are channel-last (B, H, W, C) inside
the stages (upstream is channel-first; the maths is the same).

Ref: OpenUS (Zheng et al., arXiv:2511.11510) notes §1.1 (backbone), §1.3.1 (implicit attention);
VMamba (Liu et al., arXiv:2401.10166).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

from uslib.models import BACKBONES
from uslib.ops.selective_scan import selective_scan_attention, selective_scan_fn
from uslib.ops.ss2d_scan import (
    K_DIRECTIONS,
    fused_scan_available,
    scan_orders,
    ss2d_scan_fused,
)

__all__ = ["VMamba", "SS2D", "VSSBlock", "cross_scan", "cross_merge", "scan_orders"]


def cross_scan(x: Tensor) -> Tensor:
    """Unfold a map into the four scan sequences: (B, C, H, W) -> (B, 4, C, H*W).

    Equals ``x.flatten(2)[..., scan_orders(H, W)[k]]`` for direction k.
    """
    k0 = x.flatten(2)
    k1 = x.transpose(2, 3).flatten(2)
    return torch.stack([k0, k1, k0.flip(-1), k1.flip(-1)], dim=1)


def cross_merge(y: Tensor, H: int, W: int) -> Tensor:
    """Sum the four direction outputs back in row-major order: (B, 4, C, H*W) -> (B, C, H*W).

    The adjoint of :func:`cross_scan`, so ``cross_merge(cross_scan(x)) = 4 x`` (flattened).
    """
    b, _, c, L = y.shape
    rm = y[:, 0] + y[:, 2].flip(-1)
    cm = y[:, 1] + y[:, 3].flip(-1)  # column-major order: (W, H) grid
    return rm + cm.view(b, c, W, H).transpose(2, 3).reshape(b, c, L)


class SS2D(nn.Module):
    """2-D selective scan (VMamba v2 ``v05_noz``) on channel-last maps (B, H, W, dim).

    Args:
        dim: model width d. d_inner = ssm_ratio * d channels are scanned.
        d_state: SSM state size N (1 in OpenUS).
        ssm_ratio: d_inner / d (2 in VMamba-S).
        dt_rank: rank R of the dt projection; None -> ceil(d / 16).
        d_conv: depthwise conv kernel (3).
        dt_min, dt_max, dt_floor: initial softplus(dt bias) ~ logU(dt_min, dt_max), floored.
        scan_impl: ``"auto"`` (CUDA: mamba-ssm's kernel when installed; CPU float32: the fused
            four-direction kernel :func:`uslib.ops.ss2d_scan.ss2d_scan_fused` when numba imports;
            else the chunked PyTorch scan), ``"fused"`` (that kernel, raising if it cannot run),
            ``"fast"`` (the chunked PyTorch scan) or ``"ref"`` (the sequential definition).

    Ref: OpenUS notes §1.1 "SS2D forward" steps 1-5.
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 1,
        ssm_ratio: float = 2.0,
        dt_rank: int | None = None,
        d_conv: int = 3,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_floor: float = 1e-4,
        scan_impl: str = "auto",
    ) -> None:
        super().__init__()
        di, R, K = int(ssm_ratio * dim), dt_rank or math.ceil(dim / 16), K_DIRECTIONS
        self.d_inner, self.d_state, self.dt_rank, self.scan_impl = di, d_state, R, scan_impl
        self.in_proj = nn.Linear(dim, di, bias=False)
        self.conv2d = nn.Conv2d(di, di, d_conv, padding=d_conv // 2, groups=di, bias=False)
        self.x_proj_weight = nn.Parameter(torch.empty(K, R + 2 * d_state, di))  # -> dt, B, C
        self.dt_projs_weight = nn.Parameter(torch.empty(K, di, R))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, di))
        self.A_logs = nn.Parameter(torch.empty(K * di, d_state))  # A = -exp(A_logs)
        self.Ds = nn.Parameter(torch.empty(K * di))
        self.out_norm = nn.LayerNorm(di)
        self.out_proj = nn.Linear(di, dim, bias=False)
        self._dt_range = (dt_min, dt_max, dt_floor)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self) -> None:
        """Mamba "v0" init: softplus(dt bias) ~ logU(dt_min, dt_max), A_logs = log(1..N), D = 1."""
        dt_min, dt_max, floor = self._dt_range
        nn.init.uniform_(self.x_proj_weight, -(self.d_inner**-0.5), self.d_inner**-0.5)
        nn.init.uniform_(self.dt_projs_weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        u = torch.rand_like(self.dt_projs_bias)
        dt = torch.exp(u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        n = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_logs.device)
        self.A_logs.copy_(n.log().expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def ssm_inputs(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Scan inputs for a map x (B, H, W, dim).

        Returns:
            u (B, 4*d_inner, L), delta (B, 4*d_inner, L) before bias/softplus, and the grouped
            B, C (B, 4, N, L), all in scan order of each direction.
        """
        b, H, W, _ = x.shape
        u = F.silu(self.conv2d(self.in_proj(x).permute(0, 3, 1, 2)))  # (B, di, H, W)
        xs = cross_scan(u)  # (B, 4, di, L)
        # broadcast matmuls (K, c, d) @ (B, K, d, L): no permuted copy of xs or of the output
        # (einsum made both: ~10% of a no-grad forward of vmamba_small on CPU)
        proj = torch.matmul(self.x_proj_weight, xs)  # (B, K, R + 2N, L)
        dts, Bs, Cs = proj.split([self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.matmul(self.dt_projs_weight, dts)  # (B, K, d_inner, L)
        return xs.flatten(1, 2), dts.flatten(1, 2), Bs.contiguous(), Cs.contiguous()

    def _use_fused(self, x: Tensor) -> bool:
        if self.scan_impl == "fused":
            if not fused_scan_available() or x.device.type != "cpu" or self.d_state != 1:
                raise RuntimeError("scan_impl='fused' needs numba, CPU tensors and d_state 1")
            return True
        return (
            self.scan_impl == "auto"
            and self.d_state == 1
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and fused_scan_available()
        )

    def _forward_fused(self, x: Tensor) -> Tensor:
        """Steps 2-5 with the fused CPU kernel, channel-last throughout: the projections act on
        the unpermuted map and the kernel walks each direction's order itself, so there are no
        cross-scan copies, flips or merge (same values as the PyTorch path up to rounding)."""
        b, H, W, _ = x.shape
        L, di, K, R = H * W, self.d_inner, K_DIRECTIONS, self.dt_rank
        u = F.silu(self.conv2d(self.in_proj(x).permute(0, 3, 1, 2)))  # channels-last memory
        u = u.permute(0, 2, 3, 1).reshape(b, L, di)  # a view when the conv kept that layout
        proj = F.linear(u, self.x_proj_weight.reshape(K * (R + 2), di)).view(b, L, K, R + 2)
        dts, Bs, Cs = proj.split([R, 1, 1], dim=-1)
        # delta[k, :, t] = dt_projs_weight[k] @ dts[:, t, k] + dt_projs_bias[k], the bias added by
        # the matmul (baddbmm) rather than by a pass of its own
        delta = torch.baddbmm(
            self.dt_projs_bias[:, None],
            dts.permute(2, 0, 1, 3).reshape(K, b * L, R),
            self.dt_projs_weight.transpose(1, 2),
        ).view(K, b, L, di)
        A = -torch.exp(self.A_logs)
        y = ss2d_scan_fused(u, delta, A, Bs[..., 0], Cs[..., 0], self.Ds, None, H, W)
        return self.out_proj(self.out_norm(y.view(b, H, W, di)))

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, dim) -> (B, H, W, dim)."""
        if self._use_fused(x):
            return self._forward_fused(x)
        b, H, W, _ = x.shape
        u, delta, Bs, Cs = self.ssm_inputs(x)
        y = selective_scan_fn(
            u,
            delta,
            -torch.exp(self.A_logs),
            Bs,
            Cs,
            self.Ds,
            delta_bias=self.dt_projs_bias.flatten(),
            delta_softplus=True,
            impl=self.scan_impl,
        )
        y = cross_merge(y.view(b, K_DIRECTIONS, self.d_inner, H * W), H, W)
        return self.out_proj(self.out_norm(y.transpose(1, 2).reshape(b, H, W, self.d_inner)))

    def implicit_attention(self, x: Tensor) -> Tensor:
        """Raw implicit attention summed over the 4 directions, in row-major token order.

        For direction k, ``attn_k[i, j] = mean_d C_i B_j exp(sum_{j<t<=i} dt_t A_d)`` (i >= j in
        that direction's order), re-indexed to row-major tokens and summed over k.

        Args:
            x: the block's normalised input (B, H, W, dim).

        Returns:
            (B, L, L), L = H*W; entry [i, j] = attention of query token i on key token j.

        Ref: OpenUS notes §1.3.1 steps 1-6.
        """
        _, H, W, _ = x.shape
        _, delta, Bs, Cs = self.ssm_inputs(x)
        attn = selective_scan_attention(
            delta,
            -torch.exp(self.A_logs),
            Bs,
            Cs,
            delta_bias=self.dt_projs_bias.flatten(),
            delta_softplus=True,
        )  # (B, 4, L, L) in each direction's scan order
        inv = scan_orders(H, W, x.device).argsort(dim=1)  # row-major token -> scan step
        am = attn[:, 0][:, inv[0]][:, :, inv[0]]
        for k in range(1, K_DIRECTIONS):
            am = am + attn[:, k][:, inv[k]][:, :, inv[k]]
        return am


class VSSBlock(nn.Module):
    """VSS block: ``x + DropPath(SS2D(LN(x)))`` then ``x + DropPath(MLP(LN(x)))``; (B, H, W, C).

    Ref: OpenUS notes §1.1 (VSS block row).
    """

    def __init__(
        self, dim: int, drop_path: float = 0.0, mlp_ratio: float = 4.0, **ss2d_kw: Any
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = SS2D(dim, **ss2d_kw)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        x = x + self.drop_path(self.op(self.norm(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class _ChannelLastConv(nn.Module):
    """Conv3x3/s2 (+ LayerNorm) on channel-last maps: the stem halves and patch merging."""

    def __init__(self, cin: int, cout: int, norm: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(cout) if norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class VMamba(nn.Module):
    """VMamba v2 backbone following the uslib backbone contract (see ``uslib.models``).

    Args:
        dims: stage widths (4 ints) or the first width (doubled per stage).
        depths: blocks per stage.
        in_chans: input channels (1 = grey ultrasound).
        img_size: nominal input size (informational; any size divisible by 32 works).
        d_state, ssm_ratio, mlp_ratio: SS2D state size, d_inner / d, MLP hidden / d.
        drop_path_rate: stochastic depth, linear from 0 over all blocks.
        scan_impl: ``"auto"`` (mamba-ssm on CUDA if installed; on CPU the fused numba kernel, else
            the chunked PyTorch scan), ``"fused"``, ``"fast"`` or ``"ref"`` (the sequential
            definition; slow, for benchmarks); see :class:`SS2D`.
        use_mask_token: create the learned mask token used by ``forward(x, mask)`` (OpenUS MIM).

    Ref: OpenUS notes §1.1.
    """

    def __init__(
        self,
        dims: int | Sequence[int] = 96,
        depths: Sequence[int] = (2, 2, 15, 2),
        in_chans: int = 1,
        img_size: int = 224,
        d_state: int = 1,
        ssm_ratio: float = 2.0,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.3,
        scan_impl: str = "auto",
        use_mask_token: bool = False,
    ) -> None:
        super().__init__()
        dims = [dims * 2**i for i in range(4)] if isinstance(dims, int) else list(dims)
        if len(dims) != 4 or len(depths) != 4:
            raise ValueError(f"VMamba needs 4 stages; got dims={dims}, depths={list(depths)}")
        self.dims, self.depths = dims, list(depths)
        self.in_chans, self.img_size, self.num_features = in_chans, img_size, dims[-1]
        self.feature_info = [{"num_chs": c, "reduction": 4 * 2**i} for i, c in enumerate(dims)]
        # stem: conv3x3/s2 -> LN -> GELU -> conv3x3/s2 -> LN (net stride 4)
        self.stem = nn.Sequential(
            _ChannelLastConv(in_chans, dims[0] // 2),
            nn.GELU(),
            _ChannelLastConv(dims[0] // 2, dims[0]),
        )
        self.mask_token = nn.Parameter(torch.zeros(dims[0])) if use_mask_token else None
        n_blocks = sum(depths)
        dpr = [drop_path_rate * i / max(1, n_blocks - 1) for i in range(n_blocks)]
        ss2d_kw = dict(d_state=d_state, ssm_ratio=ssm_ratio, scan_impl=scan_impl)
        self.stages = nn.ModuleList()
        for i, dim in enumerate(dims):
            rates = dpr[sum(depths[:i]) : sum(depths[: i + 1])]
            blocks = [VSSBlock(dim, r, mlp_ratio, **ss2d_kw) for r in rates]
            self.stages.append(nn.Sequential(*blocks))
        self.downsamples = nn.ModuleList(_ChannelLastConv(a, b) for a, b in zip(dims, dims[1:]))
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in dims)
        self.apply(self._init_linear)

    @staticmethod
    def _init_linear(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _embed(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """Stem + mask-token replacement: (B, C_in, H, W) -> (B, H/4, W/4, dims[0])."""
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected images (B, {self.in_chans}, H, W); got {tuple(x.shape)}")
        h = self.stem(x.permute(0, 2, 3, 1))
        if mask is None:
            return h
        if self.mask_token is None:
            raise ValueError("forward(x, mask) needs a model built with use_mask_token=True")
        m = _mask_to_grid(mask, h.shape[0], h.shape[1], h.shape[2])
        return torch.where(m.unsqueeze(-1), self.mask_token.to(h.dtype), h)

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> list[Tensor]:
        """Per-stage LayerNorm'd maps [(B, dims[i], H/4/2^i, W/4/2^i)], shallow to deep.

        Args:
            x: images (B, in_chans, H, W).
            mask: optional (B, H/4 * W/4) bool, 1 = masked (or a coarser (B, h*w) / (B, h, w)
                grid, nearest-upsampled); masked stem tokens become the learned mask token.
        """
        h, outs = self._embed(x, mask), []
        for i, stage in enumerate(self.stages):
            h = stage(h)
            outs.append(self.out_norms[i](h).permute(0, 3, 1, 2).contiguous())
            if i < len(self.downsamples):
                h = self.downsamples[i](h)
        return outs

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Pooled features (B, num_features): global average pool of the last stage map."""
        return self.forward_features(x, mask)[-1].mean(dim=(2, 3))

    def last_block(self) -> nn.Module:
        """The last VSS block of stage 4 and the stage-4 output LayerNorm (partial fine-tuning)."""
        return nn.ModuleList([self.stages[-1][-1], self.out_norms[-1]])

    def implicit_attention(self, x: Tensor, stage: int = -1, block: int = -1) -> Tensor:
        """OpenUS attention map AM of one VSS block, min-max normalised over the whole batch.

        Args:
            x: images (B, in_chans, H, W) (the teacher sees unmasked crops).
            stage, block: which block (default the last one, as OpenUS: stage 3, block 1).

        Returns:
            (B, L, L) in [0, 1], L = H_i * W_i tokens of that stage; [i, j] = query i, key j.
            min 0 and max 1 are attained over the batch (notes §1.3.1 step 7).
        """
        stage, block = stage % 4, block % len(self.stages[stage])
        h = self._embed(x, None)
        for i in range(stage):
            h = self.downsamples[i](self.stages[i](h))
        for j in range(block):
            h = self.stages[stage][j](h)
        blk = self.stages[stage][block]
        am = blk.op.implicit_attention(blk.norm(h))
        lo, hi = am.amin(), am.amax()
        return (am - lo) / (hi - lo).clamp_min(torch.finfo(am.dtype).tiny)

    def token_attention(self, x: Tensor, stage: int = -1, block: int = -1) -> Tensor:
        """Per-token implicit-attention score used by OpenUS's teacher-guided masking.

        The mean over query rows of :meth:`implicit_attention` (the average attention each token
        receives): ``A_t = AM.mean(dim=1)``.

        Returns:
            (B, H_i * W_i) scores in [0, 1], row-major token order.

        Ref: OpenUS notes §1.3.1 ("Per-token score used for masking").
        """
        return self.implicit_attention(x, stage, block).mean(dim=1)


def _mask_to_grid(mask: Tensor, b: int, H: int, W: int) -> Tensor:
    """A token mask (B, H*W), (B, h*w) or (B, h, w) with h | H, w | W -> bool (B, H, W)."""
    m = mask.bool()
    if m.dim() == 2:
        s = math.isqrt(max(1, (H * W) // max(1, m.shape[1])))
        if m.shape[1] * s * s != H * W or H % s or W % s:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit the {H}x{W} grid")
        m = m.view(m.shape[0], H // s, W // s)
    if m.dim() != 3 or m.shape[0] != b or H % m.shape[1] or W % m.shape[2]:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit ({b}, {H}, {W}) tokens")
    return m.repeat_interleave(H // m.shape[1], 1).repeat_interleave(W // m.shape[2], 2)


def _build(defaults: dict[str, Any], kwargs: dict[str, Any]) -> VMamba:
    return VMamba(**{**defaults, **kwargs})


@BACKBONES.register()
def vmamba_smoke(**kwargs: Any) -> VMamba:
    """Tiny VMamba for CPU tests: dims [16, 32, 64, 128], depths [1, 1, 1, 1], 64 px."""
    return _build(dict(dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), img_size=64,
                       drop_path_rate=0.0), kwargs)  # fmt: skip


@BACKBONES.register()
def vmamba_tiny(**kwargs: Any) -> VMamba:
    """VMamba-T v2 (``vssm1_tiny_0230``): depths [2, 2, 5, 2], dims 96, drop-path 0.2 (~30 M)."""
    return _build(dict(dims=96, depths=(2, 2, 5, 2), drop_path_rate=0.2), kwargs)


@BACKBONES.register()
def vmamba_small(**kwargs: Any) -> VMamba:
    """VMamba-S v2 as OpenUS (notes §1.1): depths [2, 2, 15, 2], dims 96..768, ~50 M params."""
    return _build(dict(dims=96, depths=(2, 2, 15, 2), drop_path_rate=0.3), kwargs)

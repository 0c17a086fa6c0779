"""SPAD-VT (PUMIT): the spatially adaptive visual tokenizer with a soft codebook.

All convolutions are 3-D with an isotropic kernel and stride; at run time a stride-s layer
downsamples depth only once the pending in-plane-only downsamplings are done
(``s_d = max(s >> max(aniso_d - n_done, 0), 1)``), with the depth taps of its kernel summed
(§C.3); transposed convolutions mirror that rule. The encoder's total stride equals the ViT
patch, so the tokenizer's (D/d, H/p, W/p) token grid is the ViT's. Tokens are quantised softly:
``p = softmax(Linear(z))``, ``z_q = p @ E`` (no argmax, no straight-through).

Losses (generator, §C.5): ``|x - x_hat|_1 + w_q * sum_k pbar_k log pbar_k`` (codebook usage,
``pbar`` = batch-mean code distribution, = -H(pbar)) ``+ w_H * mean_tokens H(p)`` (per-token
confidence); LPIPS only with a local weight file; the GAN term is not implemented.

Ref: PUMIT notes §C.3 (adaptive conv), §C.5 (SPAD-VT), §C.7 (the soft MIM target).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uslib.ops.anisotropy import reduce_depth_kernel


def _log2(s: int) -> int:
    if s < 1 or s & (s - 1):
        raise ValueError(f"strides must be powers of 2, got {s}")
    return int(math.log2(s))


def depth_stride(stride: int, aniso: int, done: int) -> int:
    """Depth stride of a stride-``stride`` layer after ``done`` x2 downsamplings (§C.3)."""
    pending = max(aniso - done, 0)
    return max(stride >> pending, 1)


class AdaptiveConv3d(nn.Conv3d):
    """3-D conv (kernel k, stride s, k = s or k = 3) whose depth stride follows ``aniso_d``.

    When the depth stride s_d < s the depth padding is 0 and the kernel is reduced along depth
    by summation: all taps into one for s_d = 1, else groups of k / s_d taps (needs k = s).
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1) -> None:
        if kernel not in (stride, 3):
            raise ValueError(f"adaptive conv needs kernel = stride or 3, got {kernel}, {stride}")
        super().__init__(cin, cout, kernel, stride=stride, padding=(kernel - stride + 1) // 2)
        self.log_stride = _log2(stride)

    def forward(self, x: torch.Tensor, aniso: int = 0, done: int = 0) -> torch.Tensor:  # type: ignore[override]
        """(B, C, D, H, W) -> (B, C', D/s_d, H/s, W/s); ``done``: downsamplings so far."""
        s, k = self.stride[0], self.kernel_size[0]
        sd = depth_stride(s, aniso, done)
        w, pad = self.weight, self.padding
        if sd < s:
            w = w.sum(2, keepdim=True) if sd == 1 else reduce_depth_kernel(w, sd)
            pad = (0, pad[1], pad[2])
        elif s == 1 and k == 3 and x.shape[2] == 1:
            w, pad = w[:, :, 1:2], (0, pad[1], pad[2])  # zero-padded depth 1: centre taps only
        return F.conv3d(x, w, self.bias, stride=(sd, s, s), padding=pad)


class AdaptiveConvTranspose3d(nn.ConvTranspose3d):
    """Transposed conv with kernel = stride = s; depth upsampling mirrors ``AdaptiveConv3d``."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__(cin, cout, stride, stride=stride)
        self.log_stride = _log2(stride)

    def forward(self, x: torch.Tensor, aniso: int = 0, done: int = 0) -> torch.Tensor:  # type: ignore[override]
        """Undo the encoder layer that took the input from ``done - log2(s)`` to ``done``."""
        s = self.stride[0]
        sd = depth_stride(s, aniso, done - self.log_stride)
        w = self.weight
        if sd < s:  # (I, O, k, k, k): sum depth taps in groups, as the encoder did
            w = reduce_depth_kernel(w.transpose(0, 1), sd).transpose(0, 1)
        return F.conv_transpose3d(x, w, self.bias, stride=(sd, s, s))


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of (B, C, D, H, W)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.movedim(1, -1)).movedim(-1, 1)


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, c), c)


class _ConvBlock(nn.Module):
    """Conv3^3 (stride 1) -> GroupNorm(8) -> LeakyReLU (§C.5 encoder 4-5, decoder 1)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv, self.norm, self.act = AdaptiveConv3d(cin, cout, 3), _gn(cout), nn.LeakyReLU()

    def forward(self, x: torch.Tensor, aniso: int) -> torch.Tensor:
        return self.act(self.norm(self.conv(x, aniso)))


class SPADTokenizer(nn.Module):
    """SPAD-VT: adaptive conv encoder -> soft codebook -> adaptive conv decoder (§C.5).

    Args:
        in_chans: image channels (PUMIT: 3; grey ultrasound here: 1).
        channels: widths of the downsampling stages (PUMIT: 128, 256, 512).
        strides: their strides (PUMIT: 4, 2, 2; product = the ViT patch, 16).
        codebook_size: K codes (PUMIT 1024).
        code_dim: code width (PUMIT 512 = the last stage width).

    Also follows the uslib backbone contract so the driver can save and reload it:
    ``forward(x)`` (B, C, H, W) -> (B, code_dim) mean of the pre-quantisation tokens.
    """

    def __init__(
        self,
        in_chans: int = 1,
        channels: Sequence[int] = (128, 256, 512),
        strides: Sequence[int] = (4, 2, 2),
        codebook_size: int = 1024,
        code_dim: int = 512,
    ) -> None:
        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"channels {list(channels)} and strides {list(strides)} differ")
        self.in_chans, self.num_features = in_chans, code_dim
        self.codebook_size, self.patch_size = codebook_size, math.prod(strides)
        self.feature_info = [{"num_chs": code_dim, "reduction": self.patch_size}]
        chans = [in_chans, *channels]
        self.down = nn.ModuleList(
            AdaptiveConv3d(chans[i], chans[i + 1], s, s) for i, s in enumerate(strides)
        )
        self.down_norm = nn.ModuleList(ChannelLayerNorm(c) for c in channels)
        self.enc_blocks = nn.ModuleList(
            [_ConvBlock(channels[-1], code_dim), _ConvBlock(code_dim, code_dim)]
        )
        self.to_logits = nn.Linear(code_dim, codebook_size)
        self.codebook = nn.Parameter(torch.empty(codebook_size, code_dim))
        nn.init.uniform_(self.codebook, -1.0 / codebook_size, 1.0 / codebook_size)
        self.dec_blocks = nn.ModuleList(
            [_ConvBlock(code_dim, channels[-1]), _ConvBlock(channels[-1], channels[-1])]
        )
        self.up = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        for i in range(len(strides) - 1, 0, -1):  # ConvT + Conv3^3 stages (§C.5 decoder 2)
            self.up.append(AdaptiveConvTranspose3d(channels[i], channels[i - 1], strides[i]))
            self.up_blocks.append(_ConvBlock(channels[i - 1], channels[i - 1]))
        self.head = AdaptiveConvTranspose3d(channels[0], in_chans, strides[0])

    @staticmethod
    def _as_volume(x: torch.Tensor, aniso: int | None) -> tuple[torch.Tensor, int]:
        if x.ndim == 4:
            return x.unsqueeze(2), 5
        if x.ndim == 5 and aniso is not None:
            return x, aniso
        raise ValueError(f"expected (B, C, H, W), or (B, C, D, H, W) with aniso; got {x.shape}")

    def encode(self, x: torch.Tensor, aniso: int) -> torch.Tensor:
        """(B, C, D, H, W) in [-1, 1] -> z (B, code_dim, d, h, w)."""
        done = 0
        for conv, norm in zip(self.down, self.down_norm, strict=True):
            x = F.gelu(norm(conv(x, aniso, done)))
            done += conv.log_stride
        for blk in self.enc_blocks:
            x = blk(x, aniso)
        return x

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft quantisation: z (B, E, d, h, w) -> (logits (B, L, K), z_q (B, E, d, h, w))."""
        tokens = z.flatten(2).transpose(1, 2)  # (B, L, E), row-major (d, h, w)
        logits = self.to_logits(tokens)
        zq = logits.softmax(-1) @ self.codebook  # (B, L, E)
        return logits, zq.transpose(1, 2).reshape(z.shape)

    def decode(self, zq: torch.Tensor, aniso: int) -> torch.Tensor:
        """z_q (B, E, d, h, w) -> reconstruction (B, C, D, H, W) in [-1, 1] space."""
        done = sum(c.log_stride for c in self.down)
        for blk in self.dec_blocks:
            zq = blk(zq, aniso)
        for up, blk in zip(self.up, self.up_blocks, strict=True):
            zq = blk(up(zq, aniso, done), aniso)
            done -= up.log_stride
        return self.head(zq, aniso, done)

    def tokenize(self, x01: torch.Tensor, aniso: int | None = None) -> dict[str, Any]:
        """Image or volume in [0, 1] -> ``logits`` (B, L, K), ``recon`` (as input, [-1, 1]),
        ``target`` (= 2x - 1, shaped as the volume) and the token ``grid`` (d, h, w)."""
        vol, a = self._as_volume(x01, aniso)
        target = vol * 2.0 - 1.0
        z = self.encode(target, a)
        logits, zq = self.quantize(z)
        return {
            "logits": logits,
            "recon": self.decode(zq, a),
            "target": target,
            "grid": tuple(int(s) for s in z.shape[2:]),
        }

    @torch.no_grad()
    def soft_tokens(self, x01: torch.Tensor, aniso: int | None = None) -> torch.Tensor:
        """The MIM target: per-token code distribution softmax(logits), (B, L, K) (§C.7)."""
        vol, a = self._as_volume(x01, aniso)
        return self.quantize(self.encode(vol * 2.0 - 1.0, a))[0].softmax(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone contract: (B, C, H, W) -> (B, code_dim) mean of the tokens z."""
        vol, a = self._as_volume(x, None)
        return self.encode(vol * 2.0 - 1.0, a).mean(dim=(2, 3, 4))

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone contract: [(B, code_dim, H/p, W/p)] pre-quantisation token map."""
        vol, a = self._as_volume(x, None)
        return [self.encode(vol * 2.0 - 1.0, a)[:, :, 0]]


def codebook_usage_loss(probs: torch.Tensor) -> torch.Tensor:
    """``sum_k pbar_k log pbar_k`` with ``pbar`` the mean of (N..., K) over all tokens: -H(pbar).

    Minimising it spreads the batch over the codebook (PUMIT ``L_quant``, weight 0.03, §C.5).
    """
    pbar = probs.reshape(-1, probs.shape[-1]).mean(0)
    return (pbar * pbar.clamp_min(1e-12).log()).sum()


def confidence_loss(probs: torch.Tensor) -> torch.Tensor:
    """Mean per-token entropy ``H(p) = -sum_k p_k log p_k`` of (N..., K) (PUMIT ``L_ent``, §C.5)."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()


class LocalLPIPS(nn.Module):
    """LPIPS (VGG16) on 2-D slices from a local state-dict file; needs the ``lpips`` package.

    Args:
        weights: path of a full ``lpips.LPIPS(net="vgg")`` state dict (trunk and linear layers),
            so nothing is downloaded.

    Raises:
        ImportError: ``lpips`` is not installed (``pip install lpips``).
        FileNotFoundError: ``weights`` does not exist (named).
    """

    def __init__(self, weights: str) -> None:
        super().__init__()
        try:
            import lpips
        except ImportError as err:
            raise ImportError(
                f"the LPIPS term (lpips_weights={weights!r}) needs the 'lpips' package: "
                "pip install lpips"
            ) from err
        from pathlib import Path

        if not Path(weights).is_file():
            raise FileNotFoundError(f"LPIPS weights not found: {weights}")
        self.net = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, verbose=False)
        self.net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.net.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean LPIPS over every depth slice of (B, C, D, H, W) volumes in [-1, 1]."""
        a, b = (t.movedim(2, 1).flatten(0, 1) for t in (x, y))
        if a.shape[1] == 1:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        return self.net(a, b).mean()

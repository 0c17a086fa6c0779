"""Fixed sin-cos position embeddings (1-D, 2-D, 3-D) and resampling of learned position tables.

The 2-D layout follows MAE (Ref: DMAE notes §A.2, §A.10: "fixed 2-D sin-cos, not trained"): the
first half of the channels encodes the column (x) index, the second half the row (y) index, each
half being ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 1 / 10000^(k / (D/4))``. Learned
tables (TinyUSFM, SPAD-ViT) are resampled when the token grid changes (Ref: PUMIT notes §C.6:
"area when shrinking, trilinear when enlarging").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def sincos_1d(dim: int, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """1-D sin-cos embedding of (possibly fractional) positions.

    Args:
        dim: embedding width; must be even.
        positions: any-shape tensor of positions; flattened.
        base: the wavelength base (10000 as in Transformer/MAE).

    Returns:
        (N, dim) float32, ``[sin(p * w), cos(p * w)]`` with ``w_k = base^(-k / (dim/2))``.
    """
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / base**omega  # (dim/2,)
    out = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([out.sin(), out.cos()], dim=1).float()


def sincos_2d(dim: int, grid_size: Sequence[int], cls_token: bool = False) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table over an (h, w) token grid (row-major tokens).

    Args:
        dim: embedding width; must be divisible by 4.
        grid_size: (h, w) token grid.
        cls_token: prepend an all-zero row for the class token (MAE convention).

    Returns:
        (h*w [+1], dim) float32. Channels ``[:dim/2]`` encode the column index, ``[dim/2:]`` the
        row index (MAE's meshgrid "w goes first").

    Ref: MAE ``get_2d_sincos_pos_embed`` as described in DMAE notes §A.2.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos width must be divisible by 4, got {dim}")
    h, w = int(grid_size[0]), int(grid_size[1])
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    emb = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim), emb], dim=0)
    return emb


def sincos_3d(dim: int, grid_size: Sequence[int]) -> torch.Tensor:
    """Fixed 3-D sin-cos table over a (d, h, w) token grid (tokens in d, h, w row-major order).

    Channels are split in three equal even parts encoding (w, h, d) in that order; any remainder
    (``dim % 6``) is zero-padded at the end.

    Args:
        dim: embedding width (>= 6).
        grid_size: (d, h, w).

    Returns:
        (d*h*w, dim) float32.
    """
    part = 2 * (dim // 6)
    if part == 0:
        raise ValueError(f"3-D sin-cos width must be >= 6, got {dim}")
    d, h, w = (int(s) for s in grid_size)
    zz, yy, xx = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
    emb = torch.cat([sincos_1d(part, xx), sincos_1d(part, yy), sincos_1d(part, zz)], dim=1)
    return F.pad(emb, (0, dim - 3 * part))


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: Sequence[int],
    old_grid: Sequence[int] | None = None,
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
) -> torch.Tensor:
    """Resample a learned 2-D token position table to a new grid (prefix rows kept as they are).

    Args:
        pos_embed: (1, P + h*w, D) with ``P = num_prefix_tokens`` class/register rows first.
        new_grid: target (h', w').
        old_grid: source (h, w); ``None`` assumes a square grid.
        num_prefix_tokens: rows at the front that carry no spatial position.
        mode: ``F.interpolate`` mode (bicubic as in timm/MAE fine-tuning).

    Returns:
        (1, P + h'*w', D), same dtype as the input.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n, dim = grid.shape[1], grid.shape[2]
    if old_grid is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"cannot infer a square grid from {n} position rows; pass old_grid")
        old_grid = (side, side)
    h, w = int(old_grid[0]), int(old_grid[1])
    if h * w != n:
        raise ValueError(f"old_grid {tuple(old_grid)} does not match {n} position rows")
    new_h, new_w = int(new_grid[0]), int(new_grid[1])
    if (new_h, new_w) == (h, w):
        return pos_embed
    img = grid.reshape(1, h, w, dim).permute(0, 3, 1, 2).float()
    img = F.interpolate(img, size=(new_h, new_w), mode=mode, align_corners=False)
    grid = img.permute(0, 2, 3, 1).reshape(1, new_h * new_w, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def resample_pos_embed_3d(pos_embed: torch.Tensor, new_grid: Sequence[int]) -> torch.Tensor:
    """Resample a learned 3-D position volume: trilinear on enlarged axes, area on shrunk ones.

    Axes that grow are first interpolated trilinearly up to the target size; axes that shrink are
    then area-averaged down to it, so a mix (e.g. depth 5 -> 1 with 10 -> 14 in-plane) is handled.

    Args:
        pos_embed: (1, C, d, h, w) learned table.
        new_grid: target (d', h', w').

    Returns:
        (1, C, d', h', w').

    Ref: PUMIT notes §C.6 (pos_embed (1, C, 5, 10, 10), area when shrinking, trilinear when
    enlarging).
    """
    old = tuple(pos_embed.shape[2:])
    new = tuple(int(s) for s in new_grid)
    if old == new:
        return pos_embed
    x = pos_embed.float()
    up = tuple(max(o, n) for o, n in zip(old, new))
    if up != old:
        x = F.interpolate(x, size=up, mode="trilinear", align_corners=False)
    if up != new:
        x = F.interpolate(x, size=new, mode="area")
    return x.to(pos_embed.dtype)

"""Token masking for masked image modelling: random (MAE), blockwise (BEiT/iBOT), attention-guided.

Conventions used throughout (MAE's): a boolean ``mask`` of shape (B, L) is ``True`` (1) where a
token is **masked** and ``False`` (0) where it is **kept**; ``ids_keep`` (B, K) lists the kept
token indices in shuffled order; ``ids_restore`` (B, L) is the inverse permutation of the shuffle
that produced them, so that ``restore_tokens`` puts tokens back into raster order. Patch order for
``patchify`` is MAE's ``nchpwq -> nhwpqc``.

Used by DMAE (Ref: DMAE notes §A.3), OpenUS (Ref: OpenUS notes §1.2.1, §1.3.2), TinyUSFM
(spatial masks, §2.3) and PUMIT (Ref: PUMIT notes §C.7).
"""

from __future__ import annotations

import math

import torch


def _rand(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=device)


def num_kept(num_tokens: int, mask_ratio: float) -> int:
    """Number of visible tokens, ``int(L * (1 - mask_ratio))`` exactly as MAE/DMAE/PUMIT compute it.

    The float truncation is deliberate (fidelity): 196 tokens at 95 % keep 9, at 98 % keep 3
    (DMAE notes D-4); 100 tokens at 55 % keep 44 and 500 keep 224 (PUMIT notes §C.7), because
    ``1 - 0.55`` is just below 0.45 in binary floating point.
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return int(num_tokens * (1 - mask_ratio))


def random_token_mask(
    batch_size: int,
    num_tokens: int,
    mask_ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE per-sample uniform random masking by argsort of uniform noise.

    Args:
        batch_size: B.
        num_tokens: L, the number of patch tokens (no class token).
        mask_ratio: fraction to mask; ``K = num_kept(L, mask_ratio)`` tokens stay visible.
        generator: optional torch generator (its device is used to draw the noise).
        device: device of the returned tensors (default: the generator's, else CPU).

    Returns:
        ``(mask, ids_keep, ids_restore)``: mask (B, L) bool, True = masked; ids_keep (B, K) int64,
        the kept indices in shuffled order; ids_restore (B, L) int64 with
        ``ids_shuffle.gather(1, ids_restore) == arange(L)``.

    Ref: DMAE notes §A.3 step 2 (the teacher draws the mask; the student reuses ``ids_keep``).
    """
    noise = _rand((batch_size, num_tokens), generator)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    keep = num_kept(num_tokens, mask_ratio)
    ids_keep = ids_shuffle[:, :keep]
    # 0 = kept for the first `keep` shuffled slots, 1 = masked; unshuffle to raster order.
    mask = torch.ones(batch_size, num_tokens, dtype=torch.bool, device=noise.device)
    mask[:, :keep] = False
    mask = torch.gather(mask, 1, ids_restore)
    if device is not None:
        mask, ids_keep, ids_restore = mask.to(device), ids_keep.to(device), ids_restore.to(device)
    return mask, ids_keep, ids_restore


def mask_to_ids(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a boolean mask with the same masked count per row into ``(ids_keep, ids_restore)``.

    Kept tokens come first (in raster order), then masked ones, so the pair feeds
    ``gather_tokens`` / ``restore_tokens`` and ``MAEDecoder`` like a random mask does.

    Args:
        mask: (B, L) bool, True = masked; every row must mask the same number of tokens.

    Returns:
        ids_keep (B, K), ids_restore (B, L).
    """
    counts = mask.sum(dim=1)
    if counts.numel() and bool((counts != counts[0]).any()):
        raise ValueError(f"rows mask different token counts {counts.tolist()}; cannot build ids")
    # stable sort on the 0/1 mask keeps raster order inside the kept and masked groups
    ids_shuffle = torch.sort(mask.to(torch.int8), dim=1, stable=True).indices
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    keep = mask.shape[1] - int(counts[0]) if counts.numel() else mask.shape[1]
    return ids_shuffle[:, :keep], ids_restore


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Select tokens by index per sample.

    Args:
        tokens: (B, L, D).
        ids: (B, K) int64 indices into L.

    Returns:
        (B, K, D).
    """
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def restore_tokens(
    visible: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor
) -> torch.Tensor:
    """Append mask tokens after the visible ones and unshuffle to raster order (MAE decoder input).

    Args:
        visible: (B, K, D) tokens in ``ids_keep`` order.
        ids_restore: (B, L) from ``random_token_mask`` / ``mask_to_ids``.
        mask_token: (D,), (1, D) or (1, 1, D) learned token filling the L - K masked slots.

    Returns:
        (B, L, D) with visible tokens at their original positions.
    """
    b, k, d = visible.shape
    fill = mask_token.reshape(1, 1, d).expand(b, ids_restore.shape[1] - k, d).to(visible.dtype)
    full = torch.cat([visible, fill], dim=1)
    return gather_tokens(full, ids_restore)


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into flattened non-overlapping patches (MAE order ``nchpwq -> nhwpqc``).

    Args:
        imgs: (B, C, H, W) with H and W divisible by ``patch_size``.
        patch_size: p.

    Returns:
        (B, L, p*p*C) with L = (H/p)(W/p) in raster order; each row is (p, p, C) flattened.
    """
    b, c, h, w = imgs.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(
    patches: torch.Tensor, patch_size: int, grid_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Inverse of ``patchify``.

    Args:
        patches: (B, L, p*p*C).
        patch_size: p.
        grid_size: (h, w) token grid; ``None`` assumes a square grid.

    Returns:
        (B, C, h*p, w*p).
    """
    b, n, e = patches.shape
    p = patch_size
    if grid_size is None:
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"{n} patches do not form a square grid; pass grid_size")
        grid_size = (side, side)
    h, w = grid_size
    c = e // (p * p)
    if h * w != n or c * p * p != e:
        raise ValueError(f"patches {tuple(patches.shape)} do not match grid {grid_size}, p={p}")
    x = patches.reshape(b, h, w, p, p, c)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(b, c, h * p, w * p)


def _one_block(
    mask: torch.Tensor,
    budget: int,
    min_area: int,
    log_aspect: tuple[float, float],
    generator: torch.Generator | None,
) -> int:
    """Try (up to 10 times) to mask one rectangle adding at most ``budget`` new tokens."""
    h, w = mask.shape
    for _ in range(10):
        u = _rand((3,), generator).tolist()
        area = min_area + u[0] * max(budget - min_area, 0)
        aspect = math.exp(log_aspect[0] + u[1] * (log_aspect[1] - log_aspect[0]))
        bh = int(round(math.sqrt(area * aspect)))
        bw = int(round(math.sqrt(area / aspect)))
        if not (0 < bh < h and 0 < bw < w):
            continue
        top = int(u[2] * (h - bh + 1))
        left = int(float(_rand((1,), generator)) * (w - bw + 1))
        region = mask[top : top + bh, left : left + bw]
        new = bh * bw - int(region.sum())
        if 0 < new <= budget:
            region.fill_(True)
            return new
    return 0


def block_mask(
    batch_size: int,
    grid_size: tuple[int, int],
    mask_ratio: float,
    min_block: int | None = None,
    aspect_range: tuple[float, float] = (0.3, 1 / 0.3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """BEiT/iBOT blockwise masking: add random rectangles until about ``mask_ratio`` is covered.

    Rectangles have area drawn in [min_block, remaining budget] and log-uniform aspect ratio; a
    rectangle is accepted only if it adds between 1 and ``budget`` new tokens, so the masked count
    never exceeds ``int(h*w*mask_ratio)`` (it may fall short when no rectangle fits).

    Args:
        batch_size: B.
        grid_size: (h, w) token grid (7x7 for a 224 global crop at stride 32, 3x3 for 96 px).
        mask_ratio: target masked fraction (OpenUS local crops: 0.3).
        min_block: minimum rectangle area; ``None`` -> ``(min(h, w) // 3) ** 2`` (at least 1).
        aspect_range: (min, max) aspect ratio h/w.
        generator: optional torch generator.

    Returns:
        (B, h, w) bool, True = masked.

    Ref: OpenUS notes §1.2.1 (pred_ratio 0.3, aspect (0.3, 1/0.3), min area (min(H,W)//3)^2).
    """
    h, w = grid_size
    target = int(h * w * mask_ratio)
    min_area = max(1, (min(h, w) // 3) ** 2) if min_block is None else min_block
    log_aspect = (math.log(aspect_range[0]), math.log(aspect_range[1]))
    out = torch.zeros(batch_size, h, w, dtype=torch.bool)
    for i in range(batch_size):
        count = 0
        while count < target:
            added = _one_block(out[i], target - count, min_area, log_aspect, generator)
            if added == 0:
                break
            count += added
    return out


def attention_guided_mask(
    scores: torch.Tensor,
    mask_ratio: float,
    guided_fraction: float,
    mode: str = "code",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """OpenUS self-adaptive mask: the top-scoring tokens plus a random fill of the remaining budget.

    ``n_mask = ceil(L * mask_ratio)`` tokens are masked per row. ``k_top`` of them are the
    highest-scoring tokens; the other ``n_mask - k_top`` are drawn uniformly from the rest.
    If ``k_top >= n_mask`` the mask is the deterministic top-``n_mask``.

    * ``mode="code"`` (default, the authors' training code): ``k_top = floor(L * guided_fraction)``,
      a fraction of **all** L tokens (49 * m_t), so guidance saturates at m_t >= 30/49.
    * ``mode="paper"`` (Fig. 1b and ``GlobalAttGuidedMask_3vis``):
      ``k_top = floor(n_mask * guided_fraction)``, a fraction r_t of the masked tokens.

    Args:
        scores: (B, L) per-token scores (teacher attention blended with student loss).
        mask_ratio: rho (0.6 in OpenUS: 30 of 49 tokens).
        guided_fraction: m_t (code) or r_t (paper), in [0, 1].
        mode: ``"code"`` or ``"paper"``.
        generator: optional torch generator for the random fill.

    Returns:
        (B, L) bool, True = masked; exactly ``n_mask`` per row.

    Ref: OpenUS notes §1.3.2, §1.3.3 and code-vs-paper item §1.8.3.
    """
    b, n = scores.shape
    n_mask = math.ceil(n * mask_ratio)
    if mode == "code":
        k_top = int(n * guided_fraction)
    elif mode == "paper":
        k_top = int(n_mask * guided_fraction)
    else:
        raise ValueError(f"mode must be 'code' or 'paper', got {mode!r}")
    k_top = min(k_top, n_mask)
    order = torch.argsort(scores.detach(), dim=1, descending=True)
    top, rest = order[:, :k_top], order[:, k_top:]
    perm = torch.argsort(_rand((b, n - k_top), generator).to(scores.device), dim=1)
    fill = torch.gather(rest, 1, perm[:, : n_mask - k_top])
    mask = torch.zeros(b, n, dtype=torch.bool, device=scores.device)
    mask.scatter_(1, torch.cat([top, fill], dim=1), True)
    return mask

"""Masking ops and position embeddings against their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from uslib.ops.masking import (
    attention_guided_mask,
    block_mask,
    gather_tokens,
    mask_to_ids,
    num_kept,
    patchify,
    random_token_mask,
    restore_tokens,
    unpatchify,
)
from uslib.ops.pos_embed import (
    resample_pos_embed,
    resample_pos_embed_3d,
    sincos_1d,
    sincos_2d,
    sincos_3d,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(
    ("num_tokens", "ratio", "kept"),
    [
        (196, 0.75, 49),
        (196, 0.95, 9),
        (196, 0.98, 3),
        (100, 0.55, 44),
        (500, 0.55, 224),
        (49, 0, 49),
    ],
)
def test_num_kept_matches_upstream_truncation(num_tokens, ratio, kept):
    # DMAE notes D-4 (9 / 3 visible) and PUMIT notes C.7 (44 / 224 visible)
    assert num_kept(num_tokens, ratio) == kept


def test_random_mask_ratio_exact_and_consistent():
    mask, ids_keep, ids_restore = random_token_mask(4, 196, 0.75, generator=gen())
    assert mask.dtype == torch.bool and mask.shape == (4, 196)
    assert (mask.sum(1) == 147).all()  # 1 = masked
    assert ids_keep.shape == (4, 49)
    # kept ids are exactly the unmasked positions
    for b in range(4):
        assert set(ids_keep[b].tolist()) == set((~mask[b]).nonzero().flatten().tolist())
    # ids_restore inverts ids_shuffle (= argsort of ids_restore), whose head is ids_keep
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(ids_shuffle[:, :49], ids_keep)
    assert torch.equal(ids_shuffle.gather(1, ids_restore), torch.arange(196).expand(4, -1))


def test_random_mask_deterministic_with_generator():
    a = random_token_mask(2, 16, 0.5, generator=gen(3))
    b = random_token_mask(2, 16, 0.5, generator=gen(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_gather_restore_roundtrip():
    tokens = torch.randn(3, 10, 4, generator=gen())
    mask, ids_keep, ids_restore = random_token_mask(3, 10, 0.6, generator=gen(1))
    vis = gather_tokens(tokens, ids_keep)
    full = restore_tokens(vis, ids_restore, torch.full((4,), 7.0))
    assert torch.equal(full[~mask], tokens[~mask])
    assert (full[mask] == 7.0).all()


def test_mask_to_ids_matches_mask():
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 1, 1, 0]], dtype=torch.bool)
    ids_keep, ids_restore = mask_to_ids(mask)
    assert ids_keep.tolist() == [[1, 3, 4], [0, 1, 4]]
    x = torch.arange(10.0).reshape(2, 5, 1)
    back = restore_tokens(gather_tokens(x, ids_keep), ids_restore, torch.tensor([-1.0]))
    assert torch.equal(back[..., 0], torch.where(mask, -1.0, x[..., 0]))
    with pytest.raises(ValueError, match="different token counts"):
        mask_to_ids(torch.tensor([[1, 0], [0, 0]], dtype=torch.bool))


def test_patchify_layout_and_roundtrip():
    imgs = torch.randn(2, 3, 8, 12, generator=gen())
    p = patchify(imgs, 4)
    assert p.shape == (2, 6, 48)
    # patch (row 1, col 2) holds pixels [4:8, 8:12], flattened as (p, q, c)
    assert torch.equal(p[0, 1 * 3 + 2], imgs[0, :, 4:8, 8:12].permute(1, 2, 0).reshape(-1))
    assert torch.equal(unpatchify(p, 4, (2, 3)), imgs)
    with pytest.raises(ValueError, match="divisible"):
        patchify(imgs, 5)


def test_block_mask_budget_and_blocks():
    m = block_mask(8, (7, 7), 0.3, generator=gen())
    assert m.shape == (8, 7, 7)
    target = int(49 * 0.3)
    counts = m.flatten(1).sum(1)
    assert (counts <= target).all() and (counts > 0).all()
    assert counts.float().mean() >= 0.7 * target  # blocks fill most of the budget
    assert torch.equal(m, block_mask(8, (7, 7), 0.3, generator=gen()))


def test_attention_guided_mask_code_semantics():
    scores = torch.arange(49.0).flip(0).expand(3, -1)  # token 0 scores highest
    # n_mask = ceil(49 * 0.6) = 30; code: k_top = floor(49 * 0.1) = 4
    m = attention_guided_mask(scores, 0.6, 0.1, generator=gen())
    assert (m.sum(1) == 30).all()
    assert m[:, :4].all()  # the 4 top-scored tokens are always masked
    # m_t >= 30/49 -> deterministic top-30
    m = attention_guided_mask(scores, 0.6, 0.7, generator=gen())
    assert m[:, :30].all() and not m[:, 30:].any()


def test_attention_guided_mask_paper_semantics():
    scores = torch.rand(2, 49, generator=gen())
    # paper: k_top = floor(30 * 0.5) = 15 of the 30 masked tokens are the top-scored ones
    m = attention_guided_mask(scores, 0.6, 0.5, mode="paper", generator=gen(1))
    top15 = scores.argsort(1, descending=True)[:, :15]
    assert m.gather(1, top15).all() and (m.sum(1) == 30).all()
    with pytest.raises(ValueError, match="mode"):
        attention_guided_mask(scores, 0.6, 0.5, mode="other")


def test_sincos_1d_hand_values():
    emb = sincos_1d(4, torch.tensor([0.0, 1.0]))
    # omega = [1, 1/100]; rows are [sin(p), sin(p/100), cos(p), cos(p/100)]
    expected = torch.tensor(
        [[0, 0, 1, 1], [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]]
    )
    torch.testing.assert_close(emb, expected.float())


def test_sincos_2d_layout():
    emb = sincos_2d(8, (2, 3), cls_token=True)
    assert emb.shape == (7, 8) and (emb[0] == 0).all()
    # token (row 1, col 2): first half encodes the column, second half the row (MAE convention)
    torch.testing.assert_close(emb[1 + 1 * 3 + 2, :4], sincos_1d(4, torch.tensor([2.0]))[0])
    torch.testing.assert_close(emb[1 + 1 * 3 + 2, 4:], sincos_1d(4, torch.tensor([1.0]))[0])
    assert sincos_3d(12, (2, 2, 3)).shape == (12, 12)


def test_resample_pos_embed():
    pe = torch.randn(1, 1 + 16, 8, generator=gen())
    same = resample_pos_embed(pe, (4, 4))
    assert same is pe
    out = resample_pos_embed(pe, (2, 6), num_prefix_tokens=1)
    assert out.shape == (1, 13, 8) and torch.equal(out[:, 0], pe[:, 0])
    const = torch.ones(1, 2, 5, 10, 10)
    torch.testing.assert_close(
        resample_pos_embed_3d(const, (1, 14, 14)), torch.ones(1, 2, 1, 14, 14)
    )
    vol = torch.randn(1, 3, 4, 4, 4, generator=gen())
    # area on a shrinking axis = mean over the merged depth slices
    torch.testing.assert_close(resample_pos_embed_3d(vol, (1, 4, 4))[:, :, 0], vol.mean(2))

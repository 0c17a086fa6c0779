"""SPAD-ViT (PUMIT): aniso_d rule, summed depth taps, token counts, one weight set for 2-D/3-D."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from uslib.models import create_backbone
from uslib.models.adaptive_vit import rope_3d
from uslib.ops.anisotropy import TWO_D_Z_SPACING, aniso_d, depth_patch, reduce_depth_kernel


@pytest.mark.parametrize(
    ("z", "xy", "expected"),
    [
        (1.0, 1.0, 0),
        (0.5, 1.0, 0),  # ratio < 1 clips to 1
        (1.9, 1.0, 0),
        (2.0, 1.0, 1),
        (3.0, 0.75, 2),  # BTCV: 3 / 0.75 mm -> 4x16x16 patches (notes C.3)
        (8.0, 1.0, 3),
        (31.0, 1.0, 4),
        (32.0, 1.0, 5),
        (TWO_D_Z_SPACING, 0.3, 5),  # 2-D images (notes C.2)
    ],
)
def test_aniso_d_rule(z, xy, expected):
    assert aniso_d(z, xy) == expected


def test_depth_patch_table():
    # notes C.3: effective patch 16, 8, 4, 2, 1, 1 x 16 x 16 for aniso_d 0..5
    assert [depth_patch(16, a) for a in range(6)] == [16, 8, 4, 2, 1, 1]
    with pytest.raises(ValueError, match="spacings"):
        aniso_d(1.0, 0.0)


def test_reduce_depth_kernel_hand_values():
    w = torch.arange(1.0, 5.0).reshape(1, 1, 4, 1, 1)  # depth taps 1, 2, 3, 4
    assert reduce_depth_kernel(w, 2).flatten().tolist() == [3.0, 7.0]
    assert reduce_depth_kernel(w, 1).flatten().tolist() == [10.0]
    assert torch.equal(reduce_depth_kernel(w, 4), w)


def test_summed_taps_equal_full_kernel_on_depth_replicated_input():
    """conv(x, sum_k W_k) == conv(repeat(x along depth), W): the hand-check of notes C.3."""
    torch.manual_seed(0)
    embed = create_backbone("spad_vit_smoke").patch_embed  # p = 8
    img = torch.rand(2, 1, 1, 16, 16)
    full = embed(img.repeat(1, 1, 8, 1, 1), 0)  # isotropic 8x8x8 kernel on 8 equal slices
    torch.testing.assert_close(embed(img, 5), full, atol=1e-5, rtol=1e-5)
    # same for a partial reduction: aniso_d 1 -> depth patch 4, groups of 2 taps summed
    vol = torch.rand(2, 1, 8, 16, 16)
    torch.testing.assert_close(
        embed(vol, 1), embed(vol.repeat_interleave(2, dim=2), 0), atol=1e-5, rtol=1e-5
    )
    # and against an explicit conv with the hand-summed kernel
    w = embed.proj.weight.sum(dim=2, keepdim=True)
    ref = F.conv3d(img, w, embed.proj.bias, stride=(1, 8, 8))
    torch.testing.assert_close(embed(img, 5), ref, atol=1e-5, rtol=1e-5)


def test_token_counts_and_one_weight_set():
    torch.manual_seed(0)
    model = create_backbone("spad_vit_smoke")  # p = 8, dim 32
    image = torch.rand(2, 1, 32, 32)
    iso = torch.rand(2, 1, 16, 32, 32)
    aniso = torch.rand(2, 1, 4, 32, 32)
    t2d = model.forward_encoder(image)
    t_iso = model.forward_encoder(iso, aniso=0)  # (16/8) x 4 x 4 tokens
    t_an = model.forward_encoder(aniso, aniso=2)  # depth patch 8 >> 2 = 2 -> (4/2) x 4 x 4
    assert t2d.shape == (2, 1 + 16, 32)
    assert t_iso.shape == (2, 1 + 2 * 16, 32)
    assert t_an.shape == (2, 1 + 2 * 16, 32)
    assert model.forward_encoder(aniso, aniso=3).shape == (2, 1 + 4 * 16, 32)  # depth patch 1
    loss = sum(t.square().mean() for t in (t2d, t_iso, t_an))
    loss.backward()
    assert model.patch_embed.proj.weight.grad is not None
    # a 2-D image is a depth-1 volume with aniso_d 5 (and 3, 4 give the same depth patch of 1)
    vol = image.unsqueeze(2)
    torch.testing.assert_close(model.forward_volume(vol, 5), model(image))
    torch.testing.assert_close(model.forward_volume(vol, 3), model(image))
    with pytest.raises(ValueError, match="divisible by 2"):
        model.forward_encoder(torch.rand(1, 1, 3, 32, 32), aniso=2)
    with pytest.raises(ValueError, match="aniso"):
        model.forward_encoder(iso)


def test_visible_and_mask_token_encoding():
    torch.manual_seed(0)
    model = create_backbone("spad_vit_smoke", use_mask_token=True).eval()
    x = torch.rand(2, 1, 32, 32)
    full = model.forward_encoder(x)
    ids = torch.stack([torch.randperm(16) for _ in range(2)])
    shuffled = model.forward_encoder(x, ids)  # RoPE rows follow the tokens
    expect = torch.gather(full[:, 1:], 1, ids.unsqueeze(-1).expand(-1, -1, 32))
    torch.testing.assert_close(shuffled[:, 1:], expect, atol=1e-5, rtol=1e-5)
    none_masked = torch.zeros(2, 16, dtype=torch.bool)
    torch.testing.assert_close(model.forward_encoder(x, mask=none_masked), full)
    mask = torch.rand(2, 16) < 0.5
    x2 = torch.where(mask.reshape(2, 1, 4, 1, 4, 1).expand(2, 1, 4, 8, 4, 8).reshape(x.shape), 0, x)
    torch.testing.assert_close(
        model.forward_encoder(x2, mask=mask), model.forward_encoder(x, mask=mask)
    )
    with pytest.raises(ValueError, match="use_mask_token"):
        create_backbone("spad_vit_smoke").forward_encoder(x, mask=mask)


def test_rope_depends_on_relative_position_only():
    rope = rope_3d((3, 4, 4), 16)
    assert rope.shape == (48, 32)
    sin, cos = rope.chunk(2, dim=-1)
    q, k = torch.randn(16), torch.randn(16)

    def rot(v, i):  # interleaved pair rotation, as timm's apply_rot_embed
        pairs = torch.stack([-v[1::2], v[::2]], -1).reshape(-1)
        return v * cos[i] + pairs * sin[i]

    def idx(z, y, x):
        return z * 16 + y * 4 + x

    a = rot(q, idx(0, 1, 2)) @ rot(k, idx(1, 0, 1))
    b = rot(q, idx(1, 3, 3)) @ rot(k, idx(2, 2, 2))  # same offset (1, -1, -1)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_pos_table_interpolates_to_any_grid():
    model = create_backbone("spad_vit_smoke").eval()
    assert model.pos_embed.shape == (1, 32, 2, 4, 4)
    out = model(torch.rand(1, 1, 48, 64))  # grid 6 x 8 from a 4 x 4 table
    assert out.shape == (1, 32)
    assert [f.shape for f in model.forward_features(torch.rand(1, 1, 48, 64))][0] == (1, 32, 6, 8)


def test_spad_vit_base_count():
    with torch.device("meta"):
        model = create_backbone("spad_vit_base", in_chans=3)
    d, h = 768, 2048  # notes C.6: 768 / 12 / 12, SwiGLU hidden 8/3 * 768
    attn = 3 * d * d + 2 * d + 2 * d + d * d + d  # q,k,v (q/v bias), sub-LN, proj
    mlp = 2 * (d * h + h) + 2 * h + h * d + d  # SwiGLU gate + value, sub-LN, out
    block = 2 * d + attn + 2 * d + mlp
    expected = 3 * 16**3 * d + d + d + d * 5 * 10 * 10 + 12 * block + 2 * d
    assert sum(p.numel() for p in model.parameters()) == expected  # 94,949,376

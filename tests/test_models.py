"""ViT / USFM / ResNet backbones: paper sizes, MAE visible-token encoding, intermediates."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torchvision.models import resnet18 as tv_resnet18

from uslib.models import create_backbone
from uslib.models.vit import default_out_indices, resolve_indices
from uslib.ops.masking import random_token_mask
from uslib.ops.pos_embed import sincos_2d


def n_params(name: str, **kw) -> int:
    with torch.device("meta"):  # no memory, no init cost
        model = create_backbone(name, **kw)
    return sum(p.numel() for p in model.parameters())


def vit_formula(dim: int, depth: int, in_chans: int = 3, patch: int = 16, tokens: int = 197) -> int:
    """Hand count of a ViT with class token, learned/fixed pos table and one final LayerNorm."""
    block = (
        2 * 2 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim) + 2 * (4 * dim * dim) + 5 * dim
    )
    return in_chans * patch * patch * dim + dim + dim + tokens * dim + depth * block + 2 * dim


def test_tinyusfm_student_count_exact():
    # TinyUSFM notes §2.1: 5,524,416 parameters without the head (RGB patch embedding)
    assert n_params("vit_tiny_usfm", in_chans=3) == 5_524_416 == vit_formula(192, 12)


def test_tinyusfm_student_has_12_heads():
    model = create_backbone("vit_tiny_usfm", img_size=32, depth=1)
    attn = model.blocks[0].attn
    assert attn.num_heads == 12 and attn.head_dim == 16  # not timm's 3-head ViT-Ti
    assert model.global_pool == "avg" and model.fc_norm.weight.shape == (192,)


@pytest.mark.parametrize(
    ("name", "dim", "depth", "approx"),
    [("vit_small", 384, 12, 21.7e6), ("vit_base", 768, 12, 86e6), ("vit_large", 1024, 24, 304e6)],
)
def test_mae_vit_counts(name, dim, depth, approx):
    count = n_params(name, in_chans=3)
    assert count == vit_formula(dim, depth)
    assert abs(count - approx) / approx < 0.01  # DMAE notes §A.2: ViT-B ~86 M, ViT-L ~304 M


def test_usfm_teacher_count():
    dim, depth, heads = 768, 12, 12
    rel_table = ((2 * 14 - 1) ** 2 + 3) * heads  # per-block relative position bias
    block = 4 * dim + 3 * dim * dim + 2 * dim + dim * dim + dim + 8 * dim * dim + 5 * dim
    block += rel_table + 2 * dim  # + LayerScale gamma_1, gamma_2
    expected = 3 * 16 * 16 * dim + dim + dim + depth * block + 2 * dim  # cls, no abs pos, fc_norm
    count = n_params("usfm_vit_base", in_chans=3)
    assert count == expected
    assert abs(count - 85.78e6) / 85.78e6 < 1e-3  # notes §2.1: "85.78 M without the head"


def test_resnet18_count_matches_torchvision_minus_fc():
    assert n_params("resnet18", in_chans=3) == 11_689_512 - (512 * 1000 + 1000)


def test_usfm_structure():
    model = create_backbone("usfm_smoke")
    blk = model.blocks[0]
    names = {n for n, _ in blk.named_parameters()}
    assert {"attn.q_bias", "attn.v_bias", "attn.relative_position_bias_table"} <= names
    assert not any("k_bias" in n for n in names)  # BEiT: no k bias
    assert torch.allclose(blk.gamma_1, torch.full_like(blk.gamma_1, 0.1))
    assert model.pos_embed is None and model.global_pool == "avg"


def test_out_indices_helpers():
    assert default_out_indices(12) == (2, 5, 8, 11)
    assert default_out_indices(24) == (5, 11, 17, 23)
    assert default_out_indices(2) == (0, 1)
    assert resolve_indices(12, [-1, 3]) == [11, 3] and resolve_indices(12, 2) == [10, 11]
    with pytest.raises(ValueError, match="out of range"):
        resolve_indices(12, [12])


@pytest.fixture(params=["vit_smoke", "usfm_smoke"])
def token_model(request):
    torch.manual_seed(0)
    return create_backbone(request.param).eval()


def _img(model, b=2):
    size = 64 if model.patch_embed.img_size[0] == 64 else 32
    return torch.rand(b, 1, size, size, generator=torch.Generator().manual_seed(1))


def test_visible_encoding_equals_full_when_nothing_masked(token_model):
    x = _img(token_model)
    full = token_model.forward_encoder(x)
    n = full.shape[1] - 1
    ids = torch.arange(n).expand(2, -1)
    torch.testing.assert_close(token_model.forward_encoder(x, ids), full)
    # a shuffled "mask" of ratio 0: tokens come back permuted, cls unchanged (pos/rel-bias follow)
    _, ids_keep, _ = random_token_mask(2, n, 0.0, generator=torch.Generator().manual_seed(0))
    shuffled = token_model.forward_encoder(x, ids_keep)
    torch.testing.assert_close(shuffled[:, 0], full[:, 0], atol=1e-5, rtol=1e-5)
    expect = torch.gather(full[:, 1:], 1, ids_keep.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    torch.testing.assert_close(shuffled[:, 1:], expect, atol=1e-5, rtol=1e-5)


def test_visible_encoding_ignores_masked_pixels(token_model):
    x = _img(token_model)
    p = token_model.patch_size
    grid = x.shape[-1] // p
    mask, ids_keep, _ = random_token_mask(2, grid * grid, 0.75, generator=torch.Generator())
    tokens = token_model.forward_encoder(x, ids_keep)
    assert tokens.shape == (2, 1 + grid * grid // 4, token_model.num_features)
    pix_mask = mask.reshape(2, grid, grid).repeat_interleave(p, 1).repeat_interleave(p, 2)
    x2 = torch.where(pix_mask.unsqueeze(1), torch.rand_like(x), x)
    torch.testing.assert_close(token_model.forward_encoder(x2, ids_keep), tokens)


def test_forward_intermediates(token_model):
    x = _img(token_model)
    final, inter = token_model.forward_intermediates(x, indices=[0, -1], norm=True)
    assert len(inter) == 2 and final is not None
    torch.testing.assert_close(inter[-1], final)  # last block + final norm == final tokens
    early, first = token_model.forward_intermediates(x, indices=[0], stop_early=True)
    assert early is None  # DMAE teacher stops after the distilled block
    raw = token_model.forward_intermediates(x, indices=[0])[1][0]
    torch.testing.assert_close(first[0], raw)
    assert first[0].shape[1] == 1 + (x.shape[-1] // token_model.patch_size) ** 2  # cls included


def test_pooling_definitions():
    x = torch.rand(2, 1, 32, 32)
    tiny = create_backbone("vit_tiny_usfm", img_size=32, depth=2).eval()
    tokens = tiny.forward_encoder(x)
    torch.testing.assert_close(tiny(x), tiny.fc_norm(tokens[:, 1:].mean(1)))
    smoke = create_backbone("vit_smoke").eval()
    torch.testing.assert_close(smoke(x), smoke.forward_encoder(x)[:, 0])


def test_vit_matches_timm_forward():
    model = create_backbone("vit_smoke").eval()
    x = torch.rand(2, 1, 32, 32)
    ref = VisionTransformer.forward_features(model, x)  # timm's own embedding path
    torch.testing.assert_close(model.forward_encoder(x), ref)


def test_mae_sincos_pos_is_fixed():
    model = create_backbone("vit_base", img_size=32, depth=1)
    assert not model.pos_embed.requires_grad
    torch.testing.assert_close(model.pos_embed[0], sincos_2d(768, (2, 2), cls_token=True))


def test_vit_other_input_sizes_and_errors():
    model = create_backbone("vit_smoke").eval()
    feats = model.forward_features(torch.rand(1, 1, 48, 40))
    assert feats[0].shape == (1, 32, 6, 5)
    with pytest.raises(ValueError, match="divisible by 8"):
        model(torch.rand(1, 1, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="img_size=32"):
        create_backbone("usfm_smoke")(torch.rand(1, 1, 32, 32))


def test_last_block_vit():
    model = create_backbone("vit_smoke")
    block = model.last_block()
    ids = {id(p) for p in block.parameters()}
    assert all(id(p) in ids for p in model.blocks[-1].parameters())
    assert all(id(p) in ids for p in model.norm.parameters())
    assert not any(id(p) in ids for p in model.blocks[0].parameters())


def test_resnet_matches_torchvision_and_last_block():
    model = create_backbone("resnet18", in_chans=3).eval()
    ref = tv_resnet18(weights=None)
    ref.fc = torch.nn.Identity()
    missing, unexpected = ref.load_state_dict(model.state_dict(), strict=False)
    assert not missing and not unexpected
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(model(x), ref.eval()(x))
    assert model.last_block() is model.layer4[1]  # USCL fine-tunes features.7.1
    grey = create_backbone("resnet18_smoke")
    assert grey.conv1.weight.shape == (64, 1, 7, 7) and grey.num_features == 512

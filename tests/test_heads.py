"""Heads: projection/prediction MLPs, DINO head, linear head, MAE decoder, segmentation decoder."""

from __future__ import annotations

import pytest
import torch

from uslib.models import create_backbone, list_backbones
from uslib.models.heads import (
    DINOHead,
    LinearHead,
    MAEDecoder,
    PredictionHead,
    ProjectionHead,
    SegDecoder,
)
from uslib.ops.masking import patchify, random_token_mask


def test_projection_head_uscl_shape():
    head = ProjectionHead(512, 512, 256)  # USCL notes §B.3
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 256)]
    assert head(torch.randn(4, 512)).shape == (4, 256)
    assert ProjectionHead(8, 16, 4, num_layers=3, batch_norm=True)(torch.randn(3, 8)).shape == (
        3,
        4,
    )


def test_prediction_and_linear_heads():
    assert PredictionHead(16, 32, 16)(torch.randn(4, 16)).shape == (4, 16)
    lin = LinearHead(32, 3, batch_norm=True)
    assert lin(torch.randn(5, 32)).shape == (5, 3)
    assert torch.equal(lin.linear.bias, torch.zeros(3))
    assert lin.linear.weight.std() < 0.05  # N(0, 0.01) init


def test_dino_head_weight_norm_and_bounds():
    head = DINOHead(32, out_dim=64, hidden_dim=48, bottleneck_dim=16)
    gain = head.last_layer.parametrizations.weight.original0
    assert not gain.requires_grad  # norm_last_layer: g frozen at 1
    rows = head.last_layer.weight.norm(dim=1)
    torch.testing.assert_close(rows, torch.ones(64))
    cls_out = head(torch.randn(4, 32))
    patch_out = head(torch.randn(4, 7, 32))
    assert cls_out.shape == (4, 64) and patch_out.shape == (4, 7, 64)
    # unit bottleneck times unit prototypes: cosine logits
    assert cls_out.abs().max() <= 1 + 1e-5
    assert DINOHead(
        32, 64, norm_last_layer=False
    ).last_layer.parametrizations.weight.original0.requires_grad


def test_mae_decoder_shapes_and_unshuffle():
    torch.manual_seed(0)
    dec = MAEDecoder(
        (4, 4), patch_size=8, out_chans=1, embed_dim=32, decoder_dim=16, depth=1, num_heads=2
    ).eval()
    assert not dec.pos_embed.requires_grad
    tokens = torch.randn(2, 1 + 16, 32)
    out = dec(tokens)
    assert out.shape == (2, 16, 64)
    # a ratio-0 "mask" shuffles every token; ids_restore must put them back in raster order
    _, ids_keep, ids_restore = random_token_mask(2, 16, 0.0, generator=torch.Generator())
    shuffled = torch.cat(
        [tokens[:, :1], torch.gather(tokens[:, 1:], 1, ids_keep[..., None].expand(-1, -1, 32))], 1
    )
    torch.testing.assert_close(dec(shuffled, ids_restore), out)
    _, ids_keep, ids_restore = random_token_mask(2, 16, 0.75, generator=torch.Generator())
    assert dec(tokens[:, :5], ids_restore).shape == (2, 16, 64)


def test_mae_roundtrip_with_vit_encoder_trains():
    torch.manual_seed(0)
    enc = create_backbone("vit_smoke")
    dec = MAEDecoder((4, 4), 8, 1, embed_dim=32, decoder_dim=16, depth=1, num_heads=2)
    x = torch.rand(4, 1, 32, 32)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-2)
    losses = []
    for _ in range(15):
        mask, ids_keep, ids_restore = random_token_mask(
            4, 16, 0.5, generator=torch.Generator().manual_seed(0)
        )
        pred = dec(enc.forward_encoder(x, ids_keep), ids_restore)
        loss = ((pred - patchify(x, 8)) ** 2).mean(-1)[mask].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


SEG_BACKBONES = [
    n
    for n in ("vit_smoke", "resnet18_smoke", "vmamba_smoke", "spad_vit_smoke")
    if n in list_backbones()
]


@pytest.mark.parametrize("name", SEG_BACKBONES)
def test_seg_decoder_on_backbones(name):
    torch.manual_seed(0)
    backbone = create_backbone(name).eval()
    dec = SegDecoder(backbone.feature_info, num_classes=3, dim=16)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():  # frozen encoder
        feats = backbone.forward_features(x)
    logits = dec(feats, x.shape[-2:])
    assert logits.shape == (2, 3, 64, 64) and torch.isfinite(logits).all()
    assert dec(feats).shape == (2, 3, 64, 64)  # size inferred from the finest map
    logits.square().mean().backward()
    assert all(p.grad is not None for p in dec.parameters())


def test_seg_decoder_upsampling_stages_and_errors():
    vit_dec = SegDecoder([{"num_chs": 8, "reduction": 16}] * 4, 2)
    res_dec = SegDecoder([{"num_chs": 8, "reduction": r} for r in (4, 8, 16, 32)], 2)
    assert len(vit_dec.up) == 2 and len(res_dec.up) == 0  # stride 16 -> 4 in two x2 stages
    with pytest.raises(ValueError, match="feature maps"):
        vit_dec([torch.randn(1, 8, 4, 4)])

"""SPAD-VT tokenizer (uslib.models.spad_tokenizer, uslib.methods.spad_tokenizer): adaptive conv
rules, token grids, the soft codebook, the §C.5 loss terms on hand cases, and learning."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from uslib.config import ConfigError
from uslib.methods.spad_tokenizer import SPADTokenizerConfig, build, train_data
from uslib.models import create_backbone
from uslib.models.spad_tokenizer import (
    AdaptiveConv3d,
    SPADTokenizer,
    codebook_usage_loss,
    confidence_loss,
    depth_stride,
)

SMALL = dict(in_chans=1, channels=(4, 8, 8), strides=(4, 2, 2), codebook_size=16, code_dim=8)


@pytest.mark.parametrize(
    "aniso, expected", [(0, [4, 2, 2]), (1, [2, 2, 2]), (2, [1, 2, 2]), (3, [1, 1, 2]),
                        (4, [1, 1, 1]), (5, [1, 1, 1])],
)  # fmt: skip
def test_depth_strides_multiply_to_the_vit_depth_patch(aniso: int, expected: list[int]) -> None:
    done, got = 0, []
    for s in (4, 2, 2):
        got.append(depth_stride(s, aniso, done))
        done += int(math.log2(s))
    assert got == expected and math.prod(got) == max(16 >> aniso, 1)


def test_adaptive_conv_on_depth_one_equals_the_summed_kernel() -> None:
    """Depth stride 1 sums all depth taps: a 3-D kernel applies to a 2-D slice (§C.3)."""
    torch.manual_seed(0)
    conv = AdaptiveConv3d(2, 3, 4, 4)
    x = torch.randn(1, 2, 1, 8, 8)
    ref = F.conv2d(x[:, :, 0], conv.weight.sum(2), conv.bias, stride=4)
    torch.testing.assert_close(conv(x, aniso=5)[:, :, 0], ref)
    x4 = torch.randn(1, 2, 4, 8, 8)  # isotropic: an ordinary strided 3-D conv
    torch.testing.assert_close(conv(x4, aniso=0), F.conv3d(x4, conv.weight, conv.bias, stride=4))


def test_token_grid_follows_the_rule_and_reconstruction_keeps_shape() -> None:
    tok = SPADTokenizer(**SMALL)
    cases = [((1, 1, 32, 32), None, (1, 2, 2)), ((1, 1, 16, 32, 32), 0, (1, 2, 2)),
             ((1, 1, 8, 32, 32), 1, (1, 2, 2)), ((1, 1, 8, 32, 32), 2, (2, 2, 2)),
             ((1, 1, 3, 32, 32), 5, (3, 2, 2))]  # fmt: skip
    for shape, aniso, grid in cases:
        out = tok.tokenize(torch.rand(shape), aniso)
        assert out["grid"] == grid
        assert out["logits"].shape == (1, math.prod(grid), 16)
        assert out["recon"].shape == out["target"].shape
        assert out["target"].min() >= -1 and out["target"].max() <= 1  # 2x - 1 of [0, 1]


def test_soft_code_is_the_probability_weighted_codebook() -> None:
    tok = SPADTokenizer(**SMALL)
    z = torch.randn(2, 8, 1, 2, 2)
    logits, zq = tok.quantize(z)
    p = tok.to_logits(z.flatten(2).transpose(1, 2)).softmax(-1)
    torch.testing.assert_close(logits.softmax(-1), p)
    torch.testing.assert_close(zq.flatten(2).transpose(1, 2), p @ tok.codebook)
    assert tok.codebook.abs().max() <= 1.0 / 16  # U(+-1/K) init (§C.5)


def test_usage_and_confidence_terms_on_hand_cases() -> None:
    k = 4
    uniform = torch.full((3, 5, k), 1.0 / k)
    assert confidence_loss(uniform).item() == pytest.approx(math.log(k))
    assert codebook_usage_loss(uniform).item() == pytest.approx(-math.log(k))
    same = F.one_hot(torch.zeros(3, 5, dtype=torch.long), k).float()  # collapsed, confident
    assert confidence_loss(same).item() == pytest.approx(0.0, abs=1e-6)
    assert codebook_usage_loss(same).item() == pytest.approx(0.0, abs=1e-6)
    spread = F.one_hot(torch.arange(4).repeat(2), k).float()  # confident and fully used
    assert confidence_loss(spread).item() == pytest.approx(0.0, abs=1e-6)
    assert codebook_usage_loss(spread).item() == pytest.approx(-math.log(k))
    p = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.5, 0.0, 0.5, 0.0]])  # pbar = (.5, .25, .25, 0)
    assert confidence_loss(p).item() == pytest.approx(math.log(2))
    assert codebook_usage_loss(p).item() == pytest.approx(
        0.5 * math.log(0.5) + 0.5 * math.log(0.25)
    )


def test_method_loss_is_the_weighted_sum_of_its_parts() -> None:
    cfg = SPADTokenizerConfig()
    assert (cfg.quant_weight, cfg.entropy_weight, cfg.gan_weight) == (0.03, 1.0, 0.0)  # §C.5
    m, data = build(cfg), train_data(cfg)
    batch = default_collate([data.train[i] for i in next(iter(data.batch_sampler))])
    out = m.training_step(batch)
    expected = out["l1"] + 0.03 * out["usage"] + 1.0 * out["confidence"]
    torch.testing.assert_close(out["loss"].detach(), expected)


def test_reconstruction_error_falls_on_a_tiny_set() -> None:
    torch.manual_seed(0)
    tok = SPADTokenizer(1, (8, 16, 16), (2, 2, 2), 32, 16)
    x = torch.rand(4, 1, 1, 16, 16) * 0.5 + 0.25 * torch.linspace(0, 1, 16)  # a ramp + noise
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    errs = []
    for _ in range(60):
        out = tok.tokenize(x, 5)
        err = (out["recon"] - out["target"]).abs().mean()
        opt.zero_grad()
        err.backward()
        opt.step()
        errs.append(err.item())
    assert errs[-1] < 0.6 * errs[0]


def test_gan_term_is_a_named_config_error() -> None:
    with pytest.raises(ConfigError, match="gan_weight=0.1: the SPAD-VT GAN term"):
        build(SPADTokenizerConfig(gan_weight=0.1))


@pytest.mark.skipif(importlib.util.find_spec("lpips") is not None, reason="lpips installed")
def test_lpips_without_the_package_names_it() -> None:
    with pytest.raises(ImportError, match="'lpips' package"):
        build(SPADTokenizerConfig(lpips_weights="/nowhere/vgg.pth"))


def test_tokenizer_is_a_registered_backbone_with_the_contract() -> None:
    tok = create_backbone("spad_tokenizer", **SMALL)
    assert tok(torch.rand(2, 1, 32, 32)).shape == (2, 8)
    assert tok.forward_features(torch.rand(2, 1, 32, 32))[0].shape == (2, 8, 2, 2)
    with pytest.raises(ValueError, match="strides must be powers of 2"):
        SPADTokenizer(1, (4,), (3,), 8, 4)

"""The Registry, and registry-parametrised backbone-contract tests over every ``*_smoke`` name."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from uslib.models import create_backbone, list_backbones
from uslib.registry import Registry

SIZE = 64  # every smoke backbone accepts 64 x 64 inputs (stride-32 pyramids give 2 x 2 maps)
SMOKE = list_backbones("*_smoke")


def test_registry_register_create_list():
    reg: Registry[dict] = Registry("thing")

    @reg.register()
    def small(width: int = 1, depth: int = 2) -> dict:
        return {"width": width, "depth": depth}

    reg.register("big")(lambda width=8: {"width": width})
    assert reg.list() == ["big", "small"] and reg.list("s*") == ["small"]
    assert "small" in reg and len(reg) == 2
    # None-valued kwargs are dropped (timm rule), so defaults survive
    assert reg.create("small", width=None, depth=3) == {"width": 1, "depth": 3}
    assert reg.get("big")() == {"width": 8}
    with pytest.raises(ValueError, match="already registered"):
        reg.register("small")(small)
    with pytest.raises(KeyError, match="unknown thing 'nope'"):
        reg.create("nope")


def test_expected_backbones_registered():
    names = set(list_backbones())
    expected = {
        "vit_smoke",
        "vit_tiny_usfm",
        "vit_small",
        "vit_base",
        "vit_large",
        "usfm_vit_base",
        "usfm_smoke",
        "resnet18",
        "resnet18_smoke",
        "spad_vit_smoke",
        "spad_vit_base",
    }
    assert expected <= names
    assert {"vit_smoke", "usfm_smoke", "resnet18_smoke", "spad_vit_smoke"} <= set(SMOKE)


@pytest.fixture(scope="module", params=SMOKE)
def smoke(request):
    torch.manual_seed(0)
    return request.param, create_backbone(request.param)


def test_contract_attributes(smoke):
    name, model = smoke
    assert model.in_chans == 1, name
    assert isinstance(model.num_features, int) and model.num_features > 0
    assert model.feature_info and all(
        {"num_chs", "reduction"} <= set(f) for f in model.feature_info
    )
    block = model.last_block()
    assert isinstance(block, nn.Module)
    own = {id(p) for p in model.parameters()}
    assert all(id(p) in own for p in block.parameters()) and any(True for _ in block.parameters())


def test_forward_shape_finite_and_all_grads(smoke):
    name, model = smoke
    model.train()
    model.zero_grad(set_to_none=True)
    x = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    out = model(x)
    assert out.shape == (2, model.num_features), name
    assert torch.isfinite(out).all(), name
    # parameters used only by forward_features (per-stage output norms) count too
    feats = model.forward_features(x)
    loss = out.square().mean() + out.mean() + sum(f.square().mean() for f in feats)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"{name}: parameters without gradient: {no_grad[:10]}"
    bad = [
        n for n, p in model.named_parameters() if p.grad is not None and not p.grad.isfinite().all()
    ]
    assert not bad, f"{name}: non-finite gradients: {bad[:10]}"


def test_forward_features_match_feature_info(smoke):
    name, model = smoke
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(torch.rand(2, 1, SIZE, SIZE))
    assert len(feats) == len(model.feature_info), name
    for f, info in zip(feats, model.feature_info):
        assert f.shape == (2, info["num_chs"], SIZE // info["reduction"], SIZE // info["reduction"])
        assert torch.isfinite(f).all()
    reductions = [info["reduction"] for info in model.feature_info]
    assert reductions == sorted(reductions), f"{name}: maps must go shallow to deep"


def test_in_chans_override(smoke):
    name, _ = smoke
    model = create_backbone(name, in_chans=3).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, SIZE, SIZE))
    assert model.in_chans == 3 and out.shape == (1, model.num_features)

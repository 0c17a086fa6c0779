"""Official-checkpoint import on synthetic files with the official key names and shapes."""

from __future__ import annotations

import argparse
import datetime

import pytest
import torch
from timm.models.beit import Beit
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn
from torchvision.models import resnet18 as tv_resnet18

from uslib.models import create_backbone
from uslib.models.checkpoints import CheckpointError, load_official, read_state_dict
from uslib.models.heads import MAEDecoder


def grey(b: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(b, 1, size, size, generator=torch.Generator().manual_seed(0))


def _randomise(module: nn.Module) -> None:
    """Fill every float tensor (zero-initialised tables, BN stats) so a wrong mapping shows."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)


@pytest.fixture
def tinyusfm_file(tmp_path):
    """TinyUSFM .pth: timm ViT state dict (12 heads, mean pool, fc_norm, head) under ``model.``."""
    torch.manual_seed(0)
    official = VisionTransformer(
        img_size=32,
        patch_size=16,
        in_chans=3,
        num_classes=7,
        global_pool="avg",
        embed_dim=192,
        depth=2,
        num_heads=12,
    ).eval()
    path = tmp_path / "TinyUSFM.pth"
    torch.save({f"model.{k}": v for k, v in official.state_dict().items()}, path)
    return official, path


def test_tinyusfm_loads_and_matches(tinyusfm_file):
    official, path = tinyusfm_file
    model = create_backbone("vit_tiny_usfm", img_size=32, depth=2).eval()
    report = load_official(model, path, "tinyusfm")
    assert "patch_embed.proj.weight" in report.adapted  # RGB filters summed to grey
    assert report.ignored == ["model.head.weight", "model.head.bias"]
    x = grey()
    ref = official.forward_head(official.forward_features(x.expand(-1, 3, -1, -1)), pre_logits=True)
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
    assert "2 ignored" in str(report)


def test_tinyusfm_pos_embed_resampled(tinyusfm_file):
    _, path = tinyusfm_file
    model = create_backbone("vit_tiny_usfm", img_size=64, depth=2)
    report = load_official(model, path, "tinyusfm")
    assert report.adapted["pos_embed"] == "resampled to (4, 4)"


def test_usfm_loads_and_matches(tmp_path):
    torch.manual_seed(0)
    official = Beit(
        img_size=64, patch_size=8, in_chans=3, num_classes=4, global_pool="avg", embed_dim=32,
        depth=2, num_heads=2, use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1,
    ).eval()  # fmt: skip
    _randomise(official)
    state = official.state_dict()
    for i, blk in enumerate(official.blocks):  # USFM stores the index buffers too
        state[f"blocks.{i}.attn.relative_position_index"] = blk.attn.relative_position_index
    path = tmp_path / "USFM_latest.pth"
    torch.save(state, path)
    model = create_backbone("usfm_smoke").eval()
    report = load_official(model, path, "usfm")
    assert {"blocks.0.attn.relative_position_index", "head.weight"} <= set(report.ignored)
    x = grey(size=64)
    ref = official.forward_head(official.forward_features(x.expand(-1, 3, -1, -1)), pre_logits=True)
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
    small = create_backbone("usfm_smoke", img_size=32)
    report = load_official(small, path, "usfm")
    assert report.adapted["blocks.1.attn.relative_position_bias_table"] == "resized to (4, 4)"


def _mae_state(official: VisionTransformer) -> dict[str, torch.Tensor]:
    state = dict(official.state_dict())
    dec = Block(16, 2, qkv_bias=True)
    state |= {f"decoder_blocks.0.{k}": v for k, v in dec.state_dict().items()}
    state |= {
        "mask_token": torch.randn(1, 1, 16),
        "decoder_embed.weight": torch.randn(16, 32),
        "decoder_embed.bias": torch.randn(16),
        "decoder_pos_embed": torch.randn(1, 17, 16),
        "decoder_norm.weight": torch.randn(16),
        "decoder_norm.bias": torch.randn(16),
        "decoder_pred.weight": torch.randn(8 * 8 * 3, 16),
        "decoder_pred.bias": torch.randn(8 * 8 * 3),
    }
    return state


def test_mae_encoder_and_decoder(tmp_path):
    torch.manual_seed(0)
    official = VisionTransformer(
        img_size=32, patch_size=8, in_chans=3, num_classes=0, embed_dim=32, depth=2, num_heads=2
    ).eval()
    path = tmp_path / "checkpoint-99.pth"  # MAE save_model: {"model", "epoch", "args", ...}
    torch.save(
        {"model": _mae_state(official), "epoch": 99, "args": argparse.Namespace(lr=1e-3)}, path
    )
    model = create_backbone("vit_smoke", pos_embed="sincos").eval()
    report = load_official(model, path, "mae")
    assert "decoder_pred.weight" in report.ignored and "mask_token" in report.ignored
    x = grey()
    torch.testing.assert_close(
        model.forward_encoder(x), official.forward_features(x.expand(-1, 3, -1, -1))
    )
    dec = MAEDecoder((4, 4), 8, out_chans=3, embed_dim=32, decoder_dim=16, depth=1, num_heads=2)
    report = load_official(dec, path, "mae_decoder")
    state = read_state_dict(path)
    assert torch.equal(dec.pred.weight, state["decoder_pred.weight"])
    assert torch.equal(dec.pos_embed, state["decoder_pos_embed"])
    assert "blocks.0.attn.qkv.weight" in report.loaded


def test_dmae_projection_is_ignored(tmp_path):
    official = VisionTransformer(
        img_size=32, patch_size=8, in_chans=3, num_classes=0, embed_dim=32, depth=2, num_heads=2
    )
    state = _mae_state(official) | {
        "aligned_proj.0.weight": torch.randn(48, 32)
    }  # [NOT VERIFIED] name
    path = tmp_path / "dmae.pth"
    torch.save({"model": state}, path)
    report = load_official(create_backbone("vit_smoke"), path, "dmae")
    assert "aligned_proj.0.weight" in report.ignored and not report.missing


class ResNetSimCLR(nn.Module):
    """USCL's checkpoint layout: ``features`` = torchvision children minus fc; heads l1, l2, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(*list(tv_resnet18(weights=None).children())[:-1])
        self.l1, self.l2, self.fc = nn.Linear(512, 512), nn.Linear(512, 256), nn.Linear(256, 2)


def test_uscl_resnet(tmp_path):
    torch.manual_seed(0)
    official = ResNetSimCLR().eval()
    _randomise(official)
    path = tmp_path / "best_model.pth"
    torch.save(official.state_dict(), path)
    model = create_backbone("resnet18_smoke").eval()
    report = load_official(model, path, "uscl")
    assert {"l1.weight", "l2.bias", "fc.weight"} <= set(report.ignored)
    assert "layer4.1.conv2.weight" in report.loaded  # features.7.1 = the fine-tuned block
    x = grey(size=64)
    ref = official.features(x.expand(-1, 3, -1, -1)).flatten(1)
    torch.testing.assert_close(model(x), ref, atol=1e-4, rtol=1e-4)


def test_pumit_eva_names(tmp_path):
    torch.manual_seed(0)
    source = create_backbone("spad_vit_smoke", in_chans=3, use_mask_token=True).eval()
    to_eva = [
        (".attn.q_proj.bias", ".attn.q_bias"),
        (".attn.v_proj.bias", ".attn.v_bias"),
        (".attn.norm.", ".attn.inner_attn_ln."),
        (".mlp.norm.", ".mlp.ffn_ln."),
        (".mlp.fc1_g.", ".mlp.w1."),
        (".mlp.fc1_x.", ".mlp.w2."),
        (".mlp.fc2.", ".mlp.w3."),
    ]
    state = {}
    for k, v in source.state_dict().items():
        for new, old in to_eva:
            k = k.replace(new, old)
        state[f"model.{k}"] = v
    state["model.mim_head.0.weight"] = torch.randn(4, 32)
    path = tmp_path / "pumit.ckpt"
    torch.save({"state_dict": state, "epoch": 3}, path)
    model = create_backbone("spad_vit_smoke", use_mask_token=True).eval()
    report = load_official(model, path, "pumit")
    assert report.ignored == ["model.mim_head.0.weight"]
    x = grey()
    torch.testing.assert_close(model(x), source(x.expand(-1, 3, -1, -1)), atol=1e-5, rtol=1e-5)


def test_missing_file_and_truncated_file(tmp_path, tinyusfm_file):
    _, path = tinyusfm_file
    model = create_backbone("vit_tiny_usfm", img_size=32, depth=2)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_official(model, tmp_path / "nowhere.pth", "tinyusfm")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*broken\.pth"):
        load_official(model, broken, "tinyusfm")


def test_missing_and_unexpected_keys_are_listed(tmp_path, tinyusfm_file):
    _, path = tinyusfm_file
    state = torch.load(path)
    del state["model.blocks.1.mlp.fc2.weight"]
    state["model.blocks.0.attn.extra"] = torch.zeros(3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    model = create_backbone("vit_tiny_usfm", img_size=32, depth=2)
    with pytest.raises(CheckpointError) as err:
        load_official(model, bad, "tinyusfm")
    msg = str(err.value)
    assert "missing keys: blocks.1.mlp.fc2.weight" in msg
    assert "unexpected keys: model.blocks.0.attn.extra" in msg and "bad.pth" in msg
    report = load_official(model, bad, "tinyusfm", strict=False)
    assert report.missing == ["blocks.1.mlp.fc2.weight"]
    assert report.unexpected == ["model.blocks.0.attn.extra"]


def test_wrong_architecture_and_wrong_kind(tmp_path, tinyusfm_file):
    _, path = tinyusfm_file
    with pytest.raises(
        CheckpointError, match=r"shape mismatches: .*file \(576, 192\) vs model \(96, 32\)"
    ):
        load_official(create_backbone("vit_smoke"), path, "tinyusfm")
    # an adapted table of the wrong width is a mismatch too, not a crash inside load_state_dict
    with pytest.raises(
        CheckpointError, match=r"pos_embed: file \(1, 5, 192\) vs model \(1, 17, 32\)"
    ):
        load_official(create_backbone("vit_smoke"), path, "tinyusfm", max_list=50)
    uscl = tmp_path / "uscl.pth"
    torch.save(ResNetSimCLR().state_dict(), uscl)
    with pytest.raises(CheckpointError, match=r"missing keys: .*\(\+\d+ more\)"):
        load_official(create_backbone("vit_smoke"), uscl, "mae", max_list=3)
    with pytest.raises(ValueError, match="unknown checkpoint kind"):
        load_official(create_backbone("vit_smoke"), uscl, "imagenet")


def test_reader_containers_and_trust(tmp_path):
    sd = {"w": torch.ones(2)}
    torch.save({"model": sd, "when": datetime.date(2024, 1, 1)}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="trusted=True"):
        read_state_dict(tmp_path / "pickled.pth")
    assert torch.equal(read_state_dict(tmp_path / "pickled.pth", trusted=True)["w"], sd["w"])
    from safetensors.torch import save_file

    save_file(sd, tmp_path / "w.safetensors")
    assert list(read_state_dict(tmp_path / "w.safetensors")) == ["w"]
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="flat state dict"):
        read_state_dict(tmp_path / "list.pth")

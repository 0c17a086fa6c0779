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


def _vmamba_v2_state(dims, depths, in_chans=3, d_state=1, seed=0) -> dict[str, torch.Tensor]:
    """A state dict in VMamba v2's channel-first layout (OpenUS backbone, notes §1.1), written
    from the layout description and not from uslib's module tree: stem ``patch_embed.{0,2,5,7}``,
    ``layers.i.blocks.j.{norm, op, norm2, mlp.fc1, mlp.fc2}``, ``layers.i.downsample.{1,3}``,
    ``outnorm{i}``, ``masked_embed`` [1, C]."""
    import math

    g = torch.Generator().manual_seed(seed)

    def t(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    c0 = dims[0]
    sd = {"patch_embed.0.weight": t(c0 // 2, in_chans, 3, 3), "patch_embed.0.bias": t(c0 // 2),
          "patch_embed.2.weight": t(c0 // 2), "patch_embed.2.bias": t(c0 // 2),
          "patch_embed.5.weight": t(c0, c0 // 2, 3, 3), "patch_embed.5.bias": t(c0),
          "patch_embed.7.weight": t(c0), "patch_embed.7.bias": t(c0),
          "masked_embed": t(1, c0)}  # fmt: skip
    for i, (d, depth) in enumerate(zip(dims, depths, strict=True)):
        inner, rank = 2 * d, math.ceil(d / 16)
        for j in range(depth):
            b = f"layers.{i}.blocks.{j}."
            sd |= {b + "norm.weight": t(d), b + "norm.bias": t(d),
                   b + "op.in_proj.weight": t(inner, d), b + "op.conv2d.weight": t(inner, 1, 3, 3),
                   b + "op.x_proj_weight": t(4, rank + 2 * d_state, inner),
                   b + "op.dt_projs_weight": t(4, inner, rank), b + "op.dt_projs_bias": t(4, inner),
                   b + "op.A_logs": t(4 * inner, d_state), b + "op.Ds": t(4 * inner),
                   b + "op.out_norm.weight": t(inner), b + "op.out_norm.bias": t(inner),
                   b + "op.out_proj.weight": t(d, inner),
                   b + "norm2.weight": t(d), b + "norm2.bias": t(d),
                   b + "mlp.fc1.weight": t(4 * d, d), b + "mlp.fc1.bias": t(4 * d),
                   b + "mlp.fc2.weight": t(d, 4 * d), b + "mlp.fc2.bias": t(d)}  # fmt: skip
        if i + 1 < len(dims):
            n = dims[i + 1]
            sd |= {f"layers.{i}.downsample.1.weight": t(n, d, 3, 3),
                   f"layers.{i}.downsample.1.bias": t(n),
                   f"layers.{i}.downsample.3.weight": t(n),
                   f"layers.{i}.downsample.3.bias": t(n)}  # fmt: skip
        sd |= {f"outnorm{i}.weight": t(d), f"outnorm{i}.bias": t(d)}
    return sd


def test_openus_checkpoint_reads_the_teacher(tmp_path):
    """OpenUS training checkpoint (notes §1.7 layout): the teacher's backbone fills every key of
    a uslib VMamba (RGB stem summed to grey, masked_embed reshaped), heads/decoder are ignored,
    and the student's different weights are not read."""
    dims, depths = (16, 32, 64, 128), (1, 1, 1, 1)
    teacher, student = (
        _vmamba_v2_state(dims, depths, seed=0),
        _vmamba_v2_state(dims, depths, seed=1),
    )
    ckpt = {
        "teacher": {**{f"backbone.{k}": v for k, v in teacher.items()},
                    "backbone.decoder.0.weight": torch.zeros(3, 3),
                    "head.last_layer.weight_g": torch.ones(8, 1)},
        "student": {f"module.backbone.{k}": v for k, v in student.items()},
        "optimizer": {"state": {}, "param_groups": []}, "epoch": 150,
        "args": argparse.Namespace(arch="vmamba_small"),
        "ibot_loss": {"center": torch.zeros(1, 8), "center2": torch.zeros(1, 1, 8)},
    }  # fmt: skip
    path = tmp_path / "checkpoint0150.pth"
    torch.save(ckpt, path)
    model = create_backbone("vmamba_smoke", use_mask_token=True)
    report = load_official(model, path, "openus")
    got = model.state_dict()
    assert set(report.loaded) == set(got)  # strict: every model key came from the file
    assert torch.equal(got["stem.0.conv.weight"], teacher["patch_embed.0.weight"].sum(1, True))
    assert torch.equal(got["stem.2.norm.weight"], teacher["patch_embed.7.weight"])
    assert torch.equal(
        got["stages.2.0.op.x_proj_weight"], teacher["layers.2.blocks.0.op.x_proj_weight"]
    )
    assert torch.equal(got["stages.1.0.mlp.2.weight"], teacher["layers.1.blocks.0.mlp.fc2.weight"])
    assert torch.equal(got["downsamples.0.conv.weight"], teacher["layers.0.downsample.1.weight"])
    assert torch.equal(got["downsamples.2.norm.bias"], teacher["layers.2.downsample.3.bias"])
    assert torch.equal(got["out_norms.3.weight"], teacher["outnorm3.weight"])
    assert torch.equal(got["mask_token"], teacher["masked_embed"].reshape(-1))
    assert {"backbone.decoder.0.weight", "head.last_layer.weight_g"} <= set(report.ignored)
    assert "summed 3 input channels" in report.adapted["stem.0.conv.weight"]
    model.eval()(torch.rand(1, 1, 64, 64))  # the loaded weights run


def test_vmamba_imagenet_init_lacks_outnorms(tmp_path):
    """The ImageNet VMamba-S file OpenUS starts from (§1.1): ``{"model": ...}`` with a classifier
    and no ``outnorm{i}``; strict loading names the missing out-norms, strict=False loads the
    rest."""
    dims, depths = (16, 32, 64, 128), (1, 1, 1, 1)
    sd = {k: v for k, v in _vmamba_v2_state(dims, depths).items()
          if not k.startswith(("outnorm", "masked_embed"))}  # fmt: skip
    sd["classifier.head.weight"] = torch.zeros(1000, 128)
    path = tmp_path / "vssm_small_0229_ckpt_epoch_222.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match="out_norms"):
        load_official(create_backbone("vmamba_smoke"), path, "vmamba")
    report = load_official(create_backbone("vmamba_smoke"), path, "vmamba", strict=False)
    assert sorted(report.missing) == [
        f"out_norms.{i}.{p}" for i in range(4) for p in ("bias", "weight")
    ]
    assert "classifier.head.weight" in report.ignored

"""SPAD-ViT MIM (uslib.methods.spad, uslib.losses.token_prediction): soft-label CE by hand,
mask ratio 0.55, the frozen tokenizer target, 2-D and 3-D batches with one set of weights."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import default_collate

from uslib import pretraining, runs
from uslib.config import ConfigError
from uslib.losses.token_prediction import soft_token_cross_entropy, soft_token_kl
from uslib.methods.spad import SPAD, SPADConfig, build, train_data
from uslib.methods.spad_tokenizer import SPADTokenizerConfig


def test_soft_ce_equals_a_hand_computation_and_ignores_unmasked_tokens() -> None:
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])  # (1, 3, 2)
    target = torch.tensor([[[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]])
    mask = torch.tensor([[True, True, False]])
    # token 0: -log(1/2); token 1: -(0.5 log 3/4 + 0.5 log 1/4); token 2 unmasked
    hand = (math.log(2) - 0.5 * (math.log(0.75) + math.log(0.25))) / 2
    assert soft_token_cross_entropy(logits, target, mask).item() == pytest.approx(hand)
    moved = logits.clone().requires_grad_(True)
    soft_token_cross_entropy(moved, target, mask).backward()
    assert moved.grad is not None and moved.grad[0, 2].abs().sum() == 0  # no gradient
    changed = logits.clone()
    changed[0, 2] = torch.tensor([-9.0, 9.0])
    assert soft_token_cross_entropy(changed, target, mask).item() == pytest.approx(hand)
    # KL = CE - H(target): H = 0 for token 0, log 2 for token 1
    kl = soft_token_kl(logits, target, mask).item()
    assert kl == pytest.approx(hand - math.log(2) / 2)
    with pytest.raises(ValueError, match="selects no token"):
        soft_token_cross_entropy(logits, target, torch.zeros(1, 3, dtype=torch.bool))


def _batch(cfg: SPADConfig, depth: int) -> dict:
    data = train_data(cfg)
    for b in data.batch_sampler:
        if data.train[b[0]]["image"].shape[1] == depth:
            return default_collate([data.train[i] for i in b])
    raise AssertionError(f"no batch of depth {depth}")


@pytest.mark.parametrize("img, n_masked", [(16, 3), (80, 56)])  # L = 4 -> 1 visible; 100 -> 44
def test_mask_ratio_is_055_exactly(img: int, n_masked: int) -> None:
    cfg = SPADConfig.preset("smoke", data={"img_size": img, "n_per_class": 1})
    m = build(cfg)
    seen = []
    m.head[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    batch = _batch(cfg, 1)
    m.training_step(batch)
    assert seen == [len(batch["image"]) * n_masked]
    assert cfg.mask_ratio == 0.55


def test_one_set_of_weights_trains_on_2d_and_3d_batches_tokenizer_frozen() -> None:
    cfg = SPADConfig()
    m = build(cfg).train()
    assert not m.tokenizer.training
    w = m.vit.patch_embed.proj.weight
    for depth in (1, 8, 4):  # 2-D (aniso 5), isotropic (0), anisotropic (2)
        m.zero_grad()
        out = m.training_step(_batch(cfg, depth))
        out["loss"].backward()
        assert torch.isfinite(out["loss"]) and w.grad is not None and w.grad.abs().sum() > 0
        assert all(p.grad is None for p in m.tokenizer.parameters())


def test_encoder_takes_2d_images_for_evaluation() -> None:
    m = build(SPADConfig())
    assert m.encoder(torch.rand(3, 1, 16, 16)).shape == (3, 32)
    assert m.encoder_spec()["input_norm"] == pytest.approx([0.4590, 0.2257], abs=1e-3)


def test_trained_tokenizer_run_becomes_the_frozen_target(tmp_path) -> None:
    tcfg = SPADTokenizerConfig()
    run = runs.start("tok", tcfg, out_dir=tmp_path / "tok", verbose=False)
    res = pretraining.pretrain("spad_tokenizer", tcfg, run, progress=False)
    spec = str(tmp_path / "tok" / "checkpoints" / runs.ENCODER_SPEC)
    m = build(SPADConfig(tokenizer_encoder=spec))
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(m.tokenizer.soft_tokens(x), res.method.tokenizer.soft_tokens(x))
    assert m.tokenizer in m.frozen_modules()
    assert not any(p.requires_grad for p in m.tokenizer.parameters())


def test_bad_configs_are_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match="mask_ratio must be in"):
        SPAD(SPADConfig(mask_ratio=1.0))
    with pytest.raises(ConfigError, match="tokenizer stride 16 != ViT patch 8"):
        SPAD(SPADConfig().replace(tokenizer={"strides": (4, 2, 2)}))
    with pytest.raises(ConfigError, match="not a multiple of the depth patch"):
        train_data(SPADConfig().replace(volumes={"depths": (6, 4)}))


def test_init_checkpoint_loads_a_local_file_into_the_vit(tmp_path) -> None:
    from uslib.models import create_backbone

    torch.manual_seed(3)
    src = create_backbone("spad_vit_smoke", in_chans=1, use_mask_token=True)
    path = tmp_path / "pumit.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in src.state_dict().items()}}, path)
    m = build(SPADConfig(init_checkpoint=str(path)))
    torch.testing.assert_close(m.vit.state_dict(), src.state_dict())
    torch.save({"state_dict": {"other.weight": torch.zeros(1)}}, tmp_path / "bad.ckpt")
    with pytest.raises(Exception, match="bad.ckpt"):
        build(SPADConfig(init_checkpoint=str(tmp_path / "bad.ckpt")))

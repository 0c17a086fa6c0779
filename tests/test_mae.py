"""MAE (uslib.methods.mae) against its definition: masking counts and inverse ids, encoder on
visible patches only, norm-pix targets per patch, masked-only pixel loss, presets (notes §A)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uslib.methods.mae import MAEConfig, MAEImages, build, check_mask_ratio, pretrain_images
from uslib.ops.masking import gather_tokens, patchify, restore_tokens, unpatchify


@pytest.fixture(scope="module")
def mae():
    return build(MAEConfig.preset("smoke"))


@pytest.mark.parametrize(("ratio", "keep"), [(0.75, 16), (0.95, 3), (0.98, 1)])
def test_mask_keeps_stated_count_and_restore_inverts_keep(mae, ratio: float, keep: int) -> None:
    x = torch.zeros(5, 1, 32, 32)  # 32 px, patch 4 -> L = 64; int(64 (1 - r)) kept (D-4)
    torch.manual_seed(0)
    mask, ids_keep, ids_restore = mae.draw_mask(x, ratio)
    assert ids_keep.shape == (5, keep) and mask.shape == (5, 64)
    assert (mask.sum(1) == 64 - keep).all()
    assert not mask.gather(1, ids_keep).any()  # kept ids are exactly the unmasked patches
    tokens = torch.arange(64.0).reshape(1, 64, 1).expand(5, 64, 1)
    full = restore_tokens(gather_tokens(tokens, ids_keep), ids_restore, torch.tensor([-1.0]))
    expect = torch.where(mask.unsqueeze(-1), torch.tensor(-1.0), tokens)
    torch.testing.assert_close(full, expect)  # visible tokens back at their own positions


def test_masks_differ_per_sample(mae) -> None:
    torch.manual_seed(1)
    mask, _, _ = mae.draw_mask(torch.zeros(8, 1, 32, 32))
    assert len({tuple(m.tolist()) for m in mask}) == 8


def test_no_visible_patch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="mask_ratio 0.99 leaves no visible patch of 64"):
        check_mask_ratio(0.99, 64)
    with pytest.raises(ValueError, match="leaves no visible patch"):
        build(MAEConfig.preset("smoke", mask_ratio=0.99))


def test_encoder_sees_only_visible_patches(mae) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 1, 32, 32)
    mask, ids_keep, _ = mae.draw_mask(x)
    pix = patchify(x, 4)
    noisy = pix + 5.0 * mask.unsqueeze(-1) * torch.randn_like(pix)  # change masked patches only
    x2 = unpatchify(noisy, 4)
    mae.eval()
    a, b = mae.backbone.forward_encoder(x, ids_keep), mae.backbone.forward_encoder(x2, ids_keep)
    assert a.shape == (2, 1 + 16, 32)
    torch.testing.assert_close(a, b)


def test_norm_pix_normalises_each_patch_by_hand() -> None:
    m = build(MAEConfig.preset("smoke", data={"img_size": 4}, mask_ratio=0.0))
    x = torch.tensor([[1.0, 2.0, 5.0, 6.0], [3.0, 4.0, 7.0, 8.0]] * 2).reshape(1, 1, 4, 4)
    # one patch is 4x4 = 16 px; hand: target (t - mean) / sqrt(unbiased var + 1e-6)
    t = patchify(x, 4)[0, 0]
    mean, var = t.sum() / 16, ((t - t.sum() / 16) ** 2).sum() / 15
    hand = (t - mean) / torch.sqrt(var + 1e-6)
    mask = torch.ones(1, 1, dtype=torch.bool)
    assert m.pixel_loss(x, hand.reshape(1, 1, 16), mask) < 1e-10
    assert m.pixel_loss(x, t.reshape(1, 1, 16), mask) > 1.0  # raw pixels are not the target
    # per-patch normalisation: an affine change of the patch leaves the loss unchanged
    pred = torch.randn(1, 1, 16)
    torch.testing.assert_close(m.pixel_loss(3 * x + 7, pred, mask), m.pixel_loss(x, pred, mask))
    raw = build(
        MAEConfig.preset("smoke", data={"img_size": 4}, mask_ratio=0.0, norm_pix_loss=False)
    )
    assert raw.pixel_loss(x, t.reshape(1, 1, 16), mask) == 0.0


def test_visible_patches_do_not_enter_the_pixel_loss(mae) -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 1, 32, 32)
    mask, _, _ = mae.draw_mask(x)
    pred = torch.randn(2, 64, 16, requires_grad=True)
    loss = mae.pixel_loss(x, pred, mask)
    loss.backward()
    assert pred.grad is not None
    assert (pred.grad[~mask] == 0).all() and (pred.grad[mask].abs().sum(-1) > 0).all()
    shifted = pred.detach() + 10.0 * (~mask).unsqueeze(-1)
    torch.testing.assert_close(mae.pixel_loss(x, shifted, mask), loss.detach())


def test_training_step_loss_is_the_masked_mse_of_the_same_mask(mae) -> None:
    batch = {"image": torch.rand(3, 1, 32, 32)}
    torch.manual_seed(4)
    out = mae.train().training_step(batch)
    torch.manual_seed(4)
    x = mae.normalise(batch["image"])
    mask, keep, restore = mae.draw_mask(x)
    pred = mae.decoder(mae.backbone.forward_encoder(x, keep), restore)
    torch.testing.assert_close(out["loss"], mae.pixel_loss(x, pred, mask))


def test_reconstruct_pastes_visible_input(mae) -> None:
    img = torch.rand(2, 1, 32, 32)
    out = mae.reconstruct(img, 0.75, seed=0)
    assert out["pasted"].shape == img.shape and int(out["mask"][0].sum()) == 48
    vis = ~out["mask"]
    a, b = patchify(out["pasted"], 4), patchify(out["original"], 4)
    torch.testing.assert_close(a[vis], b[vis])
    torch.testing.assert_close(out["original"], img.clamp(0, 1), atol=1e-6, rtol=0)


def test_images_augment_per_epoch_and_index_only() -> None:
    imgs = np.random.default_rng(0).integers(0, 256, (3, 40, 40), dtype=np.uint8)
    ds = MAEImages(imgs, 32, (0.2, 1.0), seed=0)
    a = ds[1]["image"]
    assert a.shape == (1, 32, 32) and 0 <= float(a.min()) and float(a.max()) <= 1
    torch.testing.assert_close(ds[1]["image"], a)
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["image"], a)
    with pytest.raises(ValueError, match="uint8"):
        MAEImages(imgs.astype(np.float32), 32, (0.2, 1.0))


def test_pretrain_images_pool_the_tasks() -> None:
    cfg = MAEConfig.preset("smoke", tasks=("lung", "breast"), data={"n_per_class": 1})
    images, prov, root = pretrain_images(cfg)
    assert images.shape == (6, 32, 32) and images.dtype == np.uint8
    assert prov == ("synthetic:lung", "synthetic:breast") and root is None


def test_paper_preset_matches_the_notes() -> None:
    cfg = MAEConfig.preset("paper")
    o = cfg.optim
    assert cfg.backbone == "vit_base" and cfg.mask_ratio == 0.75 and cfg.data.img_size == 224
    assert (cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads) == (512, 8, 16)  # §A.2
    assert o.batch_size * o.accumulate_steps == 4096 and o.lr == pytest.approx(1.5e-4 * 16)
    assert o.betas == (0.9, 0.95) and o.weight_decay == 0.05 and o.min_lr == 0.0  # §A.5
    assert (o.warmup_epochs, o.epochs) == (20.0, 100)

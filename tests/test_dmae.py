"""DMAE (uslib.methods.dmae) and its loss (uslib.losses.distillation) against the notes §A:
the partially executed teacher (exactly k blocks, counted), no teacher gradient, the L1 of
L2-normalised features by hand, cls token included, teacher loading and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from uslib import runs
from uslib.losses.distillation import feature_distill
from uslib.methods.dmae import DMAE, DMAEConfig, build
from uslib.methods.mae import MAEConfig
from uslib.methods.mae import build as build_mae

pytestmark = pytest.mark.filterwarnings("ignore:DMAE teacher is randomly initialised")


def _count_block_calls(model: torch.nn.Module) -> list[int]:
    calls = [0] * len(model.blocks)
    for i, blk in enumerate(model.blocks):
        blk.register_forward_hook(lambda *_a, i=i: calls.__setitem__(i, calls[i] + 1))
    return calls


def test_feature_distill_by_hand() -> None:
    # one sample, tokens = [cls, patch]; n(v) = v / ||v||
    s = torch.tensor([[[3.0, 4.0], [0.0, 2.0]]])  # n: [0.6, 0.8], [0, 1]
    t = torch.tensor([[[1.0, 0.0], [0.0, -5.0]]])  # n: [1, 0], [0, -1]
    # |diffs| = [0.4, 0.8], [0, 2] -> mean over 4 elements = 3.2 / 4
    assert feature_distill(s, t).item() == pytest.approx(0.8)
    assert feature_distill(s[:, 1:], t[:, 1:]).item() == pytest.approx(1.0)  # cls changes it
    assert feature_distill(s, t, kind="l2").item() == pytest.approx((0.16 + 0.64 + 4) / 4)
    assert feature_distill(s, t, normalize=False).item() == pytest.approx((2 + 4 + 0 + 7) / 4)
    w = torch.tensor([2.0])
    assert feature_distill(s, t, weights=w).item() == pytest.approx(0.8)


def test_feature_distill_detaches_teacher_and_checks_shapes() -> None:
    s, t = torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 3, 4, requires_grad=True)
    feature_distill(s, t).backward()
    assert s.grad is not None and t.grad is None
    with pytest.raises(ValueError, match="same shape"):
        feature_distill(torch.randn(2, 3, 4), torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match="kind must be one of"):
        feature_distill(s, t, kind="smooth_l1")


@pytest.mark.parametrize(("mode", "k"), [("partial", 3), ("full", 4)])
def test_teacher_runs_exactly_k_blocks_and_gets_no_gradient(mode: str, k: int) -> None:
    m = build(DMAEConfig.preset("smoke", teacher_mode=mode))  # teacher_block 2 of depth 4
    calls = _count_block_calls(m.teacher)
    dec_calls = []
    if m.teacher_decoder is not None:
        m.teacher_decoder.register_forward_hook(lambda *_a: dec_calls.append(1))
    m.train()
    assert not m.teacher.training and m.frozen_modules()[0] is m.teacher
    out = m.training_step({"image": torch.rand(2, 1, 32, 32)})
    assert calls == [1] * k + [0] * (4 - k)
    assert len(dec_calls) == (mode == "full")
    out["loss"].backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert (
        m.projector.weight.grad is not None
        and m.backbone.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    )
    assert m.decoder.pred.weight.grad is not None


def test_partial_teacher_equals_full_teacher_features() -> None:
    part = build(DMAEConfig.preset("smoke"))
    full = build(DMAEConfig.preset("smoke", teacher_mode="full"))
    x = torch.randn(2, 1, 32, 32)
    torch.manual_seed(0)
    _, keep, restore = part.draw_mask(x)
    torch.testing.assert_close(
        part.teacher_features(x, keep), full.teacher_features(x, keep, restore)
    )


def test_loss_is_pixel_plus_l1_of_normalised_features_with_cls() -> None:
    m = build(DMAEConfig.preset("smoke", distill_weight=0.5)).train()
    img = torch.rand(3, 1, 32, 32)
    torch.manual_seed(5)
    out = m.training_step({"image": img})
    torch.manual_seed(5)
    x = m.normalise(img)
    mask, keep, restore = m.draw_mask(x)
    h_t = m.teacher.forward_intermediates(x, keep, indices=[2])[1][0]  # raw block-2 output
    final, (h_s,) = m.backbone.forward_intermediates(x, keep, indices=[2])
    assert h_t.shape == (3, 1 + 16, 48) and h_s.shape == (3, 1 + 16, 32)  # cls + visible
    ref = (F.normalize(h_t, dim=-1) - F.normalize(m.projector(h_s), dim=-1)).abs().mean()
    rec = m.pixel_loss(x, m.decoder(final, restore), mask)
    torch.testing.assert_close(out["distill"], ref.detach())
    torch.testing.assert_close(out["loss"], rec + 0.5 * ref)


def _teacher_run(tmp_path: Path) -> Path:
    cfg = MAEConfig.preset("smoke", backbone="vit_mae_smoke_large")
    run = runs.start("04_mae_teacher", cfg, out_dir=tmp_path / "t", verbose=False)
    teacher = build_mae(cfg)
    with torch.no_grad():
        teacher.backbone.blocks[0].attn.qkv.weight.fill_(0.01)  # recognisable weights
    spec = {**teacher.encoder_spec(), "method": "mae", "epoch": 0, "pretrain_data": []}
    run.save_encoder(teacher.encoder, spec)
    return run.dir / "checkpoints" / runs.ENCODER_SPEC


def test_teacher_from_a_uslib_encoder_yaml_or_run_folder(tmp_path: Path) -> None:
    spec = _teacher_run(tmp_path)
    for ref in (spec, spec.parent.parent):
        m = build(DMAEConfig.preset("smoke", teacher_checkpoint=str(ref)))
        assert m.teacher_source == str(spec)
        assert (m.teacher.blocks[0].attn.qkv.weight == 0.01).all()
    with pytest.raises(ValueError, match="teacher_backbone"):
        build(DMAEConfig.preset("smoke", teacher_checkpoint=str(spec),
                                teacher_backbone="vit_mae_smoke"))  # fmt: skip


def test_teacher_from_an_official_mae_checkpoint(tmp_path: Path) -> None:
    src = build(DMAEConfig.preset("smoke"))
    state = {k: v.clone() for k, v in src.teacher.state_dict().items()}
    state["decoder_embed.weight"] = torch.zeros(3, 3)  # decoder keys are ignored on load
    path = tmp_path / "mae_visualize_vit_large.pth"
    torch.save({"model": state}, path)
    m = build(DMAEConfig.preset("smoke", teacher_checkpoint=str(path), seed=1))
    for k, v in src.teacher.state_dict().items():
        torch.testing.assert_close(m.teacher.state_dict()[k], v)


def test_missing_teacher_names_parameter_and_expected_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"teacher_checkpoint.*mae_visualize_vit_large"):
        build(DMAEConfig.preset("smoke", teacher_checkpoint=str(tmp_path / "nope.pth")))
    with pytest.raises(FileNotFoundError, match=r"`teacher_checkpoint`.*04_mae_teacher"):
        build(DMAEConfig.preset("smoke", teacher_checkpoint=str(tmp_path / "encoder.yaml")))


def test_bad_settings_are_named() -> None:
    with pytest.raises(ValueError, match="teacher_block=4 out of range for depth 4"):
        build(DMAEConfig.preset("smoke", teacher_block=4))
    with pytest.raises(ValueError, match="teacher_mode"):
        DMAE(DMAEConfig.preset("smoke", teacher_mode="half"))
    with pytest.raises(ValueError, match="teacher patch 8 != student patch 4"):
        build(DMAEConfig.preset("smoke", teacher_backbone="vit_smoke"))


def test_presets_follow_the_notes() -> None:
    paper = DMAEConfig.preset("paper")
    assert (paper.teacher_backbone, paper.backbone) == ("vit_large", "vit_base")  # §A.2
    assert (paper.teacher_block, paper.student_block) == (17, 8)  # 18th of 24, 9th of 12
    assert paper.distill_weight == 1.0 and paper.distill_loss == "l1"  # §A.4
    assert paper.norm_pix_loss is False and paper.teacher_mode == "partial"  # D-2, D-1
    assert paper.teacher_checkpoint.endswith("mae_visualize_vit_large.pth")
    cpu, mae_cpu = DMAEConfig.preset("cpu"), MAEConfig.preset("cpu")
    assert cpu.backbone == mae_cpu.backbone and cpu.optim == mae_cpu.optim  # same student
    assert (cpu.teacher_block + 1) / 8 == (cpu.student_block + 1) / 4 == 0.75

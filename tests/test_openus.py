"""OpenUS (issue 11): masks, schedules, implicit attention, DINO/iBOT losses, centring, EMA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch.utils.data import DataLoader

from uslib.engine import fit
from uslib.losses.dino import (
    dino_cls_loss,
    ibot_patch_loss,
    soft_cross_entropy,
    teacher_probs,
    update_center_,
)
from uslib.methods import Progress, get_method
from uslib.methods import openus_masking as om
from uslib.models.vmamba import SS2D
from uslib.ops.selective_scan import selective_scan_attention
from uslib.pretraining import train_data


def _method(**over):
    spec = get_method("openus")
    cfg = spec.config_cls.preset("smoke", **over)
    m = spec.build(cfg)
    data = train_data("openus", cfg, m)
    torch.manual_seed(0)
    batch = next(iter(DataLoader(data.train, batch_size=cfg.optim.batch_size)))
    return cfg, m, data, batch


@pytest.mark.parametrize("L", [4, 9, 49])
@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_global_mask_has_ceil_06_L_tokens(L, share):
    # rounding: ceil(0.6 L), as GlobalAttGuidedMask_2 (30 of 49; 3 of 4; 6 of 9)
    mask = om.adaptive_mask(torch.rand(16, L), 0.6, share)
    assert (mask.sum(1) == math.ceil(0.6 * L)).all()


def test_guided_share_and_alpha_schedules():
    assert om.guided_share(0.0) == pytest.approx(0.1) and om.guided_share(1.0) == 0.9
    assert om.guided_share(0.25) == pytest.approx(0.1 + 0.8 * 0.25)  # linear
    assert om.blend_alpha(0.5) == pytest.approx(0.5)  # cosine midpoint
    assert om.blend_alpha(0.25) == pytest.approx(0.1 + 0.8 * (1 - math.cos(math.pi / 4)) / 2)


@pytest.mark.parametrize("k_top_of", ["masked", "all"])
def test_planted_scores_top_masked_and_fill_uniform(k_top_of):
    L, n_rows, share = 49, 6000, 0.3
    n_mask = math.ceil(0.6 * L)
    k_top = int((n_mask if k_top_of == "masked" else L) * share)  # 8 (paper) or 14 (code)
    scores = torch.arange(L, dtype=torch.float32).flip(0).expand(n_rows, L)  # token 0 best
    torch.manual_seed(0)
    mask = om.adaptive_mask(scores, 0.6, share, k_top_of)
    assert mask[:, :k_top].all()  # the planted top tokens are always masked
    counts = mask[:, k_top:].sum(0).double()  # random fill over the other L - k_top tokens
    assert counts.sum() == n_rows * (n_mask - k_top)
    p = stats.chisquare(counts.numpy()).pvalue
    assert p > 1e-3, f"random fill not uniform (chi-square p={p})"


def test_guided_share_follows_schedule_in_training_step():
    cfg, m, _, batch = _method()
    m.train()
    n_mask = math.ceil(cfg.mask_ratio * 4)
    for frac in (0.0, 1.0):
        m.set_progress(Progress(step=int(frac * 10), total_steps=10))
        k = int(n_mask * m.schedules()["m_t"])
        m.training_step(batch)
        order = m.last["score"].argsort(1, descending=True)[:, :k]
        assert torch.gather(m.last["mask"], 1, order).all()
        assert (m.last["mask"].sum(1) == n_mask).all()


def test_blend_direction_and_first_step_uses_attention_alone():
    a, lm = torch.tensor([[0.0, 1.0, 0.5]]), torch.tensor([1.0, 0.0, 0.5])
    torch.testing.assert_close(om.blend_scores(a, None, 0.9), a)
    torch.testing.assert_close(om.blend_scores(a, lm, 0.9, "paper"), 0.1 * a + 0.9 * lm)
    torch.testing.assert_close(om.blend_scores(a, lm, 0.9, "code"), 0.9 * a + 0.1 * lm)
    _, m, _, batch = _method()
    assert m.loss_map.map() is None  # first step: attention alone
    m.train().training_step(batch)
    assert m.loss_map.map() is not None


def test_loss_map_ema_formula_and_resume():
    ema = om.LossMapEMA(3, 0.7)
    r1, r2 = torch.rand(2, 3), torch.rand(2, 3)
    torch.testing.assert_close(ema.update(r1), r1.mean(0))
    e = 0.7 * r1.mean(0) + 0.3 * r2.mean(0)
    torch.testing.assert_close(ema.update(r2), 0.7 * r2.mean(0) + 0.3 * e)
    other = om.LossMapEMA(3, 0.7)
    other.load_state_dict(ema.state_dict())  # the per-patch loss state survives a resume
    torch.testing.assert_close(other.map(), ema.map())


def test_patch_importance_zero_on_visible_cells():
    pred, tgt = torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 4, 4)
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2, :2] = True
    r = om.patch_importance(pred, tgt, mask, (2, 2))
    torch.testing.assert_close(r, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))


def test_chunked_implicit_attention_equals_direct_and_is_causal():
    torch.manual_seed(0)
    op = SS2D(2).double()  # d_inner 4, d_state 1
    x = torch.randn(1, 2, 3, 2, dtype=torch.float64)  # 2 x 3 grid, L = 6
    with torch.no_grad():
        _, delta, B, C = op.ssm_inputs(x)
    A = -torch.exp(op.A_logs)
    bias = op.dt_projs_bias.flatten()
    attn = selective_scan_attention(delta, A, B, C, bias, True, max_elems=1)  # chunk of 1
    dt = F.softplus(delta + bias[:, None])[0]
    L, di = 6, op.d_inner
    for k in range(4):
        assert (attn[0, k].triu(1) == 0).all()  # causal per direction, before the merge
        for i in range(L):
            for j in range(i + 1):
                want = (
                    sum(
                        float(C[0, k, 0, i] * B[0, k, 0, j])
                        * math.exp(float(dt[k * di + d, j + 1 : i + 1].sum() * A[k * di + d, 0]))
                        for d in range(di)
                    )
                    / di
                )
                assert float(attn[0, k, i, j]) == pytest.approx(want, rel=1e-9)


def test_centring_and_teacher_probs():
    c, t = torch.zeros(1, 4), torch.randn(8, 4)
    update_center_(c, t.mean(0, keepdim=True), 0.9)
    torch.testing.assert_close(c, 0.1 * t.mean(0, keepdim=True))
    update_center_(c, t[:2].mean(0, keepdim=True), 0.9)
    torch.testing.assert_close(c, 0.09 * t.mean(0, keepdim=True) + 0.1 * t[:2].mean(0, True))
    p = teacher_probs(t, c, 0.04)
    torch.testing.assert_close(p, torch.softmax((t - c) / 0.04, -1))


def test_dino_cls_loss_pairs_by_hand():
    torch.manual_seed(0)
    pt = [torch.softmax(torch.randn(3, 5), -1) for _ in range(2)]
    s = [torch.randn(3, 5) for _ in range(3)]  # 2 global + 1 local

    def ce(p, z):
        return -(p * torch.log_softmax(z / 0.1, -1)).sum(-1).mean()

    want = (ce(pt[0], s[1]) + ce(pt[0], s[2]) + ce(pt[1], s[0]) + ce(pt[1], s[2])) / 4
    torch.testing.assert_close(dino_cls_loss(pt, s, 0.1), want)


def test_patch_loss_ignores_unmasked_tokens_and_averages_masked():
    torch.manual_seed(0)
    pt = torch.softmax(torch.randn(2, 6, 5), -1)
    s = torch.randn(2, 6, 5)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    base = ibot_patch_loss(pt, s, mask, 0.1)
    s2 = s.clone()
    s2[~mask] += 10 * torch.randn_like(s2[~mask])
    torch.testing.assert_close(ibot_patch_loss(pt, s2, mask, 0.1), base)
    ce = soft_cross_entropy(pt, s, 0.1)
    torch.testing.assert_close(base, (ce[0, :2].mean() + ce[1, 5]) / 2)


def test_patch_loss_in_method_unchanged_when_unmasked_student_tokens_perturbed():
    _, m, _, batch = _method()
    m.train()
    out = m.training_step(batch)
    mask = m.last["mask"]
    # perturb the student's patch logits at visible tokens only: L_patch must not move
    s_cls, s_patch, _ = m.student(m.normalise(batch["globals"].transpose(0, 1).flatten(0, 1)),
                                  mask)  # fmt: skip
    assert torch.isfinite(out["patch"])
    pt = torch.softmax(torch.randn_like(s_patch), -1)
    noisy = s_patch + (~mask)[..., None] * torch.randn_like(s_patch) * 5
    torch.testing.assert_close(
        ibot_patch_loss(pt, noisy, mask, 0.1), ibot_patch_loss(pt, s_patch, mask, 0.1)
    )


def test_teacher_gets_no_grad_and_ema_shares_cls_last_layer():
    _, m, _, batch = _method()
    m.train().training_step(batch)["loss"].backward()
    assert all(p.grad is None for p in m.teacher.parameters())
    assert m.teacher.patch_last_layer is None and m.student.patch_last_layer is not None
    s_last = dict(m.student.named_parameters())["head.last_layer.parametrizations.weight.original1"]
    t_last = dict(m.teacher.named_parameters())["head.last_layer.parametrizations.weight.original1"]
    before = t_last.detach().clone()
    with torch.no_grad():
        s_last.add_(1.0)
    m.set_progress(Progress(step=0, total_steps=10))
    mom = m.teacher_momentum()
    assert mom == pytest.approx(0.996)
    m.on_step_end()
    torch.testing.assert_close(t_last.detach(), mom * before + (1 - mom) * s_last.detach())


def test_every_loss_part_finite_over_smoke_run(tmp_path):
    cfg, m, data, _ = _method()
    hist = fit(m, data.train, cfg.optim, run_dir=tmp_path, progress=False, seed=0)
    parts = ("loss", "cls", "patch", "rec_global", "rec_local")
    assert hist.steps and all(math.isfinite(r[k]) for r in hist.steps for k in parts)
    assert m.encoder is m.teacher.backbone


def test_last_layer_frozen_for_first_epoch():
    _, m, _, _ = _method()
    groups = m.param_groups(0.04)
    frozen = [g for g in groups if g.get("freeze_epochs") == 1]
    ids = {id(p) for g in frozen for p in g["params"]}
    names = {n for n, p in m.named_parameters() if id(p) in ids}
    assert names and all("last_layer" in n and n.startswith("student.") for n in names)


def test_multicrop_views_shapes_range_and_determinism():
    import numpy as np

    from uslib.data.transforms import dino_multicrop, gaussian_blur

    const = torch.full((1, 16, 16), 0.3)
    torch.testing.assert_close(gaussian_blur(const, 1.5), const)  # normalised kernel
    imgs = np.random.default_rng(0).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    ds = om.MultiCropImages(imgs, dino_multicrop(64, 32, 3), 0.3, 32, seed=1)
    a, b = ds[1], ds[1]
    assert a["globals"].shape == (2, 1, 64, 64) and a["locals"].shape == (3, 1, 32, 32)
    assert a["local_masks"].shape == (3, 1, 1)
    assert all(torch.equal(a[k], b[k]) for k in a)  # a function of (seed, epoch, index)
    assert 0.0 <= float(a["globals"].min()) and float(a["globals"].max()) <= 1.0
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["globals"], a["globals"])
    big = om.MultiCropImages(imgs, dino_multicrop(96, 96, 2), 0.3, 32, seed=1)[0]
    assert big["local_masks"].shape == (2, 3, 3) and (big["local_masks"].sum((1, 2)) <= 2).all()

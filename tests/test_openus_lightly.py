"""Our OpenUS losses and momentum helpers against the notes' formulas and against lightly 1.6.

The first test always runs: a tiny case of the OpenUS notes §1.2.2-1.2.3 formulas worked out by
hand with ``math`` (no torch softmax). The others compare ``uslib`` with lightly's DINOLoss,
IBOTPatchLoss, update_momentum and cosine_schedule on identical random tensors; they skip when
lightly is not importable. lightly is not a dependency of this project: lightly 1.6.0 declares
``pytorch_lightning`` and ``hydra-core`` as install requirements (12 new packages with aiohttp and
omegaconf), too heavy for the lock, so these tests are evidence for whoever has it installed.
Where lightly differs from the notes the test asserts the measured difference.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from uslib.losses.dino import dino_cls_loss, ibot_patch_loss, teacher_probs, update_center_
from uslib.methods import openus
from uslib.methods.base import Progress
from uslib.models.params import ema_update_
from uslib.ops.schedules import cosine_ramp


def _ce(p_t: list[float], s_over_tau: list[float]) -> float:
    """-sum p_t log softmax(s / tau_s), by hand."""
    log_z = math.log(sum(math.exp(v) for v in s_over_tau))
    return -sum(p * (v - log_z) for p, v in zip(p_t, s_over_tau))


def test_losses_match_hand_computed_notes_formula() -> None:
    tau_t, tau_s = 0.04, 0.1
    # Teacher: (t - c) / tau_t = [ln 3, 0] -> p_t = [3/4, 1/4]; second view [0, ln 3] -> [1/4, 3/4].
    c = torch.tensor([[0.5, -0.25]])
    t1 = torch.tensor([[math.log(3) * tau_t, 0.0]]) + c
    t2 = torch.tensor([[0.0, math.log(3) * tau_t]]) + c
    p1, p2 = teacher_probs(t1, c, tau_t), teacher_probs(t2, c, tau_t)
    torch.testing.assert_close(p1, torch.tensor([[0.75, 0.25]]))
    torch.testing.assert_close(p2, torch.tensor([[0.25, 0.75]]))
    # Student views (2 global + 1 local), logits s / tau_s given directly.
    s = [[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]]
    s_logits = [torch.tensor([v]) * tau_s for v in s]
    # L_cls: pairs (q, v), q in {0, 1}, v != q -> (0,1), (0,2), (1,0), (1,2).
    pt = [[0.75, 0.25], [0.25, 0.75]]
    want = sum(_ce(pt[q], s[v]) for q in range(2) for v in range(3) if v != q) / 4
    got = dino_cls_loss([p1, p2], s_logits, tau_s)
    assert got.item() == pytest.approx(want, rel=1e-6)

    # L_patch: image 0 has tokens 0, 2 masked; image 1 none (contributes 0, still counted in B).
    pt_tok = torch.tensor([[[0.75, 0.25], [0.5, 0.5], [0.25, 0.75]]] * 2)
    s_tok = [[1.0, 0.0], [5.0, -5.0], [0.0, 2.0]]
    mask = torch.tensor([[True, False, True], [False, False, False]])
    s_patch = torch.tensor([s_tok] * 2) * tau_s
    want_p = (_ce([0.75, 0.25], s_tok[0]) + _ce([0.25, 0.75], s_tok[2])) / 2 / 2
    assert ibot_patch_loss(pt_tok, s_patch, mask, tau_s).item() == pytest.approx(want_p, rel=1e-6)

    # Centre: c <- 0.9 c + 0.1 mean_batch(t).
    center = torch.tensor([[1.0, 2.0]])
    update_center_(center, torch.tensor([[2.0, 3.0], [4.0, 5.0]]).mean(0, keepdim=True), 0.9)
    torch.testing.assert_close(center, torch.tensor([[1.2, 2.2]]))

    # EMA: theta_t <- m theta_t + (1 - m) theta_s; cosine momentum 0.996 -> 1 (0.998 half-way).
    teacher, student = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    teacher.weight.data.fill_(1.0)
    student.weight.data.fill_(3.0)
    ema_update_(teacher, student, 0.75)
    assert teacher.weight.item() == pytest.approx(1.5)
    assert cosine_ramp(0.0, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_ramp(0.5, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine_ramp(1.0, 0.996, 1.0) == pytest.approx(1.0)


def _views(g: int, v: int, b: int, k: int, seed: int = 0) -> tuple[list, list]:
    gen = torch.Generator().manual_seed(seed)
    teacher = [torch.randn(b, k, generator=gen) for _ in range(g)]
    student = [torch.randn(b, k, generator=gen) for _ in range(v)]
    return teacher, student


@pytest.mark.parametrize("n_local", [0, 2, 8])
def test_dino_loss_and_centre_equal_lightly(n_local: int) -> None:
    lightly_loss = pytest.importorskip("lightly.loss")
    k, b, tau_t, tau_s = 16, 5, 0.04, 0.1
    theirs = lightly_loss.DINOLoss(k, teacher_temp=tau_t, student_temp=tau_s, center_momentum=0.9)
    ours_c = torch.zeros(1, k)
    for step in range(3):  # the centre moves, so later steps test the centred softmax too
        t_out, s_out = _views(2, 2 + n_local, b, k, seed=step)
        p = [teacher_probs(t, ours_c, tau_t) for t in t_out]
        ours = dino_cls_loss(p, s_out, tau_s)
        update_center_(ours_c, torch.cat(t_out).mean(0, keepdim=True), 0.9)  # as OpenUS: all 2B
        got = theirs(t_out, s_out, teacher_temp=tau_t)  # lightly updates its centre inside
        torch.testing.assert_close(got, ours, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(theirs.center.view(1, k), ours_c, rtol=1e-6, atol=1e-7)


def test_teacher_temperature_warmup_differs_from_lightly_by_one_epoch_step() -> None:
    lightly_loss = pytest.importorskip("lightly.loss")
    warm, (t0, t1) = 30, (0.04, 0.07)
    theirs = lightly_loss.DINOLoss(8, warmup_teacher_temp=t0, teacher_temp=t1,
                                   warmup_teacher_temp_epochs=warm)  # fmt: skip
    cfg = openus.OpenUSConfig(teacher_patch_temp=(t0, t1), teacher_temp_warmup_epochs=warm)

    def ours(epoch: int) -> float:  # OpenUS.schedules on the real config, progress at an epoch
        prog = Progress(step=epoch, total_steps=151, epoch=epoch, steps_per_epoch=1)
        stub = SimpleNamespace(cfg=cfg, progress=prog, teacher_momentum=lambda: 1.0)
        return openus.OpenUS.schedules(stub)["teacher_patch_temp"]  # type: ignore[arg-type]

    diffs = [float(theirs.teacher_temp_schedule[e]) - ours(e) for e in range(warm)]
    # lightly (like iBOT's np.linspace(t0, t1, warm)) reaches t1 at epoch warm - 1, ours
    # (notes §1.2.3: "linear 0.04 -> 0.07 over the first 30 epochs") at epoch warm.
    assert diffs[0] == pytest.approx(0.0, abs=1e-7)  # lightly keeps float32
    assert max(diffs) == pytest.approx((t1 - t0) / warm, abs=1e-7)  # 0.001 at epoch 29
    assert ours(warm) == pytest.approx(t1) and ours(warm + 5) == pytest.approx(t1)


def test_ibot_patch_loss_equals_lightly_but_centre_differs() -> None:
    lightly_loss = pytest.importorskip("lightly.loss")
    gen = torch.Generator().manual_seed(1)
    b, n, k, tau_t, tau_s = 3, 9, 16, 0.07, 0.1
    t_patch, s_patch = torch.randn(b, n, k, generator=gen), torch.randn(b, n, k, generator=gen)
    mask = torch.rand(b, n, generator=gen) < 0.5
    mask[2] = False  # an image with nothing masked contributes 0 in both
    theirs = lightly_loss.IBOTPatchLoss(k, teacher_temp=tau_t, student_temp=tau_s)
    c0 = torch.randn(1, k, generator=gen)
    theirs.center.center = c0.clone()
    ours_c = c0.clone().view(1, 1, k)
    ours = ibot_patch_loss(teacher_probs(t_patch, ours_c, tau_t), s_patch, mask, tau_s)
    got = theirs(t_patch[mask], s_patch[mask], mask.view(b, 3, 3), teacher_temp=tau_t)
    torch.testing.assert_close(got, ours, rtol=1e-6, atol=1e-6)
    # Centre: lightly (DINOv2 style) averages the masked teacher tokens only; iBOT and the notes
    # (§1.2.3 c_patch <- 0.9 c + 0.1 mean_batch(mean_tokens(t_patch))) average every token.
    update_center_(ours_c, t_patch.mean((0, 1), keepdim=True), 0.9)
    masked_mean = 0.9 * c0 + 0.1 * t_patch[mask].mean(0, keepdim=True)
    torch.testing.assert_close(theirs.center.value, masked_mean)
    gap = (theirs.center.value - ours_c.view(1, k)).abs().max().item()
    assert gap > 1e-3  # measured 0.042 on this draw: a different centring rule
    # Fed every token, lightly's centre equals ours.
    full = lightly_loss.IBOTPatchLoss(k, teacher_temp=tau_t, student_temp=tau_s)
    full.center.center = c0.clone()
    full.center.update(t_patch.flatten(0, 1))
    torch.testing.assert_close(full.center.value, ours_c.view(1, k))


def test_update_momentum_equals_ours_on_matching_modules_not_on_partial_teachers() -> None:
    lightly_utils = pytest.importorskip("lightly.models.utils")
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    t_ours = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    t_theirs = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    t_theirs.load_state_dict(t_ours.state_dict())
    for m in (0.996, 0.5, 1.0):
        ema_update_(t_ours, student, m)
        lightly_utils.update_momentum(student, t_theirs, m)
        for a, b in zip(t_ours.parameters(), t_theirs.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # OpenUS's teacher lacks the student's separate patch last layer (shared head, §1.2.2): we
    # pair parameters by name and skip it; lightly pairs by position, and fails here.
    student2 = nn.ModuleDict({"cls": nn.Linear(4, 4), "patch": nn.Linear(4, 4)})
    teacher2 = nn.ModuleDict({"cls": nn.Linear(4, 4)})
    before = teacher2.cls.weight.detach().clone()
    ema_update_(teacher2, student2, 0.5)
    torch.testing.assert_close(teacher2.cls.weight, 0.5 * before + 0.5 * student2.cls.weight)
    with pytest.raises(RuntimeError):
        lightly_utils.update_momentum(student2, teacher2, 0.5)


def test_cosine_schedule_is_ours_with_one_more_step() -> None:
    lightly_sched = pytest.importorskip("lightly.utils.scheduler")
    total, (a, b) = 50, (0.996, 1.0)
    ours = [cosine_ramp(s / total, a, b) for s in range(total)]
    # lightly reaches the end value at step max_steps - 1; ours (DINO's cosine_scheduler,
    # step / total_steps) at step total_steps. So lightly(step, total + 1) == ours(step / total).
    shifted = [lightly_sched.cosine_schedule(s, total + 1, a, b) for s in range(total)]
    assert shifted == pytest.approx(ours, abs=1e-12)
    same_n = [lightly_sched.cosine_schedule(s, total, a, b) for s in range(total)]
    gap = max(abs(x - y) for x, y in zip(same_n, ours))
    assert 0 < gap < (b - a) * math.pi / total  # under one step of the curve's slope

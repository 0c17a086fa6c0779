"""``uslib.models.params``: weight-decay groups, layer-wise decay, the EMA formula; and the engine's
use of the group keys (``lr_scale``, ``freeze_epochs``) and per-parameter clipping."""

from __future__ import annotations

import pytest
import torch
from engine_toys import ToyImages, ToyRegressor
from torch import nn

from uslib.config import OptimConfig
from uslib.engine import fit
from uslib.engine.optim import clip_per_parameter
from uslib.models import create_backbone
from uslib.models.params import block_layer_id, ema_update_, layer_decay_groups, weight_decay_groups


def test_ema_update_matches_the_formula_and_skips_buffers() -> None:
    torch.manual_seed(0)
    student, teacher = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        student.weight.normal_()
        student.running_mean.fill_(5.0)
    t0 = teacher.weight.detach().clone()
    ema_update_(teacher, student, 0.9)
    torch.testing.assert_close(teacher.weight.detach(), 0.9 * t0 + 0.1 * student.weight.detach())
    assert torch.equal(teacher.running_mean, torch.zeros(3))  # buffers are the teacher's own
    ema_update_(teacher, student, 1.0)  # m = 1: unchanged
    ema_update_(teacher, student, 0.0)  # m = 0: a copy
    assert torch.equal(teacher.weight, student.weight)
    with pytest.raises(ValueError, match="momentum"):
        ema_update_(teacher, student, 1.5)
    with pytest.raises(ValueError, match="weight"):
        ema_update_(nn.Linear(2, 3), nn.Linear(3, 3), 0.5)


def test_weight_decay_groups_leave_out_norms_biases_and_frozen() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    model[2].requires_grad_(False)
    decay, no_decay = weight_decay_groups(model, 0.05)
    assert decay["params"] == [model[0].weight] and decay["weight_decay"] == 0.05
    assert no_decay["params"] == [model[0].bias, model[1].weight, model[1].bias]


def test_layer_decay_scales() -> None:
    vit = create_backbone("vit_smoke")
    depth = len(vit.blocks) if hasattr(vit, "blocks") else len(vit.vit.blocks)
    groups = layer_decay_groups(vit, 0.05, 0.5, depth)
    by_id = {g["layer_id"]: g["lr_scale"] for g in groups}
    assert by_id[depth + 1] == 1.0 and by_id[0] == pytest.approx(0.5 ** (depth + 1))
    assert by_id[1] == pytest.approx(0.5**depth)
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == sum(1 for p in vit.parameters() if p.requires_grad)
    assert block_layer_id("blocks.2.attn.qkv.weight", 12) == 3
    assert block_layer_id("layer3.0.conv1.weight", 4) == 3 and block_layer_id("fc.weight", 4) == 5
    with pytest.raises(ValueError, match="layer_decay"):
        layer_decay_groups(vit, 0.05, 0.0, depth)


class _FrozenHead(ToyRegressor):
    """Last layer frozen for the first epoch (DINO), first layer at a tenth of the lr."""

    def param_groups(self, weight_decay: float) -> list[dict]:
        first, last = self.net[1], self.net[3]
        return [
            {"params": list(first.parameters()), "weight_decay": 0.0, "lr_scale": 0.1},
            {"params": list(last.parameters()), "weight_decay": 0.0, "freeze_epochs": 1},
        ]


def test_fit_applies_freeze_epochs_and_lr_scale() -> None:
    method = _FrozenHead(noise=0.0)
    last0 = method.net[3].weight.detach().clone()
    lrs: list[float] = []
    opt = OptimConfig(epochs=1, batch_size=4, lr=0.1, schedule="constant")
    fit(method, ToyImages(8), opt, progress=False)
    assert torch.equal(method.net[3].weight, last0)  # frozen through epoch 0
    fit(method, ToyImages(8), opt.replace(epochs=2), progress=False, callbacks=[
        lambda e, m, row: lrs.append(e) or None
    ])  # fmt: skip
    assert not torch.equal(method.net[3].weight, last0)  # trains from epoch 1
    assert lrs == [0, 1]


def test_lr_scale_reaches_the_optimizer() -> None:
    from uslib.engine.loop import _set_lr
    from uslib.engine.optim import build_optimizer

    method = _FrozenHead()
    opt = OptimConfig(lr=0.2, schedule="constant")
    optimizer = build_optimizer(method, opt)
    _set_lr(optimizer, opt, 0, 10, 5)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.02, 0.2])


def test_clip_per_parameter() -> None:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4])
    clip_per_parameter([a, b], 1.0)
    torch.testing.assert_close(a.grad.norm(), torch.tensor(1.0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.grad, torch.tensor([0.3, 0.4]))  # under the limit: untouched

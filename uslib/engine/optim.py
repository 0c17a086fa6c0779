"""Optimizer construction from a method's parameter groups, and the per-step group rules.

Groups come from ``Method.param_groups(weight_decay)`` (default: no decay on norms and biases,
``uslib.models.params``); any other module gets the default split. Per step the engine sets
``lr = scheduled_lr * group["lr_scale"]`` (layer-wise decay), applies the weight-decay schedule to
groups with ``apply_decay`` and drops the gradients of groups with ``freeze_epochs > epoch``
(DINO/iBOT's frozen last layer in the first epoch).
"""

from __future__ import annotations

import torch
from torch import nn

from uslib.config import OptimConfig
from uslib.models.params import weight_decay_groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (default), Adam (USCL B.7: coupled L2 decay) or SGD over the model's groups.

    Raises:
        ValueError: unknown optimizer name, or a model with no trainable parameter.
    """
    make = getattr(model, "param_groups", None)
    raw = make(cfg.weight_decay) if callable(make) else weight_decay_groups(model, cfg.weight_decay)
    groups = [g for g in raw if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameter")
    for g in groups:
        g["initial_lr"] = cfg.lr
    name = cfg.optimizer.lower()
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    if name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid: 'adamw', 'adam', 'sgd'")


def drop_frozen_grads(optimizer: torch.optim.Optimizer, epoch: int) -> None:
    """Set ``grad = None`` for groups still frozen at ``epoch`` (the optimizer then skips them).

    Ref: DINO/iBOT ``cancel_gradients_last_layer`` (last layer frozen in the first epoch).
    """
    for g in optimizer.param_groups:
        if epoch < int(g.get("freeze_epochs", 0)):
            for p in g["params"]:
                p.grad = None


def clip_per_parameter(parameters: list[nn.Parameter], max_norm: float) -> None:
    """Clip each parameter's gradient to norm ``max_norm`` on its own (DINO ``clip_gradients``).

    Ref: OpenUS notes §1.3 (per-parameter gradient clipping 3.0).
    """
    for p in parameters:
        if p.grad is not None:
            norm = p.grad.detach().norm(2)
            scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
            p.grad.detach().mul_(scale)

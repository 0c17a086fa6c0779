"""Optimizer construction with no-decay parameter groups (MAE / timm convention)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from uslib.config import OptimConfig

_NO_DECAY_NAMES = ("bias", "pos_embed", "cls_token", "mask_token", "relative_position_bias_table")


def param_groups(
    model: nn.Module, weight_decay: float, extra_no_decay: Iterable[str] = ()
) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group.

    Biases, norm weights (any parameter with ``ndim <= 1``), position embeddings and class/mask
    tokens get no weight decay, as in MAE's ``param_groups_weight_decay``.

    Args:
        model: module whose trainable parameters are grouped.
        weight_decay: decay of the decayed group.
        extra_no_decay: further name fragments to exclude from decay.

    Returns:
        Two optimizer parameter groups (``"apply_decay"`` marks the decayed one).
    """
    skip = tuple(_NO_DECAY_NAMES) + tuple(extra_no_decay)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or any(s in name for s in skip):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "apply_decay": True},
        {"params": no_decay, "weight_decay": 0.0, "apply_decay": False},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (default), Adam (USCL B.7: coupled L2 decay) or SGD over ``param_groups``.

    Raises:
        ValueError: unknown optimizer name, or a model with no trainable parameter.
    """
    groups = [g for g in param_groups(model, cfg.weight_decay) if g["params"]]
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

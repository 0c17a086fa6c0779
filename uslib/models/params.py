"""Parameter groups and teacher updates: weight-decay groups, layer-wise lr decay, EMA.

These sit under ``methods`` and ``engine``: a method's ``param_groups()`` composes them, the
engine builds its optimizer from the groups and applies the group keys each step
(``lr_scale``: a multiplier of the scheduled learning rate; ``apply_decay``: follows the
weight-decay schedule; ``freeze_epochs``: the group's gradients are dropped before the optimizer
step while ``epoch < freeze_epochs``, DINO's ``cancel_gradients_last_layer``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import torch
from torch import nn

NO_DECAY_NAMES: tuple[str, ...] = (
    "bias",
    "pos_embed",
    "cls_token",
    "mask_token",
    "relative_position_bias_table",
)
"""Name fragments that never get weight decay (MAE / timm ``param_groups_weight_decay``)."""


def _no_decay(name: str, p: nn.Parameter, skip: tuple[str, ...]) -> bool:
    return p.ndim <= 1 or any(s in name for s in skip)


def weight_decay_groups(
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
        Two optimizer parameter groups (``"apply_decay"`` marks the decayed one); frozen
        parameters (``requires_grad=False``) are left out.
    """
    skip = NO_DECAY_NAMES + tuple(extra_no_decay)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if _no_decay(name, p, skip) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay, "apply_decay": True},
        {"params": no_decay, "weight_decay": 0.0, "apply_decay": False},
    ]


_BLOCK = re.compile(r"(?:^|\.)(?:blocks|layers)\.(\d+)\.")  # ViT / VMamba: 0-based
_RESNET_STAGE = re.compile(r"(?:^|\.)layer(\d+)\.")  # torchvision ResNet: layer1..layer4


def block_layer_id(name: str, num_layers: int) -> int:
    """Layer id of a parameter for layer-wise decay: 0 for the stem, i + 1 for block i.

    Stems (``patch_embed``, ``cls_token``, ``pos_embed``, ``mask_token``, ``stem``, ResNet's
    ``conv1``/``bn1``) are layer 0, ``blocks.i`` / ``layers.i`` are ``i + 1``, ResNet stages
    ``layer1..4`` keep their number, anything else (final norm, heads) is ``num_layers + 1``.

    Ref: BEiT / MAE ``lr_decay.get_layer_id_for_vit``.
    """
    stem = ("patch_embed", "cls_token", "pos_embed", "mask_token", "stem")
    if any(s in name for s in stem) or name.startswith(("conv1", "bn1")):
        return 0
    if (m := _BLOCK.search(name)) is not None:
        return min(int(m.group(1)) + 1, num_layers + 1)
    if (m := _RESNET_STAGE.search(name)) is not None:
        return min(int(m.group(1)), num_layers + 1)
    return num_layers + 1


def layer_decay_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float,
    num_layers: int,
    layer_id: Callable[[str, int], int] = block_layer_id,
) -> list[dict]:
    """Weight-decay groups split further by depth, with ``lr_scale = layer_decay ** (L + 1 - id)``.

    The deepest layer (heads, id ``num_layers + 1``) trains at the full learning rate; each
    layer below it at ``layer_decay`` times the one above (fine-tuning recipe of BEiT / MAE).

    Args:
        model: the module being fine-tuned.
        weight_decay: decay of the decayed groups.
        layer_decay: per-layer factor in (0, 1].
        num_layers: number of blocks.
        layer_id: name -> layer id (default ``block_layer_id``).

    Returns:
        Parameter groups with ``lr_scale``, ``apply_decay`` and ``layer_id`` keys.
    """
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid, decay = layer_id(name, num_layers), not _no_decay(name, p, NO_DECAY_NAMES)
        g = groups.setdefault(
            (lid, decay),
            {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "apply_decay": decay,
                "lr_scale": layer_decay ** (num_layers + 1 - lid),
                "layer_id": lid,
            },
        )
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place: ``theta_t <- m * theta_t + (1 - m) * theta_s`` for every parameter pair.

    Parameters are paired by name (the teacher may lack some of the student's, e.g. the
    student's separate patch head; those are skipped). Buffers (BatchNorm statistics, centres)
    are the teacher's own and are left alone, as in DINO/iBOT.

    Args:
        teacher: the EMA copy (updated in place).
        student: the trained network.
        momentum: ``m`` in [0, 1]; 1 leaves the teacher unchanged.

    Raises:
        ValueError: ``momentum`` outside [0, 1], or a pair of parameters with different shapes.

    Ref: OpenUS notes §1.2.2; DINO Eq. "theta_t <- lambda theta_t + (1 - lambda) theta_s".
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
    s_params = dict(student.named_parameters())
    t_list, s_list = [], []
    for name, t in teacher.named_parameters():
        s = s_params.get(name)
        if s is None:
            continue
        if s.shape != t.shape:
            raise ValueError(
                f"EMA pair {name!r}: teacher {tuple(t.shape)} vs student {tuple(s.shape)}"
            )
        t_list.append(t)
        s_list.append(s.detach().to(t.dtype))
    if t_list:
        torch._foreach_mul_(t_list, momentum)
        torch._foreach_add_(t_list, s_list, alpha=1.0 - momentum)

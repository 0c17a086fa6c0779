"""Backbones and heads. ``create_backbone(name, **kw)`` is the only way names become modules.

Backbone contract (every registered backbone, ViT, VMamba and ResNet alike):

* ``forward(x)``: images (B, C, H, W) -> pooled features (B, ``num_features``);
* ``forward_features(x)``: list of feature maps [(B, C_i, H_i, W_i), ...], shallow to deep, the
  input of the light segmentation decoder; ``feature_info`` lists ``{"num_chs", "reduction"}``
  per map (timm's convention);
* ``num_features`` (int) and ``in_chans`` (int) attributes.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from uslib.registry import Registry

BACKBONES: Registry[nn.Module] = Registry("backbone")

# Modules that register backbones on import (each adds `@BACKBONES.register()` factories).
_BACKBONE_MODULES = ("resnet", "vit", "vmamba", "adaptive_vit")


def _load_all() -> None:
    for mod in _BACKBONE_MODULES:
        importlib.import_module(f"uslib.models.{mod}")


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name``; ``None``-valued kwargs are dropped (timm rule).

    Args:
        name: a registry name such as ``"resnet18"``, ``"vmamba_small"``, ``"vit_smoke"``.
        **kwargs: constructor overrides (``img_size``, ``in_chans``, ...).

    Returns:
        The backbone module (see the module docstring for its contract).
    """
    _load_all()
    return BACKBONES.create(name, **kwargs)


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered backbone names matching a shell-style ``pattern`` (e.g. ``"*_smoke"``)."""
    _load_all()
    return BACKBONES.list(pattern)

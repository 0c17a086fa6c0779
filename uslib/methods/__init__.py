"""Pretraining methods, one module per paper, registered by name in ``METHODS``.

Each entry is a ``MethodSpec``: the config class (with ``PRESETS``), ``build(cfg) -> Method`` and
``train_data(cfg, data_root) -> (train_dataset, val_dataset | None)`` so that
``python -m uslib.train --method NAME`` can run any of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uslib.config import MethodConfig
from uslib.methods.base import Method
from uslib.registry import Registry


@dataclass(frozen=True)
class MethodSpec:
    """What the registry stores for one method."""

    name: str
    config_cls: type[MethodConfig]
    build: Callable[[Any], Method]
    train_data: Callable[[Any, str | None], tuple[Any, Any]]


METHODS: Registry[MethodSpec] = Registry("method")

_METHOD_MODULES: tuple[str, ...] = ("uscl",)


def get_method(name: str) -> MethodSpec:
    """The ``MethodSpec`` registered as ``name``."""
    for mod in _METHOD_MODULES:
        importlib.import_module(f"uslib.methods.{mod}")
    return METHODS.create(name)


def list_methods() -> list[str]:
    """Names of every registered method."""
    for mod in _METHOD_MODULES:
        importlib.import_module(f"uslib.methods.{mod}")
    return METHODS.list()


__all__ = ["METHODS", "Method", "MethodSpec", "get_method", "list_methods"]

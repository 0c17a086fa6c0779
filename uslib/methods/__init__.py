"""Pretraining methods, one module per paper, registered by name in ``METHODS``.

Each entry is a ``MethodSpec``: the config class (with ``PRESETS``), ``build(cfg) -> Method``
and ``train_data(cfg, method) -> TrainData`` (datasets, optional collate function or batch
sampler, provenance), so that the one driver, ``uslib.pretraining.pretrain``, runs any of them
from a notebook or from ``python -m uslib.train --method NAME``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uslib.config import MethodConfig
from uslib.methods.base import Method, Progress, TrainData
from uslib.registry import Registry


@dataclass(frozen=True)
class MethodSpec:
    """What the registry stores for one method.

    Attributes:
        name: registry name (``"uscl"``); recorded in ``encoder.yaml``.
        config_cls: the method's ``MethodConfig`` subclass (``PRESETS`` per profile).
        build: ``cfg -> Method`` (weights seeded from ``cfg.seed``).
        train_data: ``(cfg, method) -> TrainData``; reads ``cfg.data`` (``data_root`` included)
            and may use the built method (e.g. a teacher's embeddings for a coreset).
        data_needs_fit: ``train_data`` takes a keyword ``fit`` (``uslib.engine.fit``) for a
            data stage that trains a proxy model (TinyUSFM's coreset). Methods sit below the
            engine and never import it (``.importlinter``); the driver hands the loop in.
    """

    name: str
    config_cls: type[MethodConfig]
    build: Callable[[Any], Method]
    train_data: Callable[..., TrainData]
    data_needs_fit: bool = False


METHODS: Registry[MethodSpec] = Registry("method")

_NOT_METHODS: frozenset[str] = frozenset({"base"})


def _load_all() -> None:
    """Import every module of this package (each registers its method on import), so a new
    paper joins the CLI, the driver and ``tests/test_methods.py`` by adding its file."""
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_METHODS and not info.name.startswith("_"):
            importlib.import_module(f"uslib.methods.{info.name}")


def get_method(name: str) -> MethodSpec:
    """The ``MethodSpec`` registered as ``name``."""
    _load_all()
    return METHODS.create(name)


def list_methods() -> list[str]:
    """Names of every registered method."""
    _load_all()
    return METHODS.list()


__all__ = ["METHODS", "Method", "MethodSpec", "Progress", "TrainData", "get_method", "list_methods"]

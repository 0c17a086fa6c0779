"""uslib: the library behind the ultrasound foundation-model companion notebooks.

The curated surface (imported lazily, so ``import uslib`` stays cheap):
``create_backbone``, ``list_backbones``, ``METHODS``, ``get_method``, ``fit``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "create_backbone": "uslib.models",
    "list_backbones": "uslib.models",
    "METHODS": "uslib.methods",
    "get_method": "uslib.methods",
    "list_methods": "uslib.methods",
    "fit": "uslib.engine",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'uslib' has no attribute {name!r}")

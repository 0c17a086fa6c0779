"""Name -> factory registries (timm's `register_model` / `create_model` idea, ~50 lines)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of factories.

    Duplicate names raise; ``create`` drops keyword arguments that are ``None`` (timm rule), so a
    caller can pass optional overrides straight through.

    Args:
        kind: what the registry holds ("backbone", "method"...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._table: dict[str, Callable[..., T]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``fn`` under ``name`` (default: the function's ``__name__``)."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            key = name or fn.__name__
            if key in self._table:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._table[key] = fn
            return fn

        return deco

    def create(self, name: str, **kwargs: Any) -> T:
        """Build ``name`` with ``kwargs``; ``None``-valued kwargs are dropped."""
        if name not in self._table:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self._table)}")
        return self._table[name](**{k: v for k, v in kwargs.items() if v is not None})

    def get(self, name: str) -> Callable[..., T]:
        """Return the factory registered under ``name``."""
        if name not in self._table:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {sorted(self._table)}")
        return self._table[name]

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style ``pattern``."""
        return sorted(n for n in self._table if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __len__(self) -> int:
        return len(self._table)

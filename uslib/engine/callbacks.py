"""Epoch callbacks of ``fit``: the contract and ``KeepBest`` (model selection on a logged value).

A callback is ``cb(epoch, method, row) -> dict | None``. ``fit`` calls it at each epoch end with
the method in eval mode under ``no_grad``; ``row`` is that epoch's row so far (``epoch``,
``step``, the ``val_*`` means of ``validation_step`` when ``fit`` has ``val_data``, and whatever
earlier callbacks of the list returned), so a metric callback placed before ``KeepBest`` can feed
it. A callback with a ``restore(rows)`` method is handed the restored epoch rows after a resume,
so its state (the best value so far) survives an interruption.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from uslib.methods.base import Method

EpochCallback = Callable[[int, Method, "dict[str, Any]"], "dict[str, float] | None"]


class KeepBest:
    """Calls ``on_improve(epoch, method, value)`` whenever ``row[key]`` beats the best so far.

    Strict improvement, so the earliest epoch wins ties. When ``key`` is absent or NaN (no
    validation data) every epoch counts as an improvement: the last epoch is kept. Adds
    ``best_epoch`` to each row.

    Args:
        key: the row entry to select on (e.g. ``"val_nt_xent"``, ``"sel_dice"``).
        on_improve: saves or copies the weights of ``method``.
        mode: ``"min"`` (losses) or ``"max"`` (accuracy, Dice).

    Ref: USCL §B.7 (the checkpoint with the lowest validation NT-Xent is kept).
    """

    def __init__(
        self,
        key: str,
        on_improve: Callable[[int, Method, float], None],
        mode: str = "min",
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"KeepBest mode must be 'min' or 'max', got {mode!r}")
        self.key, self.on_improve, self.sign = key, on_improve, 1.0 if mode == "min" else -1.0
        self.best, self.best_epoch = math.inf, -1

    def _offer(self, value: float, epoch: int) -> bool:
        """Record ``value`` of ``epoch`` if it is an improvement (NaN always is); say whether."""
        if not (math.isnan(value) or self.sign * value < self.best):
            return False
        self.best = math.inf if math.isnan(value) else self.sign * value
        self.best_epoch = epoch
        return True

    def __call__(self, epoch: int, method: Method, row: dict[str, Any]) -> dict[str, float]:
        value = float(row.get(self.key, math.nan))
        if self._offer(value, epoch):
            self.on_improve(epoch, method, value)
        return {"best_epoch": float(self.best_epoch)}

    def restore(self, rows: Sequence[dict[str, Any]]) -> None:
        """Replay the epochs logged before an interruption (their weights are already saved)."""
        for row in rows:
            self._offer(float(row.get(self.key, math.nan)), int(row["epoch"]))

"""Step -> value schedules: linear warmup, optional hold, then cosine (or constant).

The engine applies them to the learning rate (and to weight decay when ``weight_decay_end`` is
set); methods use the same function for EMA momentum and temperature schedules (OpenUS, DINO/iBOT),
so there is one definition of "warmup + cosine" in the project.
"""

from __future__ import annotations

import math


def cosine_ramp(fraction: float, start: float, end: float) -> float:
    """Half-cosine from ``start`` (``fraction = 0``) to ``end`` (``fraction = 1``), clipped.

    The DINO/iBOT teacher-momentum rule: ``end - (end - start) * (cos(pi * t) + 1) / 2``.

    Ref: OpenUS notes §1.2.2 (momentum 0.996 -> 1, cosine); DINO ``cosine_scheduler``.
    """
    t = min(1.0, max(0.0, float(fraction)))
    return end - (end - start) * (math.cos(math.pi * t) + 1.0) / 2.0


def warmup_cosine(
    step: int,
    total_steps: int,
    base: float,
    final: float = 0.0,
    warmup_steps: int = 0,
    hold_steps: int = 0,
    warmup_start: float = 0.0,
    kind: str = "cosine",
) -> float:
    """Value of a warmup + hold + cosine schedule at ``step`` (0-based).

    * ``step < warmup_steps``: linear from ``warmup_start`` to ``base``;
    * then ``hold_steps`` at ``base`` (USCL: "constant for the first 10 epochs", B.7);
    * then cosine from ``base`` to ``final`` over the remaining steps (``kind="constant"``
      stays at ``base``).

    Args:
        step: current optimizer step.
        total_steps: planned number of steps (the schedule ends at ``final``).
        base: peak value.
        final: value at the last step.
        warmup_steps: linear warmup length.
        hold_steps: steps held at ``base`` after warmup.
        warmup_start: value at step 0 of the warmup.
        kind: ``"cosine"`` or ``"constant"``.

    Returns:
        The scheduled value.
    """
    if kind not in ("cosine", "constant"):
        raise ValueError(f"unknown schedule kind {kind!r}; valid: 'cosine', 'constant'")
    if step < warmup_steps:
        return warmup_start + (base - warmup_start) * step / max(1, warmup_steps)
    if kind == "constant" or step < warmup_steps + hold_steps:
        return base
    decay_steps = max(1, total_steps - warmup_steps - hold_steps)
    t = min(1.0, (step - warmup_steps - hold_steps) / decay_steps)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * t))

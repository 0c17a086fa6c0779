"""The training engine: ``fit`` (the only loop), schedules, optimizers and checkpoints."""

from uslib.engine.callbacks import EpochCallback, KeepBest
from uslib.engine.loop import History, NonFiniteLossError, fit
from uslib.engine.optim import build_optimizer, param_groups
from uslib.engine.schedules import warmup_cosine

__all__ = [
    "EpochCallback",
    "KeepBest",
    "History",
    "NonFiniteLossError",
    "build_optimizer",
    "fit",
    "param_groups",
    "warmup_cosine",
]

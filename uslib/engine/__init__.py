"""The training engine: ``fit`` (the only loop), optimizers, callbacks and checkpoints."""

from uslib.engine.callbacks import EpochCallback, KeepBest
from uslib.engine.loop import History, NonFiniteLossError, fit
from uslib.engine.optim import build_optimizer

__all__ = ["EpochCallback", "KeepBest", "History", "NonFiniteLossError", "build_optimizer", "fit"]

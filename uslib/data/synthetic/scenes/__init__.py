"""Scene builders, one module per organ: ``build(rng, label, cfg, probe_kind) -> Scene``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from uslib.data.synthetic.config import SyntheticConfig
from uslib.data.synthetic.objects import Scene
from uslib.data.synthetic.scenes import breast, cardiac, fetal, liver, lung, thyroid

SceneBuilder = Callable[[np.random.Generator, int, SyntheticConfig, str], Scene]

BUILDERS: dict[str, SceneBuilder] = {
    "breast": breast.build,
    "thyroid": thyroid.build,
    "liver": liver.build,
    "lung": lung.build,
    "fetal_head": fetal.build,
    "cardiac": cardiac.build,
}
"""Organ -> scene builder."""

__all__ = ["BUILDERS", "SceneBuilder", "breast", "cardiac", "fetal", "liver", "lung", "thyroid"]

"""Shared scene pieces: probe draws, texture offsets and the body-wall layers."""

from __future__ import annotations

import dataclasses

import numpy as np

from uslib.data.synthetic.config import SyntheticConfig, uniform
from uslib.data.synthetic.objects import Obj, Surface
from uslib.data.synthetic.probe import CONVEX_PROBE, LINEAR_PROBE, PHASED_PROBE, Probe
from uslib.data.synthetic.tissue import BANK_N, T

BASE_PROBES: dict[str, Probe] = {
    "linear": LINEAR_PROBE,
    "convex": CONVEX_PROBE,
    "phased": PHASED_PROBE,
}


def u(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One uniform draw in [lo, hi)."""
    return float(rng.uniform(lo, hi))


def phase(rng: np.random.Generator) -> float:
    """A random phase in [0, 2 pi)."""
    return float(rng.uniform(0.0, 2.0 * np.pi))


def draw_probe(
    rng: np.random.Generator,
    cfg: SyntheticConfig,
    kind: str,
    fc: tuple[float, float],
    depth: tuple[float, float],
    **fields: float,
) -> Probe:
    """A probe of ``kind`` with centre frequency and depth drawn from organ ranges.

    The ranges are scaled by ``cfg.freq_scale`` / ``cfg.depth_scale``; the focus defaults to
    40-60 % of the depth. Linear probes get ``width = depth`` unless given (square images).
    """
    d = u(rng, *depth) * uniform(rng, cfg.depth_scale)
    f = u(rng, *fc) * uniform(rng, cfg.freq_scale)
    fields.setdefault("focus", d * u(rng, 0.4, 0.6))
    if kind == "linear":
        fields.setdefault("width", d)
    return dataclasses.replace(BASE_PROBES[kind], fc=f, depth=d, **fields)


def ellipsoid(
    label: int,
    c: tuple[float, float, float],
    ax: tuple[float, float, float],
    ang: float = 0.0,
    mask_id: int | None = 0,
    only_in: tuple[int, ...] | None = None,
) -> Obj:
    """An ellipsoid ``Obj`` (centre ``c``, semi-axes ``ax``, in-plane angle ``ang``)."""
    return Obj("ellipsoid", label, {"c": c, "ax": ax, "ang": ang}, mask_id, only_in)


def texture_offsets(rng: np.random.Generator) -> np.ndarray:
    """Random (3, 3) offsets into the texture bank (one scene's texture realisation)."""
    return rng.uniform(0, BANK_N, size=(3, 3)).astype(np.float32)


def wavy(rng: np.random.Generator, z0: float, amp: float, k: float, slope: float = 0.0) -> Surface:
    """A surface at depth ``z0`` with a random-phase ripple of amplitude ``amp``."""
    return Surface(z0, amp, k, phase(rng), slope)


def body_wall(
    rng: np.random.Generator, skin: float, fat: float, muscle: float | None = None
) -> tuple[list[Obj], Surface]:
    """Skin (also above the face, so tilted probes stay coupled), fat and optional muscle layers.

    Args:
        rng: generator.
        skin, fat, muscle: bottom depths (mm) of each layer.

    Returns:
        ``(objects, bottom_surface)``.
    """
    s_skin = wavy(rng, skin, 0.2, 0.3)
    s_fat = wavy(rng, fat, 0.2 + 0.05 * fat, u(rng, 0.05, 0.3))
    objs = [
        Obj("layer", T.SKIN, {"top": Surface(-80.0), "bot": s_skin}),
        Obj("layer", T.FAT, {"top": s_skin, "bot": s_fat}),
    ]
    bottom = s_fat
    if muscle is not None:
        bottom = wavy(rng, muscle, 0.5, u(rng, 0.05, 0.2))
        objs.append(Obj("layer", T.MUSCLE, {"top": s_fat, "bot": bottom}))
    return objs, bottom

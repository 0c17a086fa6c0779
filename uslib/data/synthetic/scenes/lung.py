"""Lung POCUS (convex or linear probe): chest wall, ribs with acoustic shadows ("bat sign"),
pleural line; A-lines (normal), B-lines (COVID / interstitial), or sub-pleural consolidation with
air bronchograms (pneumonia), optionally with a small effusion. Mask: consolidation = 1.
Videos show lung sliding (a lateral shift of the sub-pleural artefacts and B-lines).
Ref: synthetic_ultrasound.md §1 (lung), §2.2 (POCUS row); USCL POCUS.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from uslib.data.synthetic.config import SyntheticConfig
from uslib.data.synthetic.objects import Obj, Scene, Surface
from uslib.data.synthetic.probe import Probe
from uslib.data.synthetic.scenes.layout import (
    body_wall,
    draw_probe,
    ellipsoid,
    phase,
    texture_offsets,
    u,
)
from uslib.data.synthetic.tissue import T

CLASSES: tuple[str, ...] = ("a_lines", "b_lines", "consolidation")


def _b_lines(rng: np.random.Generator, n: int, half: float, faint: bool) -> list[tuple]:
    amp = (1.0, 4.0) if faint else (4.0, 15.0)
    return [(u(rng, -half, half), u(rng, 0.8, 2.5), u(rng, *amp)) for _ in range(n)]


def _consolidation(
    rng: np.random.Generator, zp: float, half: float, small: bool, scale: float
) -> tuple[list[Obj], dict[str, Any]]:
    """Hepatised lung abutting the pleura, shredded deep border, bright air bronchograms."""
    az = (u(rng, 4.0, 9.0) if small else u(rng, 12.0, 25.0)) * scale
    ax = az * u(rng, 1.0, 1.8)
    cc = (u(rng, -0.6, 0.6) * half, 0.0, zp + 0.8 * az)
    harm = [(3, 0.15, phase(rng)), (5, 0.1, phase(rng)), (11, 0.05, phase(rng))]
    objs = [
        Obj(
            "star",
            T.CONSOLIDATION,
            {"c": cc, "ax": (ax, 30.0, az), "harm": harm},
            mask_id=1,
            only_in=(T.AIR,),
        )
    ]
    for _ in range(int(rng.integers(0, 3) if small else rng.integers(3, 8))):
        c = (cc[0] + u(rng, -0.5, 0.5) * ax, 0.0, cc[2] + u(rng, -0.3, 0.3) * az)
        d = (u(rng, -1, 1), u(rng, -0.2, 0.2), u(rng, -1, 1))
        p = {"c": c, "d": d, "r": u(rng, 0.4, 0.8), "half": u(rng, 3.0, 10.0)}
        objs.append(Obj("tube", T.DIAPHRAGM, p, mask_id=1, only_in=(T.CONSOLIDATION,)))
    effusion = bool(rng.random() < 0.3)
    if effusion:  # anechoic fluid between pleura and lung, above the consolidation
        c = (cc[0], 0.0, zp + 1.5)
        p = {"c": c, "ax": (ax * 1.1, 30.0, u(rng, 2.0, 5.0))}
        objs.append(Obj("ellipsoid", T.FLUID, p, only_in=(T.AIR, T.CONSOLIDATION)))
    return objs, {"consolidation_mm": az, "effusion": effusion}


def _sliding(scene: Scene, t: int) -> dict[str, Any]:
    """Lung sliding: sub-pleural artefacts and B-lines shift with respiration."""
    art = dict(scene.artefacts)
    amp, period = scene.meta["slide_amp_mm"], scene.meta["slide_period"]
    shift = amp * math.sin(2.0 * math.pi * t / period)
    art["slide_mm"] = shift
    art["b_lines"] = [(x + shift, w, a) for x, w, a in scene.artefacts.get("b_lines", ())]
    return {"artefacts": art}


def _chest(
    rng: np.random.Generator, cfg: SyntheticConfig, probe_kind: str
) -> tuple[Probe, float, list[Obj]]:
    """Probe, pleura depth and the chest wall: layers, pleural line, air, ribs."""
    if probe_kind == "linear":
        probe = draw_probe(
            rng, cfg, "linear", fc=(6.0, 10.0), depth=(45.0, 70.0), width=u(rng, 38.0, 45.0)
        )
        zp = u(rng, 8.0, 16.0)
    else:
        probe = draw_probe(
            rng,
            cfg,
            probe_kind,
            fc=(3.0, 5.0),
            depth=(90.0, 140.0),
            fov=u(rng, 50.0, 65.0),
            focus=40.0,
        )
        zp = u(rng, 12.0, 25.0)
    objs, _ = body_wall(rng, 2.0, 0.4 * zp, zp)
    s_pl = Surface(zp, 0.2, 0.2, phase(rng))
    s_air = s_pl._replace(z0=zp + 1.2)
    objs[-1] = Obj("layer", T.MUSCLE, {"top": objs[-1].p["top"], "bot": s_pl})
    objs += [
        Obj("layer", T.PLEURA, {"top": s_pl, "bot": s_air}),
        Obj("layer", T.AIR, {"top": s_air, "bot": Surface(600.0)}),
    ]
    spacing, x0 = u(rng, 20.0, 28.0), u(rng, -14.0, 14.0)
    for i in range(-3, 4):  # ribs in cross-section (probe perpendicular to the ribs)
        c = (x0 + i * spacing, 0.0, zp - u(rng, 2.0, 3.0))
        objs.append(ellipsoid(T.BONE, c, (u(rng, 5.0, 7.0), 80.0, 2.5)))
    return probe, zp, objs


def build(rng: np.random.Generator, label: int, cfg: SyntheticConfig, probe_kind: str) -> Scene:
    """Lung scene of pattern ``CLASSES[label]`` (probe: convex or linear)."""
    probe, zp, objs = _chest(rng, cfg, probe_kind)
    half = 0.4 * probe.depth if probe.kind != "linear" else 0.45 * probe.width
    atypical = bool(rng.random() < cfg.p_atypical)
    art: dict[str, Any] = {"haze": u(rng, 0.01, 0.06), "b_lines": []}
    meta: dict[str, Any] = {"atypical": atypical, "consolidation_mm": 0.0, "effusion": False}
    name = CLASSES[label]
    if name == "a_lines":  # atypical: faint A-lines plus one or two (normal) B-lines
        art["a_lines"] = u(rng, 4.0, 12.0) * (0.4 if atypical else 1.0)
        art["b_lines"] = _b_lines(rng, int(rng.integers(1, 3)), half, True) if atypical else []
    elif name == "b_lines":  # atypical: a single faint B-line with A-lines
        art["a_lines"] = u(rng, 2.0, 6.0) if atypical else u(rng, 0.0, 2.0)
        art["b_lines"] = _b_lines(rng, 1 if atypical else int(rng.integers(2, 6)), half, atypical)
    else:  # atypical: small sub-pleural consolidation with A- and B-lines
        extra, info = _consolidation(rng, zp + 1.2, half, atypical, min(1.0, probe.depth / 110))
        objs += extra
        meta.update(info)
        art["a_lines"] = u(rng, 0.0, 3.0) if atypical else u(rng, 0.0, 0.5)
        if atypical:
            art["b_lines"] = _b_lines(rng, int(rng.integers(1, 3)), half, False)
    meta.update(
        n_b_lines=len(art["b_lines"]),
        a_lines=art["a_lines"],
        slide_amp_mm=u(rng, 0.5, 2.0),
        slide_period=u(rng, 12.0, 30.0),
    )
    return Scene(
        "lung",
        probe,
        objs,
        texture_scales=(1.5, 4.0, (6.0, 0.4)),
        tex_offset=texture_offsets(rng),
        artefacts=art,
        meta=meta,
        motion=_sliding,
    )

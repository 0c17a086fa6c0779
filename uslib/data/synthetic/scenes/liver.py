"""Liver (convex probe): abdominal wall, liver whose echo, heterogeneity, texture coarseness and
surface nodularity grow with the fibrosis grade F0-F4 (overlapping distributions), anechoic portal
and hepatic veins (some with bright walls), optional kidney, diaphragm with air behind.
Masks: liver = 1, vessels = 2, kidney = 3. Ref: synthetic_ultrasound.md §1 (liver), USCL fibrosis.
"""

from __future__ import annotations

import numpy as np

from uslib.data.synthetic.config import SyntheticConfig
from uslib.data.synthetic.objects import Obj, Scene, Surface
from uslib.data.synthetic.scenes.layout import body_wall, draw_probe, phase, texture_offsets, u
from uslib.data.synthetic.tissue import T

CLASSES: tuple[str, ...] = ("F0", "F1", "F2", "F3", "F4")
MASK_IDS: dict[str, int] = {"liver": 1, "vessel": 2, "kidney": 3}


def _vessels(rng: np.random.Generator, wall: float, depth: float) -> list[Obj]:
    """Portal / hepatic veins: finite tubes clipped to the liver; half have echogenic walls."""
    objs = []
    inside_liver = (T.LIVER,)
    for _ in range(int(rng.integers(3, 8))):
        c = (u(rng, -0.45, 0.45) * depth, u(rng, -8, 8), u(rng, wall + 15, 0.85 * depth))
        d = (u(rng, -1, 1), u(rng, -1, 1), u(rng, -0.5, 0.5))
        rad, half = u(rng, 1.5, 6.0), u(rng, 20.0, 60.0)
        if rng.random() < 0.5:
            p = {"c": c, "d": d, "r": rad + 0.8, "half": half}
            objs.append(Obj("tube", T.VESSEL_WALL, p, mask_id=1, only_in=inside_liver))
        p = {"c": c, "d": d, "r": rad, "half": half}
        objs.append(Obj("tube", T.FLUID, p, mask_id=2, only_in=(T.LIVER, T.VESSEL_WALL, T.FLUID)))
    return objs


def build(rng: np.random.Generator, label: int, cfg: SyntheticConfig, probe_kind: str) -> Scene:
    """Liver scene of fibrosis grade ``label`` (0-4).

    The parenchyma parameters use a *latent* grade g = label + N(0, 0.45) (or +/- 1 for atypical
    cases), so neighbouring grades overlap as in real staging.
    """
    probe = draw_probe(
        rng, cfg, probe_kind, fc=(2.8, 4.5), depth=(130.0, 170.0), fov=u(rng, 55.0, 70.0)
    )
    atypical = bool(rng.random() < cfg.p_atypical)
    g = label + rng.normal(0.0, 0.45) + (rng.choice([-1.0, 1.0]) if atypical else 0.0)
    g = float(np.clip(g, -0.5, 4.5))
    wall = u(rng, 12.0, 25.0)
    nodular = max(0.0, 0.3 + 0.45 * g + rng.normal(0.0, 0.2))
    objs, s_wall = body_wall(rng, 2.0, 0.5 * wall, wall)
    liver_top = Surface(wall, nodular, u(rng, 0.3, 0.7), phase(rng))
    objs[-1] = Obj("layer", T.MUSCLE, {"top": objs[-1].p["top"], "bot": liver_top})
    objs.append(Obj("layer", T.LIVER, {"top": liver_top, "bot": Surface(600.0)}, mask_id=1))
    objs += _vessels(rng, wall, probe.depth)
    if rng.random() < 0.5:  # kidney: cortex, bright sinus fat
        kc = (u(rng, -40.0, 40.0), 0.0, u(rng, 0.55, 0.75) * probe.depth)
        ang = u(rng, -0.4, 0.4)
        objs.append(
            Obj("ellipsoid", T.KIDNEY, {"c": kc, "ax": (45.0, 25.0, 22.0), "ang": ang}, mask_id=3)
        )
        objs.append(
            Obj("ellipsoid", T.GLAND, {"c": kc, "ax": (30.0, 15.0, 9.0), "ang": ang}, mask_id=3)
        )
    zd, curv = u(rng, 0.75, 1.0) * probe.depth, u(rng, 0.004, 0.01)
    objs.append(Obj("below", T.DIAPHRAGM, {"curve": (zd, curv, 1.0, 0.1, phase(rng))}))
    objs.append(Obj("below", T.AIR, {"curve": (zd + 3.0, curv, 1.0, 0.1, phase(rng))}))
    echo = 1.0 + 0.12 * g + rng.normal(0.0, 0.08)
    props = {
        T.LIVER: {
            "echo": max(echo, 0.6),
            "tex_sigma": max(0.1, 0.22 + 0.11 * g + rng.normal(0.0, 0.04)),
            "atten": 0.5 + 0.05 * g,
        }
    }
    meta = {"fibrosis": label, "latent_grade": g, "atypical": atypical, "nodularity_mm": nodular}
    return Scene(
        "liver",
        probe,
        objs,
        props=props,
        texture_scales=(1.0 + 0.5 * max(g, 0.0), 3.0 + 1.2 * max(g, 0.0), (8.0, 0.6)),
        tex_offset=texture_offsets(rng),
        meta=meta,
    )

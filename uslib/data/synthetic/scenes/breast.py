"""Breast (linear probe): skin, subcutaneous fat with Cooper's ligaments, fibroglandular layer
with fat lobules, retromammary fat, striated pectoral muscle, optional rib; none / benign (cysts
folded in) / malignant lesion. Mask: lesion = 1. Ref: synthetic_ultrasound.md §1 (breast), BUSI.
"""

from __future__ import annotations

import numpy as np

from uslib.data.synthetic.config import SyntheticConfig
from uslib.data.synthetic.objects import Obj, Scene, Surface
from uslib.data.synthetic.scenes.layout import body_wall, draw_probe, texture_offsets, u, wavy
from uslib.data.synthetic.scenes.lesions import (
    NO_LESION_META,
    draw_features,
    lesion_objects,
    lesion_props,
)
from uslib.data.synthetic.tissue import TISSUES, T

CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")


def _anatomy(rng: np.random.Generator, depth: float) -> tuple[list[Obj], float, float]:
    """Layers, ligaments, lobules, optional rib; returns (objects, gland top, gland bottom)."""
    fat_b = u(rng, 4.0, 10.0)
    gl_b = fat_b + u(rng, 0.25, 0.45) * depth
    pec_t = gl_b + u(rng, 2.0, 6.0)
    objs, s_fat = body_wall(rng, 1.5, fat_b)
    s_gland = wavy(rng, gl_b, u(rng, 1.0, 2.5), u(rng, 0.08, 0.2), u(rng, -0.05, 0.05))
    s_pec = wavy(rng, pec_t, 1.0, u(rng, 0.05, 0.12))
    objs += [
        Obj("layer", T.GLAND, {"top": s_fat, "bot": s_gland}),
        Obj("layer", T.FAT, {"top": s_gland, "bot": s_pec}),
        Obj("layer", T.MUSCLE, {"top": s_pec, "bot": Surface(500.0)}),
    ]
    half = depth / 2 + 10
    for _ in range(int(rng.integers(2, 6))):  # Cooper's ligaments: bright arcs in the fat
        c = (u(rng, -half, half), 0.0, fat_b + u(rng, 1.0, 6.0))
        ax = (u(rng, 5.0, 12.0), 30.0, u(rng, 2.0, 6.0))
        objs.insert(2, Obj("shell", T.VESSEL_WALL, {"c": c, "ax": ax, "t": 0.35}))
    for _ in range(int(rng.integers(2, 7))):  # fat lobules in the gland (lesion look-alikes)
        c = (u(rng, -half, half), u(rng, -8, 8), u(rng, fat_b + 1, gl_b))
        ax = (u(rng, 2.0, 5.0), u(rng, 2.0, 5.0), u(rng, 1.0, 3.0))
        objs.append(Obj("ellipsoid", T.FAT, {"c": c, "ax": ax, "ang": u(rng, -0.4, 0.4)}))
    if rng.random() < 0.3:  # rib below the muscle: bright top, shadow
        c = (u(rng, -half + 5, half - 5), 0.0, pec_t + u(rng, 4.0, 8.0))
        objs.append(Obj("ellipsoid", T.BONE, {"c": c, "ax": (6.0, 60.0, 3.0)}))
    return objs, fat_b, gl_b


def build(rng: np.random.Generator, label: int, cfg: SyntheticConfig, probe_kind: str) -> Scene:
    """Breast scene of class ``CLASSES[label]``.

    Returns:
        a ``Scene``; meta holds the lesion features (``lesion_*``) and ``atypical``.
    """
    probe = draw_probe(rng, cfg, probe_kind, fc=(6.0, 9.0), depth=(32.0, 45.0))
    objs, fat_b, gl_b = _anatomy(rng, probe.depth)
    props: dict[int, dict[str, float]] = {}
    meta: dict[str, object] = {"atypical": False, **NO_LESION_META}
    if CLASSES[label] != "normal":
        malignant = CLASSES[label] == "malignant"
        atypical = bool(rng.random() < cfg.p_atypical)
        feats = draw_features(rng, malignant, atypical, cfg.lesion_contrast_db, cfg.lesion_size_mm)
        lab = T.LESION_MALIGNANT if malignant else T.LESION_BENIGN
        c = (u(rng, -0.2, 0.2) * probe.depth, 0.0, u(rng, fat_b + 3, gl_b + 3))
        objs += lesion_objects(rng, feats, c, lab)
        props.update(lesion_props(rng, feats, lab, TISSUES[T.GLAND].echo))
        meta.update(atypical=atypical, lesion_x_mm=c[0], lesion_z_mm=c[2], **feats.as_meta())
    return Scene(
        "breast",
        probe,
        objs,
        props=props,
        texture_scales=(u(rng, 1.0, 2.0), u(rng, 3.0, 5.0), (6.0, 0.4)),
        tex_offset=texture_offsets(rng),
        meta=meta,
    )

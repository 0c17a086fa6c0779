"""Thyroid, transverse view (linear or micro-convex probe): skin, thin fat, strap muscles,
sternocleidomastoid, thyroid lobe and isthmus, carotid artery (bright wall) and jugular vein,
trachea (cartilage arc, air with reverberation behind), longus colli; none / benign / malignant
nodule. Benign nodules are iso- to hyperechoic, oval, smooth, sometimes cystic or haloed;
malignant ones hypoechoic, taller than wide, irregular, with microcalcifications.
Mask: nodule = 1. Ref: synthetic_ultrasound.md §2.2 (thyroid row, not prototyped there).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from uslib.data.synthetic.config import SyntheticConfig
from uslib.data.synthetic.objects import Obj, Scene
from uslib.data.synthetic.scenes.layout import body_wall, draw_probe, texture_offsets, u, wavy
from uslib.data.synthetic.scenes.lesions import (
    NO_LESION_META,
    draw_features,
    lesion_objects,
    lesion_props,
)
from uslib.data.synthetic.tissue import TISSUES, T

CLASSES: tuple[str, ...] = ("normal", "benign", "malignant")


def _neck(rng: np.random.Generator, side: float) -> tuple[list[Obj], dict[str, float]]:
    """Neck anatomy with the trachea on ``side`` (-1 left, +1 right) of the lobe."""
    fat_b = u(rng, 2.0, 3.5)
    strap_b = fat_b + u(rng, 2.5, 5.0)
    objs, s_fat = body_wall(rng, 1.2, fat_b)
    objs.append(Obj("layer", T.MUSCLE, {"top": s_fat, "bot": wavy(rng, strap_b, 0.5, 0.15)}))
    lobe = {
        "x": u(rng, -4.0, 4.0),
        "z": strap_b + u(rng, 7.0, 10.0),
        "ax": u(rng, 7.0, 11.0),
        "az": u(rng, 6.0, 9.0),
    }
    x, z, ax, az = lobe["x"], lobe["z"], lobe["ax"], lobe["az"]
    scm = (x - side * (ax + u(rng, 3.0, 6.0)), 0.0, fat_b + u(rng, 3.0, 5.0))
    objs.append(
        Obj(
            "ellipsoid",
            T.MUSCLE,
            {"c": scm, "ax": (u(rng, 8, 12), 40.0, u(rng, 3, 5)), "ang": side * u(rng, 0.2, 0.5)},
        )
    )
    objs.append(
        Obj(
            "ellipsoid",
            T.MUSCLE,
            {"c": (x, 0.0, z + az + u(rng, 3, 6)), "ax": (u(rng, 6, 10), 40.0, 3.5)},
        )
    )  # longus colli
    lobe_obj = Obj(
        "ellipsoid", T.THYROID, {"c": (x, 0.0, z), "ax": (ax, 25.0, az), "ang": u(rng, -0.2, 0.2)}
    )
    isthmus = {
        "c": (x + side * ax, 0.0, strap_b + 2.5),
        "ax": (ax * 0.9, 25.0, 2.0),
        "ang": side * 0.15,
    }
    objs += [lobe_obj, Obj("ellipsoid", T.THYROID, isthmus)]
    tx, tz, tr = x + side * (ax + u(rng, 4.0, 8.0)), strap_b + u(rng, 9.0, 12.0), u(rng, 8.0, 10.0)
    along = {"d": (0.0, 1.0, 0.0), "half": 60.0}
    objs.append(Obj("tube", T.CARTILAGE, {"c": (tx, 0.0, tz), "r": tr, **along}))
    objs.append(Obj("tube", T.AIR, {"c": (tx, 0.0, tz), "r": tr - u(rng, 1.0, 1.8), **along}))
    cx, cr = x - side * (ax + u(rng, 2.0, 5.0)), u(rng, 3.0, 4.5)
    cz = z + u(rng, -2.0, 3.0)
    objs.append(Obj("tube", T.VESSEL_WALL, {"c": (cx, 0.0, cz), "r": cr + 0.7, **along}))
    objs.append(Obj("tube", T.FLUID, {"c": (cx, 0.0, cz), "r": cr, **along}))
    jv = (cx - side * u(rng, 3.0, 7.0), 0.0, cz - cr - u(rng, 1.0, 3.0))
    objs.append(Obj("ellipsoid", T.FLUID, {"c": jv, "ax": (u(rng, 3, 6), 40.0, u(rng, 1, 3.5))}))
    lobe.update(trachea_x=tx, trachea_z=tz, trachea_r=tr)
    return objs, lobe


def _microcalcifications(rng: np.random.Generator, c: tuple, size: float, host: int) -> list[Obj]:
    out = []
    for _ in range(int(rng.integers(3, 10))):
        p = (c[0] + u(rng, -0.6, 0.6) * size, c[1], c[2] + u(rng, -0.6, 0.6) * size)
        r = u(rng, 0.25, 0.5)
        out.append(
            Obj(
                "ellipsoid",
                T.CALCIFICATION,
                {"c": p, "ax": (r, r, r)},
                mask_id=None,
                only_in=(host,),
            )
        )
    return out


def build(rng: np.random.Generator, label: int, cfg: SyntheticConfig, probe_kind: str) -> Scene:
    """Thyroid scene of class ``CLASSES[label]``."""
    if probe_kind == "convex":  # micro-convex
        probe = draw_probe(
            rng,
            cfg,
            "convex",
            fc=(5.0, 8.0),
            depth=(32.0, 45.0),
            radius=u(rng, 12.0, 20.0),
            fov=u(rng, 55.0, 70.0),
            elev=1.0,
        )
    else:
        probe = draw_probe(rng, cfg, probe_kind, fc=(8.0, 12.0), depth=(30.0, 42.0))
    side = 1.0 if rng.random() < 0.5 else -1.0
    objs, lobe = _neck(rng, side)
    props: dict[int, dict[str, float]] = {T.HALO: {"echo": 0.3, "atten": 0.6}}
    meta: dict[str, object] = {"atypical": False, **NO_LESION_META}
    if CLASSES[label] != "normal":
        malignant = CLASSES[label] == "malignant"
        atypical = bool(rng.random() < cfg.p_atypical)
        lo, hi = cfg.lesion_contrast_db
        contrast = (lo, hi) if malignant else (hi - 3.0, hi + 7.0)  # benign: iso / hyperechoic
        size = (cfg.lesion_size_mm[0], min(cfg.lesion_size_mm[1], 1.1 * lobe["ax"]))
        feats = draw_features(rng, malignant, atypical, contrast, (min(size), max(size)))
        feats = dataclasses.replace(feats, halo=not malignant and rng.random() < 0.4)
        lab = T.LESION_MALIGNANT if malignant else T.LESION_BENIGN
        c = (
            lobe["x"] + u(rng, -0.4, 0.4) * lobe["ax"],
            0.0,
            lobe["z"] + u(rng, -0.3, 0.3) * lobe["az"],
        )
        objs += lesion_objects(rng, feats, c, lab)
        if malignant != (atypical and rng.random() < 0.5) and not feats.cystic:
            objs += _microcalcifications(rng, c, feats.size_mm, lab)
        props.update(lesion_props(rng, feats, lab, TISSUES[T.THYROID].echo))
        if feats.posterior == "shadow":
            props[lab]["atten"] = u(rng, 1.0, 2.0)
        meta.update(atypical=atypical, lesion_x_mm=c[0], lesion_z_mm=c[2], **feats.as_meta())
    tx, tr = lobe["trachea_x"], lobe["trachea_r"]
    art = {"a_lines": u(rng, 2.0, 8.0), "haze": 0.0, "x_range": (tx - 0.8 * tr, tx + 0.8 * tr)}
    meta.update(trachea_side=side)
    return Scene(
        "thyroid",
        probe,
        objs,
        props=props,
        texture_scales=(1.0, 3.0, (5.0, 0.35)),
        tex_offset=texture_offsets(rng),
        artefacts=art,
        meta=meta,
    )

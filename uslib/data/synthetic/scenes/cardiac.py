"""Cardiac apical four-chamber view (phased array): LV and RV with myocardium, atria, bright
pericardium; the LV contracts periodically. Masks: LV cavity = 1, LV myocardium = 2, LA = 3.

Ejection fraction (documented choice): the *area* EF of the imaged LV cavity,
EF = (EDA - ESA) / EDA. The cavity's in-plane semi-axes scale by k(t) about the apex, with
k = 1 at end-diastole and k_min = sqrt(1 - EF) at end-systole, so the area (and the ellipsoid
volume, whose elevation axis is fixed) scales by k^2. Ref: synthetic_ultrasound.md §1 item 12
("cardiac"), §2.2; EchoNet-Dynamic / CAMUS.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from uslib.data.synthetic.config import SyntheticConfig
from uslib.data.synthetic.objects import Obj, Scene, Surface
from uslib.data.synthetic.scenes.layout import draw_probe, ellipsoid, texture_offsets, u
from uslib.data.synthetic.tissue import T

CLASSES: tuple[str, ...] = ("normal_ef", "reduced_ef")
EF_RANGES: dict[str, tuple[float, float]] = {"normal_ef": (0.5, 0.7), "reduced_ef": (0.15, 0.4)}
"""Area-EF ranges per class; atypical cases are drawn from the borderline 0.40-0.50."""


def contraction(phase: float, ef: float) -> float:
    """In-plane LV scale k at cardiac phase in [0, 1) (0 = end-diastole, 0.5 = end-systole)."""
    k_min = math.sqrt(1.0 - ef)
    return 1.0 - (1.0 - k_min) * 0.5 * (1.0 - math.cos(2.0 * math.pi * phase))


def _heart(m: dict[str, Any], k: float) -> list[Obj]:
    """Chamber objects at in-plane LV scale ``k`` (the apex stays in place)."""
    lw, ll, rv, side = m["lv_w"], m["lv_l"], m["rv_w"], m["side"]
    squeeze = (1.0 - k) / max(1e-6, 1.0 - math.sqrt(1.0 - m["ef"]))  # 0 at ED, 1 at ES
    ca, sa, rot = math.cos(m["axis_ang"]), math.sin(m["axis_ang"]), -m["axis_ang"]

    def at(dist: float, lateral: float) -> tuple[float, float, float]:  # along the LV axis
        return (m["apex_x"] + sa * dist + ca * lateral, 0.0, m["apex_z"] + ca * dist - sa * lateral)

    t = m["wall_mm"] * (1.0 + 0.4 * squeeze)  # systolic wall thickening
    lv_c = at(ll * k + 0.5 * t, 0.0)
    la_l = m["la_l"] * (1.0 + 0.15 * squeeze)  # atria fill during systole
    base = 2.0 * ll * k + t + la_l  # atria follow the descending base
    rv_wall, rv_cav = at(0.9 * ll, side * (lw + 0.8 * t + rv)), at(0.95 * ll, side * (lw + t + rv))
    return [
        ellipsoid(T.MYOCARDIUM, lv_c, (lw * k + t, lw + t, ll * k + t), rot, mask_id=2),
        ellipsoid(T.MYOCARDIUM, rv_wall, (rv + 3, lw, 0.85 * ll), rot),
        ellipsoid(T.BLOOD, rv_cav, (rv * (0.9 + 0.1 * k), lw, 0.8 * ll), rot),
        ellipsoid(T.BLOOD, lv_c, (lw * k, lw, ll * k), rot, mask_id=1),
        ellipsoid(T.BLOOD, at(base, 0.0), (m["la_w"], lw, la_l), rot, mask_id=3),
        ellipsoid(T.BLOOD, at(base, side * (lw + rv + t)), (m["la_w"], lw, la_l), rot),
    ]


def _beat(scene: Scene, t: int) -> dict[str, Any]:
    """Scene fields at frame ``t``: the heart at its phase of the cycle."""
    m = scene.meta
    ph = ((t + m["start_frame"]) % m["period_frames"]) / m["period_frames"]
    k = contraction(ph, m["ef"])
    return {"objects": m["_static"] + _heart(m, k), "meta": dict(m, phase=ph, k=k)}


def _params(rng: np.random.Generator, depth: float, ef: float) -> dict[str, Any]:
    lv_l = u(rng, 0.2, 0.26) * depth
    return {
        "ef": ef,
        "apex_x": u(rng, -6.0, 6.0),
        "apex_z": u(rng, 18.0, 30.0),
        "axis_ang": u(rng, -0.25, 0.25),
        "lv_w": lv_l * u(rng, 0.45, 0.6),
        "lv_l": lv_l,
        "wall_mm": u(rng, 7.0, 11.0),
        "rv_w": u(rng, 8.0, 14.0),
        "la_w": u(rng, 14.0, 20.0),
        "la_l": u(rng, 12.0, 18.0),
        "side": 1.0 if rng.random() < 0.5 else -1.0,
        "period_frames": 2 * int(rng.integers(4, 9)),
        "start_frame": 0,
    }


def build(rng: np.random.Generator, label: int, cfg: SyntheticConfig, probe_kind: str) -> Scene:
    """Apical four-chamber scene with LV area-EF drawn for class ``CLASSES[label]``.

    A still shows a random phase; ``Scene.at_time(t)`` gives frame t of a cycle of
    ``period_frames`` frames starting ``start_frame`` frames after end-diastole.
    """
    probe = draw_probe(
        rng,
        cfg,
        probe_kind,
        fc=(2.0, 3.5),
        depth=(130.0, 170.0),
        fov=u(rng, 70.0, 85.0),
        radius=0.0,
    )
    atypical = bool(rng.random() < cfg.p_atypical)
    ef = u(rng, 0.4, 0.5) if atypical else u(rng, *EF_RANGES[CLASSES[label]])
    m = _params(rng, probe.depth, ef)
    d = probe.depth
    peri = {
        "c": (m["apex_x"], 0.0, m["apex_z"] + 0.6 * d),
        "t": 1.5,
        "ax": (0.55 * d, 60.0, 0.62 * d),
        "ang": -m["axis_ang"],
    }
    m["_static"] = [
        Obj("layer", T.SKIN, {"top": Surface(-80.0), "bot": Surface(2.0)}),
        Obj("layer", T.MUSCLE, {"top": Surface(2.0), "bot": Surface(m["apex_z"] - 6.0)}),
        Obj("ring", T.VESSEL_WALL, peri),  # pericardium
    ]
    phase0 = float(rng.random())
    m.update(atypical=atypical, phase=phase0, k=contraction(phase0, ef))
    return Scene(
        "cardiac",
        probe,
        m["_static"] + _heart(m, m["k"]),
        props={T.BACKGROUND: {"echo": 0.6, "tex_sigma": 0.5}},
        texture_scales=(1.5, 4.0, (5.0, 0.5)),
        tex_offset=texture_offsets(rng),
        meta=m,
        motion=_beat,
    )


def for_video(scene: Scene, n_frames: int, rng: np.random.Generator) -> Scene:
    """The scene set up for a video of ``n_frames``: the cycle fits the video when possible.

    The period is an even number of frames (so end-systole is a frame) no longer than the
    video, and the video starts at a random frame of the cycle.
    """
    m = dict(scene.meta)
    p = int(m["period_frames"])
    if n_frames >= 4:
        p = min(p, n_frames - n_frames % 2)
    m.update(period_frames=p, start_frame=int(rng.integers(0, p)))
    return dataclasses.replace(scene, meta=m)

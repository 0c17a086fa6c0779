"""Fetal head (convex probe): maternal wall, amniotic fluid, skull ellipse (moderately
attenuating), brain with midline falx and cavum, uterine wall / placenta. Mask: the filled head
(HC18-style outer skull border) = 1; the head circumference (mm) is the Ramanujan perimeter of the
imaged cross-section of the outer skull ellipsoid. Ref: synthetic_ultrasound.md §1, HC18.
"""

from __future__ import annotations

import math

import numpy as np

from uslib.data.synthetic.config import SyntheticConfig
from uslib.data.synthetic.objects import Obj, Scene, Surface
from uslib.data.synthetic.probe import ImageGeometry, Pose
from uslib.data.synthetic.scenes.layout import body_wall, draw_probe, texture_offsets, u, wavy
from uslib.data.synthetic.tissue import T

CLASSES: tuple[str, ...] = ("head",)


def ellipse_perimeter(a: float, b: float) -> float:
    """Ramanujan's second approximation of the perimeter of an ellipse with semi-axes a, b."""
    h = ((a - b) / (a + b)) ** 2
    return math.pi * (a + b) * (1.0 + 3.0 * h / (10.0 + math.sqrt(4.0 - 3.0 * h)))


def head_meta(scene: Scene, pose: Pose, geom: ImageGeometry) -> dict[str, object]:
    """HC (mm) and the mask ellipse in pixels for the imaged slice at ``pose``.

    The slice at elevation y cuts the outer skull ellipsoid (semi-axes a, a_y, b) in an ellipse
    scaled by sqrt(1 - (y / a_y)^2). Pixel angle: of the ellipse's first axis, from the image
    x axis (columns) toward rows, radians.
    """
    a, ay, b = scene.meta["head_axes_mm"]
    cx, cy, cz = scene.meta["head_centre_mm"]
    s = math.sqrt(max(0.0, 1.0 - ((pose.y - cy) / ay) ** 2))
    uc, _, wc = pose.to_probe(np.float64(cx), np.float64(cy), np.float64(cz))
    row, col = geom.to_pixel(float(uc), float(wc))
    th = np.linspace(0.0, 2.0 * math.pi, 90, endpoint=False)
    ang = scene.meta["head_angle_rad"] + pose.tilt
    pu = uc + a * s * np.cos(th) * math.cos(ang) - b * s * np.sin(th) * math.sin(ang)
    pw = wc + a * s * np.cos(th) * math.sin(ang) + b * s * np.sin(th) * math.cos(ang)
    r, lat = scene.probe.probe_to_beam(pu, pw)
    l0, l1 = scene.probe.lateral_extent()
    in_view = bool(np.all((r >= 0) & (r <= scene.probe.depth) & (lat >= l0) & (lat <= l1)))
    return {
        "head_in_view": in_view,
        "hc_mm": ellipse_perimeter(a * s, b * s),
        "head_a_px": a * s / geom.spacing,
        "head_b_px": b * s / geom.spacing,
        "head_row_px": row,
        "head_col_px": col,
        "head_angle_rad": ang,
    }


def build(rng: np.random.Generator, label: int, cfg: SyntheticConfig, probe_kind: str) -> Scene:
    """Fetal head scene (single class; ``label`` must be 0).

    Atypical cases (``cfg.p_atypical``) put the head partly out of view or thicken the skull.
    """
    probe = draw_probe(
        rng, cfg, probe_kind, fc=(3.0, 5.0), depth=(110.0, 150.0), fov=u(rng, 55.0, 70.0)
    )
    atypical = bool(rng.random() < cfg.p_atypical)
    a = u(rng, 18.0, min(48.0, 0.36 * probe.depth))  # outer semi-axes (HC ~ 100-300 mm)
    b = a * u(rng, 0.72, 0.88)
    t = u(rng, 1.5, 3.0) * (1.6 if atypical and rng.random() < 0.5 else 1.0)
    ang = u(rng, -0.8, 0.8)
    zc = u(rng, a + 12.0, max(a + 12.0, probe.depth - a - 6.0))
    half_width = (probe.apex_radius + zc - b) * math.sin(math.radians(probe.fov / 2))
    xr = half_width if atypical else max(0.0, half_width - 1.1 * a)
    c = (u(rng, -xr, xr), 0.0, zc)
    amniotic = u(rng, 8.0, 16.0)
    objs, s_wall = body_wall(rng, 2.0, u(rng, 4.0, 8.0), amniotic)
    floor = zc + b + u(rng, 6.0, 25.0)
    objs += [
        Obj("layer", T.FLUID, {"top": s_wall, "bot": Surface(600.0)}),
        Obj("layer", T.MUSCLE, {"top": wavy(rng, floor, 4.0, 0.05), "bot": Surface(600.0)}),
        Obj("ellipsoid", T.BRAIN, {"c": c, "ax": (a, a, b), "ang": ang}, mask_id=1),
        Obj("ring", T.SKULL, {"c": c, "ax": (a, a, b), "ang": ang, "t": t}, mask_id=1),
        Obj("ellipsoid", T.VESSEL_WALL, {"c": c, "ax": (0.8 * a, a, 0.35), "ang": ang}, mask_id=1),
    ]
    co, si = math.cos(ang), math.sin(ang)
    off = 0.35 * a  # cavum septi pellucidi: small fluid box on the midline
    cav = (c[0] + co * off, 0.0, c[2] + si * off)
    objs.append(
        Obj("ellipsoid", T.FLUID, {"c": cav, "ax": (0.12 * a, a, 0.06 * a), "ang": ang}, mask_id=1)
    )
    meta = {
        "atypical": atypical,
        "head_axes_mm": (a, a, b),
        "head_centre_mm": c,
        "head_angle_rad": ang,
        "skull_mm": t,
    }
    return Scene(
        "fetal_head",
        probe,
        objs,
        texture_scales=(1.5, 4.0, (6.0, 0.4)),
        tex_offset=texture_offsets(rng),
        meta=meta,
        finalize=head_meta,
    )

"""Analytic 3-D scene objects and the ``Scene`` container (labels, echo, attenuation, masks).

A scene is an ordered list of objects; later objects override earlier ones. Each object
carries a tissue label and a mask id, so the same analytic function gives the tissue map on the
beam grid and the exact segmentation mask at the output pixels. Ref: synthetic_ultrasound.md §1
item 3.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from uslib.data.synthetic.probe import ImageGeometry, Pose, Probe
from uslib.data.synthetic.tissue import sample_texture, tissue_tables

OBJECT_KINDS: tuple[str, ...] = ("layer", "below", "ellipsoid", "shell", "ring", "star", "tube")


class Surface(NamedTuple):
    """Wavy surface z(x) = z0 + amp sin(k x + phase) + slope x (mm)."""

    z0: float
    amp: float = 0.0
    k: float = 0.0
    phase: float = 0.0
    slope: float = 0.0

    def at(self, x: np.ndarray) -> np.ndarray:
        """Depth of the surface at lateral positions ``x``."""
        z = self.z0 + self.slope * x
        return z + self.amp * np.sin(self.k * x + self.phase) if self.amp else z


def _rotate(x: np.ndarray, z: np.ndarray, c: tuple, ang: float) -> tuple[np.ndarray, np.ndarray]:
    """Object-frame coordinates: shift to the centre, rotate by ``ang`` in the x-z plane."""
    co, si = math.cos(ang), math.sin(ang)
    dx, dz = x - c[0], z - c[2]
    return co * dx + si * dz, -si * dx + co * dz


def _q2(x: np.ndarray, y: Any, z: np.ndarray, p: dict, axes: tuple) -> np.ndarray:
    """Squared normalised ellipsoid radius of the points (1 on the surface)."""
    xr, zr = _rotate(x, z, p["c"], p.get("ang", 0.0))
    return (xr / axes[0]) ** 2 + ((y - p["c"][1]) / axes[1]) ** 2 + (zr / axes[2]) ** 2


@dataclass(frozen=True)
class Obj:
    """One analytic object.

    Kinds and parameters (mm, rad):

    - ``layer``: ``top``, ``bot`` Surfaces; top <= z < bot.
    - ``below``: ``curve`` = (z0, curv, amp, k, phase); z >= z0 + curv x^2 + amp sin(k x + phase).
    - ``ellipsoid``: centre ``c`` (x, y, z), semi-axes ``ax``, in-plane angle ``ang``.
    - ``shell``: ellipsoid surface of thickness ``t`` (capsules, ligaments, walls).
    - ``ring``: between the ellipsoid ``ax`` and the one shrunk by ``t`` (skull).
    - ``star``: ellipsoid whose radius is modulated by ``harm`` = [(k, a_k, phi_k)]: low k gives
      lobulation, k = 9-22 spiculation.
    - ``tube``: cylinder of radius ``r`` through ``c`` along ``d``; optional half-length ``half``.

    Args:
        kind: one of ``OBJECT_KINDS``.
        label: tissue label (``tissue.T``).
        p: the parameters above.
        mask_id: id written to the segmentation mask; ``None`` leaves the mask unchanged.
        only_in: if given, the object only replaces these tissue labels (vessels inside liver).
    """

    kind: str
    label: int
    p: dict = field(default_factory=dict)
    mask_id: int | None = 0
    only_in: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in OBJECT_KINDS:
            raise ValueError(f"object kind {self.kind!r} not in {OBJECT_KINDS}")

    def inside(self, x: np.ndarray, y: Any, z: np.ndarray) -> np.ndarray:
        """Boolean membership of world points (x, z arrays of one shape; y array or scalar)."""
        p, kind = self.p, self.kind
        if kind == "layer":
            return (z >= p["top"].at(x)) & (z < p["bot"].at(x))
        if kind == "below":
            z0, curv, amp, k, ph = p["curve"]
            return z >= z0 + curv * x**2 + amp * np.sin(k * x + ph)
        if kind == "ellipsoid":
            return _q2(x, y, z, p, p["ax"]) < 1.0
        if kind == "shell":
            q = np.sqrt(_q2(x, y, z, p, p["ax"]))
            return np.abs(q - 1.0) * min(p["ax"][0], p["ax"][2]) < p["t"] / 2
        if kind == "ring":
            inner = tuple(a - p["t"] for a in p["ax"])
            return (_q2(x, y, z, p, p["ax"]) < 1.0) & (_q2(x, y, z, p, inner) >= 1.0)
        if kind == "star":
            ax = p["ax"]
            xr, zr = _rotate(x, z, p["c"], p.get("ang", 0.0))
            phi = np.arctan2(zr / ax[2], xr / ax[0])
            rad = 1.0
            for k, a, ph in p["harm"]:
                rad = rad + a * np.cos(k * phi + ph)
            return (xr / ax[0]) ** 2 + ((y - p["c"][1]) / ax[1]) ** 2 + (zr / ax[2]) ** 2 < rad**2
        return self._inside_tube(x, y, z)

    def _inside_tube(self, x: np.ndarray, y: Any, z: np.ndarray) -> np.ndarray:
        p = self.p
        d = np.asarray(p["d"], np.float64)
        d = d / np.linalg.norm(d)
        vx, vy, vz = x - p["c"][0], y - p["c"][1], z - p["c"][2]
        t = vx * d[0] + vy * d[1] + vz * d[2]
        ok = vx**2 + vy**2 + vz**2 - t**2 < p["r"] ** 2
        return ok & (np.abs(t) < p["half"]) if "half" in p else ok


@dataclass
class Scene:
    """A world of analytic objects seen by one probe.

    Args:
        organ: organ name ("breast", "liver", ...).
        probe: the probe that images it.
        objects: ordered objects, later ones override earlier ones.
        props: per-scene tissue overrides, label -> {"echo", "atten", "tex_sigma"}.
        texture_scales: (fine, coarse, (along, across)) texture correlation lengths (mm).
        tex_offset: (3, 3) offsets into the texture bank.
        artefacts: reverberation settings (lung / trachea), see ``artefacts.py``.
        meta: JSON-able class parameters (flat dict).
        motion: ``motion(scene, t) -> dict`` of fields to replace at frame t (cardiac cycle,
            lung sliding); ``None`` for a static scene.
        finalize: ``finalize(scene, pose, geometry) -> dict`` of extra meta that needs the pose
            (fetal head circumference in pixels, ...).
    """

    organ: str
    probe: Probe
    objects: list[Obj]
    props: dict[int, dict[str, float]] = field(default_factory=dict)
    texture_scales: tuple[float, float, tuple[float, float]] = (1.5, 4.0, (6.0, 0.4))
    tex_offset: np.ndarray = field(default_factory=lambda: np.zeros((3, 3), np.float32))
    artefacts: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    motion: Callable[[Scene, int], dict[str, Any]] | None = None
    finalize: Callable[[Scene, Pose, ImageGeometry], dict[str, Any]] | None = None

    def at_time(self, t: int) -> Scene:
        """The scene at frame ``t`` (itself when static)."""
        if self.motion is None:
            return self
        return dataclasses.replace(self, **self.motion(self, t))

    def labels(self, x: np.ndarray, y: Any, z: np.ndarray, *, masks: bool = False) -> Any:
        """Tissue labels (int64, shape of ``x``) and, with ``masks=True``, mask ids too."""
        lab = np.zeros(np.shape(x), np.int64)
        mid = np.zeros(np.shape(x), np.int64) if masks else None
        first = 0
        if masks:  # objects before the first masked one never change the mask
            ids = [i for i, o in enumerate(self.objects) if o.mask_id]
            need_all = any(o.only_in for o in self.objects)
            first = 0 if need_all or not ids else ids[0]
        for o in self.objects[first:]:
            m = o.inside(x, y, z)
            if o.only_in is not None:
                m &= np.isin(lab, o.only_in)
            lab[m] = o.label
            if mid is not None and o.mask_id is not None:
                mid[m] = o.mask_id
        return (lab, mid) if masks else lab

    def echo_atten(
        self, lab: np.ndarray, x: np.ndarray, y: Any, z: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Echo power (with texture) and attenuation (dB/cm/MHz) at labelled world points."""
        e_tab, a_tab, s_tab = tissue_tables(self.props)
        tex = sample_texture(lab, x, y, z, self.texture_scales, self.tex_offset)
        sig = s_tab[lab]
        echo = e_tab[lab] * np.exp(sig * tex - 0.5 * sig * sig)
        return echo.astype(np.float32), a_tab[lab]

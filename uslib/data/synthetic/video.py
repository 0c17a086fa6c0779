"""Tissue-locked point scatterers and video rendering along a probe trajectory.

Unit-magnitude points (random sign, so kappa = 1 and speckle is close to Rayleigh at >= 10 per
resolution cell) fill the world region swept by the whole trajectory. Each frame transforms them
into the probe frame, weights them by the elevation profile exp(-v^2 / 2 sigma_e^2), gives them
the phase exp(-2j k0 r) and splats them onto the beam grid. Translation moves the speckle with the
tissue; elevation motion and rotation decorrelate it, as with real probes.
Ref: synthetic_ultrasound.md §1 items 6 and 12.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from uslib.data.synthetic.objects import Scene
from uslib.data.synthetic.probe import C_MM_PER_US, ImageGeometry, Pose, Probe
from uslib.data.synthetic.psf import BeamGrid, beam_grid, psf_sigmas
from uslib.data.synthetic.render import (
    Acquisition,
    Frame,
    complex_normal,
    grid_shape,
    render_frame,
)

_CHUNK = 16384
"""Scatterers processed per chunk (keeps temporaries small and cache-resident)."""


@dataclass
class VideoSpeckle:
    """Scatterer cloud plus the fixed haze and artefact fields of one video.

    Attributes:
        x, y, z: world positions (N,) float32 (mm).
        a: amplitudes (N,) float32, +/- 1.
        density: points per mm^3.
        haze, art: fixed complex fields (n_ax, n_lat) for near-field haze and artefacts.
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    a: np.ndarray
    density: float
    haze: np.ndarray
    art: np.ndarray

    @property
    def n(self) -> int:
        """Number of scatterers."""
        return int(self.x.size)

    def scatter(self, probe: Probe, pose: Pose, grid: BeamGrid) -> np.ndarray:
        """Complex scatter map (n_ax, n_lat) complex64 with unit expected power per node.

        The expected sum of (a w_e)^2 in a node is density * sqrt(pi) sigma_e * dr * dl(r), which
        depends on depth for sectors; each row is divided by its square root. Points are
        processed in depth-sorted chunks (small temporaries, compact bincount ranges).
        """
        n_ax, n_lat = grid.shape
        acc_re = np.zeros(n_ax * n_lat)
        acc_im = np.zeros(n_ax * n_lat)
        for start in range(0, self.n, _CHUNK):
            part = slice(start, start + _CHUNK)
            out = self._splat(probe, pose, grid, part)
            if out is not None:
                lo, g_re, g_im = out
                acc_re[lo : lo + g_re.size] += g_re
                acc_im[lo : lo + g_im.size] += g_im
        g = (acc_re + 1j * acc_im).reshape(n_ax, n_lat)
        cell = self.density * math.sqrt(math.pi) * probe.elev * grid.dr * grid.dl_mm
        return (g / np.sqrt(np.maximum(cell, 1e-12))[:, None]).astype(np.complex64)

    def _splat(
        self, probe: Probe, pose: Pose, grid: BeamGrid, part: slice
    ) -> tuple[int, np.ndarray, np.ndarray] | None:
        """Nearest-node splat of the points ``part``: (first flat index, real sums, imag sums)."""
        u, v, w = pose.to_probe(self.x[part], self.y[part], self.z[part])
        ev = np.exp(-0.5 * (v / probe.elev) ** 2)
        rr, ll = probe.probe_to_beam(u, w)
        n_ax, n_lat = grid.shape
        fi = np.rint((rr - grid.r[0]) / grid.dr).astype(np.int64)
        fj = np.rint((ll - grid.lat[0]) / (grid.lat[1] - grid.lat[0])).astype(np.int64)
        ok = (fi >= 0) & (fi < n_ax) & (fj >= 0) & (fj < n_lat) & (ev > 0.01)
        if not ok.any():
            return None
        idx = fi[ok] * n_lat + fj[ok]
        lo = int(idx.min())
        idx -= lo
        wgt = self.a[part][ok] * ev[ok]
        phase = (-4.0 * math.pi * probe.fc / C_MM_PER_US) * rr[ok]
        g_re = np.bincount(idx, weights=wgt * np.cos(phase))
        g_im = np.bincount(idx, weights=wgt * np.sin(phase))
        return lo, g_re, g_im


def make_speckle(
    probe: Probe,
    poses: list[Pose],
    acq: Acquisition,
    size: int,
    rng: np.random.Generator,
    per_cell: float = 12.0,
) -> VideoSpeckle:
    """Uniform scatterers in the region swept by ``poses`` (union of fields of view +/- 3 sigma_e).

    Args:
        probe: the probe (fixes the PSF and so the resolution-cell volume).
        poses: the trajectory.
        acq: settings (PSF floor, grid oversampling).
        size: output side (pixels).
        rng: the video's generator.
        per_cell: mean number of points per resolution cell (>= 10 for Rayleigh statistics).

    Returns:
        a ``VideoSpeckle``.
    """
    n_ax, n_lat = grid_shape(size, acq)
    grid = beam_grid(probe, n_ax, n_lat)
    s_ax_px, s_lat_px = psf_sigmas(
        probe, grid, acq.min_psf_px, ImageGeometry.of(probe, size).spacing
    )
    s_lat_mm = float(np.median(s_lat_px * grid.dl_mm))
    cell = (2.355 * s_ax_px * grid.dr) * (2.355 * s_lat_mm) * math.sqrt(2 * math.pi) * probe.elev
    density = per_cell / cell
    u0, u1, w0, w1 = probe.bbox()
    corners = np.array(
        [
            pose.to_world(uu, ww)
            for pose in poses
            for uu, ww in ((u0, w0), (u1, w0), (u0, w1), (u1, w1))
        ]
    )
    (x0, z0), (x1, z1) = corners.min(axis=0), corners.max(axis=0)
    ys = [pose.y for pose in poses]
    y0, y1 = min(ys) - 3.0 * probe.elev, max(ys) + 3.0 * probe.elev
    n = int(density * (x1 - x0) * (y1 - y0) * (z1 - z0))
    pts = rng.uniform((x0, y0, z0), (x1, y1, z1), size=(n, 3)).astype(np.float32)
    pts = pts[np.argsort(pts[:, 2], kind="stable")]  # depth-sorted: compact splat ranges
    amp = np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32)
    return VideoSpeckle(
        np.ascontiguousarray(pts[:, 0]),
        np.ascontiguousarray(pts[:, 1]),
        np.ascontiguousarray(pts[:, 2]),
        amp,
        density,
        complex_normal(rng, grid.shape),
        complex_normal(rng, grid.shape),
    )


def render_frames(
    scene: Scene,
    poses: list[Pose],
    acq: Acquisition,
    size: int,
    rng: np.random.Generator,
    per_cell: float = 12.0,
    with_mask: bool = True,
) -> list[Frame]:
    """Render a video: one scatterer cloud, one frame per pose (scene animated by frame index).

    Returns:
        ``len(poses)`` frames. Ref: synthetic_ultrasound.md §1 item 12.
    """
    speckle = make_speckle(scene.probe, poses, acq, size, rng, per_cell)
    return [
        render_frame(scene.at_time(t), pose, acq, size, rng, speckle=speckle, with_mask=with_mask)
        for t, pose in enumerate(poses)
    ]

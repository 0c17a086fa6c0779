"""Frame rendering: scatter map -> attenuation/TGC -> PSF -> envelope -> log -> scan conversion.

One frame is rendered on the beam grid (about 2 H ranges x W lines), then scan-converted to a
square image; masks come from the same analytic scene evaluated at the output pixels.
Ref: synthetic_ultrasound.md §1 items 5-11.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
from scipy import ndimage

from uslib.data.synthetic.artefacts import air_range, reverberation_power, slide_shift
from uslib.data.synthetic.objects import Scene
from uslib.data.synthetic.probe import ImageGeometry, Pose, Probe
from uslib.data.synthetic.psf import BeamGrid, beam_grid, convolve_psf, psf_sigmas
from uslib.data.synthetic.tissue import SOFT_TISSUE_MAX_ATTEN

NP_PER_DB = 0.1151
"""Nepers per decibel (amplitude)."""


@dataclass(frozen=True)
class Acquisition:
    """Scanner settings of one image (the nuisance variables), sampled per item.

    Args:
        gain_db: overall gain.
        dyn_range_db: displayed dynamic range DR.
        white_db: echo power (dB re. parenchyma) shown white when gain is 0.
        gamma: display gamma applied after log compression.
        noise_db: electronic noise re. parenchyma, added before TGC (grows with depth after).
        clutter_db: side-lobe skirt and near-field haze level.
        tgc_auto: fraction of the soft-tissue lateral-median depth trend removed (auto-TGC).
        tgc_error: fraction of the nominal 0.5 dB/cm/MHz left uncompensated (+/-).
        min_psf_px: PSF floor in output pixels (0 = physical resolution).
        ax_oversample: beam-grid ranges per output row.
    """

    gain_db: float = 0.0
    dyn_range_db: float = 50.0
    white_db: float = 22.0
    gamma: float = 1.3
    noise_db: float = -78.0
    clutter_db: float = -32.0
    tgc_auto: float = 0.7
    tgc_error: float = 0.0
    min_psf_px: float = 0.6
    ax_oversample: float = 2.0


@dataclass
class Frame:
    """A rendered frame.

    Attributes:
        image: (H, W) float32 grey levels in [0, 1], black outside the field of view.
        mask: (H, W) int64 mask ids (``None`` when not asked for).
        inside: (H, W) bool field of view.
        envelope: (n_ax, n_lat) float32 envelope |IQ| on the beam grid, before log compression.
        geometry: output pixel geometry (``spacing`` in mm/px).
        s_ax_px, s_lat_px: PSF sigmas in beam-grid nodes (axial float, lateral per row).
    """

    image: np.ndarray
    mask: np.ndarray | None
    inside: np.ndarray
    envelope: np.ndarray
    geometry: ImageGeometry
    s_ax_px: float
    s_lat_px: np.ndarray


class SpeckleSource(Protocol):
    """Tissue-locked speckle for videos (``video.VideoSpeckle``)."""

    haze: np.ndarray  # fixed complex near-field reverberation field (n_ax, n_lat)
    art: np.ndarray  # fixed complex artefact field (n_ax, n_lat)

    def scatter(self, probe: Probe, pose: Pose, grid: BeamGrid) -> np.ndarray:
        """Complex scatter map (n_ax, n_lat) with unit expected power per node."""
        ...


def grid_shape(size: int, acq: Acquisition) -> tuple[int, int]:
    """Beam-grid shape ``(n_ax, n_lat)`` for a ``size`` x ``size`` output."""
    return int(round(size * acq.ax_oversample)), max(int(size), 96)


def complex_normal(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Circular complex Gaussian CN(0, 1) of ``shape`` (complex64)."""
    z = rng.standard_normal((shape[0], 2 * shape[1]), dtype=np.float32)
    return z.view(np.complex64) * np.float32(1.0 / math.sqrt(2.0))


def attenuation_gain(
    att: np.ndarray, grid: BeamGrid, fc: float, acq: Acquisition, s_lat_px: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Two-way attenuation along each beam after TGC, as an amplitude log-gain.

    The attenuation is integrated along each beam (``cumsum``) relative to the nominal
    0.5 dB/cm/MHz that TGC compensates, blurred laterally (finite transmit beam: soft shadow
    edges), then ``tgc_auto`` of the soft-tissue lateral median is removed (clamped to
    [-1.5, +3] Np: enhancement is turned down further than shadows are turned up).
    Low-attenuation fluid then gives posterior enhancement, bone and malignant lesions shadows.

    Args:
        att: attenuation (dB/cm/MHz) on the grid (n_ax, n_lat).
        grid: beam grid.
        fc: centre frequency (MHz).
        acq: settings (``tgc_error``, ``tgc_auto``).
        s_lat_px: lateral PSF sigma per row.

    Returns:
        ``(log_gain, transmission)``: (n_ax, n_lat) float32 amplitude log-gain to apply, and
        the raw transmission before TGC (for artefacts under ribs).
    """
    a_np = att * np.float32(fc * NP_PER_DB / 10.0)  # Np/mm one-way
    nominal = 0.5 * fc * NP_PER_DB / 10.0 * (1.0 + acq.tgc_error)
    cum = np.cumsum(a_np, axis=0) * grid.dr - 0.5 * grid.dr * a_np
    logg = -2.0 * (cum - np.float32(nominal) * grid.r[:, None])
    sigma = 1.5 * float(np.median(s_lat_px)) + 0.5
    logg = ndimage.gaussian_filter1d(logg, sigma, axis=1, mode="nearest")
    transmission = np.exp(np.minimum(logg, 0.0))
    soft = att < SOFT_TISSUE_MAX_ATTEN
    n_soft = soft.sum(axis=1)
    ordered = np.sort(np.where(soft, logg, np.inf), axis=1)
    med = ordered[np.arange(len(n_soft)), np.maximum(n_soft - 1, 0) // 2]
    med = np.clip(np.where(n_soft > 0, med, 0.0), -1.5, 3.0)
    return (logg - acq.tgc_auto * med[:, None]).astype(np.float32), transmission


@lru_cache(maxsize=16)
def _scan_coords(
    probe: Probe, n_ax: int, n_lat: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    geom = ImageGeometry.of(probe, size)
    u, w = geom.centres()
    r, lat = probe.probe_to_beam(u, w)
    grid = beam_grid(probe, n_ax, n_lat)
    fi = (r - grid.r[0]) / grid.dr
    fj = (lat - grid.lat[0]) / (grid.lat[1] - grid.lat[0])
    inside = (fi >= 0) & (fi <= n_ax - 1) & (fj >= 0) & (fj <= n_lat - 1)
    return np.stack([fi, fj]).astype(np.float32), inside, u, w


def log_compress(env: np.ndarray, acq: Acquisition) -> np.ndarray:
    """Grey = clip((20 log10 env + gain - white + DR) / DR, 0, 1) (before gamma)."""
    db = 20.0 * np.log10(env + np.float32(1e-6)) + np.float32(acq.gain_db - acq.white_db)
    return np.clip((db + acq.dyn_range_db) / np.float32(acq.dyn_range_db), 0.0, 1.0)


def _iq(
    scene: Scene,
    pose: Pose,
    acq: Acquisition,
    grid: BeamGrid,
    s: tuple,
    rng: np.random.Generator,
    speckle: SpeckleSource | None,
) -> np.ndarray:
    """Complex IQ on the beam grid: scatter map x attenuation + haze + artefacts, PSF, noise."""
    probe = scene.probe
    x, z = pose.to_world(grid.u, grid.w)
    lab = scene.labels(x, pose.y, z)
    echo, att = scene.echo_atten(lab, x, pose.y, z)
    logg, transmission = attenuation_gain(att, grid, probe.fc, acq, s[1])
    clutter = 10.0 ** (acq.clutter_db / 20.0)
    haze = (4.0 * clutter * np.exp(-grid.r / (0.06 * probe.depth)))[:, None].astype(np.float32)
    art = (
        reverberation_power(lab, grid, x, scene.artefacts, transmission)
        if scene.artefacts
        else None
    )
    gain = np.exp(logg)
    if speckle is None:  # 'cells': one CN draw with the summed variance
        var = echo * gain * gain + haze * haze
        if art is not None:
            var += art
        g = complex_normal(rng, grid.shape) * np.sqrt(var)
    else:  # 'scatterers': tissue-locked points; fixed haze and artefact fields
        g = speckle.scatter(probe, pose, grid) * (np.sqrt(echo) * gain)
        g += speckle.haze * haze
        if art is not None:
            first, _ = air_range(lab, grid)
            shift = slide_shift(scene.artefacts, grid, int(np.median(first)))
            g += np.roll(speckle.art, shift, axis=1) * np.sqrt(art)
    iq = convolve_psf(g, s[0], s[1], clutter)
    nominal = 0.5 * probe.fc * NP_PER_DB / 10.0 * (1.0 + acq.tgc_error)
    tgc = np.exp(2.0 * nominal * grid.r)[:, None].astype(np.float32)
    iq += complex_normal(rng, grid.shape) * (np.float32(10.0 ** (acq.noise_db / 20.0)) * tgc)
    return iq


def render_frame(
    scene: Scene,
    pose: Pose,
    acq: Acquisition,
    size: int,
    rng: np.random.Generator,
    *,
    speckle: SpeckleSource | None = None,
    with_mask: bool = True,
) -> Frame:
    """Render one B-mode frame of ``scene`` seen from ``pose``.

    Args:
        scene: the scene (already at its frame time, see ``Scene.at_time``).
        pose: probe pose.
        acq: scanner settings.
        size: output side H = W (pixels).
        rng: generator for speckle ('cells' mode) and electronic noise.
        speckle: ``None`` for 'cells' mode (stills, exact Rayleigh), or a tissue-locked
            scatterer source (videos).
        with_mask: also evaluate the analytic mask at the output pixels.

    Returns:
        a ``Frame``. Ref: synthetic_ultrasound.md §1 items 5-11.
    """
    probe = scene.probe
    n_ax, n_lat = grid_shape(size, acq)
    grid = beam_grid(probe, n_ax, n_lat)
    geom = ImageGeometry.of(probe, size)
    s_ax_px, s_lat_px = psf_sigmas(probe, grid, acq.min_psf_px, geom.spacing)
    iq = _iq(scene, pose, acq, grid, (s_ax_px, s_lat_px), rng, speckle)
    env = np.abs(iq)
    grey = log_compress(env, acq)
    grey = ndimage.gaussian_filter1d(grey, 0.35 * acq.ax_oversample, axis=0, mode="nearest")
    coords, inside, u, w = _scan_coords(probe, n_ax, n_lat, size)
    img = ndimage.map_coordinates(grey, coords, order=1, mode="constant", cval=0.0)
    img[~inside] = 0.0
    if acq.gamma != 1.0:
        img = img**acq.gamma
    mask = None
    if with_mask:
        mx, mz = pose.to_world(u, w)
        _, mask = scene.labels(mx, pose.y, mz, masks=True)
        mask[~inside] = 0
    return Frame(img.astype(np.float32), mask, inside, env, geom, s_ax_px, s_lat_px)

"""The imaging PSF on the beam grid: axial Gaussian envelope x depth-varying lateral Gaussian.

Both kernels have unit energy (sum h^2 = 1), so E|IQ|^2 equals the local echo power and contrasts
can be reasoned about in dB. Ref: synthetic_ultrasound.md §1 items 2 and 9, §4.3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import fft, ndimage

from uslib.data.synthetic.probe import Probe


@dataclass(frozen=True)
class BeamGrid:
    """Nodes of the beam grid: ``n_ax`` ranges x ``n_lat`` scan lines.

    Attributes:
        r: ranges (n_ax,) in mm, from 0 to the probe depth.
        lat: lateral beam coordinates (n_lat,), mm (linear) or rad (sector).
        u, w: probe coordinates of every node, each (n_ax, n_lat) float32.
        dr: range step (mm).
        dl_mm: lateral node spacing in mm for every row (n_ax,).
    """

    r: np.ndarray
    lat: np.ndarray
    u: np.ndarray
    w: np.ndarray
    dr: float
    dl_mm: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_ax, n_lat)``."""
        return self.u.shape


@lru_cache(maxsize=8)
def beam_grid(probe: Probe, n_ax: int, n_lat: int) -> BeamGrid:
    """The beam grid of ``probe`` (cached; arrays are shared, do not modify them)."""
    r = np.linspace(0.0, probe.depth, n_ax, dtype=np.float32)
    l0, l1 = probe.lateral_extent()
    lat = np.linspace(l0, l1, n_lat, dtype=np.float32)
    rr, ll = np.meshgrid(r, lat, indexing="ij")
    u, w = probe.beam_to_probe(rr, ll)
    dlat = float(lat[1] - lat[0])
    if probe.kind == "linear":
        dl_mm = np.full(n_ax, dlat, np.float32)
    else:  # arc length between neighbouring lines at each range
        dl_mm = ((probe.apex_radius + np.maximum(r, 1e-3)) * dlat).astype(np.float32)
    return BeamGrid(r, lat, u.astype(np.float32), w.astype(np.float32), float(r[1] - r[0]), dl_mm)


def psf_sigmas(
    probe: Probe, grid: BeamGrid, min_psf_px: float, spacing: float
) -> tuple[float, np.ndarray]:
    """Axial and lateral PSF sigmas in beam-grid nodes.

    The physical sigmas are floored at ``min_psf_px`` output pixels laterally (0.6 of that
    axially), so speckle stays visible in small images; ``min_psf_px = 0`` keeps physics.

    Args:
        probe: the probe.
        grid: its beam grid.
        min_psf_px: floor in output pixels.
        spacing: output pixel size (mm).

    Returns:
        ``(s_ax_px, s_lat_px)``: a float and an (n_ax,) float32 array (per depth row).
    """
    s_ax = max(probe.sigma_axial(), 0.6 * min_psf_px * spacing)
    s_lat = np.maximum(probe.sigma_lateral(grid.r), min_psf_px * spacing)
    return s_ax / grid.dr, (s_lat / grid.dl_mm).astype(np.float32)


def _unit_energy_axial_kernel(s: float) -> np.ndarray:
    half = max(int(math.ceil(4.0 * s)), 1)
    n = np.arange(-half, half + 1, dtype=np.float64)
    h = np.exp(-0.5 * (n / max(s, 1e-3)) ** 2)
    return (h / np.sqrt(np.sum(h**2))).astype(np.float32)


def lateral_transfer(s_lat_px: np.ndarray, n: int, clutter: float) -> np.ndarray:
    """Per-row lateral transfer functions H (n_ax, n) with unit energy (mean |H|^2 = 1).

    A Gaussian of sigma ``s`` (lines) plus a broad, low "side-lobe skirt" of sigma 5 s + 4 and
    relative amplitude ``clutter`` (clutter, -28 to -32 dB).
    """
    k = fft.fftfreq(n).astype(np.float32)[None, :]
    s = s_lat_px.astype(np.float32)[:, None]
    h = np.exp(-2.0 * np.pi**2 * s**2 * k**2) * np.sqrt(s)
    if clutter > 0:
        sc = 5.0 * s + 4.0
        h = h + clutter * np.exp(-2.0 * np.pi**2 * sc**2 * k**2) * np.sqrt(sc)
    energy = np.mean(h**2, axis=1, keepdims=True)  # Parseval: sum_n h[n]^2
    return (h / np.sqrt(energy)).astype(np.float32)


def convolve_psf(
    g: np.ndarray, s_ax_px: float, s_lat_px: np.ndarray, clutter: float = 0.0
) -> np.ndarray:
    """Convolve a complex scatter map with the PSF.

    The lateral PSF varies with depth, so it is applied per row in the Fourier domain (one FFT
    pair for the whole map); the axial envelope is a fixed Gaussian along the range.

    Args:
        g: complex scatter map (n_ax, n_lat).
        s_ax_px: axial sigma (nodes).
        s_lat_px: lateral sigma per row (n_ax,), in lines.
        clutter: side-lobe skirt amplitude (linear).

    Returns:
        complex64 IQ map (n_ax, n_lat) with E|IQ|^2 = E|g|^2 for a white input.
    """
    n_ax, n_lat = g.shape
    pad = int(3.0 * float(s_lat_px.max()) + 6.0)
    if clutter > 0:
        pad = int(3.0 * (5.0 * float(s_lat_px.max()) + 4.0))
    n = fft.next_fast_len(n_lat + min(pad, 2 * n_lat))
    spec = fft.fft(g, n=n, axis=1, workers=1)
    spec *= lateral_transfer(s_lat_px, n, clutter)
    out = fft.ifft(spec, axis=1, workers=1)[:, :n_lat]
    out = ndimage.correlate1d(out, _unit_energy_axial_kernel(s_ax_px), axis=0, mode="constant")
    return out.astype(np.complex64, copy=False)

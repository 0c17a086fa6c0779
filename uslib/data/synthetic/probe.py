"""Probe geometry, physics-based PSF widths, probe poses and smooth probe trajectories.

Units throughout the synthetic package: mm, MHz, us; sound speed ``C_MM_PER_US``.
Ref: synthetic_ultrasound.md §1 (items 1, 2, 5, 12).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

C_MM_PER_US = 1.54
"""Speed of sound in soft tissue (mm/us)."""

PROBE_KINDS: tuple[str, ...] = ("linear", "convex", "phased")


@dataclass(frozen=True)
class Probe:
    """A 1-D array probe: geometry and the effective imaging PSF.

    Beam coordinates are ``(r, l)``: ``r`` is the range along a scan line (mm) and ``l`` the
    lateral position (mm, linear) or steering angle (rad, convex/phased). Probe coordinates are
    ``u`` (lateral), ``w`` (depth), ``v`` (elevation), with the probe face centre at the origin.
    A convex probe is a polar transform about the virtual apex ``(0, -radius)``; phased is the
    same with ``radius = 0``.

    ``bw`` and ``fnum`` are *effective* values: the design calibrated the Gaussian model to
    PyMUST (B_eff ~ 0.73 B, F#_eff ~ 2.35 for the L11-5v), and the presets below use them.

    Args:
        kind: "linear", "convex" or "phased".
        fc: centre frequency (MHz).
        bw: -6 dB fractional bandwidth of the pulse-echo spectrum.
        depth: imaging depth from the probe face (mm).
        width: aperture width of a linear array (mm).
        fov: sector opening (deg), convex/phased.
        radius: convex radius (mm); 0 for phased.
        focus: transmit focus depth (mm).
        fnum: effective F-number (lateral FWHM ~ wavelength x F#).
        elev: elevation (slice-thickness) Gaussian sigma (mm).
    """

    kind: str = "linear"
    fc: float = 7.5
    bw: float = 0.56
    depth: float = 40.0
    width: float = 38.0
    fov: float = 60.0
    radius: float = 50.0
    focus: float = 20.0
    fnum: float = 2.35
    elev: float = 0.8

    def __post_init__(self) -> None:
        if self.kind not in PROBE_KINDS:
            raise ValueError(f"probe kind {self.kind!r} not in {PROBE_KINDS}")
        for name in ("fc", "bw", "depth", "width", "fov", "focus", "fnum", "elev"):
            if not getattr(self, name) > 0:
                raise ValueError(f"probe {name} must be > 0, got {getattr(self, name)}")

    @property
    def wavelength(self) -> float:
        """Wavelength at ``fc`` (mm)."""
        return C_MM_PER_US / self.fc

    @property
    def apex_radius(self) -> float:
        """Radius of the polar transform: 0 for linear and phased, ``radius`` for convex."""
        return self.radius if self.kind == "convex" else 0.0

    def sigma_axial(self) -> float:
        """Axial envelope-PSF sigma (mm): sigma_r = c sigma_t / 2 with sigma_t = 1/(2 pi sigma_f).

        sigma_f = B fc / (2 sqrt(2 ln 2)) is the Gaussian spectral sigma of the pulse-echo.
        """
        sigma_f = self.bw * self.fc / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        return C_MM_PER_US / (2.0 * math.pi * sigma_f) / 2.0

    def sigma_lateral(self, r: np.ndarray) -> np.ndarray:
        """Lateral PSF sigma (mm) at range ``r``: 0.42 lambda F# sqrt(1 + ((r - z_f)/z_R)^2).

        The Rayleigh-like length is z_R ~ 0.6 z_f (at least 5 mm).
        """
        s0 = 0.42 * self.wavelength * self.fnum
        z_r = max(0.6 * self.focus, 5.0)
        return s0 * np.sqrt(1.0 + ((np.asarray(r) - self.focus) / z_r) ** 2)

    def lateral_extent(self) -> tuple[float, float]:
        """Range of the lateral beam coordinate: mm (linear) or rad (sector)."""
        if self.kind == "linear":
            return -self.width / 2, self.width / 2
        half = math.radians(self.fov) / 2
        return -half, half

    def beam_to_probe(self, r: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Beam coordinates ``(r, l)`` -> probe coordinates ``(u, w)`` (mm)."""
        if self.kind == "linear":
            return lat, r
        rad = self.apex_radius
        return (rad + r) * np.sin(lat), (rad + r) * np.cos(lat) - rad

    def probe_to_beam(self, u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probe coordinates ``(u, w)`` -> beam coordinates ``(r, l)``."""
        if self.kind == "linear":
            return w, u
        rad = self.apex_radius
        return np.hypot(u, w + rad) - rad, np.arctan2(u, w + rad)

    def bbox(self) -> tuple[float, float, float, float]:
        """Bounding box ``(u0, u1, w0, w1)`` of the imaged region in probe coordinates (mm)."""
        if self.kind == "linear":
            return -self.width / 2, self.width / 2, 0.0, self.depth
        half = math.radians(self.fov) / 2
        rad = self.apex_radius
        u1 = (rad + self.depth) * math.sin(half)
        w0 = min(rad * math.cos(half) - rad, 0.0)
        return -u1, u1, w0, self.depth

    def geometry(self) -> tuple[str, float, float, float, float]:
        """The fields that fix the image geometry (a cache key for scan conversion)."""
        return (self.kind, self.depth, self.width, self.fov, self.apex_radius)


@dataclass(frozen=True)
class ImageGeometry:
    """Square output grid of a probe: pixel (i, j) has probe coordinates (u_j, w_i).

    The imaged region is fitted into a square of side ``span = max(width, depth extent)`` with
    padding, so pixels are square and ``spacing`` (mm/px) is exact. Ref: §4.3 "sector scan
    conversion".
    """

    u0: float  # u of the left edge of column 0 (mm)
    w0: float  # w of the top edge of row 0 (mm)
    spacing: float  # mm per pixel
    size: int

    @classmethod
    def of(cls, probe: Probe, size: int) -> ImageGeometry:
        """The geometry of ``probe`` rendered at ``size`` x ``size`` pixels."""
        u0, u1, w0, w1 = probe.bbox()
        span = max(u1 - u0, w1 - w0)
        return cls((u0 + u1) / 2 - span / 2, w0, span / size, int(size))

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Probe coordinates ``(u, w)`` of the pixel centres, each (size, size) float32."""
        c = (np.arange(self.size, dtype=np.float32) + 0.5) * self.spacing
        return np.meshgrid(self.u0 + c, self.w0 + c)

    def to_pixel(self, u: float, w: float) -> tuple[float, float]:
        """Probe coordinates -> fractional ``(row, col)`` (pixel centres at integers)."""
        return (w - self.w0) / self.spacing - 0.5, (u - self.u0) / self.spacing - 0.5


LINEAR_PROBE = Probe("linear", fc=7.5, bw=0.56, depth=40.0, width=38.0, focus=18.0, fnum=2.35)
"""Linear 7.5 MHz / 40 mm (breast, thyroid, superficial lung); calibrated B_eff and F#_eff."""
CONVEX_PROBE = Probe(
    "convex", fc=3.5, bw=0.45, depth=150.0, fov=60.0, radius=50.0, focus=70.0, fnum=3.0, elev=2.0
)
"""Convex 3.5 MHz / 150 mm / 60 deg (abdomen, lung POCUS, obstetrics)."""
PHASED_PROBE = Probe(
    "phased", fc=2.7, bw=0.45, depth=140.0, fov=75.0, radius=0.0, focus=70.0, fnum=3.0, elev=2.5
)
"""Phased 2.7 MHz (cardiac)."""


@dataclass(frozen=True)
class Pose:
    """Probe pose in the world: face centre ``(x, y, z)`` (mm), in-plane tilt (rad about y).

    ``y`` is the elevation (out-of-plane) position, so moving ``y`` changes the imaged slice.
    """

    x: float = 0.0
    y: float = 0.0
    z: float = 0.0
    tilt: float = 0.0

    def to_world(self, u: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probe-plane coordinates ``(u, w)`` -> world ``(x, z)`` (the plane is at ``y``)."""
        c, s = math.cos(self.tilt), math.sin(self.tilt)
        return self.x + c * u + s * w, self.z - s * u + c * w

    def to_probe(
        self, x: np.ndarray, y: np.ndarray, z: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World ``(x, y, z)`` -> probe ``(u, v, w)``; ``v`` is the elevation offset."""
        c, s = math.cos(self.tilt), math.sin(self.tilt)
        dx, dz = x - self.x, z - self.z
        return c * dx - s * dz, y - self.y, s * dx + c * dz


def trajectory(
    rng: np.random.Generator,
    n_frames: int,
    start: Pose = Pose(),
    motion_scale: float = 1.0,
    speed_x: tuple[float, float] = (0.25, 0.8),
    speed_y: float = 0.15,
    speed_tilt: float = 0.005,
    jitter: float = 0.05,
) -> list[Pose]:
    """A smooth free-hand probe path: constant drift plus low-pass jitter.

    Args:
        rng: the video's generator.
        n_frames: number of poses T.
        start: pose of frame 0 (before jitter).
        motion_scale: multiplies every speed (0 = a still probe).
        speed_x: range of the in-plane drift speed (mm/frame), random sign.
        speed_y: maximum elevation drift (mm/frame).
        speed_tilt: maximum tilt rate (rad/frame).
        jitter: amplitude of the smooth lateral jitter (mm).

    Returns:
        ``n_frames`` poses. Ref: synthetic_ultrasound.md §1 item 12.
    """
    sign = 1.0 if rng.random() < 0.5 else -1.0
    vx = sign * rng.uniform(*speed_x) * motion_scale
    vy = rng.uniform(-speed_y, speed_y) * motion_scale
    va = rng.uniform(-speed_tilt, speed_tilt) * motion_scale
    noise = rng.standard_normal(max(n_frames, 1))
    jx = ndimage.gaussian_filter1d(noise, 3.0, mode="nearest") * jitter * 5.0 * motion_scale
    return [
        Pose(start.x + vx * t + jx[t], start.y + vy * t, start.z, start.tilt + va * t)
        for t in range(n_frames)
    ]

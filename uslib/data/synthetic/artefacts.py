"""Beam-domain reverberation artefacts behind air: lung A-lines, B-lines, sub-pleural haze.

Artefacts are added to the scatter map *after* tissue attenuation (the air below would kill them)
but are multiplied by the two-way transmission down to the air interface, so there are none under
rib shadows. The same model gives the trachea's reverberations in thyroid scans.
Ref: synthetic_ultrasound.md §1 item 8, §4.3.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from uslib.data.synthetic.psf import BeamGrid
from uslib.data.synthetic.tissue import T


def air_range(lab: np.ndarray, grid: BeamGrid) -> tuple[np.ndarray, np.ndarray]:
    """Index of the first air node along each beam and whether the beam reaches air.

    Args:
        lab: tissue labels on the beam grid (n_ax, n_lat).
        grid: the beam grid.

    Returns:
        ``(first, hit)``: (n_lat,) int64 row index (n_ax - 1 when no air) and (n_lat,) bool.
    """
    air = lab == T.AIR
    hit = air.any(axis=0)
    first = np.where(hit, air.argmax(axis=0), grid.shape[0] - 1)
    return first, hit


def reverberation_power(
    lab: np.ndarray,
    grid: BeamGrid,
    x_world: np.ndarray,
    art: dict[str, Any],
    transmission: np.ndarray,
) -> np.ndarray:
    """Mean power of the reverberation artefacts on the beam grid (n_ax, n_lat) float32.

    Keys of ``art`` (all optional): ``a_lines`` (amplitude of the first A-line, power relative to
    parenchyma), ``b_lines`` (list of (x_world_mm, width_mm, power)), ``haze`` (sub-pleural
    haze), ``x_range`` ((x0, x1) world mm: only beams whose air interface lies in it).

    - A-lines: Gaussian bands at k = 2..6 times the range of the air interface, decaying 0.6^k.
    - B-lines: vertical bands from the interface down that erase the A-lines.
    - Everything is scaled by the transmission at the interface, squared (two-way).
    """
    first, hit = air_range(lab, grid)
    cols = np.arange(grid.shape[1])
    xb = x_world[first, cols]  # world x where each beam meets the air
    if "x_range" in art:
        hit = hit & (xb >= art["x_range"][0]) & (xb <= art["x_range"][1])
    if not hit.any():
        return np.zeros(grid.shape, np.float32)
    rr = grid.r[:, None]
    dp = grid.r[first][None, :]
    below = rr > dp
    out = np.zeros(grid.shape, np.float32)
    width = max(0.35, 1.5 * grid.dr)
    a0 = float(art.get("a_lines", 0.0))
    for k in range(2, 7):
        if a0 > 0:
            out += a0 * 0.6 ** (k - 2) * np.exp(-0.5 * ((rr - k * dp) / width) ** 2)
    out += float(art.get("haze", 0.0)) * np.exp(-np.maximum(rr - dp, 0.0) / (0.3 * grid.r[-1]))
    fade = np.exp(-np.maximum(rr - dp, 0.0) / (0.9 * grid.r[-1]))
    for bx, bw, bamp in art.get("b_lines", ()):
        prof = np.exp(-0.5 * ((xb - bx) / bw) ** 2)[None, :]
        out = out * (1.0 - 0.8 * prof * below) + bamp * prof * below * fade
    out *= rr > dp + 0.5
    out *= hit[None, :] * transmission[first, cols][None, :] ** 2
    return out.astype(np.float32)


def slide_shift(art: dict[str, Any], grid: BeamGrid, first_row: int) -> int:
    """Lateral shift (lines) of the artefact speckle for lung sliding at the current frame."""
    return int(round(float(art.get("slide_mm", 0.0)) / float(grid.dl_mm[first_row])))

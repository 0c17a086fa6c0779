"""Homogeneous speckle phantom: the envelope before log compression, for physics checks.

Used by the tests of the speckle model (Rayleigh SNR 1.91, ACF width 2.355 sigma, elevation
decorrelation exp(-d^2 / 2 sigma_e^2)). Ref: synthetic_ultrasound.md §1.3 "Measurements".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from uslib.data.synthetic.objects import Scene
from uslib.data.synthetic.probe import LINEAR_PROBE, Pose, Probe
from uslib.data.synthetic.render import Acquisition, render_frame
from uslib.data.synthetic.tissue import T
from uslib.data.synthetic.video import make_speckle


def speckle_phantom(
    size: int = 128,
    *,
    mode: str = "cells",
    elevation_shifts: Sequence[float] = (0.0,),
    seed: int = 0,
    min_psf_px: float = 2.0,
    probe: Probe | None = None,
    per_cell: float = 12.0,
) -> dict[str, Any]:
    """Render a homogeneous phantom (nominal attenuation, no texture, noise, clutter or haze).

    Args:
        size: output side (pixels); the beam grid is (2 size, max(size, 96)).
        mode: "cells" (independent CN per node) or "scatterers" (one tissue-locked cloud seen
            from every pose).
        elevation_shifts: probe elevation positions (mm), one envelope each.
        seed: random seed.
        min_psf_px: PSF floor in output pixels (2 keeps the speckle a few nodes wide, so its
            autocorrelation can be measured).
        probe: default ``LINEAR_PROBE`` with a 40 x 40 mm field.
        per_cell: scatterers per resolution cell ("scatterers" mode).

    Returns:
        dict with ``envelopes`` (P, n_ax, n_lat) float32 |IQ| (mean power 1),
        ``sigma_axial_px`` (float), ``sigma_lateral_px`` (n_ax,) PSF sigmas in beam-grid nodes,
        ``sigma_elev_mm`` and ``n_scatterers`` (0 in "cells" mode).
    """
    if mode not in ("cells", "scatterers"):
        raise ValueError(f"mode must be 'cells' or 'scatterers', got {mode!r}")
    probe = probe or dataclasses.replace(LINEAR_PROBE, width=40.0)
    scene = Scene("phantom", probe, [], props={T.BACKGROUND: {"tex_sigma": 0.0, "echo": 1.0}})
    acq = Acquisition(noise_db=-300.0, clutter_db=-300.0, min_psf_px=min_psf_px)
    rng = np.random.default_rng(seed)
    poses = [Pose(y=float(d)) for d in elevation_shifts]
    speckle = make_speckle(probe, poses, acq, size, rng, per_cell) if mode == "scatterers" else None
    frames = [
        render_frame(scene, p, acq, size, rng, speckle=speckle, with_mask=False) for p in poses
    ]
    return {
        "envelopes": np.stack([f.envelope for f in frames]),
        "sigma_axial_px": frames[0].s_ax_px,
        "sigma_lateral_px": frames[0].s_lat_px,
        "sigma_elev_mm": probe.elev,
        "n_scatterers": 0 if speckle is None else speckle.n,
    }

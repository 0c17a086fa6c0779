"""Tissue table (backscatter, attenuation, texture) and the shared periodic texture bank.

Echo power is linear and relative to reference parenchyma (liver = 1); attenuation is in
dB/cm/MHz. Texture multiplies the echo by a log-normal field exp(s T - s^2 / 2) (mean kept), with
T sampled from one periodic smooth Gaussian field made once per process.
Ref: synthetic_ultrasound.md §1 items 3-4.
"""

from __future__ import annotations

from enum import IntEnum
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy import ndimage


class T(IntEnum):
    """Tissue labels (the index into ``TISSUES``)."""

    BACKGROUND = 0
    SKIN = 1
    FAT = 2
    GLAND = 3
    MUSCLE = 4
    FLUID = 5
    LESION_BENIGN = 6
    LESION_MALIGNANT = 7
    LIVER = 8
    VESSEL_WALL = 9
    DIAPHRAGM = 10
    BONE = 11
    AIR = 12
    PLEURA = 13
    CONSOLIDATION = 14
    BRAIN = 15
    HALO = 16
    SKULL = 17
    THYROID = 18
    CALCIFICATION = 19
    MYOCARDIUM = 20
    BLOOD = 21
    CARTILAGE = 22
    KIDNEY = 23


class Tissue(NamedTuple):
    """Acoustic properties of one tissue class."""

    echo: float  # backscatter power, linear, 1 = reference parenchyma
    atten: float  # dB/cm/MHz
    texture: int  # 0 fine isotropic, 1 coarse isotropic, 2 anisotropic (striated)
    tex_sigma: float  # log-normal texture strength s


TISSUES: dict[T, Tissue] = {
    T.BACKGROUND: Tissue(1.0, 0.5, 0, 0.25),
    T.SKIN: Tissue(8.0, 1.0, 0, 0.3),
    T.FAT: Tissue(0.2, 0.6, 1, 0.5),
    T.GLAND: Tissue(3.5, 0.7, 1, 0.8),
    T.MUSCLE: Tissue(0.8, 0.7, 2, 0.9),
    T.FLUID: Tissue(0.002, 0.05, 0, 0.0),
    T.LESION_BENIGN: Tissue(0.25, 0.3, 0, 0.3),
    T.LESION_MALIGNANT: Tissue(0.12, 1.6, 1, 0.7),
    T.LIVER: Tissue(1.0, 0.5, 1, 0.3),
    T.VESSEL_WALL: Tissue(5.0, 0.6, 0, 0.2),
    T.DIAPHRAGM: Tissue(40.0, 1.0, 0, 0.2),
    # specular reflectors that attenuate strongly need >= 25 dB over parenchyma (§4.3)
    T.BONE: Tissue(300.0, 25.0, 0, 0.2),
    T.AIR: Tissue(0.0, 40.0, 0, 0.0),
    T.PLEURA: Tissue(60.0, 1.0, 0, 0.2),
    T.CONSOLIDATION: Tissue(1.3, 0.7, 1, 0.6),
    T.BRAIN: Tissue(0.3, 0.5, 1, 0.4),
    T.HALO: Tissue(2.5, 0.8, 0, 0.4),
    T.SKULL: Tissue(60.0, 3.0, 0, 0.2),
    T.THYROID: Tissue(2.2, 0.6, 0, 0.25),
    T.CALCIFICATION: Tissue(60.0, 4.0, 0, 0.1),
    T.MYOCARDIUM: Tissue(0.8, 0.6, 2, 0.6),
    T.BLOOD: Tissue(0.004, 0.1, 0, 0.3),
    T.CARTILAGE: Tissue(30.0, 3.0, 0, 0.2),
    T.KIDNEY: Tissue(0.5, 0.5, 0, 0.3),
}

N_TISSUES = len(T)
ECHO = np.array([TISSUES[t].echo for t in T], np.float32)
ATTEN = np.array([TISSUES[t].atten for t in T], np.float32)
TEXTURE = np.array([TISSUES[t].texture for t in T], np.int64)
TEX_SIGMA = np.array([TISSUES[t].tex_sigma for t in T], np.float32)
SOFT_TISSUE_MAX_ATTEN = 5.0
"""Tissues below this attenuation (dB/cm/MHz) count as soft tissue for auto-TGC (§4.3)."""

BANK_N = 64
BANK_CORR = 2.5
"""Correlation sigma of the texture bank, in voxels."""


@lru_cache(maxsize=1)
def noise_bank() -> np.ndarray:
    """The shared periodic, unit-variance, smooth 3-D Gaussian field (64^3, float32).

    Made once per process from a fixed seed, so every scene and worker sees the same bank.
    """
    f = np.random.default_rng(12345).standard_normal((BANK_N,) * 3).astype(np.float32)
    f = ndimage.gaussian_filter(f, BANK_CORR, mode="wrap")
    return (f / f.std()).astype(np.float32)


def tissue_tables(
    overrides: dict[int, dict[str, float]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Echo, attenuation and texture-sigma lookup tables with per-scene ``overrides``.

    Args:
        overrides: label -> dict with any of "echo", "atten", "tex_sigma".

    Returns:
        three float32 arrays of length ``N_TISSUES``.
    """
    echo, att, sig = ECHO.copy(), ATTEN.copy(), TEX_SIGMA.copy()
    for label, d in overrides.items():
        unknown = set(d) - {"echo", "atten", "tex_sigma"}
        if unknown:
            raise ValueError(f"unknown tissue property {sorted(unknown)} for label {label}")
        echo[label] = d.get("echo", echo[label])
        att[label] = d.get("atten", att[label])
        sig[label] = d.get("tex_sigma", sig[label])
    return echo, att, sig


def sample_texture(
    lab: np.ndarray,
    x: np.ndarray,
    y: np.ndarray | float,
    z: np.ndarray,
    scales: tuple[float, float, tuple[float, float]],
    offsets: np.ndarray,
) -> np.ndarray:
    """Texture field T (unit variance) at world points, locked to the tissue.

    Each texture type samples the shared bank at world coordinates scaled by its correlation
    length and shifted by a per-scene offset (no per-scene filtering cost). The anisotropic type
    (muscle) is long along x and y and short along z, which gives striations.

    Args:
        lab: tissue labels, any shape S.
        x, y, z: world coordinates (mm), shape S (``y`` may be a scalar).
        scales: (fine, coarse, (along, across)) correlation lengths (mm).
        offsets: (3, 3) bank offsets (voxels), one row per texture type.

    Returns:
        float32 array of shape S.
    """
    bank = noise_bank()
    fine, coarse, (along, across) = scales
    per_type = ((fine,) * 3, (coarse,) * 3, (along, along, across))
    tid = TEXTURE[lab]
    out = np.zeros(lab.shape, np.float32)
    yb = np.broadcast_to(np.asarray(y, np.float32), lab.shape)
    for k, (sx, sy, sz) in enumerate(per_type):
        sel = tid == k
        if not sel.any():
            continue
        coords = np.stack(
            [
                x[sel] * (BANK_CORR / sx) + offsets[k, 0],
                yb[sel] * (BANK_CORR / sy) + offsets[k, 1],
                z[sel] * (BANK_CORR / sz) + offsets[k, 2],
            ]
        )
        out[sel] = ndimage.map_coordinates(bank, coords, order=1, mode="grid-wrap")
    return out

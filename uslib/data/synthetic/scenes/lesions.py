"""Solid lesions and cysts with BI-RADS / TI-RADS-like features drawn from overlapping
distributions (breast masses, thyroid nodules).

Typical benign: oval, circumscribed or gently lobulated, parallel (wider than tall), mild
contrast, low attenuation (posterior enhancement). Typical malignant: irregular or spiculated,
often non-parallel (taller than wide), markedly hypoechoic and heterogeneous, high attenuation
(posterior shadow), sometimes an echogenic halo. An *atypical* case swaps some features with the
other class. Ref: synthetic_ultrasound.md §1 item 3 ("star"), §2.2 (breast row).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from uslib.data.synthetic.objects import Obj
from uslib.data.synthetic.scenes.layout import phase, u
from uslib.data.synthetic.tissue import T

POSTERIOR_ATTEN: dict[str, tuple[float, float]] = {
    "enhancement": (0.05, 0.3),
    "none": (0.5, 0.8),
    "shadow": (1.6, 3.0),
}
"""Lesion attenuation (dB/cm/MHz) giving each posterior feature."""


@dataclass(frozen=True)
class LesionFeatures:
    """Feature draw of one lesion (stored flat in the item's meta)."""

    margin: str  # circumscribed | lobulated | irregular | spiculated
    orientation: str  # parallel | nonparallel
    posterior: str  # enhancement | none | shadow
    contrast_db: float  # lesion echo re. surrounding parenchyma
    size_mm: float  # largest in-plane semi-axis
    halo: bool
    cystic: bool

    def as_meta(self) -> dict[str, object]:
        """Flat meta entries, prefixed ``lesion_``."""
        return {f"lesion_{k}": v for k, v in asdict(self).items()}


NO_LESION_META: dict[str, object] = {
    "lesion_margin": "none",
    "lesion_orientation": "none",
    "lesion_posterior": "none",
    "lesion_contrast_db": 0.0,
    "lesion_size_mm": 0.0,
    "lesion_halo": False,
    "lesion_cystic": False,
    "lesion_x_mm": float("nan"),
    "lesion_z_mm": float("nan"),
}


def _pick(rng: np.random.Generator, options: dict[str, float]) -> str:
    names = list(options)
    p = np.array([options[n] for n in names], np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def draw_features(
    rng: np.random.Generator,
    malignant: bool,
    atypical: bool,
    contrast_db: tuple[float, float],
    size_mm: tuple[float, float],
) -> LesionFeatures:
    """Draw lesion features; ``atypical`` swaps margin/orientation/posterior with the other class.

    Contrast: benign from the upper 60 % of ``contrast_db``, malignant from the lower 70 %
    (overlapping); a third of atypical cases are nearly isoechoic (-2 to 0 dB).
    """
    lo, hi = contrast_db
    benign_like = not malignant
    malignant_like = malignant
    if atypical:  # swap at least one feature family
        swap = rng.random(3) < 0.5
        swap[rng.integers(3)] = True
    else:
        swap = np.zeros(3, bool)
    margin_mal = malignant_like != swap[0]
    orient_mal = malignant_like != swap[1]
    post_mal = malignant_like != swap[2]
    margin = (
        _pick(rng, {"irregular": 0.4, "spiculated": 0.6})
        if margin_mal
        else _pick(rng, {"circumscribed": 0.65, "lobulated": 0.35})
    )
    orientation = _pick(rng, {"nonparallel": 0.6, "parallel": 0.4}) if orient_mal else "parallel"
    posterior = (
        _pick(rng, {"shadow": 0.7, "none": 0.3})
        if post_mal
        else _pick(rng, {"enhancement": 0.6, "none": 0.4})
    )
    if malignant:
        contrast = u(rng, lo, lo + 0.7 * (hi - lo))
    else:
        contrast = u(rng, lo + 0.4 * (hi - lo), hi)
    if atypical and rng.random() < 0.33:
        contrast = u(rng, -2.0, 0.0)
    cystic = benign_like and not atypical and rng.random() < 0.3
    halo = malignant_like and not atypical and rng.random() < 0.5
    if cystic:
        margin, orientation, posterior = "circumscribed", "parallel", "enhancement"
    return LesionFeatures(margin, orientation, posterior, contrast, u(rng, *size_mm), halo, cystic)


def lesion_objects(
    rng: np.random.Generator,
    feats: LesionFeatures,
    centre: tuple[float, float, float],
    label: int,
    mask_id: int = 1,
) -> list[Obj]:
    """Analytic objects of a lesion (optional halo first, then the lesion itself).

    Args:
        rng: generator.
        feats: the feature draw.
        centre: world centre (x, y, z) in mm.
        label: tissue label for a solid lesion (a cyst uses ``T.FLUID``).
        mask_id: id written to the mask.

    Returns:
        list of ``Obj``.
    """
    a = feats.size_mm
    if feats.orientation == "parallel":
        ax, az, ang = a, a * u(rng, 0.45, 0.8), u(rng, -0.25, 0.25)
    else:
        ax, az, ang = a * u(rng, 0.65, 0.9), a * u(rng, 0.95, 1.3), u(rng, -0.6, 0.6)
    harm = [(k, u(rng, 0.0, 0.05), phase(rng)) for k in (2, 3)]
    if feats.margin == "lobulated":
        harm.append((int(rng.integers(3, 6)), u(rng, 0.06, 0.14), phase(rng)))
    if feats.margin in ("irregular", "spiculated"):
        harm = [(k, u(rng, 0.05, 0.15), phase(rng)) for k in (2, 3, 5)]
    if feats.margin == "spiculated":
        harm += [(int(k), u(rng, 0.03, 0.1), phase(rng)) for k in rng.integers(9, 22, size=4)]
    objs = []
    ay = a * u(rng, 0.7, 1.0)
    if feats.halo:
        p = {"c": centre, "ax": (ax * 1.2, ay * 1.1, az * 1.2), "harm": harm[:3], "ang": ang}
        objs.append(Obj("star", T.HALO, p, mask_id=0))
    p = {"c": centre, "ax": (ax, ay, az), "harm": harm, "ang": ang}
    objs.append(Obj("star", T.FLUID if feats.cystic else label, p, mask_id=mask_id))
    return objs


def lesion_props(
    rng: np.random.Generator, feats: LesionFeatures, label: int, surround_echo: float
) -> dict[int, dict[str, float]]:
    """Tissue overrides for the lesion label: echo from the contrast, attenuation from posterior."""
    heterogeneous = feats.margin in ("irregular", "spiculated")
    return {
        label: {
            "echo": surround_echo * 10.0 ** (feats.contrast_db / 10.0),
            "atten": u(rng, *POSTERIOR_ATTEN[feats.posterior]),
            "tex_sigma": u(rng, 0.5, 0.8) if heterogeneous else u(rng, 0.15, 0.4),
        }
    }

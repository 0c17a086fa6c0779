"""``SyntheticConfig``: the generator's nuisance and difficulty knobs, and per-item sampling.

Ranges are (low, high) tuples sampled uniformly per item; give (v, v) to fix a value.
Ref: synthetic_ultrasound.md §2.2 "Difficulty controls".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from uslib.config import ConfigBase, ConfigError
from uslib.data.synthetic.probe import Pose
from uslib.data.synthetic.render import Acquisition


@dataclass(frozen=True)
class SyntheticConfig(ConfigBase):
    """Knobs of the synthetic B-mode generator (defaults = smoke profile).

    Args:
        img_size: output side H = W (pixels).
        depth_scale: multiplies the organ's nominal imaging-depth range.
        freq_scale: multiplies the organ's nominal centre-frequency range.
        gain_db: overall gain range.
        dyn_range_db: displayed dynamic-range range.
        tgc_error: +/- fraction of the nominal attenuation left uncompensated by TGC.
        noise_db: electronic-noise range (re. parenchyma, before TGC).
        clutter_db: side-lobe clutter and near-field haze range.
        probe_shift_mm: +/- lateral probe offset.
        probe_tilt_deg: +/- in-plane probe tilt.
        probe_elev_mm: +/- elevation (out-of-plane) probe offset.
        p_atypical: share of cases whose class features are drawn from another class's
            distribution (benign with irregular margins, oval malignant, ...).
        label_noise: share of returned labels replaced by another class (the image keeps the
            true class; ``meta["true_label"]`` has it).
        lesion_contrast_db: lesion-to-parenchyma contrast range (breast / thyroid).
        lesion_size_mm: lesion size (semi-axis) range.
        min_psf_px: PSF floor in output pixels (0 = physical resolution).
        motion_scale: multiplies probe speeds in videos (0 = still probe).
        scatterers_per_cell: scatterer density of video mode (>= 10 for Rayleigh speckle).
    """

    img_size: int = 64
    depth_scale: tuple[float, float] = (0.9, 1.1)
    freq_scale: tuple[float, float] = (0.9, 1.1)
    gain_db: tuple[float, float] = (-4.0, 4.0)
    dyn_range_db: tuple[float, float] = (45.0, 60.0)
    tgc_error: float = 0.2
    noise_db: tuple[float, float] = (-85.0, -65.0)
    clutter_db: tuple[float, float] = (-34.0, -28.0)
    probe_shift_mm: float = 3.0
    probe_tilt_deg: float = 4.0
    probe_elev_mm: float = 1.0
    # design §2.2 suggests about 0.25; 0.15 puts a supervised ResNet-18 on 1.2k breast images at
    # 128 px into the 70-95 % band (72.7 %; 0.25 gave 65.7 %, 0.1 gave 76.7 %;
    # benchmarks/bench_learnability.py)
    p_atypical: float = 0.15
    label_noise: float = 0.0
    lesion_contrast_db: tuple[float, float] = (-15.0, -3.0)
    lesion_size_mm: tuple[float, float] = (3.0, 9.0)
    min_psf_px: float = 0.6
    motion_scale: float = 1.0
    scatterers_per_cell: float = 12.0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": {},
        "cpu": {"img_size": 128},
        "paper": {"img_size": 224},
    }

    def __post_init__(self) -> None:
        if not 16 <= self.img_size <= 1024:
            raise ConfigError(
                f"SyntheticConfig.img_size must be in [16, 1024], got {self.img_size}"
            )
        for name in ("p_atypical", "label_noise"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(
                    f"SyntheticConfig.{name} must be in [0, 1], got {getattr(self, name)}"
                )
        for name in (
            "depth_scale",
            "freq_scale",
            "gain_db",
            "dyn_range_db",
            "noise_db",
            "clutter_db",
            "lesion_contrast_db",
            "lesion_size_mm",
        ):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ConfigError(f"SyntheticConfig.{name}: low {lo} > high {hi}")
        if self.dyn_range_db[0] <= 0 or self.lesion_size_mm[0] <= 0:
            raise ConfigError("SyntheticConfig: dyn_range_db and lesion_size_mm must be > 0")

    def clean(self) -> SyntheticConfig:
        """This config with every nuisance fixed at its nominal value (tests, figures)."""
        return self.replace(
            depth_scale=(1.0, 1.0),
            freq_scale=(1.0, 1.0),
            gain_db=(0.0, 0.0),
            dyn_range_db=(50.0, 50.0),
            tgc_error=0.0,
            noise_db=(-85.0, -85.0),
            clutter_db=(-32.0, -32.0),
            probe_shift_mm=0.0,
            probe_tilt_deg=0.0,
            probe_elev_mm=0.0,
            p_atypical=0.0,
            label_noise=0.0,
        )


def uniform(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    """One uniform draw from a (low, high) range (exactly low when the range is empty)."""
    lo, hi = lo_hi
    return float(lo) if hi <= lo else float(rng.uniform(lo, hi))


def sample_acquisition(cfg: SyntheticConfig, rng: np.random.Generator) -> Acquisition:
    """Scanner settings of one item drawn from ``cfg``'s nuisance ranges."""
    return Acquisition(
        gain_db=uniform(rng, cfg.gain_db),
        dyn_range_db=uniform(rng, cfg.dyn_range_db),
        noise_db=uniform(rng, cfg.noise_db),
        clutter_db=uniform(rng, cfg.clutter_db),
        tgc_error=uniform(rng, (-cfg.tgc_error, cfg.tgc_error)),
        min_psf_px=cfg.min_psf_px,
    )


def sample_pose(cfg: SyntheticConfig, rng: np.random.Generator) -> Pose:
    """Probe pose of one still drawn from ``cfg``'s pose ranges."""
    s, e, t = cfg.probe_shift_mm, cfg.probe_elev_mm, np.radians(cfg.probe_tilt_deg)
    return Pose(x=uniform(rng, (-s, s)), y=uniform(rng, (-e, e)), z=0.0, tilt=uniform(rng, (-t, t)))

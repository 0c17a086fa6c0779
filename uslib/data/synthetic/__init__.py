"""Synthetic B-mode ultrasound: the embedded, deterministic default data of ``uslib``.

A fast image-domain (convolution-model) generator calibrated against PyMUST: analytic 3-D scenes
(breast, thyroid, liver, lung, fetal head, cardiac) -> complex scatter map on the beam grid
('cells' for stills, tissue-locked 'scatterers' for videos) -> attenuation/TGC -> depth-varying
PSF -> envelope -> log compression -> scan conversion, with exact analytic masks. numpy + scipy
only, no files, no downloads. Ref: synthetic_ultrasound.md (design) and §1.3 (calibration).

Public surface::

    render_still(task, label, rng, cfg) -> dict(image uint8 (H, W), mask uint8 (H, W), meta)
    render_video(task, label, n_frames, seed, cfg) -> dict(frames, masks (T, H, W), meta)
    TASKS, class_names(task), SyntheticConfig
    SyntheticStills(task, split, n_per_class, cfg, seed, cache_dir)   # torch Dataset
    SyntheticVideos(task, split, n_videos, n_frames, cfg, seed, cache_dir)
    speckle_phantom(...)  # envelope before log compression of a homogeneous phantom
"""

from uslib.data.synthetic.config import SyntheticConfig
from uslib.data.synthetic.phantom import speckle_phantom
from uslib.data.synthetic.probe import (
    CONVEX_PROBE,
    LINEAR_PROBE,
    PHASED_PROBE,
    ImageGeometry,
    Pose,
    Probe,
    trajectory,
)
from uslib.data.synthetic.render import Acquisition, Frame, render_frame
from uslib.data.synthetic.tasks import (
    ORGANS,
    TASKS,
    TaskSpec,
    class_names,
    draw_scene,
    render_still,
    render_video,
)

__all__ = [
    "CONVEX_PROBE",
    "LINEAR_PROBE",
    "ORGANS",
    "PHASED_PROBE",
    "TASKS",
    "Acquisition",
    "Frame",
    "ImageGeometry",
    "Pose",
    "Probe",
    "SyntheticConfig",
    "SyntheticStills",
    "SyntheticVideos",
    "TaskSpec",
    "class_names",
    "draw_scene",
    "render_frame",
    "render_still",
    "render_video",
    "speckle_phantom",
    "trajectory",
]


def __getattr__(name: str) -> object:
    # the torch Datasets load lazily, so the numpy/scipy generator stays torch-free
    if name in ("SyntheticStills", "SyntheticVideos"):
        from uslib.data.synthetic import datasets

        return getattr(datasets, name)
    raise AttributeError(f"module 'uslib.data.synthetic' has no attribute {name!r}")

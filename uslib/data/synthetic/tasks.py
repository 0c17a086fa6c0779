"""Tasks (class tables) and the two public render functions: ``render_still``, ``render_video``.

Everything is a pure function of the generator passed in (no global RNG): pass an int seed, a
seed sequence such as ``[seed, split_code, index]``, or a ``np.random.Generator``.
Ref: synthetic_ultrasound.md §2.1-2.2.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from uslib.data.synthetic.config import SyntheticConfig, sample_acquisition, sample_pose
from uslib.data.synthetic.objects import Scene
from uslib.data.synthetic.probe import trajectory
from uslib.data.synthetic.render import Frame, render_frame
from uslib.data.synthetic.scenes import BUILDERS, breast, cardiac, fetal, liver, lung, thyroid
from uslib.data.synthetic.video import render_frames

SeedLike = int | Sequence[int] | np.random.Generator

_LESION_KEYS = (
    "lesion_margin",
    "lesion_orientation",
    "lesion_posterior",
    "lesion_contrast_db",
    "lesion_size_mm",
    "lesion_halo",
    "lesion_cystic",
)


@dataclass(frozen=True)
class TaskSpec:
    """A synthetic task.

    Attributes:
        name: task name.
        classes: class names (label i is ``classes[i]``).
        organ: organ shown ("mixed" for the organ-classification task).
        probes: probe kinds drawn uniformly per item.
        masks: mask id -> structure name (0 is background).
        meta_keys: scalar meta keys copied into dataset records (fixed per task so records
            collate).
    """

    name: str
    classes: tuple[str, ...]
    organ: str
    probes: tuple[str, ...]
    masks: dict[int, str]
    meta_keys: tuple[str, ...] = ()


ORGANS: tuple[str, ...] = ("breast", "thyroid", "liver", "lung", "fetal_head", "cardiac")

TASKS: dict[str, TaskSpec] = {
    "breast": TaskSpec(
        "breast", breast.CLASSES, "breast", ("linear",), {1: "lesion"}, _LESION_KEYS
    ),
    "thyroid": TaskSpec(
        "thyroid", thyroid.CLASSES, "thyroid", ("linear", "convex"), {1: "nodule"}, _LESION_KEYS
    ),
    "lung": TaskSpec(
        "lung",
        lung.CLASSES,
        "lung",
        ("convex", "linear"),
        {1: "consolidation"},
        ("n_b_lines", "a_lines", "consolidation_mm", "effusion"),
    ),
    "liver": TaskSpec(
        "liver",
        liver.CLASSES,
        "liver",
        ("convex",),
        {1: "liver", 2: "vessel", 3: "kidney"},
        ("fibrosis", "latent_grade"),
    ),
    "fetal_head": TaskSpec(
        "fetal_head",
        fetal.CLASSES,
        "fetal_head",
        ("convex",),
        {1: "head"},
        (
            "hc_mm",
            "head_a_px",
            "head_b_px",
            "head_row_px",
            "head_col_px",
            "head_angle_rad",
            "head_in_view",
        ),
    ),
    "cardiac": TaskSpec(
        "cardiac",
        cardiac.CLASSES,
        "cardiac",
        ("phased",),
        {1: "lv_cavity", 2: "lv_myocardium", 3: "la"},
        ("ef", "phase"),
    ),
    "organ": TaskSpec("organ", ORGANS, "mixed", ("linear", "convex", "phased"), {}),
}
"""Task name -> ``TaskSpec``. The ``organ`` task draws a random class of the organ's own task."""


def class_names(task: str) -> tuple[str, ...]:
    """Class names of ``task`` (label i is element i)."""
    return get_task(task).classes


def get_task(task: str) -> TaskSpec:
    """The ``TaskSpec`` of ``task``; unknown names raise with the valid ones listed."""
    if task not in TASKS:
        raise KeyError(f"unknown synthetic task {task!r}; valid: {sorted(TASKS)}")
    return TASKS[task]


def as_generator(rng: SeedLike) -> np.random.Generator:
    """A ``np.random.Generator`` from a seed, a seed sequence or a generator (returned as is)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def draw_scene(
    task: str, label: int, rng: np.random.Generator, cfg: SyntheticConfig
) -> tuple[Scene, TaskSpec, int]:
    """Build the scene of one item.

    Returns:
        ``(scene, organ_task, organ_label)``: for the ``organ`` task the organ's own task and a
        random class of it; otherwise ``TASKS[task]`` and ``label``.
    """
    spec = get_task(task)
    if not 0 <= int(label) < len(spec.classes):
        raise ValueError(f"label {label} out of range for task {task!r} {spec.classes}")
    if task == "organ":
        spec = TASKS[ORGANS[int(label)]]
        label = int(rng.integers(len(spec.classes)))
    probe_kind = spec.probes[int(rng.integers(len(spec.probes)))]
    scene = BUILDERS[spec.organ](rng, int(label), cfg, probe_kind)
    return scene, spec, int(label)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items() if not str(k).startswith("_")}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _meta(task: str, spec: TaskSpec, label: int, scene: Scene, frame: Frame) -> dict[str, Any]:
    p = scene.probe
    return _jsonable(
        {
            "task": task,
            "organ": scene.organ,
            "class_name": spec.classes[label],
            "organ_label": label,
            "probe": p.kind,
            "fc_mhz": p.fc,
            "depth_mm": p.depth,
            "spacing_mm": frame.geometry.spacing,
            **scene.meta,
        }
    )


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float image -> uint8 (rounded)."""
    return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)


def render_still(
    task: str, label: int, rng: SeedLike = 0, cfg: SyntheticConfig | None = None
) -> dict[str, Any]:
    """One labelled still ('cells' speckle: exact Rayleigh statistics).

    Args:
        task: a key of ``TASKS``.
        label: class index.
        rng: seed, seed sequence or generator (the only source of randomness).
        cfg: generator knobs (default ``SyntheticConfig()``).

    Returns:
        ``dict(image=uint8 (H, W), mask=uint8 (H, W), meta=dict)``; ``meta`` is JSON-able and
        holds the probe, ``spacing_mm``, class parameters (``hc_mm`` for the fetal head, ``ef``
        for cardiac). Ref: synthetic_ultrasound.md §1.
    """
    cfg = cfg or SyntheticConfig()
    gen = as_generator(rng)
    scene, spec, organ_label = draw_scene(task, label, gen, cfg)
    pose, acq = sample_pose(cfg, gen), sample_acquisition(cfg, gen)
    frame = render_frame(scene, pose, acq, cfg.img_size, gen)
    meta = _meta(task, spec, organ_label, scene, frame)
    if scene.finalize is not None:
        meta.update(_jsonable(scene.finalize(scene, pose, frame.geometry)))
    assert frame.mask is not None
    return {"image": to_uint8(frame.image), "mask": frame.mask.astype(np.uint8), "meta": meta}


def render_video(
    task: str,
    label: int,
    n_frames: int,
    seed: SeedLike = 0,
    cfg: SyntheticConfig | None = None,
) -> dict[str, Any]:
    """One labelled video: tissue-locked scatterers along a smooth probe trajectory.

    Lung videos show lung sliding; cardiac videos a periodic LV contraction whose cycle fits the
    video (meta ``ef``, ``period_frames``, per-frame ``phases``, ``ed_frames``, ``es_frames``).

    Args:
        task: a key of ``TASKS``.
        label: class index.
        n_frames: number of frames T.
        seed: seed, seed sequence or generator.
        cfg: generator knobs.

    Returns:
        ``dict(frames=uint8 (T, H, W), masks=uint8 (T, H, W), meta=dict)``.
        Ref: synthetic_ultrasound.md §1 item 12.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    cfg = cfg or SyntheticConfig()
    gen = as_generator(seed)
    scene, spec, organ_label = draw_scene(task, label, gen, cfg)
    if scene.organ == "cardiac":
        scene = cardiac.for_video(scene, n_frames, gen)
    poses = trajectory(gen, n_frames, sample_pose(cfg, gen), cfg.motion_scale)
    acq = sample_acquisition(cfg, gen)
    frames = render_frames(scene, poses, acq, cfg.img_size, gen, cfg.scatterers_per_cell)
    meta = _meta(task, spec, organ_label, scene, frames[0])
    meta["n_frames"] = n_frames
    if scene.organ == "cardiac":
        phases = [scene.at_time(t).meta["phase"] for t in range(n_frames)]
        meta.update(
            phases=phases,
            ed_frames=[t for t, p in enumerate(phases) if p == 0.0],
            es_frames=[t for t, p in enumerate(phases) if p == 0.5],
        )
        meta.pop("phase", None)
    if scene.finalize is not None:
        meta.update(_jsonable(scene.finalize(scene, poses[0], frames[0].geometry)))
    return {
        "frames": np.stack([to_uint8(f.image) for f in frames]),
        "masks": np.stack([f.mask for f in frames]).astype(np.uint8),
        "meta": meta,
    }

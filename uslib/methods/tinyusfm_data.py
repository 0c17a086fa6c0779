"""TinyUSFM's teacher loading and candidate pool (no method registered here).

* ``build_teacher(cfg)``: the frozen teacher from ``cfg.teacher_checkpoint``: a uslib
  ``encoder.yaml`` written by ``pretraining.pretrain`` (``teacher_format="encoder"``, its
  recorded input normalisation kept), or an official file through
  ``uslib.models.checkpoints.load_official`` (``teacher_format="usfm"`` etc.); no checkpoint
  gives a randomly initialised teacher, allowed for every format but ``"usfm"`` (paper);
* ``pool_dataset(data_cfg)``: the candidate pool: synthetic stills of ``data.task`` (the
  multi-organ ``"organ"`` task stands in for the 3M-US pool), or every image under
  ``data.data_root`` (its POCUS frames when it holds a POCUS layout), as ``{"image", "index"}``
  items;
* ``find_teacher(profile, exclude)``: the largest ViT encoder already pretrained in a profile's
  run folders (e.g. notebook 04's MAE teacher), for notebook 05;
* ``teacher_config(cfg, **optim)``: the config that pretrains a teacher with the method's own
  domain-masked reconstruction (USFM's objective, no teacher, no coreset).

Ref: OpenUS/TinyUSFM notes §2.1-2.3.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from uslib import runs
from uslib.config import DataConfig
from uslib.data.coreset import CoresetSelection
from uslib.data.items import is_mask_file
from uslib.data.media import IMAGE_EXTS
from uslib.data.sources import FrameArray, pocus_frame_array, pocus_root
from uslib.data.validation import list_files
from uslib.models import create_backbone
from uslib.models.checkpoints import KINDS, load_official
from uslib.paths import repo_relative, resolve_repo_path


@dataclass
class TeacherInfo:
    """A frozen teacher and how it wants its input.

    Attributes:
        module: the backbone (ViT contract: ``blocks``, ``embed_dim``,
            ``forward_intermediates``).
        input_norm: ``(mean, std)`` applied to [0, 1] images first, or ``None``.
        source: the checkpoint path, or ``"random init"``.
    """

    module: nn.Module
    input_norm: tuple[float, float] | None
    source: str


def build_teacher(cfg: Any) -> TeacherInfo | None:
    """The teacher of a ``TinyUSFMConfig`` (``None`` when ``teacher_backbone == "none"``).

    Raises:
        ValueError: unknown ``teacher_format``, or ``"usfm"`` without a checkpoint.
        FileNotFoundError: ``teacher_checkpoint`` does not exist (the parameter is named).
    """
    if cfg.teacher_backbone == "none":
        return None
    fmt, path, d = cfg.teacher_format, cfg.teacher_checkpoint, cfg.data
    if fmt != "encoder" and fmt not in KINDS:
        raise ValueError(f"teacher_format must be 'encoder' or one of {KINDS}, got {fmt!r}")
    if path is None:
        if fmt == "usfm":
            raise ValueError(
                "TinyUSFMConfig.teacher_checkpoint is None: the paper profile distils from the "
                "official USFM weights; pass teacher_checkpoint=<local USFM_latest.pth> "
                "(notes §2.2; Google-Drive id 1KRwXZgYterH895Z8EpXpR1L1eSMMJo4q)"
            )
        kw = {"in_chans": d.in_chans, "img_size": d.img_size}
        return TeacherInfo(create_backbone(cfg.teacher_backbone, **kw), None, "random init")
    p = resolve_repo_path(path)
    if fmt == "encoder" and p.is_dir():
        p = (
            p / "checkpoints" / runs.ENCODER_SPEC
            if (p / "checkpoints").is_dir()
            else p / runs.ENCODER_SPEC
        )
    if not p.is_file():
        raise FileNotFoundError(f"TinyUSFMConfig.teacher_checkpoint: file not found: {p}")
    if fmt == "encoder":
        module, spec = runs.load_encoder(p, raw=True)
        norm = spec.get("input_norm")
        return TeacherInfo(
            module, None if norm is None else (float(norm[0]), float(norm[1])), repo_relative(p)
        )
    module = create_backbone(cfg.teacher_backbone, in_chans=d.in_chans, img_size=d.img_size)
    load_official(module, p, fmt)
    return TeacherInfo(module, None, repo_relative(p))


class ImagePool(Dataset):
    """Every still image under a folder (``validation.list_files`` with ``media.IMAGE_EXTS``: the
    one walk of the loaders, which logs what it skips) except masks (``items.is_mask_file``:
    ``<stem>_mask*`` files and ``masks/`` folders, the rule of the paired layouts), grey, resized
    to ``img_size``: ``{"image", "index"}``."""

    def __init__(self, root: str | Path, img_size: int) -> None:
        self.files = [f for f in list_files(root, IMAGE_EXTS) if not is_mask_file(f)]
        if not self.files:
            exts = ", ".join(sorted(IMAGE_EXTS))
            raise FileNotFoundError(f"data_root {root}: no image files ({exts})")
        self.img_size = img_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from uslib.data.media import read_image

        img, _ = read_image(self.files[i])
        x = torch.from_numpy(np.ascontiguousarray(img))[None, None]
        x = torch.nn.functional.interpolate(x, size=(self.img_size,) * 2, mode="bilinear")
        return {"image": x[0], "index": i}


class SyntheticPool(Dataset):
    """Synthetic stills of one task as unlabelled ``{"image", "index"}`` items."""

    def __init__(self, d: DataConfig) -> None:
        from uslib.data.synthetic import SyntheticConfig, SyntheticStills

        self.ds = SyntheticStills(
            d.task, "train", d.n_per_class, SyntheticConfig(img_size=d.img_size), d.seed
        )

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.ds[i]["image"], "index": i}

    def labels(self) -> np.ndarray:
        """Organ / class label of every item (for plots only; never used in training)."""
        return np.asarray(self.ds.labels)


def pool_dataset(d: DataConfig) -> tuple[Dataset, tuple[str, ...], str | None]:
    """``(pool, provenance, data_root)`` of a data config (see the module docstring).

    A root holding a POCUS layout (``sources.pocus_root``: itself or ``pocus_lung/`` below it)
    gives its extracted frames (``data.frames_per_clip`` per clip), provenance ``real:pocus``,
    so that other sets beside it (HC18 in ``shared/data``) stay unseen; any other folder gives
    every image file under it (mask files excluded), provenance ``real:<folder name>``.
    """
    if d.data_root is None:
        return SyntheticPool(d), (f"synthetic:{d.task}",), None
    try:
        layout = pocus_root(d.data_root)
    except FileNotFoundError:  # no POCUS layout: a plain folder of images
        pool = ImagePool(d.data_root, d.img_size)
        return pool, (f"real:{Path(d.data_root).name}",), str(d.data_root)
    frames, root = pocus_frame_array(layout, d.img_size, d.frames_per_clip)  # type: ignore[arg-type]
    return FrameArray(frames, "pocus"), ("real:pocus",), str(root)


class Subset(Dataset):
    """The pool restricted to ``indices`` (all when ``None``); keeps the ``selection``."""

    def __init__(
        self, pool: Dataset, indices: np.ndarray | None, selection: CoresetSelection | None
    ) -> None:
        self.pool, self.selection = pool, selection
        self.indices = np.arange(len(pool)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.pool[int(self.indices[i])]


def find_teacher(
    profile: str, exclude: str = "05_", data_root: str | Path | None = None
) -> Path | None:
    """The ``encoder.yaml`` of the largest ViT encoder in a run set's folders, or ``None``.

    Only ViT-contract backbones (names starting ``vit`` or ``usfm``) qualify; runs whose folder
    name starts with ``exclude`` (this notebook's own) are skipped. "Largest" = most parameters.
    ``data_root`` picks the real-data run set (``papermill_runs/<profile>_real``), so a real run
    distils from a teacher pretrained on the same real data.
    """
    best: tuple[int, Path] | None = None
    for spec_path in runs.find_encoders(profile, data_root=data_root):
        if spec_path.parent.parent.name.startswith(exclude):
            continue
        spec = runs.read_encoder_spec(spec_path)
        if not spec["backbone"].startswith(("vit", "usfm")):
            continue
        n = sum(p.numel() for p in create_backbone(spec["backbone"], **spec["kwargs"]).parameters())
        if best is None or n > best[0]:
            best = (n, spec_path)
    return None if best is None else best[1]


def teacher_config(cfg: Any, **optim: Any) -> Any:
    """``cfg`` turned into the teacher's own pretraining: the teacher architecture trained with
    the domain-masked reconstruction alone (no teacher, whole pool), optim overrides applied."""
    return cfg.replace(backbone=cfg.teacher_backbone, teacher_backbone="none", coreset="none",
                       teacher_checkpoint=None, optim=optim)  # fmt: skip

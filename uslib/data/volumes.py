"""3-D ultrasound volumes with real spacing, 2-D images as depth-1 volumes, and shape buckets.

* ``SyntheticSweeps``: elevational sweeps of the synthetic generator: one scene, one scatterer
  cloud, the probe stepped along the elevation axis by ``slice_ratio`` x the in-plane spacing,
  so a volume's z spacing is really coarser than its in-plane spacing (``aniso_d > 0``);
* ``DepthOneImages``: 2-D stills as (C, 1, H, W) volumes with z spacing 1e8 (``aniso_d = 5``);
* ``GridBatchSampler``: batches that never mix token-grid shapes (PUMIT buckets by aniso_d),
  every item once per epoch, the order a pure function of ``(seed, epoch)`` (``set_epoch``);
* ``load_volume``: NIfTI files (``nibabel``) and DICOM series folders (``pydicom``) with their
  spacing, as (D, H, W) float arrays; corrupt or spacing-less inputs raise naming the file.

Volume records extend the schema (``uslib.data.schema``): ``image`` is (C, D, H, W),
``mask`` (D, H, W), ``spacing`` stays the in-plane mm/px and two keys are added:
``spacing_zyx`` (float32 tensor (3,), mm) and ``aniso_d`` (int).

Ref: PUMIT notes §C.2 (aniso_d, 2-D as depth 1 with z spacing 1e8), §C.4 (data pipeline,
intensity rescaling to [0, 1], batches bucketed by aniso_d).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from uslib.data.synthetic import ImageGeometry, SyntheticConfig, SyntheticStills
from uslib.data.synthetic.config import sample_acquisition, sample_pose
from uslib.data.synthetic.datasets import as_synthetic_config, item_seed
from uslib.data.synthetic.probe import Pose
from uslib.data.synthetic.render import render_frame
from uslib.data.synthetic.tasks import draw_scene, get_task, to_uint8
from uslib.data.synthetic.video import make_speckle
from uslib.ops.anisotropy import TWO_D_Z_SPACING, aniso_d

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def render_sweep(
    task: str,
    label: int,
    depth: int,
    slice_ratio: float,
    seed: Any,
    cfg: SyntheticConfig,
) -> dict[str, Any]:
    """One elevational sweep: ``depth`` parallel slices ``slice_ratio`` pixels apart.

    Args:
        task: a synthetic task name.
        label: class index.
        depth: number of slices D.
        slice_ratio: slice spacing / in-plane spacing (>= 1 makes the volume anisotropic).
        seed: seed sequence of the volume.
        cfg: generator knobs (``img_size`` = H = W).

    Returns:
        ``dict(volume=uint8 (D, H, W), masks=uint8 (D, H, W), spacing_zyx=(z, xy, xy) mm)``.
    """
    if depth < 1 or slice_ratio <= 0:
        raise ValueError(f"need depth >= 1 and slice_ratio > 0, got {depth}, {slice_ratio}")
    gen = np.random.default_rng(seed)
    scene, _, _ = draw_scene(task, label, gen, cfg)
    start = sample_pose(cfg, gen)
    acq = sample_acquisition(cfg, gen)
    xy = float(ImageGeometry.of(scene.probe, cfg.img_size).spacing)
    dz = slice_ratio * xy
    y0 = start.y - 0.5 * (depth - 1) * dz  # the sweep is centred on the drawn pose
    poses = [Pose(start.x, y0 + k * dz, start.z, start.tilt) for k in range(depth)]
    speckle = make_speckle(scene.probe, poses, acq, cfg.img_size, gen, cfg.scatterers_per_cell)
    frames = [render_frame(scene, p, acq, cfg.img_size, gen, speckle=speckle) for p in poses]
    return {
        "volume": np.stack([to_uint8(f.image) for f in frames]),
        "masks": np.stack([f.mask for f in frames]).astype(np.uint8),
        "spacing_zyx": (dz, xy, xy),
    }


def volume_record(
    image: torch.Tensor,
    spacing_zyx: Sequence[float],
    *,
    label: int = -1,
    dataset: str = "volume",
    item_id: str = "",
    mask: torch.Tensor | None = None,
    aniso: int | None = None,
) -> dict[str, Any]:
    """A volume record: schema keys plus ``spacing_zyx`` and ``aniso_d`` (module docstring).

    Args:
        image: (C, D, H, W) float in [0, 1].
        spacing_zyx: (z, y, x) spacing in mm; 2-D images use z = ``TWO_D_Z_SPACING``.
        aniso: aniso_d when known exactly (sweeps: from their ratio, free of rounding);
            default ``aniso_d(z, sqrt(x * y))``.
    """
    if image.ndim != 4:
        raise ValueError(f"volume image must be (C, D, H, W), got {tuple(image.shape)}")
    z, y, x = (float(s) for s in spacing_zyx)
    m = mask if mask is not None else torch.zeros(image.shape[1:], dtype=torch.int64)
    return {
        "image": image.float(),
        "mask": m.long(),
        "has_mask": mask is not None,
        "label": int(label),
        "dataset": dataset,
        "organ": "",
        "patient_id": item_id,
        "video_id": item_id,
        "frame_idx": -1,
        "spacing": math.sqrt(x * y),
        "spacing_zyx": torch.tensor([z, y, x], dtype=torch.float32),
        "aniso_d": aniso_d(z, math.sqrt(x * y)) if aniso is None else int(aniso),
        "meta": {},
    }


class SyntheticSweeps(Dataset):
    """Balanced labelled synthetic volumes (item i has class ``i % n_classes``), kept in memory.

    Args:
        task: synthetic task.
        split: split name (independent items per split).
        n_volumes: number of volumes.
        depth: slices per volume D.
        slice_ratio: z spacing / in-plane spacing; ``aniso_d = floor(log2(ratio))`` (§C.2).
        cfg: generator config (or any config with ``img_size``).
        seed: dataset seed.

    Shape:
        ``record["image"]``: (1, D, H, W) float32 in [0, 1]; ``record["mask"]``: (D, H, W).
    """

    def __init__(
        self,
        task: str,
        split: str = "train",
        n_volumes: int = 4,
        depth: int = 8,
        slice_ratio: float = 4.0,
        cfg: Any = None,
        seed: int = 0,
    ) -> None:
        self.spec = get_task(task)
        self.task, self.split, self.seed = task, split, int(seed)
        self.n_volumes, self.depth, self.slice_ratio = int(n_volumes), int(depth), slice_ratio
        self.cfg = as_synthetic_config(cfg)
        self._memory: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return self.n_volumes

    def grid_key(self, i: int) -> tuple[int, int, int, int]:
        """``(aniso_d, D, H, W)`` of item ``i`` without rendering it."""
        s = self.cfg.img_size
        return (aniso_d(self.slice_ratio, 1.0), self.depth, s, s)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"volume {i} out of range for {len(self)} volumes")
        if i not in self._memory:
            label = i % len(self.spec.classes)
            seq = [*item_seed(self.seed, self.split, self.task, i), 7]  # same scene at any depth
            self._memory[i] = render_sweep(
                self.task, label, self.depth, self.slice_ratio, seq, self.cfg
            )
        item = self._memory[i]
        img = torch.from_numpy(item["volume"].astype(np.float32) / 255.0)[None]
        vid = f"syn-{self.task}-{self.split}-s{self.seed}-r{self.slice_ratio:g}-v{i:05d}"
        return volume_record(
            img, item["spacing_zyx"], label=i % len(self.spec.classes),
            dataset=f"synthetic_{self.task}_sweep", item_id=vid,
            mask=torch.from_numpy(item["masks"].astype(np.int64)), aniso=self.grid_key(i)[0],
        )  # fmt: skip


class DepthOneImages(Dataset):
    """2-D stills as depth-1 volumes with z spacing 1e8, so ``aniso_d = 5`` (§C.2, §C.4).

    Args:
        stills: a dataset of schema records with ``image`` (C, H, W) (e.g. ``SyntheticStills``).
        img_size: H = W of the stills (for ``grid_key`` without loading).
    """

    def __init__(self, stills: Dataset, img_size: int) -> None:
        self.stills, self.img_size = stills, int(img_size)

    def __len__(self) -> int:
        return len(self.stills)  # type: ignore[arg-type]

    def grid_key(self, i: int) -> tuple[int, int, int, int]:
        """``(5, 1, H, W)``: every still has the 2-D grid."""
        return (5, 1, self.img_size, self.img_size)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.stills[i]
        xy = float(rec["spacing"]) or 1.0
        return volume_record(
            rec["image"][:, None], (TWO_D_Z_SPACING, xy, xy), label=rec["label"],
            dataset=rec["dataset"], item_id=rec["patient_id"] or rec["video_id"],
            mask=rec["mask"][None],
        )  # fmt: skip


class VolumeMix(Dataset):
    """Concatenation of datasets that expose ``grid_key(i)`` (sweeps, depth-1 images, ...)."""

    def __init__(self, parts: Sequence[Dataset]) -> None:
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts])  # type: ignore[arg-type]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, i: int) -> tuple[Dataset, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return self.parts[k], i - int(self.offsets[k])

    def grid_key(self, i: int) -> Hashable:
        """The grid key of item ``i`` (from its part)."""
        part, j = self._locate(i)
        return part.grid_key(j)  # type: ignore[attr-defined]

    def grid_keys(self) -> list[Hashable]:
        """Grid key of every item, in order."""
        return [self.grid_key(i) for i in range(len(self))]

    def __getitem__(self, i: int) -> dict[str, Any]:
        part, j = self._locate(i)
        return part[j]


def synthetic_volume_mix(
    task: str,
    split: str,
    n_images: int,
    n_volumes: int,
    depths: Sequence[int],
    slice_ratios: Sequence[float],
    cfg: Any,
    seed: int = 0,
) -> VolumeMix:
    """2-D stills (``n_images`` per class) plus ``n_volumes`` sweeps at each (depth, ratio)."""
    if len(depths) != len(slice_ratios):
        raise ValueError(f"depths {list(depths)} and slice_ratios {list(slice_ratios)} differ")
    parts: list[Dataset] = []
    if n_images > 0:
        stills = SyntheticStills(task, split, n_images, cfg, seed, keep_in_memory=True)
        parts.append(DepthOneImages(stills, cfg.img_size))
    for k, (d, r) in enumerate(zip(depths, slice_ratios, strict=True)):
        if n_volumes > 0:
            parts.append(SyntheticSweeps(task, split, n_volumes, d, r, cfg, seed + 1000 * (k + 1)))
    return VolumeMix(parts)


class GridBatchSampler:
    """Batches of one grid key each, every item exactly once per epoch (no drop_last).

    Within each key the items are shuffled and cut into batches of ``batch_size`` (the last one
    may be smaller); the batches of all keys are then shuffled together. The order is a pure
    function of ``(seed, epoch)``, so a resumed run replays it. Ref: §C.4 (buckets by aniso_d).

    Args:
        keys: one hashable grid key per item (``VolumeMix.grid_keys()``).
        batch_size: items per batch (>= 1).
        seed: base seed.
        shuffle: shuffle items and batches (False: items in order, keys in first-seen order).
    """

    def __init__(
        self, keys: Sequence[Hashable], batch_size: int, seed: int = 0, shuffle: bool = True
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.keys, self.batch_size, self.seed, self.shuffle = list(keys), batch_size, seed, shuffle
        self.epoch = 0
        self.groups: dict[Hashable, list[int]] = {}
        for i, k in enumerate(self.keys):
            self.groups.setdefault(k, []).append(i)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration the order of ``epoch``."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return sum(math.ceil(len(g) / self.batch_size) for g in self.groups.values())

    def batches(self) -> list[list[int]]:
        """The batches of the current epoch."""
        rng = np.random.default_rng([int(self.seed), self.epoch, 0x5AD])
        out: list[list[int]] = []
        for idx in self.groups.values():
            order = rng.permutation(idx).tolist() if self.shuffle else list(idx)
            out += [order[j : j + self.batch_size] for j in range(0, len(order), self.batch_size)]
        if self.shuffle:
            out = [out[j] for j in rng.permutation(len(out))]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())


# ----------------------------------------------------------------------------- local files


def rescale_intensity(vol: np.ndarray, lo_q: float = 0.5, hi_q: float = 99.5) -> np.ndarray:
    """Clip to the [p0.5, p99.5] percentiles of the non-minimum voxels, rescale to [0, 1] (§C.4)."""
    v = vol.astype(np.float32)
    fg = v[v > v.min()]
    if fg.size == 0:
        return np.zeros_like(v)
    lo, hi = np.percentile(fg, [lo_q, hi_q])
    return np.clip((v - lo) / max(hi - lo, 1e-6), 0.0, 1.0)


def _spacing_ok(spacing: Sequence[float]) -> bool:
    return len(spacing) == 3 and all(math.isfinite(s) and s > 0 for s in spacing)


def load_nifti(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A NIfTI volume as a (D, H, W) float32 array (file axes (x, y, z) -> (z, y, x)) + spacing.

    Raises:
        ImportError: ``nibabel`` is not installed (``pip install nibabel``).
        ValueError: the file cannot be read, is not 3-D, or has no positive spacing (named).
    """
    try:
        import nibabel as nib
    except ImportError as err:
        raise ImportError(
            f"reading NIfTI ({path}) needs the 'nibabel' package: pip install nibabel"
        ) from err
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except Exception as err:  # nibabel raises several types for corrupt files
        raise ValueError(f"{path}: unreadable NIfTI file ({err})") from err
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    spacing = (zooms[2], zooms[1], zooms[0]) if len(zooms) == 3 else ()
    if not _spacing_ok(spacing):
        raise ValueError(f"{path}: no positive voxel spacing in the header (got {zooms})")
    return np.ascontiguousarray(data.transpose(2, 1, 0)), spacing  # type: ignore[return-value]


def _slice_z(ds: Any, name: Path) -> float:
    pos = getattr(ds, "ImagePositionPatient", None)
    if pos is not None and len(pos) == 3:
        return float(pos[2])
    inst = getattr(ds, "InstanceNumber", None)
    if inst is None:
        raise ValueError(f"{name}: no ImagePositionPatient or InstanceNumber to order the slice")
    return float(inst)


def load_dicom_series(folder: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A folder of single-slice DICOM files as a (D, H, W) float32 volume + (z, y, x) spacing.

    Slices are ordered by ``ImagePositionPatient[2]`` (else ``InstanceNumber``); z spacing is
    the median position step, else ``SpacingBetweenSlices`` / ``SliceThickness``; in-plane
    spacing is ``PixelSpacing``; ``RescaleSlope`` / ``RescaleIntercept`` are applied.

    Raises:
        FileNotFoundError: no file in ``folder``.
        ValueError: an unreadable file, a slice without pixels or spacing, or mismatching shapes
            (the file is named).
    """
    import pydicom

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no DICOM files in {folder}")
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
            arr = ds.pixel_array.astype(np.float32)
        except Exception as err:
            raise ValueError(f"{f}: unreadable DICOM slice ({err})") from err
        arr = arr * float(getattr(ds, "RescaleSlope", 1.0)) + float(
            getattr(ds, "RescaleIntercept", 0.0)
        )
        px = getattr(ds, "PixelSpacing", None)
        if px is None or len(px) != 2:
            raise ValueError(f"{f}: no PixelSpacing (in-plane spacing unknown)")
        slices.append((_slice_z(ds, f), arr, (float(px[0]), float(px[1])), ds, f))
    slices.sort(key=lambda s: s[0])
    shapes = {s[1].shape for s in slices}
    if len(shapes) != 1:
        raise ValueError(f"{folder}: slices of different shapes {sorted(shapes)}")
    zs = np.array([s[0] for s in slices])
    if len(zs) > 1 and hasattr(slices[0][3], "ImagePositionPatient"):
        dz = float(np.median(np.diff(zs)))
    else:
        ds0 = slices[0][3]
        dz = float(getattr(ds0, "SpacingBetweenSlices", getattr(ds0, "SliceThickness", 0.0)))
    spacing = (dz, *slices[0][2])
    if not _spacing_ok(spacing):
        raise ValueError(f"{slices[0][4]}: no positive slice spacing (got {spacing})")
    return np.stack([s[1] for s in slices]), spacing  # type: ignore[return-value]


def load_volume(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """``load_nifti`` for ``.nii`` / ``.nii.gz`` files, ``load_dicom_series`` for folders."""
    path = Path(path)
    if path.is_dir():
        return load_dicom_series(path)
    if not path.exists():
        raise FileNotFoundError(f"volume not found: {path}")
    if path.name.endswith(NIFTI_SUFFIXES):
        return load_nifti(path)
    raise ValueError(f"{path}: not a NIfTI file (.nii, .nii.gz) or a DICOM series folder")


class LocalVolumes(Dataset):
    """Volumes at local paths, intensities rescaled to [0, 1] and centre-cropped / zero-padded.

    Args:
        paths: NIfTI files or DICOM series folders.
        shape: (D, H, W) of every returned volume (choose it divisible by the token grid).
        dataset: dataset name of the records.
    """

    def __init__(
        self, paths: Sequence[str | Path], shape: Sequence[int], dataset: str = "local"
    ) -> None:
        self.paths, self.shape, self.dataset = [Path(p) for p in paths], tuple(shape), dataset
        self._spacing: dict[int, tuple[float, float, float]] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def grid_key(self, i: int) -> tuple[int, ...]:
        """``(aniso_d, D, H, W)`` (reads the file header once)."""
        if i not in self._spacing:
            self._spacing[i] = load_volume(self.paths[i])[1]
        z, y, x = self._spacing[i]
        return (aniso_d(z, math.sqrt(x * y)), *self.shape)

    def __getitem__(self, i: int) -> dict[str, Any]:
        vol, spacing = load_volume(self.paths[i])
        self._spacing[i] = spacing
        out = np.zeros(self.shape, dtype=np.float32)
        src, dst = [], []
        for n, m in zip(vol.shape, self.shape, strict=True):
            a, b = max((n - m) // 2, 0), max((m - n) // 2, 0)
            k = min(n, m)
            src.append(slice(a, a + k))
            dst.append(slice(b, b + k))
        out[tuple(dst)] = rescale_intensity(vol)[tuple(src)]
        return volume_record(
            torch.from_numpy(out)[None], spacing, dataset=self.dataset, item_id=self.paths[i].name
        )

"""Volumes (uslib.data.volumes): sweeps with real spacing, depth-1 images, the grid sampler,
and NIfTI / DICOM loading of small files written here. Ref: PUMIT notes §C.2, §C.4."""

from __future__ import annotations

import importlib.util
from collections import Counter

import numpy as np
import pytest
import torch

from uslib.data.synthetic import SyntheticConfig
from uslib.data.volumes import (
    GridBatchSampler,
    LocalVolumes,
    SyntheticSweeps,
    load_dicom_series,
    load_nifti,
    load_volume,
    synthetic_volume_mix,
)
from uslib.models import create_backbone
from uslib.ops.anisotropy import TWO_D_Z_SPACING

CFG = SyntheticConfig(img_size=16)
HAS_NIBABEL = importlib.util.find_spec("nibabel") is not None


@pytest.mark.parametrize("ratio, expected", [(1.0, 0), (2.0, 1), (4.0, 2), (8.0, 3), (40.0, 5)])
def test_sweep_spacing_is_anisotropic_as_chosen(ratio: float, expected: int) -> None:
    rec = SyntheticSweeps("breast", "train", 1, 2, ratio, CFG)[0]
    z, y, x = rec["spacing_zyx"].tolist()
    assert z == pytest.approx(ratio * y, rel=1e-5) and y == x
    assert rec["aniso_d"] == expected and rec["image"].shape == (1, 2, 16, 16)
    assert 0.0 <= rec["image"].min() and rec["image"].max() <= 1.0


def test_sweep_slices_differ_and_are_deterministic() -> None:
    a = SyntheticSweeps("liver", "train", 1, 3, 4.0, CFG, seed=3)[0]["image"]
    b = SyntheticSweeps("liver", "train", 1, 3, 4.0, CFG, seed=3)[0]["image"]
    assert torch.equal(a, b)
    assert not torch.equal(a[0, 0], a[0, 2])  # the probe moved in elevation


def test_mix_images_are_depth_one_volumes_with_2d_spacing() -> None:
    mix = synthetic_volume_mix("breast", "train", 1, 1, [4], [4.0], CFG)
    keys = mix.grid_keys()
    assert keys[:3] == [(5, 1, 16, 16)] * 3 and keys[3] == (2, 4, 16, 16)
    rec = mix[0]
    assert rec["image"].shape == (1, 1, 16, 16) and rec["aniso_d"] == 5
    assert rec["spacing_zyx"][0].item() == pytest.approx(TWO_D_Z_SPACING)
    assert [mix.grid_key(i)[:2] for i in range(len(mix))] == [
        (mix[i]["aniso_d"], mix[i]["image"].shape[1]) for i in range(len(mix))
    ]


def test_one_model_tokenizes_mix_batches_by_the_rule() -> None:
    """Same weights on 2-D, isotropic and anisotropic batches: grid (D/d, H/p, W/p)."""
    vit = create_backbone("spad_vit_smoke", in_chans=1)  # p = 8
    mix = synthetic_volume_mix("breast", "train", 1, 2, [8, 4], [1.0, 4.0], CFG)
    sampler = GridBatchSampler(mix.grid_keys(), batch_size=2)
    seen = set()
    for batch in sampler:
        recs = [mix[i] for i in batch]
        x = torch.stack([r["image"] for r in recs])
        a = recs[0]["aniso_d"]
        _, _, grid = vit.encode(x, aniso=a, indices=[])
        d = max(8 >> a, 1)
        assert grid == (x.shape[2] // d, 2, 2)
        seen.add((a, grid))
    assert seen == {(5, (1, 2, 2)), (0, (1, 2, 2)), (2, (2, 2, 2))}


def test_grid_sampler_never_mixes_and_covers_each_item_once() -> None:
    keys = ["a"] * 7 + ["b"] * 3 + ["c"] * 5
    s = GridBatchSampler(keys, batch_size=3, seed=1)
    assert len(s) == 3 + 1 + 2
    orders = []
    for epoch in (0, 1):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s)
        assert all(len({keys[i] for i in b}) == 1 for b in batches)
        assert Counter(i for b in batches for i in b) == Counter(range(len(keys)))
        assert all(len(b) <= 3 for b in batches)
        orders.append(batches)
    assert orders[0] != orders[1]  # a new order per epoch
    s.set_epoch(0)
    assert list(s) == orders[0]  # ... a pure function of the epoch
    assert list(GridBatchSampler(keys, 3, seed=1)) == orders[0]


def test_grid_sampler_rejects_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        GridBatchSampler([0, 1], 0)


def _write_dicom_series(folder, n: int = 3, dz: float = 2.5, spacing: bool = True) -> np.ndarray:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    vol = (np.arange(n * 4 * 5).reshape(n, 4, 5) * 7 % 1000).astype(np.uint16)
    for k in reversed(range(n)):  # written out of order: the loader sorts by position
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
        ds.Rows, ds.Columns, ds.SamplesPerPixel = 4, 5, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        if spacing:
            ds.PixelSpacing = [0.5, 0.5]
        ds.ImagePositionPatient = [0.0, 0.0, k * dz]
        ds.InstanceNumber = k + 1
        ds.PixelData = vol[k].tobytes()
        ds.save_as(folder / f"slice_{(k * 7) % n}.dcm", enforce_file_format=True)
    return vol


def test_dicom_series_volume_and_spacing(tmp_path) -> None:
    vol = _write_dicom_series(tmp_path / "series", n=3, dz=2.5)
    arr, spacing = load_volume(tmp_path / "series")
    np.testing.assert_array_equal(arr, vol.astype(np.float32))
    assert spacing == pytest.approx((2.5, 0.5, 0.5))
    rec = LocalVolumes([tmp_path / "series"], shape=(4, 4, 4))[0]
    assert rec["image"].shape == (1, 4, 4, 4) and rec["aniso_d"] == 2  # 2.5 / 0.5 = 5
    assert 0.0 <= rec["image"].min() and rec["image"].max() <= 1.0


def test_dicom_without_spacing_names_the_file(tmp_path) -> None:
    _write_dicom_series(tmp_path / "s", spacing=False)
    with pytest.raises(ValueError, match=r"slice_\d\.dcm: no PixelSpacing"):
        load_dicom_series(tmp_path / "s")


def test_corrupt_dicom_names_the_file(tmp_path) -> None:
    _write_dicom_series(tmp_path / "s")
    (tmp_path / "s" / "slice_0.dcm").write_bytes(b"not a dicom file")
    with pytest.raises(ValueError, match=r"slice_0\.dcm: unreadable DICOM"):
        load_dicom_series(tmp_path / "s")


def test_unknown_volume_path_is_named(tmp_path) -> None:
    (tmp_path / "v.txt").write_text("x")
    with pytest.raises(ValueError, match="v.txt"):
        load_volume(tmp_path / "v.txt")
    with pytest.raises(FileNotFoundError, match="missing.nii"):
        load_volume(tmp_path / "missing.nii")


@pytest.mark.skipif(HAS_NIBABEL, reason="nibabel is installed")
def test_nifti_without_nibabel_names_the_package(tmp_path) -> None:
    with pytest.raises(ImportError, match="nibabel"):
        load_nifti(tmp_path / "v.nii.gz")


@pytest.mark.skipif(not HAS_NIBABEL, reason="needs nibabel (pip install nibabel)")
def test_nifti_volume_spacing_and_errors(tmp_path) -> None:
    import nibabel as nib

    data = np.random.default_rng(0).random((5, 4, 3)).astype(np.float32)  # (x, y, z)
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 3.0, 1.0])), tmp_path / "v.nii.gz")
    arr, spacing = load_volume(tmp_path / "v.nii.gz")
    np.testing.assert_allclose(arr, data.transpose(2, 1, 0))
    assert spacing == pytest.approx((3.0, 0.5, 0.5))
    (tmp_path / "bad.nii").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.nii"):
        load_volume(tmp_path / "bad.nii")
    nib.save(nib.Nifti1Image(data, np.diag([0.0, 0.0, 0.0, 1.0])), tmp_path / "z.nii.gz")
    with pytest.raises(ValueError, match="z.nii.gz: no positive voxel spacing"):
        load_volume(tmp_path / "z.nii.gz")


def test_same_scene_at_several_spacings_keeps_the_physical_token_size() -> None:
    """One scene swept at ratios 1..8 over the same elevation extent (16 in-plane pixels):
    the depth patch d = max(8 >> aniso_d, 1) makes every token 8 pixels thick in mm (§C.3)."""
    vit = create_backbone("spad_vit_smoke", in_chans=1)  # p = 8
    for ratio, depth in ((1.0, 16), (2.0, 8), (4.0, 4), (8.0, 2)):
        rec = SyntheticSweeps("breast", "demo", 1, depth, ratio, CFG, seed=5)[0]
        _, _, grid = vit.encode(rec["image"][None], aniso=rec["aniso_d"], indices=[])
        d = depth // grid[0]
        z, xy = rec["spacing_zyx"][0].item(), rec["spacing_zyx"][1].item()
        assert grid == (2, 2, 2) and d * z == pytest.approx(8 * xy, rel=1e-5)

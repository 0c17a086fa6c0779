"""Domain-separated masks checked against their definitions (Parseval, exact ratio, mean fill)."""

from __future__ import annotations

import pytest
import torch

from uslib.ops.domain_masks import band_stop, frequency_mask, num_masked, spatial_mask
from uslib.ops.masking import patchify


def _images(b: int = 3, c: int = 1, s: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, c, s, s, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("r1,r2", [(0.1, 0.4), (0.0, 0.05), (0.5, 1.5)])
def test_frequency_mask_removes_exactly_the_annulus(r1: float, r2: float) -> None:
    x = _images()
    xf, removed = frequency_mask(x, r1, r2)
    spec, spec_f = torch.fft.fft2(x), torch.fft.fft2(xf)
    # in Fourier space: the band is zero, every other bin is unchanged
    assert spec_f[..., removed].abs().max() < 1e-9
    torch.testing.assert_close(spec_f[..., ~removed], spec[..., ~removed])
    # Parseval: the energy taken out equals the annulus energy / (H W)
    hw = x.shape[-1] * x.shape[-2]
    band_energy = (spec[..., removed].abs() ** 2).sum(dim=-1) / hw
    torch.testing.assert_close(((x - xf) ** 2).sum(dim=(-2, -1)), band_energy)


def test_band_geometry_in_nyquist_units() -> None:
    m = band_stop(8, 8, 0.9, 1.1)
    # unshifted order: bin (0, 4) is (0, -0.5 cycles/px) = radius 1; DC and (1, 0) are not
    assert bool(m[0, 4]) and bool(m[4, 0]) and not bool(m[0, 0]) and not bool(m[1, 0])
    centred = torch.fft.fftshift(m)  # symmetric annulus around the centre (4, 4)
    assert bool(centred[4, 0]) and not bool(centred[4, 4])
    with pytest.raises(ValueError, match="r1"):
        band_stop(8, 8, 0.5, 0.2)


@pytest.mark.parametrize("ratio,patch", [(0.5, 8), (0.25, 4), (0.75, 16)])
def test_spatial_mask_ratio_exact_and_mean_fill(ratio: float, patch: int) -> None:
    x = _images(c=2)
    xs, mask = spatial_mask(x, ratio, patch)
    n_patch = (32 // patch) ** 2
    assert (mask.sum(1) == round(ratio * n_patch)).all()
    p_in, p_out = patchify(x, patch), patchify(xs, patch)
    mean = x.mean(dim=(2, 3))  # (B, C)
    for b in range(x.shape[0]):
        masked = p_out[b, mask[b]].reshape(-1, patch * patch, 2)
        torch.testing.assert_close(masked, mean[b].expand_as(masked))
        torch.testing.assert_close(p_out[b, ~mask[b]], p_in[b, ~mask[b]])


def test_spatial_mask_bad_ratio() -> None:
    with pytest.raises(ValueError, match="rho_s"):
        num_masked(16, 1.5)

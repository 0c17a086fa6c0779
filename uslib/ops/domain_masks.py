"""Domain-separated masks of USFM / TinyUSFM: a spatial and a frequency corruption of one image.

The two masks are applied to *separate* copies of the image and never combined into one input:

* ``spatial_mask``: a random fraction ``rho_s`` of the ``p x p`` patches is replaced by the
  image mean ("mean-padded" spatial mask of USFM's figure);
* ``frequency_mask``: a band-stop annulus ``r1 <= r <= r2`` of the centred 2-D DFT is zeroed,
  then the inverse DFT gives the corrupted image (USFM's band-stop frequency mask).

Radii are in units of the Nyquist frequency: ``r = sqrt(fy^2 + fx^2) / 0.5`` with ``f`` in
cycles per pixel, so ``r = 1`` is the Nyquist frequency on each axis and the corners reach
``sqrt(2)``. The annulus is symmetric under ``f -> -f``, so the filtered image is real.

Ref: OpenUS/TinyUSFM notes §2.3 (USFM framework figure; "An implementable reconstruction", 2).
"""

from __future__ import annotations

import torch

from uslib.ops.masking import patchify, unpatchify


def num_masked(num_patches: int, ratio: float) -> int:
    """Masked patches ``round(L * ratio)`` (exact ratio whenever ``L * ratio`` is an integer)."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"spatial mask ratio rho_s must be in [0, 1], got {ratio}")
    return int(round(num_patches * ratio))


def spatial_mask(
    x: torch.Tensor,
    ratio: float,
    patch_size: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace a random fraction of patches of each image by that image's mean.

    Args:
        x: images (B, C, H, W), H and W divisible by ``patch_size``.
        ratio: rho_s, the fraction of patches masked (``num_masked(L, ratio)`` per image).
        patch_size: p, the side of a masked square (the student's patch size by default).
        generator: optional torch generator (default: the global RNG).

    Returns:
        ``(x_masked, mask)``: (B, C, H, W) images and the (B, L) bool mask (True = replaced),
        patches in raster order (``uslib.ops.masking.patchify``).

    Ref: notes §2.3 (mean-padded spatial mask).
    """
    if x.ndim != 4:
        raise ValueError(f"spatial_mask expects (B, C, H, W), got {tuple(x.shape)}")
    b, c, h, w = x.shape
    patches = patchify(x, patch_size)  # (B, L, p*p*C), channel last within a patch
    n_patch = patches.shape[1]
    k = num_masked(n_patch, ratio)
    dev = generator.device if generator is not None else x.device
    noise = torch.rand(b, n_patch, generator=generator, device=dev).to(x.device)
    ids = noise.argsort(dim=1)[:, :k]
    mask = torch.zeros(b, n_patch, dtype=torch.bool, device=x.device)
    mask.scatter_(1, ids, True)
    mean = x.mean(dim=(2, 3))  # (B, C): per image and channel
    fill = mean.repeat(1, patch_size * patch_size)  # (B, p*p*C) in patchify's (p, p, C) order
    out = torch.where(mask[..., None], fill[:, None, :].to(x.dtype), patches)
    return unpatchify(out, patch_size, (h // patch_size, w // patch_size)), mask


def radial_frequency(h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Radius of every DFT bin in Nyquist units, in **unshifted** (``fft2``) order: (H, W)."""
    fy = torch.fft.fftfreq(h, device=device).abs()
    fx = torch.fft.fftfreq(w, device=device).abs()
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) / 0.5


def band_stop(
    h: int, w: int, r1: float, r2: float, device: torch.device | str | None = None
) -> torch.Tensor:
    """Bool (H, W) mask of the removed annulus ``r1 <= r <= r2`` in unshifted DFT order.

    ``torch.fft.fftshift`` of it is the centred annulus drawn in USFM's figure.
    """
    if not 0.0 <= r1 <= r2:
        raise ValueError(f"band-stop radii must satisfy 0 <= r1 <= r2, got r1={r1}, r2={r2}")
    r = radial_frequency(h, w, device)
    return (r >= r1) & (r <= r2)


def frequency_mask(x: torch.Tensor, r1: float, r2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero a band-stop annulus of the centred 2-D DFT of each image, then inverse DFT.

    The annulus is the same for every image; centring (``fftshift``) only relabels bins, so the
    removal is done on the unshifted spectrum with the equivalent mask.

    Args:
        x: images (B, C, H, W).
        r1: inner radius of the removed band (Nyquist units, see the module docstring).
        r2: outer radius (``r1 <= r2``).

    Returns:
        ``(x_freq, removed)``: the real filtered images (B, C, H, W) and the (H, W) bool mask of
        removed bins (unshifted order). By Parseval, ``||x - x_freq||^2`` equals the annulus
        energy ``sum_removed |X|^2 / (H W)``.

    Ref: notes §2.3 (band-stop frequency mask).
    """
    if x.ndim != 4:
        raise ValueError(f"frequency_mask expects (B, C, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    removed = band_stop(h, w, r1, r2, x.device)
    spec = torch.fft.fft2(x.to(torch.promote_types(x.dtype, torch.float32)))
    spec = spec.masked_fill(removed, 0)
    return torch.fft.ifft2(spec).real.to(x.dtype), removed


def centred_log_spectrum(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + |fftshift(fft2(x))|)`` of (B, C, H, W) images, for plots: (B, C, H, W)."""
    return torch.log1p(torch.fft.fftshift(torch.fft.fft2(x.float()), dim=(-2, -1)).abs())

"""Ultrasound augmentations on 1-channel tensors, driven by an explicit random generator.

Every random transform takes ``(img, rng)`` with ``rng`` a ``numpy.random.Generator``, so a
dataset can derive one generator per item from ``(seed, epoch, index)`` and never touch the
global torch / numpy / ``random`` state (torchvision's transforms draw from the global torch
RNG, which makes per-item determinism impossible with several workers).

Images are grey: (1, H, W) float32 in [0, 1] before normalisation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

USCL_MEAN, USCL_STD = 0.5, 0.25
"""USCL's ``Normalize(mean=0.5, std=0.25)`` (§B.5, §B.8)."""

META_USCL_MEAN, META_USCL_STD = 0.18, 0.24
"""Meta-USCL's normalisation (§B.4, last bullet), for the ``meta_uscl`` variant."""

Transform = Callable[[torch.Tensor, np.random.Generator], torch.Tensor]
"""A random transform: ``(image (1, H, W), rng) -> image``."""


def to_image_tensor(x: Any) -> torch.Tensor:
    """Convert a grey frame to a float32 tensor (1, H, W) in [0, 1].

    Args:
        x: uint8 or float array / tensor of shape (H, W) or (1, H, W); uint8 is scaled by 1/255,
            floats are taken as already in [0, 1].

    Returns:
        Tensor (1, H, W), float32.
    """
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"to_image_tensor: expected an array or tensor, got {type(x).__name__}")
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3 or t.shape[0] != 1:
        raise ValueError(f"to_image_tensor: expected (H, W) or (1, H, W), got {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    return t.float()


def resize(img: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear, anti-aliased resize of (C, H, W) to ``size`` (square when an int)."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(img.shape[-2:]) == hw:
        return img
    out = F.interpolate(img[None], size=hw, mode="bilinear", align_corners=False, antialias=True)
    return out[0]


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.8, 1.0),
    ratio: tuple[float, float] = (0.8, 1.25),
) -> tuple[int, int, int, int]:
    """Sample a crop box ``(top, left, h, w)`` the way ``RandomResizedCrop`` does.

    Up to 10 tries: area fraction ~ U(scale), log aspect ratio ~ U(log ratio); the first box
    that fits is returned; otherwise a centre crop with the aspect ratio clamped to ``ratio``.
    """
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def adjust_brightness(img: torch.Tensor, factor: float) -> torch.Tensor:
    """``img * factor`` clipped to [0, 1] (torchvision's brightness jitter)."""
    return (img * factor).clamp_(0.0, 1.0)


def adjust_contrast(img: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the image mean: ``factor * img + (1 - factor) * mean``, clipped to [0, 1]."""
    mean = img.mean()
    return (img * factor + mean * (1.0 - factor)).clamp_(0.0, 1.0)


class USCLAugment:
    """USCL's pre-training augmentation on one grey frame.

    ``Resize(size) -> RandomResizedCrop(size, scale, ratio) -> RandomHorizontalFlip ->
    ColorJitter(0.8, 0.8, 0.8, 0.2) (always applied) -> Normalize(0.5, 0.25)``.

    On a grey image the jitter's saturation and hue parts are identities (USCL loads grey
    frames as 3 equal channels, whose saturation blend and hue rotation return the same grey),
    so only brightness and contrast act; as in torchvision they are applied in random order.
    With ``jitter=0`` this is the POCUS fine-tuning train transform (§B.8).

    Args:
        size: output side (224 in the paper).
        scale: crop area fraction range.
        ratio: crop aspect-ratio range.
        flip_p: horizontal-flip probability.
        jitter: brightness and contrast strength s; factors ~ U(max(0, 1 - s), 1 + s).
        mean: normalisation mean.
        std: normalisation std.

    Shape: (1, H, W) float in [0, 1] (or uint8 / (H, W)) -> (1, size, size), normalised.

    Ref: USCL §B.5 (code ``dataset_wrapper_Ultrasound_Video_Mixup.py``), §B.8 (train transform).
    """

    def __init__(
        self,
        size: int = 224,
        scale: tuple[float, float] = (0.8, 1.0),
        ratio: tuple[float, float] = (0.8, 1.25),
        flip_p: float = 0.5,
        jitter: float = 0.8,
        mean: float = USCL_MEAN,
        std: float = USCL_STD,
    ) -> None:
        self.size, self.scale, self.ratio = size, scale, ratio
        self.flip_p, self.jitter, self.mean, self.std = flip_p, jitter, mean, std

    def __call__(self, img: Any, rng: np.random.Generator) -> torch.Tensor:
        """Augment one frame with the generator ``rng``."""
        x = resize(to_image_tensor(img), self.size)
        top, left, h, w = random_resized_crop_box(self.size, self.size, rng, self.scale, self.ratio)
        x = resize(x[:, top : top + h, left : left + w], self.size)
        if rng.random() < self.flip_p:
            x = x.flip(-1)
        if self.jitter > 0:
            lo, hi = max(0.0, 1.0 - self.jitter), 1.0 + self.jitter
            b, c = rng.uniform(lo, hi), rng.uniform(lo, hi)
            if rng.random() < 0.5:  # random order of the two active jitter ops
                x = adjust_contrast(adjust_brightness(x.clone(), b), c)
            else:
                x = adjust_brightness(adjust_contrast(x.clone(), c), b)
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return (
            f"USCLAugment(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"flip_p={self.flip_p}, jitter={self.jitter}, mean={self.mean}, std={self.std})"
        )


class ResizeNormalize:
    """Deterministic evaluation transform: ``Resize(size) -> Normalize(mean, std)``.

    Shape: (1, H, W) -> (1, size, size). Ref: USCL §B.8 (test transform).
    """

    def __init__(self, size: int = 224, mean: float = USCL_MEAN, std: float = USCL_STD) -> None:
        self.size, self.mean, self.std = size, mean, std

    def __call__(self, img: Any, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Resize and normalise (``rng`` is accepted for interface symmetry and ignored)."""
        return (resize(to_image_tensor(img), self.size) - self.mean) / self.std

    def __repr__(self) -> str:
        return f"ResizeNormalize(size={self.size}, mean={self.mean}, std={self.std})"


class MultiViewTransform:
    """Apply several transforms to the same image and return the list of views.

    ``MultiViewTransform([t] * 2)`` is the SimCLR two-view transform; heterogeneous lists give
    multi-crop (global + local views) for DINO/iBOT-style methods. Each view consumes the same
    generator in turn, so the views differ and the result is reproducible.

    Args:
        transforms: one transform per view.
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        if len(transforms) == 0:
            raise ValueError("MultiViewTransform needs at least one transform")
        self.transforms = list(transforms)

    def __call__(self, img: Any, rng: np.random.Generator) -> list[torch.Tensor]:
        """Views of ``img``, one per transform, each (C, H_v, W_v)."""
        return [t(img, rng) for t in self.transforms]

    def __len__(self) -> int:
        return len(self.transforms)


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W) with std ``sigma`` px (kernel 2*ceil(3 sigma)+1)."""
    r = max(1, int(math.ceil(3.0 * sigma)))
    r = min(r, min(img.shape[-2:]) - 1)  # reflect padding needs r < side
    x = torch.arange(-r, r + 1, dtype=img.dtype)
    k = torch.exp(-0.5 * (x / max(sigma, 1e-6)) ** 2)
    k = k / k.sum()
    c = img.shape[0]
    out = F.pad(img[None], (r, r, r, r), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out[0]


class DINOCrop:
    """One DINO/iBOT view of a grey frame: crop, flip, jitter, blur, solarize (OpenUS §1.2.1).

    ``RandomResizedCrop(size, scale, ratio 3/4..4/3) -> HFlip 0.5 -> ColorJitter(brightness 0.4,
    contrast 0.4) with p 0.8 -> GaussianBlur(sigma ~ U(0.1, 2.0) * size / 224) with p ``blur_p``
    -> Solarize(0.5) with p ``solarize_p````. Saturation, hue and RandomGrayscale of the RGB
    recipe do nothing on grey frames and are left out; the blur radius is scaled with the crop
    size (the recipe's 0.1-2.0 px is for 224/96 px crops).

    Args:
        size: output side (224 / 96 in the paper; 64 / 32 at ``cpu``).
        scale: area fraction range (global (0.14, 1.0), local (0.05, 0.4)).
        blur_p, solarize_p: application probabilities (global 1: 1.0 / 0; global 2: 0.1 / 0.2;
            local: 0.5 / 0).

    Shape: ``(1, H, W)`` in [0, 1] -> ``(1, size, size)`` in [0, 1] (not normalised).
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float],
        blur_p: float,
        solarize_p: float = 0.0,
        jitter: float = 0.4,
        jitter_p: float = 0.8,
    ) -> None:
        self.size, self.scale, self.blur_p, self.solarize_p = int(size), scale, blur_p, solarize_p
        self.jitter, self.jitter_p = jitter, jitter_p

    def __call__(self, img: Any, rng: np.random.Generator) -> torch.Tensor:
        x = to_image_tensor(img)
        top, left, h, w = random_resized_crop_box(*x.shape[-2:], rng, self.scale, (3 / 4, 4 / 3))
        x = resize(x[:, top : top + h, left : left + w], self.size).clamp(0.0, 1.0)
        if rng.random() < 0.5:
            x = x.flip(-1)
        if rng.random() < self.jitter_p:
            j = self.jitter
            x = adjust_brightness(x, float(rng.uniform(1 - j, 1 + j)))
            x = adjust_contrast(x, float(rng.uniform(1 - j, 1 + j)))
        if rng.random() < self.blur_p:
            x = gaussian_blur(x, float(rng.uniform(0.1, 2.0)) * self.size / 224.0)
        if rng.random() < self.solarize_p:
            x = torch.where(x >= 0.5, 1.0 - x, x)
        return x.contiguous()

    def __repr__(self) -> str:
        return (f"DINOCrop(size={self.size}, scale={self.scale}, blur_p={self.blur_p}, "
                f"solarize_p={self.solarize_p})")  # fmt: skip


def dino_multicrop(
    global_size: int,
    local_size: int,
    n_local: int = 8,
    global_scale: tuple[float, float] = (0.14, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.4),
) -> tuple[MultiViewTransform, MultiViewTransform]:
    """The OpenUS/iBOT multi-crop: (2 global views, ``n_local`` local views) transforms.

    Global 1: blur p 1.0; global 2: blur p 0.1, solarize p 0.2; locals: blur p 0.5 (§1.2.1).
    """
    globals_ = MultiViewTransform(
        [DINOCrop(global_size, global_scale, 1.0), DINOCrop(global_size, global_scale, 0.1, 0.2)]
    )
    locals_ = MultiViewTransform([DINOCrop(local_size, local_scale, 0.5)] * n_local)
    return globals_, locals_


__all__ = [
    "META_USCL_MEAN",
    "DINOCrop",
    "META_USCL_STD",
    "USCL_MEAN",
    "USCL_STD",
    "MultiViewTransform",
    "ResizeNormalize",
    "Transform",
    "USCLAugment",
    "adjust_brightness",
    "adjust_contrast",
    "dino_multicrop",
    "gaussian_blur",
    "random_resized_crop_box",
    "resize",
    "to_image_tensor",
]

"""USCL augmentations (§B.5) on grey tensors: shapes, determinism, jitter semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from uslib.data.transforms import (
    MultiViewTransform,
    ResizeNormalize,
    USCLAugment,
    adjust_brightness,
    adjust_contrast,
    random_resized_crop_box,
    to_image_tensor,
)


def _frame(h: int = 40, w: int = 50) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(h, w), dtype=np.uint8)


def test_to_image_tensor() -> None:
    t = to_image_tensor(_frame())
    assert t.shape == (1, 40, 50) and t.dtype == torch.float32
    assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        to_image_tensor(np.zeros((3, 4, 5), dtype=np.uint8))


def test_uscl_augment_shape_and_determinism() -> None:
    aug = USCLAugment(32)
    a = aug(_frame(), np.random.default_rng(3))
    b = aug(_frame(), np.random.default_rng(3))
    c = aug(_frame(), np.random.default_rng(4))
    assert a.shape == (1, 32, 32)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    # normalised with (0.5, 0.25): values lie in [-2, 2]
    assert float(a.min()) >= -2.0 - 1e-6 and float(a.max()) <= 2.0 + 1e-6


def test_no_global_rng_used() -> None:
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    USCLAugment(16)(_frame(), np.random.default_rng(0))
    assert torch.equal(torch.rand(1), before)


@pytest.mark.parametrize("seed", range(5))
def test_crop_box_within_scale_and_ratio(seed: int) -> None:
    top, left, h, w = random_resized_crop_box(100, 100, np.random.default_rng(seed))
    assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 100
    assert 0.78 <= h * w / 1e4 <= 1.0
    assert 0.78 <= w / h <= 1.27


def test_jitter_ops() -> None:
    x = torch.tensor([[[0.2, 0.4], [0.6, 0.8]]])
    torch.testing.assert_close(adjust_brightness(x.clone(), 2.0), (x * 2).clamp(0, 1))
    torch.testing.assert_close(adjust_contrast(x.clone(), 0.0), torch.full_like(x, 0.5))
    torch.testing.assert_close(adjust_contrast(x.clone(), 1.0), x)


def test_no_jitter_no_crop_is_resize_normalize() -> None:
    aug = USCLAugment(20, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter=0.0)
    img = _frame(20, 20)
    torch.testing.assert_close(aug(img, np.random.default_rng(0)), ResizeNormalize(20)(img))


def test_multiview() -> None:
    mv = MultiViewTransform([USCLAugment(16), USCLAugment(8)])
    views = mv(_frame(), np.random.default_rng(0))
    assert len(mv) == 2 and [v.shape[-1] for v in views] == [16, 8]
    with pytest.raises(ValueError):
        MultiViewTransform([])

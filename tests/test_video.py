"""USCL sample-pair generation (§B.4): frames, lambda, mixing formula, determinism."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats

from uslib.data.video import (
    SamplePairDataset,
    VideoSubset,
    item_rng,
    mix_toward_anchor,
    sample_frame_indices,
    sample_mix_weights,
    split_videos,
)


class FakeVideos:
    """Video i has n_frames[i] frames; frame t is filled with the value 10 * t + i."""

    def __init__(self, n_frames: list[int], labels: list[int] | None = None, size: int = 12):
        self.n_frames, self.size = n_frames, size
        self.labels = labels or [i % 3 for i in range(len(n_frames))]

    def __len__(self) -> int:
        return len(self.n_frames)

    def video(self, i: int) -> dict[str, Any]:
        t = np.arange(self.n_frames[i], dtype=np.uint8)[:, None, None]
        frames = np.broadcast_to(10 * t + i, (self.n_frames[i], self.size, self.size)).copy()
        return dict(
            frames=frames,
            label=self.labels[i],
            video_id=f"v{i}",
            patient_id=f"p{i}",
            dataset="fake",
            organ="lung",
        )


def _identity(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    return img


def test_frames_from_one_video_and_ordered() -> None:
    ds = SamplePairDataset(FakeVideos([20, 9, 5]), img_size=12, seed=0)
    for epoch in range(5):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            ex = ds.explain(i)
            idx = ex["frame_idx"].tolist()
            assert idx[0] < idx[1] < idx[2] < ds.videos.n_frames[i]
            # the raw frames carry the video id i in their pixel value: 10 * t + i
            for t, f in zip(idx, ex["frames"]):
                assert round(float(f[0, 0, 0]) * 255) == 10 * t + i


def test_anchor_is_middle_and_covers_whole_video() -> None:
    seen = set()
    for s in range(300):
        idx = sample_frame_indices(6, np.random.default_rng(s))
        assert sorted(idx) == list(idx) and len(set(idx)) == 3
        seen.add(idx)
    assert len(seen) == 20  # every 3-subset of 6 frames occurs (uniform, no distance limit)


def test_meta_uscl_frames_within_max_dist() -> None:
    for s in range(200):
        idx = sample_frame_indices(100, np.random.default_rng(s), "meta_uscl", max_dist=16)
        assert idx[0] < idx[1] < idx[2] and idx[2] - idx[0] <= 16


def test_short_videos() -> None:
    rng = np.random.default_rng(0)
    assert sample_frame_indices(2, rng) == (0, 1)
    assert sample_frame_indices(1, rng) == (0,)
    with pytest.raises(ValueError, match="at least 1 frame"):
        sample_frame_indices(0, rng)
    with pytest.raises(ValueError, match="pair_mode"):
        sample_frame_indices(5, rng, "simclr")


def test_lambda_is_beta_half_half() -> None:
    rng = np.random.default_rng(0)
    draws = np.array([sample_mix_weights(rng) for _ in range(4000)])
    assert np.array_equal(draws[:, 0], draws[:, 1])  # one lambda shared by both views
    assert stats.kstest(draws[:, 0], stats.beta(0.5, 0.5).cdf).pvalue > 0.01
    assert stats.kstest(draws[:, 0], stats.beta(2, 5).cdf).pvalue < 1e-6


def test_meta_weights_are_two_independent_beta_3_5() -> None:
    rng = np.random.default_rng(1)
    draws = np.array([sample_mix_weights(rng, "meta_uscl") for _ in range(4000)])
    alpha = 1.0 - draws  # w = 1 - alpha
    for col in range(2):
        assert stats.kstest(alpha[:, col], stats.beta(3, 5).cdf).pvalue > 0.01
    assert abs(np.corrcoef(alpha.T)[0, 1]) < 0.06


def test_mixing_formula_hand_computed() -> None:
    x1, x2, x3 = torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([-1.0])
    v1, v2 = mix_toward_anchor(x1, x2, x3, (0.25, 0.25))
    assert float(v1) == pytest.approx(0.25 * 1 + 0.75 * 3)  # 2.5
    assert float(v2) == pytest.approx(0.25 * -1 + 0.75 * 3)  # 2.0
    v1, v2 = mix_toward_anchor(x1, x2, x3, (1.0, 0.0))
    assert float(v1) == 1.0 and float(v2) == 3.0


def test_dataset_views_are_mixups_of_augmented_frames() -> None:
    ds = SamplePairDataset(FakeVideos([10]), img_size=12, transform=_identity)
    ex = ds.explain(0)
    x1, x2, x3 = ex["augmented"]
    w = float(ex["weights"][0])
    torch.testing.assert_close(ex["view1"], w * x1 + (1 - w) * x2)
    torch.testing.assert_close(ex["view2"], w * x3 + (1 - w) * x2)
    torch.testing.assert_close(ex["raw1"], x1)
    torch.testing.assert_close(ex["raw2"], x2)
    # lambda of the dataset comes from the sampler with the same item generator
    rng = item_rng(0, 0, 0)
    sample_frame_indices(10, rng)
    assert w == pytest.approx(sample_mix_weights(rng)[0])


def test_two_and_one_frame_videos() -> None:
    ds = SamplePairDataset(FakeVideos([2, 1]), img_size=12, transform=_identity)
    two, one = ds[0], ds[1]
    assert round(float(two["view1"][0, 0, 0]) * 255) == 0
    assert round(float(two["view2"][0, 0, 0]) * 255) == 10
    assert two["weights"].tolist() == [1.0, 1.0]
    assert two["frame_idx"].tolist() == [0, 1, 1] and one["frame_idx"].tolist() == [0, 0, 0]
    ds = SamplePairDataset(FakeVideos([1, 1]), img_size=12, seed=0)
    item = ds[1]  # constant frame of value 1 (video 0 is all zero: jitter-invariant)
    assert not torch.equal(item["view1"], item["view2"])  # one frame, augmented twice


def test_labels_and_label_fraction() -> None:
    coll = FakeVideos([5] * 10, labels=[1] * 5 + [-1] * 5)
    item = SamplePairDataset(coll, img_size=12)[0]
    assert item["label1"] == item["label2"] == 1
    assert SamplePairDataset(coll, img_size=12)[7]["label1"] == -1
    ds = SamplePairDataset(FakeVideos([5] * 10), img_size=12, label_fraction=0.3)
    assert int(ds.labelled.sum()) == 3
    assert sum(ds[i]["label1"] >= 0 for i in range(10)) == 3
    hidden = int(np.flatnonzero(~ds.labelled)[0])  # outside the labelled subset:
    ds.videos.labels[hidden] = 2  # changing its label changes nothing
    assert ds[hidden]["label1"] == ds[hidden]["label2"] == -1


def test_determinism_and_epochs() -> None:
    coll = FakeVideos([12, 7, 30])
    a, b = SamplePairDataset(coll, 12, seed=5), SamplePairDataset(coll, 12, seed=5)
    torch.manual_seed(0)
    ia = a[2]
    torch.manual_seed(1)
    np.random.seed(1)
    ib = b[2]
    for k in ("view1", "view2", "raw1", "raw2", "weights", "frame_idx"):
        torch.testing.assert_close(ia[k], ib[k])
    b.set_epoch(1)
    assert not torch.equal(b[2]["view1"], ia["view1"])
    assert not torch.equal(SamplePairDataset(coll, 12, seed=6)[2]["view1"], ia["view1"])


def test_meta_uscl_item_and_collate() -> None:
    ds = SamplePairDataset(FakeVideos([40, 3, 2, 1]), img_size=16, pair_mode="meta_uscl")
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert batch["view1"].shape == (4, 1, 16, 16) and batch["weights"].shape == (4, 2)
    assert batch["label1"].dtype == torch.long


def test_split_videos_and_subset() -> None:
    tr, va = split_videos(10, 0.2, seed=0)
    assert len(va) == 2 and sorted(tr + va) == list(range(10))
    assert split_videos(10, 0.2, seed=0) == (tr, va)
    sub = VideoSubset(FakeVideos(list(range(3, 13))), va)
    assert len(sub) == 2 and sub.video(0)["video_id"] == f"v{va[0]}"
    with pytest.raises(ValueError, match="val_fraction"):
        split_videos(10, 1.0)

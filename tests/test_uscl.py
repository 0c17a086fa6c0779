"""USCL method (§B.3-B.8): presets, one training step, CE only on labelled items."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from uslib.config import ConfigError
from uslib.data.sources import pocus_root
from uslib.data.synthetic import SyntheticVideos
from uslib.data.video import SamplePairDataset
from uslib.methods import TrainData, get_method
from uslib.methods.uscl import USCL, USCLConfig, build, train_data
from uslib.pretraining import pretrain


class TinyVideos:
    def __init__(self, n: int = 6, labels: list[int] | None = None) -> None:
        self.n, self.labels = n, labels or [i % 3 for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def video(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng(i)
        frames = rng.integers(0, 256, size=(5, 24, 24), dtype=np.uint8)
        return dict(
            frames=frames,
            label=self.labels[i],
            video_id=f"v{i}",
            patient_id=f"p{i}",
            dataset="fake",
            organ="lung",
        )


def _batch(labels: list[int], size: int = 16) -> dict[str, Any]:
    ds = SamplePairDataset(TinyVideos(len(labels), labels), img_size=size)
    return torch.utils.data.default_collate([ds[i] for i in range(len(labels))])


def test_presets_match_notes() -> None:
    p = USCLConfig.preset("paper")
    assert p.backbone == "resnet18"
    assert (p.optim.optimizer, p.optim.lr, p.optim.weight_decay) == ("adam", 3e-4, 1e-4)  # §B.7
    assert (p.optim.epochs, p.optim.batch_size, p.optim.hold_epochs) == (300, 32, 10)
    assert p.optim.schedule == "cosine" and p.optim.warmup_epochs == 0
    assert (p.temperature, p.ce_weight, p.proj_dim, p.proj_hidden) == (0.5, 0.2, 256, 512)
    assert p.classifier_on == "projection" and p.mix_beta == (0.5, 0.5)
    assert (p.data.img_size, p.data.val_fraction) == (224, 0.2)
    assert (p.eval.folds, p.eval.epochs, p.eval.lr, p.eval.batch_size) == (5, 100, 0.01, 32)
    assert USCLConfig.preset("smoke").backbone == "resnet18_smoke"
    assert USCLConfig.preset("cpu").backbone == "resnet18"


def test_config_round_trip_and_overrides(tmp_path: Path) -> None:
    cfg = USCLConfig.preset("cpu", classifier_on="feature", **{"optim.epochs": 3})
    assert cfg.classifier_on == "feature" and cfg.optim.epochs == 3
    cfg.to_yaml(tmp_path / "c.yaml")
    assert USCLConfig.from_yaml(tmp_path / "c.yaml") == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        USCLConfig.preset("smoke", tau=0.1)


def test_registered() -> None:
    spec = get_method("uscl")
    assert spec.config_cls is USCLConfig and spec.build is build


def test_training_step_finite_and_backbone_gets_grads() -> None:
    method = build(USCLConfig.preset("smoke"))
    out = method.training_step(_batch([0, 1, -1, 2]))
    assert set(out) == {"loss", "nt_xent", "ce"}
    assert torch.isfinite(out["loss"]) and float(out["ce"]) > 0
    out["loss"].backward()
    grads = [p.grad for p in method.backbone.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert method.encoder is method.backbone and method.encoder_kwargs == {"in_chans": 1}


def test_loss_is_nt_xent_plus_weighted_ce() -> None:
    cfg = USCLConfig.preset("smoke", ce_weight=0.7)
    out = build(cfg).training_step(_batch([0, 1, 2]))
    assert float(out["loss"].detach()) == pytest.approx(
        float(out["nt_xent"]) + 0.7 * float(out["ce"])
    )


def test_ce_only_sees_labelled_items() -> None:
    method = build(USCLConfig.preset("smoke")).eval()  # eval: BN does not mix items
    batch = _batch([0, -1, 2, -1])
    ce = method.training_step(batch)["ce"]
    for key in ("view1", "view2"):
        batch[key][1] = torch.randn_like(batch[key][1])  # change an unlabelled item
    out = method.training_step(batch)
    torch.testing.assert_close(out["ce"], ce)
    out = method.training_step(_batch([-1, -1, -1]))
    assert float(out["ce"]) == 0.0 and torch.isfinite(out["loss"])
    assert float(out["loss"].detach()) == pytest.approx(float(out["nt_xent"]))


def test_classifier_on_feature_and_bad_value() -> None:
    m = build(USCLConfig.preset("smoke", classifier_on="feature"))
    assert m.classifier.in_features == m.backbone.num_features
    assert build(USCLConfig.preset("smoke")).classifier.in_features == 256
    with pytest.raises(ValueError, match="classifier_on"):
        USCL(USCLConfig.preset("smoke", classifier_on="logits"))


def test_validation_step_uses_unmixed_pair() -> None:
    method = build(USCLConfig.preset("smoke")).eval()
    batch = _batch([0, 1, 2])
    val = method.validation_step(batch)
    batch["view1"] = torch.zeros_like(batch["view1"])  # views do not matter
    torch.testing.assert_close(method.validation_step(batch)["nt_xent"], val["nt_xent"])


def test_pretrain_keeps_the_encoder_of_the_best_validation_epoch(tmp_path) -> None:
    from uslib import runs

    cfg = USCLConfig.preset("smoke", **{"optim.epochs": 3, "optim.batch_size": 4})
    run = runs.start("t", cfg, out_dir=tmp_path, verbose=False)
    train = SamplePairDataset(TinyVideos(8), img_size=16, seed=0)
    val = SamplePairDataset(TinyVideos(4), img_size=16, seed=1)
    res = pretrain("uscl", cfg, run, data=TrainData(train, val, provenance=("synthetic:lung",)))
    method, hist = res.method, res.history
    epochs = hist.to_frame("epochs")
    best = hist.best_epoch("val_nt_xent")
    assert epochs["val_nt_xent"].notna().all() and len(epochs) == 3
    spec = Path(run.dir) / "checkpoints" / runs.ENCODER_SPEC
    saved, info = runs.load_encoder(spec, raw=True)
    assert info["epoch"] == best["epoch"] and info["val_nt_xent"] == pytest.approx(
        best["val_nt_xent"]
    )
    assert info["input_norm"] == [0.5, 0.25] and info["pretrain_data"] == ["synthetic:lung"]
    assert info["select_on"] == "val_nt_xent" and res.selected_epoch == best["epoch"]
    for k, v in saved.state_dict().items():  # the best encoder is loaded back into the method
        assert torch.equal(v, method.backbone.state_dict()[k]), k


def test_pocus_root(tmp_path: Path) -> None:
    assert pocus_root(None) is None
    (tmp_path / "pocus_lung").mkdir()
    (tmp_path / "pocus_lung" / "samples.csv").write_text("x\n")
    assert pocus_root(tmp_path) == tmp_path / "pocus_lung"
    assert pocus_root(tmp_path / "pocus_lung") == tmp_path / "pocus_lung"
    with pytest.raises(FileNotFoundError, match="elsewhere"):  # never a silent fallback
        pocus_root(tmp_path / "elsewhere")


def test_train_data_synthetic_split() -> None:
    cfg = USCLConfig.preset("smoke", **{"data.n_videos": 5, "data.frames_per_video": 3})
    data = train_data(cfg)
    train, val = data.train, data.val
    assert data.provenance == ("synthetic:lung",) and data.data_root is None
    assert len(train) == 4 and val is not None and len(val) == 1
    item = train[0]
    assert item["view1"].shape == (1, cfg.data.img_size, cfg.data.img_size)
    assert item["label1"] in (0, 1, 2)


def test_train_data_extra_videos_join_training_split_only() -> None:
    """The synthetic + real mix: extra collections add training videos and their provenance
    tag; the held-out validation videos are the main collection's alone."""
    cfg = USCLConfig.preset("smoke", **{"data.n_videos": 5, "data.frames_per_video": 3})
    d = cfg.data
    extra = SyntheticVideos("lung", "train", 3, d.frames_per_video, d, d.seed + 7)
    base, mixed = train_data(cfg), train_data(cfg, extra_videos={"synthetic:extra": extra})
    assert mixed.provenance == ("synthetic:lung", "synthetic:extra")
    assert len(mixed.train) == len(base.train) + 3 and len(mixed.val) == len(base.val) == 1
    videos = mixed.train.videos
    last = videos.video(len(videos) - 1)["frames"]
    assert np.array_equal(last, extra.video(2)["frames"])
    assert np.array_equal(videos.video(0)["frames"], base.train.videos.video(0)["frames"])
    with pytest.raises(IndexError, match="out of range"):
        videos.video(len(videos))


def test_pocus_videos_are_unlabelled(shared_data: Path) -> None:
    cfg = USCLConfig.preset("smoke", **{"data.data_root": str(shared_data)})
    data = train_data(cfg)
    train, val = data.train, data.val
    assert data.provenance == ("real:pocus",) and data.data_root.endswith("pocus_lung")
    assert len(train) + len(val) == 118  # clips without viral / uncertain
    item = train[0]
    assert item["label1"] == -1 and item["view1"].shape == (1, 32, 32)

"""Tests of the evaluation harness: features, probes, kNN, fine-tuning, segmentation transfer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from uslib.config import EvalConfig, OptimConfig
from uslib.data.collate import collate_records, dataset_index
from uslib.evaluation.features import Features, extract_features
from uslib.evaluation.finetune import finetune_classifier
from uslib.evaluation.heads import HeadModel
from uslib.evaluation.metrics import classification_metrics
from uslib.evaluation.probes import OPENUS_LINEAR_OPTIM, knn_classify, linear_probe
from uslib.evaluation.seg_metrics import head_circumference_errors
from uslib.evaluation.segmentation import train_segmentation


def classifier(encoder: nn.Module, mode: str = "partial", bn_stats: str = "epoch") -> HeadModel:
    """Encoder + new 3-class linear head (the fine-tuning model of ``finetune_classifier``)."""
    return HeadModel(nn.Linear(encoder.num_features, 3), encoder, mode=mode, bn_stats=bn_stats)


class ToyEncoder(nn.Module):
    """Tiny backbone with the uslib contract (pooled forward, feature maps, last_block)."""

    def __init__(self, in_chans: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 4, 3, 2, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(4, 8, 3, 2, 1), nn.ReLU())
        self.last = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1), nn.ReLU())
        self.in_chans, self.num_features = in_chans, 8
        self.feature_info = [{"num_chs": 4, "reduction": 2}, {"num_chs": 8, "reduction": 4}]

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        a = self.stem(x)
        return [a, self.last(self.block(a))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[-1].mean((2, 3))

    def last_block(self) -> nn.Module:
        return self.last


class ToyDecoder(nn.Module):
    def __init__(self, feature_info: list[dict], num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(feature_info[0]["num_chs"], num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.conv(feats[0])


def toy_records(
    n_per_class: int = 12, n_classes: int = 3, size: int = 16, seed: int = 0, per_patient: int = 2
) -> list[dict]:
    """Class k = a bright square in quadrant k; each patient has ``per_patient`` items."""
    g = torch.Generator().manual_seed(seed)
    recs = []
    for c in range(n_classes):
        for i in range(n_per_class):
            img = 0.2 * torch.rand(1, size, size, generator=g)
            mask = torch.zeros(size, size, dtype=torch.long)
            r, q = (c // 2) * size // 2, (c % 2) * size // 2
            mask[r + 2 : r + size // 2 - 2, q + 2 : q + size // 2 - 2] = 1
            img[0][mask.bool()] += 0.7
            recs.append(
                {
                    "image": img,
                    "mask": mask,
                    "has_mask": True,
                    "label": c,
                    "dataset": "toy",
                    "organ": "",
                    "patient_id": f"c{c}p{i // per_patient}",
                    "video_id": "",
                    "frame_idx": i,
                    "spacing": 0.5,
                    "meta": {},
                }
            )
    return recs


def _features(n: int, d: int, separable: bool, seed: int) -> Features:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 1, (n, d)).astype(np.float32)
    if separable:
        x[:, :3] += 6.0 * np.eye(3)[y]
    return Features(x, y, np.array([f"p{i}" for i in range(n)]))


@pytest.mark.parametrize("probe", ["logreg", "knn"])
def test_probe_near_perfect_on_separable_and_chance_on_random(probe):
    run = (
        (lambda a, b: linear_probe(a, b))
        if probe == "logreg"
        else (lambda a, b: knn_classify(a, b, k=10))
    )
    good = run(_features(300, 16, True, 0), _features(300, 16, True, 1))
    assert good.accuracy > 0.97
    rand = run(_features(300, 16, False, 2), _features(600, 16, False, 3))
    assert 0.25 < rand.accuracy < 0.42  # chance = 1/3
    assert good.confusion.sum() == 300 and good.proba.shape == (300, 3)


def test_linear_layer_probe_through_engine():
    optim = OPENUS_LINEAR_OPTIM.replace(epochs=5, lr=0.05)
    res = linear_probe(
        _features(120, 8, True, 0), _features(60, 8, True, 1), kind="linear", optim=optim
    )
    assert res.accuracy > 0.9


def test_knn_uniform_votes_and_unlabelled_rows_dropped():
    tr = Features(
        np.array([[1.0, 0], [0.9, 0.1], [0, 1.0]], np.float32),
        np.array([0, 0, -1]),
        np.array(["a", "b", "c"]),
    )
    te = Features(np.array([[1.0, 0.05]], np.float32), np.array([0]), np.array(["d"]))
    res = knn_classify(tr, te, k=2, weighting="uniform", num_classes=2)
    assert res.y_pred.tolist() == [0] and res.proba[0].tolist() == [1.0, 0.0]


def test_extract_features_eval_mode_no_grad_and_cache(tmp_path):
    enc = ToyEncoder().train()
    recs = toy_records(4)
    f1 = extract_features(enc, recs, batch_size=5, cache_dir=tmp_path, split_id="toy:test")
    assert enc.training  # mode restored
    assert f1.x.shape == (12, 8) and f1.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert f1.groups[0] == "c0p0"
    assert len(list(tmp_path.glob("*.npz"))) == 1
    # eval mode: BatchNorm uses running stats, so batch composition does not change features
    f_bs1 = extract_features(enc, recs, batch_size=1)
    np.testing.assert_allclose(f1.x, f_bs1.x, atol=1e-5)
    # cache hit: an explicit checkpoint id + split id returns the stored features
    kw = dict(cache_dir=tmp_path, split_id="toy:test", checkpoint_id="ckptA", batch_size=5)
    fa = extract_features(enc, recs, **kw)
    with torch.no_grad():
        enc.last[0].weight.add_(1.0)
    np.testing.assert_array_equal(fa.x, extract_features(enc, recs, **kw).x)
    # by default the id is the weights' fingerprint: new weights -> new cache entry
    f3 = extract_features(enc, recs, cache_dir=tmp_path, split_id="toy:test", batch_size=5)
    assert not np.allclose(f3.x, f1.x)
    assert len(list(tmp_path.glob("*.npz"))) == 3
    with pytest.raises(ValueError, match="split_id"):
        extract_features(enc, recs, cache_dir=tmp_path)


def test_collate_and_index():
    recs = toy_records(2)
    b = collate_records(recs[:3])
    assert b["image"].shape == (3, 1, 16, 16) and b["mask"].shape == (3, 16, 16)
    assert b["group"] == ["c0p0", "c0p0", "c1p0"] and b["label"].tolist() == [0, 0, 1]
    idx = dataset_index(recs)
    assert list(idx["label"]) == [0, 0, 1, 1, 2, 2] and idx["group"].nunique() == 3


def test_partial_mode_only_last_block_and_head_get_gradients():
    m = classifier(ToyEncoder(), "partial")
    batch = collate_records(toy_records(2))
    m.training_step(batch)["loss"].backward()
    trainable = {n for n, p in m.named_parameters() if p.grad is not None}
    assert trainable == {
        "backbone.last.0.weight",
        "backbone.last.0.bias",
        "head.weight",
        "head.bias",
    }


def test_finetune_partial_changes_only_last_block_and_head():
    enc = ToyEncoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    cfg = EvalConfig(epochs=2, batch_size=8, lr=1e-2)
    res = finetune_classifier(
        enc,
        toy_records(8),
        toy_records(4, seed=1),
        cfg,
        num_classes=3,
        mode="partial",
        select="test",
    )
    for k, v in enc.state_dict().items():  # the caller's encoder is untouched
        assert torch.equal(v, before[k])
    after = res.model.backbone.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # last block weights change; BatchNorm running stats may update (train mode, as in USCL)
    assert {"last.0.weight", "last.0.bias"} <= changed
    assert changed - {"last.0.weight", "last.0.bias"} <= {
        "stem.1.running_mean",
        "stem.1.running_var",
        "stem.1.num_batches_tracked",
    }
    assert list(res.history["epoch"]) == [0, 1] and res.select == "test"
    assert res.best_epoch == int(res.history["test_acc"].to_numpy().argmax())
    assert res.accuracy == pytest.approx(res.history["test_acc"].iloc[res.best_epoch])
    assert res.confusion.sum() == 12 and len(res.y_pred) == 12


def test_finetune_val_selection_uses_grouped_val_split():
    cfg = EvalConfig(epochs=2, batch_size=8, lr=1e-2)
    res = finetune_classifier(
        ToyEncoder(),
        toy_records(10),
        toy_records(4, seed=1),
        cfg,
        num_classes=3,
        mode="linear",
        select="val",
        val_fraction=0.25,
    )
    assert {"val_acc", "test_acc", "train_loss"} <= set(res.history.columns)
    assert res.best_epoch == int(res.history["val_acc"].to_numpy().argmax())


def test_one_run_keeps_the_best_epoch_of_each_selection_set():
    """``KeepBest`` per selection set: the first maximum of its history column, and the reported
    test predictions come from the reloaded weights of that epoch."""
    cfg = EvalConfig(epochs=4, batch_size=8, lr=3e-2)
    res = finetune_classifier(ToyEncoder(), toy_records(10), toy_records(4, seed=1), cfg,
                              num_classes=3, mode="full", select=("val", "test"))  # fmt: skip
    h = res.history
    for sel in ("val", "test"):
        assert res.best_epochs[sel] == int(h["epoch"].iloc[int(np.argmax(h[f"{sel}_acc"]))])
    assert res.select == "val" and res.best_epoch == res.best_epochs["val"]
    assert res.accuracy == pytest.approx(res.accuracy_at("val"))  # reloaded weights re-scored
    assert res.accuracy_at("test") == pytest.approx(h["test_acc"].max())
    assert res.last_accuracy == pytest.approx(h["test_acc"].iloc[-1])


def test_classification_metrics_conventions():
    y = np.array([0, 0, 0, 0, 1, 1])
    p = np.array([0, 0, 0, 0, 0, 1])
    m = classification_metrics(y, p, 2, proba=np.eye(2)[p])
    assert m["accuracy"] == pytest.approx(5 / 6)  # micro
    assert m["balanced_acc"] == pytest.approx((1.0 + 0.5) / 2)  # macro recall
    f1_0, f1_1 = 2 * 4 / (2 * 4 + 1), 2 * 1 / (2 * 1 + 1)
    assert m["f1_macro"] == pytest.approx((f1_0 + f1_1) / 2)
    assert 0.5 < m["auc"] <= 1.0


def half_records(n: int, seed: int, size: int = 16) -> list[dict]:
    """Easy segmentation: the bright left part (random width 5-11 px) is the mask."""
    g, recs = torch.Generator().manual_seed(seed), []
    for i in range(n):
        mask = torch.zeros(size, size, dtype=torch.long)
        mask[:, : int(torch.randint(5, 12, (1,), generator=g))] = 1
        img = 0.2 * torch.rand(1, size, size, generator=g) + 0.7 * mask
        recs.append({"image": img, "mask": mask, "has_mask": True, "label": 0,
                     "patient_id": f"p{i}", "spacing": 1.0})  # fmt: skip
    return recs


def test_train_segmentation_frozen_learns_and_scores():
    """On an easy case a decoder trained on frozen features beats the best constant prediction
    (all foreground: Dice 2|G| / (N + |G|) per image) and its own untrained initialisation."""
    torch.manual_seed(0)  # a frozen encoder whose stem features carry the brightness
    enc, test = ToyEncoder(), half_records(8, 1)
    optim = OptimConfig(optimizer="adam", lr=0.05, weight_decay=0.0, epochs=20, batch_size=8,
                        drop_last=False)  # fmt: skip
    dice = {}
    for name, o in (("trained", optim), ("untrained", optim.replace(lr=1e-12, epochs=1))):
        torch.manual_seed(0)  # the same decoder initialisation
        dice[name] = train_segmentation(enc, half_records(16, 0), test, EvalConfig(), optim=o,
                                        decoder=ToyDecoder(enc.feature_info, 2), select="last",
                                        with_hd=False).dice  # fmt: skip
    g = np.array([r["mask"].sum().item() for r in test])
    all_fg = float(np.mean(2 * g / (16 * 16 + g)))
    assert dice["trained"] > max(0.9, all_fg + 0.2, dice["untrained"] + 0.2), (dice, all_fg)
    torch.manual_seed(0)
    res = train_segmentation(enc, half_records(16, 0), test, EvalConfig(), optim=optim,
                             decoder=ToyDecoder(enc.feature_info, 2), select="val")  # fmt: skip
    assert len(res.per_image) == 8 and {"dice", "iou", "hd95"} <= set(res.per_image.columns)
    assert res.predictions["pred"].shape == (8, 16, 16)
    h = res.history
    assert res.best_epoch == int(h["epoch"].iloc[int(np.argmax(h["val_dice"]))])


def test_head_circumference_errors():
    yy, xx = np.mgrid[0:64, 0:64]
    gt = ((xx - 32) / 20) ** 2 + ((yy - 32) / 12) ** 2 <= 1
    pred = ((xx - 32) / 22) ** 2 + ((yy - 32) / 12) ** 2 <= 1
    err = head_circumference_errors(
        np.stack([gt, pred, np.zeros_like(gt)]), np.stack([gt, gt, gt]), 0.5
    )
    assert err[0] == pytest.approx(0.0) and 0 < err[1] < 10 and np.isnan(err[2])


def _fake_run(root, name, backbone, task="lung", weights=True, run_set="cpu", pretrain_data=None):
    import yaml
    from safetensors.torch import save_file

    from uslib.models import create_backbone

    run_dir = root / "papermill_runs" / run_set / name
    ck = run_dir / "checkpoints"
    ck.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(
        yaml.safe_dump({"data": {"task": task, "data_root": None}})
    )
    enc = create_backbone(backbone)
    if weights:
        save_file(
            {k: v.contiguous() for k, v in enc.state_dict().items()},
            str(ck / "encoder.safetensors"),
        )
    spec = {"backbone": backbone, "kwargs": {}, "method": name.split("_")[1]}
    if pretrain_data is not None:
        spec["pretrain_data"] = list(pretrain_data)
    (ck / "encoder.yaml").write_text(yaml.safe_dump({**spec, "input_norm": [0.5, 0.25]}))
    return enc


def test_discover_checkpoints_from_run_folder_tree(tmp_path):
    from uslib.evaluation.discovery import contamination, discover_checkpoints, reference_encoders

    enc = _fake_run(tmp_path, "02_uscl_sample_pairs", "vit_smoke")
    _fake_run(tmp_path, "04_dmae_distill", "vit_smoke", task="breast")
    _fake_run(tmp_path, "05_tiny_x", "vit_smoke", weights=False)  # spec without weights: skipped
    (tmp_path / "papermill_runs" / "cpu" / "01_dataset_assembly").mkdir()  # no checkpoint
    (tmp_path / "papermill_runs" / "smoke" / "03_x" / "checkpoints").mkdir(parents=True)
    found = discover_checkpoints("cpu", root=tmp_path)
    assert [e.name for e in found] == ["02_uscl_sample_pairs", "04_dmae_distill"]
    assert found[0].method == "uscl" and found[0].pretrain_data == ("synthetic:lung",)
    loaded = found[0].build().inner  # the adapter applies input_norm around the weights
    for k, v in enc.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert found[0].input_norm == (0.5, 0.25)
    refs = reference_encoders(found)
    assert all(r.input_norm == (0.5, 0.25) for r in refs)  # same input as the checkpoint
    assert [(r.source, r.backbone) for r in refs] == [
        ("random", "vit_smoke"),
        ("supervised", "vit_smoke"),
    ]
    assert contamination(found[0], "synthetic:lung").startswith("pretrained on the same generator")
    assert contamination(found[1], "synthetic:lung") == ""
    assert discover_checkpoints("paper", root=tmp_path) == []
    (tmp_path / "papermill_runs" / "cpu" / "09_bad" / "checkpoints").mkdir(parents=True)
    (tmp_path / "papermill_runs" / "cpu" / "09_bad" / "checkpoints" / "encoder.yaml").write_text(
        "x: 1"
    )
    (
        tmp_path / "papermill_runs" / "cpu" / "09_bad" / "checkpoints" / "encoder.safetensors"
    ).write_bytes(b"")
    with pytest.raises(ValueError, match="backbone"):
        discover_checkpoints("cpu", root=tmp_path)


def test_repository_readme_agrees_with_published_tables():
    from uslib.evaluation.report import README_START, readme_agrees
    from uslib.runs import repo_root

    readme, summary = repo_root() / "README.md", repo_root() / "figures" / "07_summary.csv"
    if not summary.is_file() or README_START not in readme.read_text():
        pytest.skip("no published evaluation table yet (run make reproduce, then make figures)")
    profile = "cpu" if "Profile `cpu`" in readme.read_text() else "paper"
    assert readme_agrees(readme, summary, profile=profile)


def test_adapter_resizes_fixed_size_encoders_and_normalises():
    from uslib.models import create_backbone
    from uslib.models.adapter import EncoderAdapter, adapt_encoder

    enc = ToyEncoder().eval()
    assert adapt_encoder(enc, 16) is enc  # accepts any size, no norm: no adapter
    wrapped = adapt_encoder(enc, 16, (0.5, 0.25))
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(wrapped(x), enc((x - 0.5) / 0.25))
    assert wrapped.last_block() is enc.last and wrapped.feature_info == enc.feature_info
    usfm = create_backbone("usfm_smoke")  # relative-position tables fix its grid (64 px)
    fixed = adapt_encoder(usfm, 32)
    assert isinstance(fixed, EncoderAdapter) and fixed.size == (64, 64)
    assert fixed(torch.rand(2, 1, 32, 32)).shape == (2, usfm.num_features)


def test_adapter_keeps_a_frozen_encoder_in_eval_through_extract_features():
    from uslib.models.adapter import adapt_encoder

    for mode in (False, True):  # the adapter adopts the mode of what it wraps
        enc = ToyEncoder().train(mode)
        wrapped = adapt_encoder(enc, norm=(0.5, 0.25))
        assert wrapped.training is mode
        extract_features(wrapped, toy_records(2), batch_size=4)
        assert enc.training is mode and wrapped.training is mode


def test_cached_feature_maps_train_the_same_decoder_as_end_to_end():
    cfg = EvalConfig(epochs=2, batch_size=4)
    enc, out = ToyEncoder(), {}
    for cached in (True, False):
        torch.manual_seed(0)  # the same decoder initialisation for both runs
        res = train_segmentation(
            enc, toy_records(5), toy_records(2, seed=1), cfg, num_classes=2,
            decoder=ToyDecoder(enc.feature_info, 2), select="val", seed=3,
            cache_features=cached, with_hd=False,
        )  # fmt: skip
        out[cached] = res
    for k, v in out[True].model.head.state_dict().items():
        torch.testing.assert_close(v, out[False].model.head.state_dict()[k], atol=1e-5, rtol=0)
    assert out[True].best_epoch == out[False].best_epoch
    assert out[True].dice == pytest.approx(out[False].dice, abs=1e-6)


def test_epoch_batchnorm_statistics_in_trainable_modes():
    bn = lambda m: m.backbone.stem[1]  # noqa: E731
    assert bn(classifier(ToyEncoder(), "partial")).momentum is None
    assert bn(classifier(ToyEncoder(), "full")).momentum is None
    assert bn(classifier(ToyEncoder(), "frozen")).momentum == 0.1  # eval mode anyway
    assert bn(classifier(ToyEncoder(), "partial", bn_stats="ema")).momentum == 0.1
    with pytest.raises(ValueError, match="bn_stats"):
        classifier(ToyEncoder(), bn_stats="cumulative")
    # within an epoch the running mean is the mean of the batch means; a new epoch starts afresh
    m = classifier(ToyEncoder(), "partial")
    batch = lambda x: {"image": x, "label": torch.zeros(len(x), dtype=torch.long)}  # noqa: E731

    def epoch(offsets):
        means = []
        m.train()
        m.on_epoch_start(0)  # called by ``fit`` before each epoch's first step
        for k in offsets:
            x = torch.rand(4, 1, 16, 16) + k
            m.training_step(batch(x))
            means.append(m.backbone.stem[0](x).mean((0, 2, 3)))
        return torch.stack(means).mean(0)

    bn(m).running_mean.fill_(100.0)  # stale statistics (e.g. from pretraining) are dropped
    first = epoch([0, 1, 2])
    torch.testing.assert_close(bn(m).running_mean, first, atol=1e-5, rtol=0)
    second = epoch([5, 6])
    torch.testing.assert_close(bn(m).running_mean, second, atol=1e-5, rtol=0)


def test_epoch_batchnorm_statistics_resume_exactly(tmp_path):
    """Interrupted mid-epoch and at an epoch boundary, a resumed run ends with the same weights
    and BatchNorm statistics as an uninterrupted one."""
    from uslib.engine import fit

    opt = OptimConfig(optimizer="adam", lr=1e-2, epochs=3, batch_size=4, checkpoint_every=1)

    def run(folder, stops=()):
        for stop in (*stops, None):
            torch.manual_seed(0)
            m = classifier(ToyEncoder(), "full")
            fit(m, toy_records(4), opt, run_dir=tmp_path / folder, stop_at_step=stop,
                collate_fn=collate_records, progress=False)  # fmt: skip
        return m.state_dict()

    ref = run("ref")
    for folder, stops in (("mid", (7,)), ("boundary", (6,))):  # 3 steps per epoch, 9 in all
        got = run(folder, stops)
        for k, v in ref.items():
            torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=f"{folder}: {k}")


def test_run_benchmark_end_to_end_tiny(tmp_path):
    from uslib.evaluation.benchmark import BenchmarkConfig, run_benchmark
    from uslib.evaluation.report import summary_table

    _fake_run(tmp_path, "02_uscl_sample_pairs", "vit_smoke")
    cfg = BenchmarkConfig.preset("smoke", n_per_class=4, n_per_class_seg=6, bootstrap=20)
    res = run_benchmark(cfg, profile="cpu", root=tmp_path, log=lambda s: None)
    r = res.results
    assert set(r["encoder"]) == {"02_uscl_sample_pairs", "random:vit_smoke", "supervised:vit_smoke"}
    assert set(r["protocol"]) == {"linear probe", "kNN", "partial FT, best test epoch (USCL)",
                                  "partial FT, last epoch", "full FT from scratch, last epoch",
                                  "frozen + SegDecoder"}  # fmt: skip
    assert set(r.loc[r.task == "fetal_head", "metric"]) == {"dice", "iou", "hd95", "hc_error_mm"}
    mine = r[r.encoder == "02_uscl_sample_pairs"]
    assert (mine.loc[mine.task == "lung", "contamination"] != "").all()  # pretrained on lung
    assert (mine.loc[mine.task == "fetal_head", "contamination"] == "").all()
    assert (r.loc[r.source == "random", "contamination"] == "").all()
    assert r.loc[r.metric == "accuracy", "value"].between(0, 1).all()
    assert len(res.cost) == 1 and res.cost["params_m"].iloc[0] > 0
    assert ("02_uscl_sample_pairs", "fetal_head/seg") in res.extras
    assert not summary_table(r).empty and res.notes == []


def test_task_examples_figure():
    from uslib.evaluation.tasks import EvalTask
    from uslib.viz.evaluation import plot_task_examples

    tasks = [
        EvalTask("toy", "classification", "synthetic:toy", toy_records(2), 3, ("a", "b", "c")),
        EvalTask("toy", "segmentation", "synthetic:toy", toy_records(2), 2, ("bg", "fg")),
    ]
    fig = plot_task_examples(tasks, n=3)
    assert len(fig.axes) == 6


@pytest.mark.realdata
def test_real_tasks_keep_shipped_patient_folds(shared_data):
    from uslib.evaluation.tasks import real_tasks

    tasks = {t.name: t for t in real_tasks(shared_data, img_size=32, max_items=40, max_folds=2)}
    assert set(tasks) == {"pocus", "hc18"}
    for t in tasks.values():
        for tr, te in t.folds:
            assert not set(t.groups[tr]) & set(t.groups[te])
    assert tasks["pocus"].num_classes == 3 and set(tasks["pocus"].labels) <= {0, 1, 2}
    assert all(r["spacing"] > 0 for r in tasks["hc18"].records)


def _toy_task(n_per_class: int = 8, folds: int = 2):
    from uslib.data.splits import fold_pairs, grouped_kfold
    from uslib.evaluation.tasks import EvalTask

    task = EvalTask("toy", "classification", "synthetic:toy", toy_records(n_per_class), 3,
                    ("a", "b", "c"))  # fmt: skip
    task.folds = fold_pairs(grouped_kfold(task.groups, folds, seed=0, labels=task.labels))
    return task


def test_evaluate_is_one_call_per_registered_protocol():
    from uslib.evaluation import evaluate, list_protocols

    assert set(list_protocols()) == {"linear_probe", "knn", "partial_ft", "uscl_pocus",
                                     "supervised", "segmentation"}  # fmt: skip
    task, enc = _toy_task(), ToyEncoder()
    out = evaluate(enc, task, "knn", k=3, n_boot=10).results
    feats = extract_features(enc, task.records)
    knn = lambda tr, te: knn_classify(feats.subset(tr), feats.subset(te), k=3, num_classes=3)  # noqa: E731
    expected = np.mean([knn(tr, te).accuracy for tr, te in task.folds])
    acc = out[out["metric"] == "accuracy"].iloc[0]
    assert acc["value"] == pytest.approx(expected) and acc["protocol"] == "kNN"
    assert acc["n_folds"] == 2 and acc["n_test"] == len(task.records)
    assert acc["ci_low"] <= acc["ci_high"]
    with pytest.raises(KeyError, match="protocol"):
        evaluate(enc, task, "no_such_protocol")


def test_uscl_pocus_protocol_through_evaluate_reports_both_rules():
    from uslib.evaluation import evaluate

    ev = evaluate(ToyEncoder(), _toy_task(), "uscl_pocus", cfg=EvalConfig(epochs=2, batch_size=8),
                  n_folds=1)  # fmt: skip
    assert set(ev.results["protocol"]) == {"partial FT, best test epoch (USCL)",
                                           "partial FT, val-selected epoch",
                                           "partial FT, last epoch"}  # fmt: skip
    per_fold = ev.extras["per_fold"]
    assert per_fold["select"].tolist() == ["test", "val"]  # one run per rule (paper: not shared)
    test = ev.results[ev.results["protocol"].str.contains("best test")]["value"].iloc[0]
    assert test == pytest.approx(per_fold["accuracy"].iloc[0])

"""USCL's POCUS protocol (§B.8, D-8): grouped folds, partial fine-tuning, both selection rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from uslib.data.transforms import USCL_MEAN, USCL_STD, USCLAugment
from uslib.evaluation.pocus import (
    RecordAugment,
    partial_ft_folds,
    pocus_protocol,
    protocol_folds,
    summarize_protocol,
)
from uslib.methods.uscl import USCLConfig
from uslib.models import create_backbone


def _groups(records) -> set[str]:
    return {r["patient_id"] or r["video_id"] for r in records}


def test_synthetic_folds_are_grouped_cover_all_and_in_unit_range() -> None:
    cfg = USCLConfig.preset("smoke", **{"data.n_per_class": 8, "eval.folds": 3})
    folds = protocol_folds(cfg)
    assert len(folds) == 3
    tests = [te for _, te in folds]
    assert sum(len(te) for te in tests) == 3 * 8  # every still is tested exactly once
    for train, test in folds:
        assert not _groups(train) & _groups(test)  # no scan on both sides
        assert len(train) + len(test) == 24
    x = torch.stack([r["image"] for r in tests[0]])
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0  # the encoder adapter normalises


def test_protocol_rows_both_rules_and_encoder_untouched() -> None:
    cfg = USCLConfig.preset(
        "smoke",
        **{"data.n_per_class": 6, "eval.folds": 2, "eval.epochs": 2, "protocol_shared_run": False},
    )
    folds = protocol_folds(cfg)
    torch.manual_seed(0)
    enc = create_backbone(cfg.backbone, in_chans=cfg.data.in_chans)
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    rows = pocus_protocol(enc, folds, cfg, init="random")
    assert sorted(rows["select"].unique()) == ["test", "val"] and len(rows) == 4
    assert rows["accuracy"].between(0, 1).all()
    assert (rows["n_correct"] == (rows["accuracy"] * rows["n_test"]).round()).all()
    assert (rows["n_test"].groupby(rows["select"]).sum() == 18).all()
    for k, v in enc.state_dict().items():  # fine-tuning works on a copy
        assert torch.equal(v, before[k]), k
    summary = summarize_protocol(rows)
    assert set(summary["select"]) == {"test", "val"} and (summary["folds"] == 2).all()
    test_row = summary.set_index("select").loc["test"]
    assert np.isclose(
        test_row["pooled"], 100 * rows.query("select == 'test'")["n_correct"].sum() / 18
    )


# moved from test_uscl.py (protocol pieces live in uslib.evaluation.pocus)
def test_summarize_protocol_mean_std_pooled() -> None:
    df = pd.DataFrame(
        {"init": ["a"] * 2, "fold": [0, 1], "select": ["val"] * 2, "accuracy": [0.5, 1.0],
         "n_test": [10, 30], "n_correct": [5, 30]}
    )  # fmt: skip
    row = summarize_protocol(df).iloc[0]
    assert row["folds"] == 2 and row["mean"] == pytest.approx(75.0)
    assert row["std"] == pytest.approx(np.std([50, 100], ddof=1))
    assert row["pooled"] == pytest.approx(100 * 35 / 40)


def test_augment_commutes_with_the_adapter_normalisation() -> None:
    """Crop + resize + flip on [0, 1] then (x - 0.5) / 0.25 (adapter) equals the paper's order,
    augment the normalised image (``Normalize`` inside the transform), for the same draws."""
    x = torch.rand(1, 24, 24)
    ours = (RecordAugment(16, seed=3)({"image": x, "label": 1})["image"] - USCL_MEAN) / USCL_STD
    paper = USCLAugment(16, jitter=0.0)(x, np.random.default_rng(3))  # normalises at the end
    torch.testing.assert_close(ours, paper, atol=1e-5, rtol=0)
    assert not torch.allclose(ours, (torch.nn.functional.interpolate(x[None], 16)[0] - 0.5) / 0.25)


def test_pocus_protocol_normalises_through_the_encoder_adapter() -> None:
    """The raw encoder sees ``(x - 0.5) / 0.25``: a constant-0.5 image reaches it as zeros."""
    seen = []

    class Spy(torch.nn.Module):
        num_features, in_chans, feature_info = 4, 1, []

        def __init__(self) -> None:
            super().__init__()
            self.last = torch.nn.Linear(1, 4)

        def forward(self, x):
            seen.append(x.detach().clone())
            return self.last(x.mean((1, 2, 3))[:, None])

        def last_block(self):
            return self.last

    recs = [{"image": torch.full((1, 8, 8), 0.5), "label": i % 3, "patient_id": f"p{i}"}
            for i in range(12)]  # fmt: skip
    cfg = USCLConfig.preset("smoke", **{"data.img_size": 8, "eval.epochs": 1})
    pocus_protocol(Spy(), [(recs[:9], recs[9:])], cfg)
    assert seen and all(torch.equal(x, torch.zeros_like(x)) for x in seen)


def test_shared_run_rows_test_rule_is_the_max_over_epochs() -> None:
    cfg = USCLConfig.preset("smoke", **{"data.n_per_class": 6, "eval.folds": 2, "eval.epochs": 3})
    folds = protocol_folds(cfg)
    torch.manual_seed(0)
    enc = create_backbone(cfg.backbone, in_chans=cfg.data.in_chans)
    rows = partial_ft_folds(enc, folds, cfg.eval, num_classes=3, shared_run=True)
    by = rows.set_index(["fold", "select"])
    for k in range(2):  # one run: max over epochs of the test accuracy >= any epoch's
        assert by.loc[(k, "test"), "accuracy"] >= by.loc[(k, "val"), "accuracy"] - 1e-9
        assert by.loc[(k, "test"), "accuracy"] >= by.loc[(k, "test"), "last_accuracy"] - 1e-9

"""USCL's POCUS protocol (§B.8, D-8): grouped folds, partial fine-tuning, both selection rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from uslib.data.transforms import USCL_MEAN, USCL_STD
from uslib.evaluation.pocus import (
    NormalisedRecords,
    RecordAugment,
    pocus_protocol,
    protocol_folds,
    summarize_protocol,
)
from uslib.methods.uscl import USCLConfig
from uslib.models import create_backbone


def _groups(ds) -> set[str]:
    return set(ds.index_frame()["group"])


def test_synthetic_folds_are_grouped_cover_all_and_normalised() -> None:
    cfg = USCLConfig.preset("smoke", **{"data.n_per_class": 8, "eval.folds": 3})
    folds = protocol_folds(cfg)
    assert len(folds) == 3
    tests = [te for _, te in folds]
    assert sum(len(te) for te in tests) == 3 * 8  # every still is tested exactly once
    for train, test in folds:
        assert not _groups(train) & _groups(test)  # no scan on both sides
        assert len(train) + len(test) == 24
    x = folds[0][1][0]["image"]
    lo, hi = (0.0 - USCL_MEAN) / USCL_STD, (1.0 - USCL_MEAN) / USCL_STD
    assert float(x.min()) >= lo - 1e-6 and float(x.max()) <= hi + 1e-6 and float(x.min()) < 0


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


def test_normalised_records_and_augment() -> None:
    recs = [{"image": torch.full((1, 8, 8), 0.75), "label": 1, "patient_id": "p", "meta": {}}]
    ds = NormalisedRecords(recs)
    torch.testing.assert_close(ds[0]["image"], torch.full((1, 8, 8), 1.0))  # (0.75 - .5) / .25
    assert "meta" not in ds[0] and ds.index_frame().to_dict("records") == [
        {"label": 1, "group": "p"}
    ]
    out = RecordAugment(8)(ds[0])
    assert out["image"].shape == (1, 8, 8) and out["label"] == 1

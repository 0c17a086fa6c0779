"""USCL's POCUS protocol (§B.8, D-8): grouped folds, partial fine-tuning, both selection rules."""

from __future__ import annotations

import numpy as np
import torch

from uslib.data.transforms import USCL_MEAN, USCL_STD
from uslib.evaluation.pocus import pocus_protocol, protocol_folds, summarize_protocol
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

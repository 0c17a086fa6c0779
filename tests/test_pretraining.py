"""The pretraining driver: what ``encoder.yaml`` records, keep-last without a selection key, and
provenance of real data reaching notebook 07's contamination flag."""

from __future__ import annotations

from pathlib import Path

import method_toys  # noqa: F401  (registers toy_ema)
import pytest
import yaml

from uslib import runs
from uslib.methods import get_method
from uslib.methods.uscl import USCLConfig
from uslib.pretraining import pretrain


def test_without_selection_key_the_last_epoch_is_kept(tmp_path: Path) -> None:
    cfg = get_method("toy_ema").config_cls.preset("smoke", **{"optim.epochs": 3})
    run = runs.start("03_toy", cfg, out_dir=tmp_path, verbose=False)
    res = pretrain("toy_ema", cfg, run, progress=False)
    spec = yaml.safe_load((tmp_path / "checkpoints" / runs.ENCODER_SPEC).read_text())
    assert res.selected_epoch == spec["epoch"] == 2 and "select_on" not in spec
    assert spec == {
        "backbone": "resnet18_smoke",
        "kwargs": {"in_chans": 1},
        "input_norm": None,
        "method": "toy_ema",
        "epoch": 2,
        "pretrain_data": ["toy:noise"],
        "data_root": None,
    }
    assert (tmp_path / "history.csv").is_file() and (tmp_path / "history_epochs.csv").is_file()


def test_wrong_config_class_is_refused(tmp_path: Path) -> None:
    run = runs.start("x", None, out_dir=tmp_path, verbose=False)
    with pytest.raises(TypeError, match="USCLConfig"):
        pretrain("uscl", get_method("toy_ema").config_cls(), run)


@pytest.mark.realdata
def test_real_pocus_pretraining_is_flagged_by_evaluation(shared_data: Path, tmp_path: Path) -> None:
    """USCL pretrained on the real POCUS clips records ``real:pocus``; 07 then flags its POCUS
    rows as seen in pretraining (the contamination flag could not fire before)."""
    from uslib.evaluation.discovery import contamination, discover_checkpoints

    cfg = USCLConfig.preset(
        "smoke", **{"data.data_root": str(shared_data), "optim.epochs": 1, "data.img_size": 16}
    )
    run_dir = tmp_path / "papermill_runs" / "smoke" / "02_uscl_sample_pairs"
    run = runs.start("02_uscl_sample_pairs", cfg, profile="smoke", out_dir=run_dir, verbose=False)
    pretrain("uscl", cfg, run, progress=False)
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["data_root"]
    assert recorded == str(shared_data)
    [entry] = discover_checkpoints("smoke", root=tmp_path)
    assert entry.pretrain_data == ("real:pocus",)
    assert "real:pocus" in contamination(entry, "real:pocus")
    assert contamination(entry, "real:hc18") == ""  # an organ it never saw: clean

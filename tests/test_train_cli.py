"""``python -m uslib.train``: override parsing and a full run of a registered toy method."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from engine_toys import ToyImages, ToyRegressor

from uslib import runs
from uslib.config import MethodConfig
from uslib.methods import METHODS, MethodSpec, TrainData
from uslib.models import BACKBONES
from uslib.train import main, parse_overrides


@dataclass(frozen=True)
class ToyConfig(MethodConfig):
    backbone: str = "_toy_mlp"
    PRESETS = {"cpu": {"optim": {"epochs": 3}}}


def _toy_mlp() -> torch.nn.Module:
    return ToyRegressor().net


if "_toy_mlp" not in BACKBONES:
    BACKBONES.register("_toy_mlp")(_toy_mlp)
if "_toy" not in METHODS:
    METHODS.register("_toy")(
        lambda: MethodSpec(
            "_toy",
            ToyConfig,
            lambda cfg: ToyRegressor(seed=cfg.seed, cfg=cfg),
            lambda cfg, method: TrainData(ToyImages(8), ToyImages(4, seed=1), provenance=("toy",)),
        )
    )


def test_parse_overrides() -> None:
    assert parse_overrides(["optim.lr=1e-3", "seed=3", "data.task=breast"]) == {
        "optim.lr": 1e-3,
        "seed": 3,
        "data.task": "breast",
    }
    with pytest.raises(ValueError, match="'lr'"):
        parse_overrides(["lr"])


def test_cli_trains_and_saves_encoder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("USLIB_ROOT", str(tmp_path))
    run_dir = main(["--method", "_toy", "--profile", "cpu", "optim.batch_size=4", "seed=1"])
    assert run_dir == tmp_path / "papermill_runs" / "cpu" / "train__toy"
    assert ToyConfig.from_yaml(run_dir / "config.yaml").optim.epochs == 3
    assert len((run_dir / "history.csv").read_text().splitlines()) == 1 + 3 * 2
    enc, spec = runs.load_encoder(run_dir / "checkpoints" / "encoder.yaml")
    assert spec["method"] == "_toy" and isinstance(enc, torch.nn.Sequential)
    assert spec["pretrain_data"] == ["toy"] and spec["epoch"] == 2  # no selection: last epoch

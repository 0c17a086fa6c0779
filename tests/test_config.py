"""Tests of uslib.config: presets, None-pruning, unknown keys, YAML round-trip."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass, field

import pytest

from uslib.config import ConfigBase, ConfigError, MethodConfig, OptimConfig


@dataclass(frozen=True)
class DemoConfig(MethodConfig):
    temperature: float = 0.5
    views: tuple[int, ...] = (1, 2)
    note: str | None = None
    inner: OptimConfig = field(default_factory=OptimConfig)

    PRESETS = {"paper": {"temperature": 0.1, "optim": {"epochs": 300, "lr": 3e-4}}}


def test_defaults_are_smoke_and_presets_apply() -> None:
    assert DemoConfig.preset("smoke") == DemoConfig()
    paper = DemoConfig.preset("paper")
    assert paper.temperature == 0.1 and paper.optim.epochs == 300 and paper.optim.lr == 3e-4
    assert paper.optim.batch_size == OptimConfig().batch_size  # untouched fields keep defaults


def test_none_overrides_are_dropped() -> None:
    cfg = DemoConfig.preset("paper", temperature=None, optim={"epochs": None, "lr": 1e-3})
    assert cfg.temperature == 0.1 and cfg.optim.epochs == 300 and cfg.optim.lr == 1e-3


def test_dotted_keys_and_coercion() -> None:
    cfg = DemoConfig.preset("smoke", **{"optim.lr": 1, "views": [3, 4], "data.img_size": 96.0})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.views == (3, 4) and cfg.data.img_size == 96 and isinstance(cfg.data.img_size, int)


def test_unknown_keys_name_key_and_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'temprature'.*'temperature'"):
        DemoConfig.preset("smoke", temprature=0.2)
    with pytest.raises(ConfigError, match=r"unknown key 'lrr' for OptimConfig.*'lr'"):
        DemoConfig.preset("smoke", **{"optim.lrr": 0.2})
    with pytest.raises(ConfigError, match="unknown profile 'gpu'"):
        DemoConfig.preset("gpu")


def test_bad_types_are_rejected() -> None:
    with pytest.raises(ConfigError, match="temperature"):
        DemoConfig().replace(temperature="hot")
    with pytest.raises(ConfigError, match="section"):
        DemoConfig().replace(optim=3)


def test_yaml_round_trip(tmp_path) -> None:
    cfg = DemoConfig.preset("paper", note="x", views=(5,))
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    assert DemoConfig.from_yaml(path) == cfg
    assert DemoConfig.from_yaml(cfg.to_yaml()) == cfg


def test_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        DemoConfig().temperature = 1.0  # type: ignore[misc]


def test_base_has_no_presets() -> None:
    assert ConfigBase.PRESETS == {}

"""Tests of uslib.runs: run folder contents, repo-rooted paths, encoder save/load."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from uslib import runs
from uslib.config import OptimConfig


def test_repo_root_is_the_checkout() -> None:
    root = runs.repo_root()
    assert (root / "pyproject.toml").is_file() and (root / "uslib").is_dir()


def test_run_folder_holds_config_provenance_and_results(tmp_path, capsys) -> None:
    cfg = OptimConfig(lr=0.5)
    run = runs.start("99_demo", cfg, profile="smoke", out_dir=tmp_path / "r", seed=3)
    assert "99_demo" in capsys.readouterr().out
    assert OptimConfig.from_yaml(run.dir / "config.yaml") == cfg
    prov = json.loads((run.dir / "provenance.json").read_text())
    assert prov["seed"] == 3 and "torch" in prov["packages"] and "git_dirty" in prov
    run.save_metrics({"acc": 0.5})
    run.save_metrics({"f1": 0.4})
    assert json.loads((run.dir / "metrics.json").read_text()) == {
        "acc": 0.5,
        "f1": 0.4,
        "profile": "smoke",
    }
    with pytest.raises(ValueError, match="coreset_select_s.*save_timings"):
        run.save_metrics({"acc": 0.6, "coreset_select_s": 38.1})  # wall-clock: not a metric
    run.save_timings({"wall_s": 1.23456})
    assert json.loads((run.dir / "timings.json").read_text()) == {"wall_s": 1.235}
    assert json.loads((run.dir / "metrics.json").read_text())["acc"] == 0.5
    run.save_table(pd.DataFrame({"a": [1]}), "t")
    assert (run.dir / "tables" / "t.csv").is_file() and (run.dir / "tables" / "t.md").is_file()
    run.finish()
    assert "end" in json.loads((run.dir / "provenance.json").read_text())


def test_relative_out_dir_resolves_from_repo_root(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("USLIB_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)
    run = runs.start("01_x", None, profile="smoke", verbose=False)
    assert run.dir == tmp_path / "papermill_runs" / "smoke" / "01_x"
    assert runs.find_runs("smoke") == [run.dir]


def test_encoder_round_trip(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("USLIB_ROOT", str(tmp_path))
    from uslib.models import BACKBONES

    name = "_test_linear_backbone"
    if name not in BACKBONES:
        BACKBONES.register(name)(lambda width=3: torch.nn.Linear(width, 2))
    run = runs.start("02_x", None, profile="cpu", verbose=False)
    enc = torch.nn.Linear(4, 2)
    run.save_encoder(enc, {"backbone": name, "kwargs": {"width": 4}, "method": "demo"})
    [spec_path] = runs.find_encoders("cpu")
    loaded, spec = runs.load_encoder(spec_path)
    assert spec["method"] == "demo" and spec["backbone"] == name
    assert torch.equal(loaded.weight, enc.weight)
    for f in ("encoder.yaml", "encoder.safetensors"):  # same mode as every other output
        assert (spec_path.parent / f).stat().st_mode & 0o777 == 0o644
    assert not list(spec_path.parent.glob("*.tmp"))
    with pytest.raises(ValueError, match="backbone"):
        run.save_encoder(enc, {"kwargs": {}})
    with pytest.raises(FileNotFoundError, match="nowhere"):
        runs.load_encoder(tmp_path / "nowhere" / "encoder.yaml")


def test_restarted_run_drops_the_previous_metrics(tmp_path) -> None:
    first = runs.start("99_demo", None, out_dir=tmp_path / "r", verbose=False)
    first.save_metrics({"old_key": 1.0, "acc": 0.5})
    second = runs.start("99_demo", None, out_dir=tmp_path / "r", verbose=False)
    assert second.save_metrics({"acc": 0.7}) == {"acc": 0.7, "profile": "smoke"}


def test_timings_are_kept_apart_from_metrics(tmp_path) -> None:
    run = runs.start("99_demo", None, out_dir=tmp_path / "r", verbose=False)
    run.save_metrics({"acc": 0.5})
    run.save_timings({"fit": 1.23456})
    assert json.loads((run.dir / "timings.json").read_text()) == {"fit": 1.235}
    assert "fit" not in json.loads((run.dir / "metrics.json").read_text())
    runs.start("99_demo", None, out_dir=tmp_path / "r", verbose=False)
    assert not (run.dir / "timings.json").exists()


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "expected a mapping"),
        ("kwargs: {}\n", "missing field 'backbone'"),
        ("backbone: [1\n", "not valid YAML"),
        ("backbone: resnet18_smoke\nkwargs: 3\n", "'kwargs' must be a mapping"),
        ("backbone: resnet18_smoke\ninput_norm: 0.5\n", "'input_norm' must be"),
    ],
)
def test_bad_encoder_specs_name_the_file_and_field(tmp_path, text: str, match: str) -> None:
    spec = tmp_path / "encoder.yaml"
    spec.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        runs.load_encoder(spec)
    assert str(spec) in str(info.value)


@pytest.mark.parametrize("payload", [b"", b"\x00" * 7, b"random bytes, not safetensors"])
def test_bad_encoder_weights_name_the_file(tmp_path, payload: bytes) -> None:
    from uslib.models.checkpoints import CheckpointError

    (tmp_path / "encoder.yaml").write_text("backbone: resnet18_smoke\n")
    (tmp_path / "encoder.safetensors").write_bytes(payload)
    with pytest.raises(CheckpointError, match="encoder.safetensors"):
        runs.load_encoder(tmp_path / "encoder.yaml")


def test_wrong_shape_weights_name_file_and_key(tmp_path) -> None:
    from safetensors.torch import save_file

    from uslib.models import create_backbone
    from uslib.models.checkpoints import CheckpointError

    state = create_backbone("resnet18_smoke", in_chans=3).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "encoder.safetensors"))
    (tmp_path / "encoder.yaml").write_text("backbone: resnet18_smoke\nkwargs: {in_chans: 1}\n")
    with pytest.raises(CheckpointError, match=r"(?s)encoder\.safetensors.*conv1\.weight"):
        runs.load_encoder(tmp_path / "encoder.yaml")


def test_load_encoder_applies_input_norm_like_notebook_07(tmp_path) -> None:
    """Features from ``load_encoder`` + ``extract_features`` equal 07's for the same encoder."""
    from uslib.config import DataConfig
    from uslib.data.synthetic import SyntheticStills
    from uslib.evaluation import extract_features
    from uslib.evaluation.discovery import discover_checkpoints
    from uslib.models import create_backbone

    torch.manual_seed(0)
    enc = create_backbone("resnet18_smoke", in_chans=1)
    run_dir = tmp_path / "papermill_runs" / "cpu" / "02_x"
    run = runs.start("02_x", None, profile="cpu", out_dir=run_dir, verbose=False)
    spec = {"backbone": "resnet18_smoke", "kwargs": {"in_chans": 1}, "input_norm": [0.5, 0.25]}
    run.save_encoder(enc, spec)
    data = SyntheticStills("lung", "test", 2, DataConfig(img_size=32))
    loaded, _ = runs.load_encoder(run_dir / "checkpoints" / "encoder.yaml")
    [entry] = discover_checkpoints("cpu", root=tmp_path)
    ours = extract_features(loaded, data).x
    theirs = extract_features(entry.build(img_size=32), data).x
    np.testing.assert_array_equal(ours, theirs)
    raw, _ = runs.load_encoder(run_dir / "checkpoints" / "encoder.yaml", raw=True)
    unnormalised = extract_features(raw, data).x
    assert not np.allclose(unnormalised, ours)  # the norm matters, so the test can fail


def test_repo_relative_paths_round_trip(tmp_path, monkeypatch):
    """Recorded paths inside the repository are repo-relative (two clones record the same string)
    and resolve back to the same file from any working directory; outside paths stay absolute."""
    from uslib.paths import repo_relative, repo_root, resolve_repo_path

    inside = repo_root() / "papermill_runs" / "cpu" / "x" / "checkpoints" / "encoder.yaml"
    rel = repo_relative(inside)
    assert rel == "papermill_runs/cpu/x/checkpoints/encoder.yaml"
    monkeypatch.chdir(tmp_path)
    assert resolve_repo_path(rel) == inside
    outside = tmp_path / "teacher.pth"
    assert repo_relative(outside) == str(outside)
    assert resolve_repo_path(str(outside)) == outside

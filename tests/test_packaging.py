"""pyproject.toml, environment.yml, Makefile and .ci/run agree with each other."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    py = [d for d in deps if isinstance(d, str) and d.startswith("python=")]
    assert py == ["python=3.11"] and project["requires-python"] == ">=3.11"
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert pip == ["-r requirements.lock", "-e ."]  # the exact set of `make install`
    mk = (ROOT / "Makefile").read_text()
    assert "pip install -q -r requirements.lock" in mk and "--no-deps -e ." in mk


def test_required_pins_and_extras() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {_name(r): r for r in project["dependencies"]}
    assert deps["torch"] == "torch==2.14.1" and deps["torchvision"] == "torchvision==0.29.1"
    assert re.fullmatch(r"timm>=1\.0\.\d+,<1\.1", deps["timm"])
    for pkg in (
        "accelerate",
        "datasets",
        "torchmetrics",
        "safetensors",
        "numpy",
        "scipy",
        "pandas",
        "pillow",
        "matplotlib",
        "seaborn",
        "tqdm",
        "pyyaml",
    ):
        assert pkg in deps, pkg
    extras = project["optional-dependencies"]
    assert {_name(r) for r in extras["notebooks"]} >= {
        "jupyterlab",
        "ipykernel",
        "ipywidgets",
        "papermill",
        "nbval",
    }
    assert {_name(r) for r in extras["gpu"]} == {"mamba-ssm", "causal-conv1d"}
    assert {_name(r) for r in extras["sim"]} == {"pymust"}
    assert {"pytest", "ruff"} <= {_name(r) for r in extras["dev"]}


def test_ci_calls_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "set -euo pipefail" in ci
    assert "|| true" not in ci
    readme = (ROOT / "README.md").read_text()
    top = readme[: readme.index("\n## ", readme.index("make test"))]
    assert "make reproduce" in top and "make test" in top


def test_makefile_targets() -> None:
    mk = (ROOT / "Makefile").read_text()
    for target in ("install", "reproduce", "test", "smoke", "figures", "bench", "lint", "clean"):
        assert re.search(rf"^{target}:", mk, re.M), target
    assert "cat pyproject.toml requirements.lock | sha256sum" in mk  # the install stamp's key
    assert "lint-imports" in mk and "tools/check_lock.py" in mk  # layers and lock in `make lint`
    assert "--nbval-lax" in mk and "--nbval-current-env" in mk

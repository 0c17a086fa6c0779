"""The import layers of ``.importlinter`` hold, and a planted wrong-way import breaks them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter not installed")


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}  # the copy shadows the installed package
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def _copy(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "uslib", tree / "uslib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tree / ".importlinter")
    return tree


def test_the_package_keeps_its_layers(tmp_path: Path) -> None:
    res = _lint(_copy(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


@pytest.mark.parametrize(
    ("module", "planted", "broken"),
    [
        (
            "ops/masking.py",
            "import uslib.models",
            "uslib.ops is not allowed to import uslib.models",
        ),
        ("data/splits.py", "import uslib.runs", "uslib.data is not allowed to import uslib.runs"),
        ("engine/loop.py", "import uslib.methods.uscl", "engine sees only the Method contract"),
        ("methods/uscl.py", "import uslib.engine", "uslib.methods is not allowed to import"),
    ],
)
def test_a_planted_wrong_way_import_fails_lint(
    tmp_path: Path, module: str, planted: str, broken: str
) -> None:
    tree = _copy(tmp_path)
    path = tree / "uslib" / module
    path.write_text(path.read_text() + f"\n{planted}  # planted by tests/test_layers.py\n")
    res = _lint(tree)
    assert res.returncode != 0 and broken in res.stdout, res.stdout

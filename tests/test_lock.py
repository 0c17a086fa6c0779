"""``tools/check_lock.py``: the lock pins every requirement of pyproject.toml inside its range."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_lock", ROOT / "tools" / "check_lock.py")
check_lock = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_lock)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copy(ROOT / "requirements.lock", tmp_path / "requirements.lock")
    return tmp_path / "pyproject.toml", tmp_path / "requirements.lock"


def test_the_committed_lock_matches_pyproject() -> None:
    assert check_lock.problems(ROOT / "pyproject.toml", ROOT / "requirements.lock") == []
    assert check_lock.read_lock(ROOT / "requirements.lock")["torch"].public == "2.14.1"


def test_a_requirement_missing_from_the_lock_is_named(pair: tuple[Path, Path]) -> None:
    pyproject, lock = pair
    text = pyproject.read_text().replace('"einops>=0.8",', '"einops>=0.8",\n  "faiss-cpu>=1.8",')
    pyproject.write_text(text)
    found = check_lock.problems(pyproject, lock)
    assert len(found) == 1 and "faiss-cpu>=1.8" in found[0]


def test_a_pin_outside_the_range_is_named(pair: tuple[Path, Path]) -> None:
    pyproject, lock = pair
    pin = next(ln for ln in lock.read_text().splitlines() if ln.startswith("accelerate=="))
    lock.write_text(lock.read_text().replace(pin, "accelerate==0.9.0"))
    found = check_lock.problems(pyproject, lock)
    assert len(found) == 1 and "accelerate==0.9.0" in found[0], found
    assert check_lock.main(["--pyproject", str(pyproject), "--lock", str(lock)]) == 1


def test_a_line_that_is_no_pin_is_an_error(pair: tuple[Path, Path]) -> None:
    pyproject, lock = pair
    lock.write_text(lock.read_text() + "timm>=1.0\n")
    (found,) = check_lock.problems(pyproject, lock)
    assert "not an exact pin" in found and "timm>=1.0" in found

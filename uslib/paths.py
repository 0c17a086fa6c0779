"""Repository-rooted paths, at the bottom layer so that ``data`` can find run folders.

``uslib.runs`` re-exports both functions; they live here because ``runs`` builds encoders through
``uslib.models``, and ``uslib.data.manifest`` (below ``models``) needs only the paths.
"""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The repository root: ``$USLIB_ROOT`` if set, else the folder above the ``uslib`` package."""
    env = os.environ.get("USLIB_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file():
        return here
    for parent in [Path.cwd(), *Path.cwd().parents]:
        if (parent / "pyproject.toml").is_file() and (parent / "uslib").is_dir():
            return parent
    raise FileNotFoundError("cannot find the repository root; set USLIB_ROOT")


REAL_SUFFIX = "_real"
"""Run sets of the real-data track are ``papermill_runs/<profile>_real`` (issue 16)."""


def run_set(profile: str, data_root: str | Path | None = None, *, real: bool = False) -> str:
    """The folder name under ``papermill_runs/`` of a run: ``<profile>`` on the synthetic default,
    ``<profile>_real`` when ``data_root`` is given (or ``real`` asks for the real-data track's
    set without naming a root), so that a real-data run never overwrites (or is evaluated as)
    the synthetic one."""
    return f"{profile}{REAL_SUFFIX}" if data_root or real else profile


def runs_root(profile: str, data_root: str | Path | None = None) -> Path:
    """``<repo>/papermill_runs/<run_set(profile, data_root)>``."""
    return repo_root() / "papermill_runs" / run_set(profile, data_root)


def resolve_repo_path(path: str | Path) -> Path:
    """``path`` as given when absolute, else relative to the repository root (not to the cwd).

    Paths a run records (teacher checkpoints, data) are written repo-relative by ``repo_relative``
    so that two clones record the same string; this reads them back wherever the code runs.
    """
    p = Path(path).expanduser()
    return p if p.is_absolute() else repo_root() / p


def repo_relative(path: str | Path) -> str:
    """``path`` as a POSIX string relative to the repository root when it lies inside it, else
    unchanged: what configs and metrics record, so that two clones write identical files."""
    p = Path(path).expanduser()
    root = repo_root()
    if p.is_absolute() and p.resolve().is_relative_to(root):
        return p.resolve().relative_to(root).as_posix()
    return str(path)

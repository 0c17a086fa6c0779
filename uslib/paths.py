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


def runs_root(profile: str) -> Path:
    """``<repo>/papermill_runs/<profile>``."""
    return repo_root() / "papermill_runs" / profile


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

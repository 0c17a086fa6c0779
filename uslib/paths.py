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

"""Run every notebook in order with papermill: ``python -m uslib.reproduce --profile cpu``.

Executed copies go to ``papermill_runs/<profile>/NN_x.ipynb`` (run folders beside them). One line
per notebook with its duration; the first failure stops the run, naming the notebook and the cell.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from uslib.config import PROFILES
from uslib.runs import repo_root, runs_root


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook and the failing cell."""


def notebooks_in(folder: Path, only: Sequence[str] = ()) -> list[Path]:
    """``NN_*.ipynb`` files of ``folder`` in order; only those numbered in ``only`` if given."""
    found = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if p.name[:2] in set(only)]
    return found


def run_notebook(nb: Path, out: Path, parameters: dict[str, Any], timeout: int | None) -> float:
    """Execute ``nb`` into ``out`` with papermill; returns seconds.

    Raises:
        NotebookFailed: with the notebook name, the failing cell's number and the error.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        pm.execute_notebook(
            str(nb),
            str(out),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(nb.parent),
            progress_bar=False,
            execution_timeout=timeout,
        )
    except PapermillExecutionError as err:
        raise NotebookFailed(
            f"{nb.name} failed in cell {err.exec_count} ({err.ename}: {err.evalue}); "
            f"executed copy with the traceback: {out}"
        ) from err
    return time.perf_counter() - t0


def reproduce(
    profile: str,
    data_root: str | None = None,
    only: Sequence[str] = (),
    notebooks_dir: Path | None = None,
    out_dir: Path | None = None,
    timeout: int | None = None,
) -> list[tuple[str, float]]:
    """Run the notebooks of ``notebooks_dir`` (default ``<repo>/notebooks``) in order.

    Returns:
        ``(notebook name, seconds)`` per notebook.
    """
    folder = notebooks_dir or repo_root() / "notebooks"
    target = out_dir or runs_root(profile)
    params: dict[str, Any] = {"profile": profile}
    if data_root:
        params["data_root"] = str(Path(data_root).resolve())
    books = notebooks_in(folder, only)
    if not books:
        raise FileNotFoundError(f"no NN_*.ipynb notebooks in {folder}")
    done = []
    for nb in books:
        secs = run_notebook(nb, target / nb.name, params, timeout)
        print(f"  ok  {nb.name:<45} {secs:7.1f} s", flush=True)
        done.append((nb.name, secs))
    return done


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m uslib.reproduce", description=__doc__)
    parser.add_argument("--profile", default="cpu", choices=PROFILES)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--only", default="", help="comma-separated notebook numbers, e.g. 01,07")
    parser.add_argument("--timeout", type=int, default=None, help="per-cell timeout (s)")
    args = parser.parse_args(argv)
    only = [s.strip().zfill(2) for s in args.only.split(",") if s.strip()]
    print(f"reproduce: profile={args.profile} data_root={args.data_root or 'synthetic'}")
    t0 = time.perf_counter()
    try:
        done = reproduce(args.profile, args.data_root, only, timeout=args.timeout)
    except NotebookFailed as err:
        print(f"FAILED {err}", file=sys.stderr)
        return 1
    total = time.perf_counter() - t0
    print(
        f"reproduce: {len(done)} notebooks ran in {total / 60:.1f} min "
        f"-> {runs_root(args.profile).relative_to(repo_root())}/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

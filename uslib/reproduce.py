"""Run every notebook in order with papermill: ``python -m uslib.reproduce --profile cpu``.

Executed copies go to ``papermill_runs/<profile>/NN_x.ipynb`` (run folders beside them); with
``--data-root`` (the real-data track) to ``papermill_runs/<profile>_real/``, after a dry run of
``uslib.data.check`` has validated the root (a wrong or empty root stops before any training;
``--skip-missing`` turns an absent root into a skip with a message, for ``make reproduce-real``).
While a notebook runs, a line every 30 s says which cell runs (k of n), the elapsed time and, inside
training, the engine's step, loss and images/s (read from the run folder's ``progress.json``); one
line per notebook with its duration; the first failure stops the run, naming the notebook and the
cell. Kernels talk over local IPC sockets (no TCP, so no unencrypted-TCP warning).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager

from uslib.config import PROFILES
from uslib.paths import repo_root, runs_root


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook and the failing cell."""


def notebooks_in(folder: Path, only: Sequence[str] = ()) -> list[Path]:
    """``NN_*.ipynb`` files of ``folder`` in order; only those numbered in ``only`` if given."""
    found = sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if p.name[:2] in set(only)]
    return found


HEARTBEAT_S = 30.0

REAL_TRACK_PARAMS: dict[str, dict[str, Any]] = {
    # USCL's in-notebook POCUS protocol fine-tunes random init and USCL on each test fold: on the
    # 2,110 real frames 1 fold took 19.8 min with one run per selection rule and 20 epochs
    # (cpu_real at 3579e84; the cpu preset now shares one 10-epoch run between the rules). The
    # real track runs 1 fold there, and notebook 07 scores every encoder on all 5 folds.
    "02_uscl_sample_pairs": {"protocol_folds": 1},
}
"""Extra papermill parameters per notebook in the real-data track (``--data-root``)."""


class IPCKernelManager(AsyncKernelManager):
    """A kernel manager on IPC sockets in a private temporary folder (not TCP)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transport = "ipc"
        self.ip = str(Path(tempfile.mkdtemp(prefix="uslib-kernel-")) / "kernel")


def cell_status(executed: Path) -> tuple[int, int]:
    """``(k, n)``: the running (or last finished) code cell of a papermill output notebook."""
    try:
        cells = json.loads(executed.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return 0, 0  # not written yet, or caught mid-write
    code = [c for c in cells if c.get("cell_type") == "code"]
    k = 0
    for i, c in enumerate(code, 1):
        status = c.get("metadata", {}).get("papermill", {}).get("status")
        if status in ("running", "completed"):
            k = i
    return k, len(code)


def training_status(run_root: Path, stem: str, since: float) -> str:
    """The freshest ``progress.json`` of this notebook's run folders (``<stem>*``), as text."""
    newest: tuple[float, dict[str, Any]] | None = None
    for path in run_root.glob(f"{stem}*/progress.json"):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        t = float(state.get("time", 0.0))
        if t >= since and (newest is None or t > newest[0]):
            newest = (t, {**state, "run": path.parent.name})
    if newest is None:
        return ""
    st = newest[1]
    return (
        f" | {st['run']}: step {st['step']}/{st['total_steps']} epoch {st['epoch'] + 1}/"
        f"{st['epochs']} loss {st['loss']:.4f} {st['images_per_s']:.1f} img/s"
    )


class Heartbeat(threading.Thread):
    """Prints where a running notebook stands every ``every`` seconds until stopped."""

    def __init__(self, nb: Path, out: Path, every: float | None = None) -> None:
        super().__init__(daemon=True)
        self.nb, self.out = nb, out
        self.every = HEARTBEAT_S if every is None else every
        self.t0, self.stopped = time.time(), threading.Event()

    def line(self) -> str:
        k, n = cell_status(self.out)
        mins, secs = divmod(int(time.time() - self.t0), 60)
        train = training_status(self.out.parent, self.nb.stem, self.t0)
        return f"  ..  {self.nb.name:<45} cell {k}/{n} {mins:3d}:{secs:02d}{train}"

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            print(self.line(), flush=True)


def typed_parameters_translator() -> type:
    """papermill's Python translator, reading ``x: int | None = None`` parameter lines too.

    The house style types every parameter (``data_root: str | None = None``); papermill's
    pattern accepts no ``|`` in an annotation, so it skipped those lines and warned "Passed
    unknown parameter" for each one passed. This subclass widens only the annotation class.
    """
    import re

    from papermill.translators import PythonTranslator

    narrow = r"[\w_\[\],\s]*"
    pattern = PythonTranslator.PARAMETER_PATTERN.pattern
    if narrow not in pattern:  # papermill changed its pattern: keep its own
        return PythonTranslator
    wide = re.compile(pattern.replace(narrow, r"[\w_\[\],\s|.]*"))
    return type("TypedPythonTranslator", (PythonTranslator,), {"PARAMETER_PATTERN": wide})


def run_notebook(nb: Path, out: Path, parameters: dict[str, Any], timeout: int | None) -> float:
    """Execute ``nb`` into ``out`` with papermill; returns seconds.

    Raises:
        NotebookFailed: with the notebook name, the failing cell's number and the error.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError
    from papermill.translators import papermill_translators

    papermill_translators.register("python3", typed_parameters_translator())  # our kernel

    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    beat = Heartbeat(nb, out)
    beat.start()
    try:
        pm.execute_notebook(
            str(nb),
            str(out),
            parameters=parameters,
            kernel_name="python3",
            cwd=str(nb.parent),
            progress_bar=False,
            execution_timeout=timeout,
            kernel_manager_class=IPCKernelManager,
        )
    except PapermillExecutionError as err:
        raise NotebookFailed(
            f"{nb.name} failed in cell {err.exec_count} ({err.ename}: {err.evalue}); "
            f"executed copy with the traceback: {out}"
        ) from err
    finally:
        beat.stopped.set()
    return time.perf_counter() - t0


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """This machine's fp32 matmul rate (GFLOP/s) with torch's current threads: best of ``repeats``
    ``n x n`` products (``2 n^3`` FLOPs each). Recorded with each run, so timings in the README
    can be read against the machine that made them."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def run_record(profile: str, data_root: str | None, argv: Sequence[str]) -> dict[str, Any]:
    """What ``reproduce.json`` says about the run: command, machine, git state."""
    import os
    import platform

    import torch

    from uslib.runs import provenance

    prov = provenance(0)
    return {
        "command": "python -m uslib.reproduce " + " ".join(argv),
        "make": f"make reproduce PROFILE={profile}"
        + (f" DATA_ROOT={data_root}" if data_root else ""),
        "profile": profile,
        "data_root": data_root,
        "git_sha": prov["git_sha"],
        "git_dirty": prov["git_dirty"],
        "start": prov["start"],
        "machine": {
            "host": platform.node(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "matmul_gflops_fp32": round(matmul_gflops(), 1),
            "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
        },
        "notebooks": {},
    }


def _record_notebook(path: Path, record: dict[str, Any], stem: str, secs: float) -> None:
    """Add one notebook's seconds (with this run's commit and load) to ``reproduce.json``.

    Notebooks of an earlier record that this run does not re-run (``--only``) keep their entry,
    each naming the commit and the command that made it.
    """
    import os

    old = json.loads(path.read_text()) if path.is_file() else {}
    kept = {k: v for k, v in old.get("notebooks", {}).items() if isinstance(v, dict)}
    record["notebooks"] = {**kept, **record["notebooks"]}
    record["notebooks"][stem] = {
        "seconds": round(secs, 1),
        "git_sha": record["git_sha"],
        "command": record["make"],
        "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
    }
    record["total_s"] = round(sum(v["seconds"] for v in record["notebooks"].values()), 1)
    path.write_text(json.dumps(record, indent=2) + "\n")


def changed_tracked_files(paths: Sequence[Path]) -> list[str]:
    """Tracked files under ``paths`` that differ from the last commit (``git status``)."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--", *map(str, paths)],
            cwd=repo_root(), capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    return [line[3:] for line in out.splitlines() if line[:2].strip() and not line.startswith("??")]


def reproduce(
    profile: str,
    data_root: str | None = None,
    only: Sequence[str] = (),
    notebooks_dir: Path | None = None,
    out_dir: Path | None = None,
    timeout: int | None = None,
    record: dict[str, Any] | None = None,
) -> list[tuple[str, float]]:
    """Run the notebooks of ``notebooks_dir`` (default ``<repo>/notebooks``) in order.

    Args:
        record: when given (``run_record``), the per-notebook seconds are added to it and it is
            written to ``<out_dir>/reproduce.json`` after each notebook.

    Returns:
        ``(notebook name, seconds)`` per notebook.
    """
    folder = notebooks_dir or repo_root() / "notebooks"
    target = out_dir or runs_root(profile, data_root)
    params: dict[str, Any] = {"profile": profile}
    if data_root:
        params["data_root"] = str(Path(data_root).resolve())
    books = notebooks_in(folder, only)
    if not books:
        raise FileNotFoundError(f"no NN_*.ipynb notebooks in {folder}")
    done = []
    for nb in books:
        extra = REAL_TRACK_PARAMS.get(nb.stem, {}) if data_root else {}
        secs = run_notebook(nb, target / nb.name, {**params, **extra}, timeout)
        print(f"  ok  {nb.name:<45} {secs:7.1f} s", flush=True)
        done.append((nb.name, secs))
        if record is not None:
            _record_notebook(target / "reproduce.json", record, nb.stem, secs)
    return done


def _check_data_root(data_root: str, skip_missing: bool) -> int | None:
    """The dry run before a real-data track: ``None`` to go on, else the exit code.

    An absent root is a skip (0) with ``skip_missing``, else an error (2); a root holding no
    usable layout is an error (2) naming it; rejected files are printed and do not stop the run.
    """
    from uslib.data.check import check_data_root
    from uslib.data.validation import LayoutError

    if not Path(data_root).exists():
        what = "skipped" if skip_missing else "cannot run"
        print(f"reproduce: data root {data_root} does not exist: the real-data track {what}")
        return 0 if skip_missing else 2
    try:
        report = check_data_root(data_root)
    except (FileNotFoundError, LayoutError) as err:
        print(f"reproduce: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    if not report.usable:
        print(f"reproduce: {data_root}: a data set has no valid item (see above)", file=sys.stderr)
        return 2
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="python -m uslib.reproduce", description=__doc__)
    parser.add_argument("--profile", default="cpu", choices=PROFILES)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--only", default="", help="comma-separated notebook numbers, e.g. 01,07")
    parser.add_argument("--timeout", type=int, default=None, help="per-cell timeout (s)")
    parser.add_argument(
        "--skip-missing", action="store_true", help="an absent --data-root is a skip (exit 0)"
    )
    args = parser.parse_args(argv)
    if args.data_root is not None:
        status = _check_data_root(args.data_root, args.skip_missing)
        if status is not None:
            return status
    only = [s.strip().zfill(2) for s in args.only.split(",") if s.strip()]
    record = run_record(
        args.profile, args.data_root, list(argv if argv is not None else sys.argv[1:])
    )
    mach = record["machine"]
    print(
        f"reproduce: profile={args.profile} data_root={args.data_root or 'synthetic'} | "
        f"{mach['cpu_count']} cores, {mach['torch_threads']} threads, "
        f"{mach['matmul_gflops_fp32']} GFLOP/s fp32 matmul, load {mach['loadavg_1min_at_start']}"
    )
    t0 = time.perf_counter()
    try:
        done = reproduce(args.profile, args.data_root, only, timeout=args.timeout, record=record)
    except NotebookFailed as err:
        print(f"FAILED {err}", file=sys.stderr)
        return 1
    total = time.perf_counter() - t0
    target = runs_root(args.profile, args.data_root)
    print(
        f"reproduce: {len(done)} notebooks ran in {total / 60:.1f} min "
        f"-> {target.relative_to(repo_root())}/"
    )
    changed = changed_tracked_files([target])
    if changed:
        print(f"reproduce: rewrote {len(changed)} tracked files (git diff to review):")
        print(
            "\n".join(f"    {f}" for f in changed[:40]) + ("\n    ..." if len(changed) > 40 else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

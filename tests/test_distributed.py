"""A 2-process CPU run (gloo, via torchrun) matches itself across ranks and the 1-process run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, cwd=HERE, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_process_gloo_matches_single_process(tmp_path: Path) -> None:
    (tmp_path / "ddp").mkdir()
    (tmp_path / "single").mkdir()
    script = str(HERE / "dist_fit_script.py")
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(_free_port()),
            script,
            str(tmp_path / "ddp"),
            "4",
        ],
        tmp_path,
    )
    _run([sys.executable, script, str(tmp_path / "single"), "8"], tmp_path)

    r0 = torch.load(tmp_path / "ddp" / "rank0.pt")
    r1 = torch.load(tmp_path / "ddp" / "rank1.pt")
    single = torch.load(tmp_path / "single" / "rank0.pt")["state"]
    assert r0["backend"] == "gloo"
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), f"ranks differ in {k}"
        # same global batch (2 x 4 vs 1 x 8): equal up to float32 reduction order
        torch.testing.assert_close(v, single[k], rtol=1e-5, atol=1e-6)

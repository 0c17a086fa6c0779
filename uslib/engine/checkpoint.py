"""Atomic training checkpoints: write to a temporary folder, then rename.

Layout under ``<run_dir>/checkpoints/``::

    step_0000040/          # accelerate state (model, optimizer, scaler, RNG of every rank, sampler)
        trainer_state.json # step, epoch, history rows so far
    latest                 # text file naming the newest complete checkpoint folder

A save first fills ``step_XXXXXXX.tmp``; only when every file is written is it renamed to its final
name and ``latest`` replaced (``os.replace`` is atomic on POSIX). A crash at any point leaves the
previous checkpoint and ``latest`` untouched; leftover ``.tmp`` folders are ignored and cleaned.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

STATE_FILE = "trainer_state.json"
LATEST = "latest"


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_checkpoint(
    accelerator: Accelerator, ckpt_root: Path, step: int, state: dict[str, Any], keep: int = 2
) -> Path:
    """Save the full training state at ``step`` atomically; keep the newest ``keep`` folders.

    Must be called on every process (accelerate saves each rank's RNG state).

    Returns:
        The final checkpoint folder.
    """
    final = ckpt_root / f"step_{step:07d}"
    tmp = ckpt_root / f"step_{step:07d}.tmp"
    if accelerator.is_main_process:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=False)
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_text_atomic(ckpt_root / LATEST, final.name)
        done = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir() and p.suffix != ".tmp")
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint folder, or ``None`` when there is none."""
    pointer = ckpt_root / LATEST
    if not pointer.is_file():
        return None
    path = ckpt_root / pointer.read_text().strip()
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(
            f"checkpoint pointer {pointer} names {path}, which is missing or incomplete"
        )
    return path


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict[str, Any]:
    """Restore the accelerate state from ``path``; returns the trainer state dict."""
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text())

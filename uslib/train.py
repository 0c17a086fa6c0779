"""Command line: pretrain any registered method through the driver ``uslib.pretraining``.

    python -m uslib.train --method uscl --profile cpu [--data-root DIR] [key=value ...]

Overrides use the config's field names, dotted for sections (``optim.lr=1e-3``); values are
parsed as YAML scalars. The same command is the entry point for multi-GPU and multi-node runs::

    accelerate launch --num_processes 4 -m uslib.train --method uscl --profile paper ...
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_endpoint HOST:29500 -m uslib.train ...
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from accelerate import PartialState

from uslib import runs
from uslib.config import PROFILES
from uslib.methods import get_method, list_methods
from uslib.pretraining import pretrain


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "seed=3"]`` -> ``{"optim.lr": 0.001, "seed": 3}``.

    Raises:
        ValueError: an item without ``=`` (the item is named).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not of the form key=value")
        out[key.strip()] = _parse_value(value)
    return out


def _parse_value(text: str) -> Any:
    """Numbers as numbers (``1e-3`` too, which YAML 1.1 reads as a string), else YAML."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def main(argv: Sequence[str] | None = None) -> Path:
    """Parse arguments and run the pretraining driver (``uslib.pretraining``); returns run dir."""
    parser = argparse.ArgumentParser(
        prog="python -m uslib.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--method", required=True, help=f"one of {list_methods()}")
    parser.add_argument("--profile", default="cpu", choices=PROFILES)
    parser.add_argument("--data-root", default=None, help="local dataset root (default: synthetic)")
    parser.add_argument(
        "--run-dir", default=None, help="default papermill_runs/<profile>/train_<m>"
    )
    parser.add_argument("--run-name", default=None, help="default train_<method>")
    parser.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)

    spec = get_method(args.method)
    overrides = parse_overrides(args.overrides)
    if args.data_root is not None:
        overrides["data.data_root"] = args.data_root
    cfg = spec.config_cls.preset(args.profile, **overrides)
    state = PartialState()
    run = runs.start(
        args.run_name or f"train_{args.method}",
        cfg if state.is_main_process else None,
        profile=args.profile,
        out_dir=args.run_dir,
        seed=cfg.seed,
        verbose=state.is_main_process,
    )
    pretrain(args.method, cfg, run, resume=not args.no_resume, progress=state.is_main_process)
    if state.is_main_process:
        run.finish()
    return run.dir


if __name__ == "__main__":
    main()

"""One cpu-preset lever: train a method preset with overrides, then notebook 07's linear probe.

``python -m benchmarks.levers_probe openus TAG '{"mask_ratio": 0.4}' [--out DIR]`` trains OpenUS's
``cpu`` preset with the overrides into ``DIR/TAG`` (default: the system temporary folder's
``uslib_levers/``; never the repository's run folders) and prints 07's cpu linear probe (lung,
breast, liver; 5 grouped folds) for the saved encoder and its random-init twin. Results of the
runs made with it: ``benchmarks/results/cpu_levers.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from uslib import pretraining, runs
from uslib.evaluation.benchmark import BenchmarkConfig, run_benchmark
from uslib.evaluation.discovery import discover_checkpoints
from uslib.methods import openus


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("method", choices=["openus"])
    ap.add_argument("tag", help="name of this variant (its folder under --out)")
    ap.add_argument("overrides", nargs="?", default="{}", help="JSON preset overrides")
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "uslib_levers"))
    args = ap.parse_args(argv)
    over = json.loads(args.overrides)
    root, t0 = Path(args.out) / args.tag, time.time()
    cfg = openus.OpenUSConfig.preset("cpu", **over)
    name = "03_openus_pretraining"
    out = root / "papermill_runs" / "cpu" / name
    run = runs.start(name, cfg, profile="cpu", out_dir=out, seed=0, verbose=False)
    h = pretraining.pretrain("openus", cfg, run, progress=False).history.to_frame()
    print(h[["step", "loss", "cls", "patch", "rec_global"]].iloc[[0, -1]].round(3).to_string())
    print(f"train {time.time() - t0:.0f} s", flush=True)
    b = dataclasses.replace(BenchmarkConfig.preset("cpu"), seg_tasks=(), finetune_tasks=(),
                            supervised_tasks=(), label_fractions=(1.0,))  # fmt: skip
    found = discover_checkpoints("cpu", root=root)
    df = run_benchmark(b, profile="cpu", found=found, root=root, log=lambda s: None).results
    df = df[(df.metric == "accuracy") & (df.protocol == "linear probe")]
    print(df[["task", "encoder", "value", "ci_low", "ci_high"]].round(3).to_string(index=False))


if __name__ == "__main__":
    main()

"""Is the synthetic data learnable? A supervised ResNet-18 from scratch on ~1.2k synthetic images.

Issue target (data acceptance): lung and breast 3-class accuracy between 70 % and 95 % (hard
enough to leave room for pretraining, easy enough to be learnable). Trains through
``uslib.evaluation.finetune_classifier(mode="full")`` (i.e. ``engine.fit``) and writes
``benchmarks/results/learnability.json``. About 5-10 minutes per task on one core.

    python benchmarks/bench_learnability.py [--tasks lung,breast] [--img-size 64] [--n 400]
        [--epochs 20] [--set p_atypical=0.1 ...]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import yaml

from uslib.config import EvalConfig, OptimConfig
from uslib.data.synthetic import SyntheticConfig, SyntheticStills
from uslib.evaluation.finetune import finetune_classifier
from uslib.models import create_backbone

OUT = Path(
    os.environ.get("LEARN_OUT", Path(__file__).resolve().parent / "results" / "learnability.json")
)


def run_task(
    task: str, img_size: int, n_per_class: int, epochs: int, threads: int, knobs: dict
) -> dict:
    """Train ResNet-18 from scratch on ``n_per_class`` images per class; score 100/class."""
    cfg = SyntheticConfig(img_size=img_size, **knobs)
    train = SyntheticStills(task, "train", n_per_class=n_per_class, cfg=cfg, seed=0)
    test = SyntheticStills(task, "test", n_per_class=100, cfg=cfg, seed=0)
    optim = OptimConfig(
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.05,
        epochs=epochs,
        batch_size=32,
        warmup_epochs=1,
        drop_last=True,
    )
    t0 = time.perf_counter()
    res = finetune_classifier(
        create_backbone("resnet18"),
        train,
        test,
        EvalConfig(epochs=epochs, batch_size=32),
        num_classes=3,
        mode="full",
        select="test",
        optim=optim,
    )
    curve = res.history["test_acc"].round(4).tolist()
    return {
        "task": task,
        "img_size": img_size,
        "knobs": {k: getattr(cfg, k) for k in knobs},
        "n_train": len(train),
        "n_test": len(test),
        "epochs": epochs,
        "last_epoch_acc": curve[-1],
        "best_epoch_acc": max(curve),
        "test_acc_per_epoch": curve,
        "confusion_best_epoch": res.confusion.tolist(),  # rows = true class
        "seconds": round(time.perf_counter() - t0, 1),
        "threads": threads,
        "load_avg_1min": os.getloadavg()[0],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="lung,breast")
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--n", type=int, default=400, help="training images per class")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], help="SyntheticConfig knobs, key=value (YAML)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    knobs = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    for task in args.tasks.split(","):
        row = run_task(task, args.img_size, args.n, args.epochs, args.threads, knobs)
        print(json.dumps(row), flush=True)
        _store(row)


def _store(row: dict) -> None:
    """Add ``row`` to the JSON, replacing an earlier row of the same task and image size (the
    tasks and sizes can run as separate processes side by side)."""
    old = json.loads(OUT.read_text())["results"] if OUT.is_file() else []
    same = lambda r: (r["task"], r["img_size"]) == (row["task"], row["img_size"])  # noqa: E731
    rows = sorted([r for r in old if not same(r)] + [row], key=lambda r: (r["img_size"], r["task"]))
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"target": [0.70, 0.95], "results": rows}, indent=2))


if __name__ == "__main__":
    main()

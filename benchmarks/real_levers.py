"""Levers on real data (issue 16, item 3): what makes pretraining beat random init on POCUS/HC18.

``python -m benchmarks.real_levers [--data-root ../shared/data] [--runs ROOT] [--out DIR]
[--only ARM ...]`` evaluates each arm below with notebook 07's own protocols
(``uslib.evaluation.benchmark.run_benchmark``) against a random-init twin of the same backbone at
the same image size, and writes ``benchmarks/results/real_levers.{json,md}``:

* POCUS: linear probe and kNN on frozen features, the shipped patient-grouped 5 folds, the
  patient-clustered bootstrap 95 % CI of the pooled out-of-fold accuracy;
* HC18: frozen encoder + ``SegDecoder``, 2 folds, Dice with its bootstrap 95 % CI;
* "separates" = the encoder's CI lies wholly above (▲) or below (▼) the random twin's.

Arms (the levers the issue names; each changes one thing from the committed real-track run):

* ``eval_cap400`` / ``eval_all``: the committed real-track encoders (``--runs``: a repository
  root holding ``papermill_runs/cpu_real`` and ``papermill_runs/cpu`` with their checkpoints,
  which are not committed) on a 400-item POCUS cap (533 frames of 12 patients; 07's setting
  until e0a4339) vs all 2,110 frames (73 patients; 07's setting since);
* ``uscl_len20``: USCL's cpu preset pretrained 20 epochs (pretraining length; the preset had 60
  epochs when the committed table was measured, 30 since e0a4339);
* ``uscl_mix``: USCL on the POCUS clips plus 100 synthetic lung videos, 30 epochs (synthetic +
  real mix);
* ``uscl_128``: USCL at 128 px (20 epochs), evaluated at 128 px against random init at 128 px;
* ``openus_allframes``: OpenUS's cpu preset on every POCUS frame instead of 8 per clip;
* ``ft_lr``: partial fine-tuning (07's protocol, all frames, 2 folds, 8 epochs) of the committed
  real USCL encoder and of random init at lr 1e-2 (§B.8), 1e-3 (cpu preset) and 1e-4; accuracy of
  the last epoch and of the validation-selected epoch (20 % of the training folds), no CI (two
  folds).

Pretraining of the new arms goes into ``--out`` (default: a temporary folder), never into the
repository's run folders.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from uslib import pretraining, runs
from uslib.config import CPU_FRAMES_PER_CLIP
from uslib.data.synthetic import SyntheticVideos
from uslib.evaluation import protocols
from uslib.evaluation.benchmark import BenchmarkConfig, build_tasks, run_benchmark
from uslib.evaluation.discovery import SYNTHETIC_PREFIX, discover_checkpoints, reference_encoders
from uslib.methods import openus, uscl
from uslib.methods.base import TrainData

RESULTS = Path(__file__).resolve().parent / "results"
ARMS = ("eval_cap400", "eval_all", "uscl_len20", "uscl_mix", "uscl_128", "openus_allframes",
        "ft_lr")  # fmt: skip
SKIP_ALL = ("04_mae_teacher",)  # ViT-L at 2,110 frames: ~10 min of features alone on 2 cores


def eval_config(img_size: int = 64, max_items: int = 0) -> BenchmarkConfig:
    """07's cpu real-track settings cut to the compared numbers: linear probe, kNN, HC18 Dice."""
    return dataclasses.replace(
        BenchmarkConfig.preset("cpu").real_only(), label_fractions=(1.0,),
        seg_label_fractions=(1.0,), real_max_items=max_items, img_size=img_size,
    )  # fmt: skip


def _mix_data(cfg: uscl.USCLConfig, n_synthetic: int) -> TrainData:
    """USCL's real training videos plus ``n_synthetic`` synthetic lung videos; real val only."""
    d = cfg.data
    syn = SyntheticVideos("lung", "train", n_synthetic, d.frames_per_video, d, d.seed)
    return uscl.train_data(cfg, extra_videos={"synthetic:lung": syn})


def _pretrain(method: str, cfg: Any, root: Path, data_root: str, data: Any = None) -> float:
    name = {"uscl": "02_uscl_sample_pairs", "openus": "03_openus_pretraining"}[method]
    out = root / "papermill_runs" / "cpu_real" / name
    t0 = time.time()
    run = runs.start(name, cfg, profile="cpu", out_dir=out, seed=0, verbose=False,
                     data_root=data_root)  # fmt: skip
    pretraining.pretrain(method, cfg, run, data=data, progress=False)
    return time.time() - t0


def _rows(df: pd.DataFrame, arm: str, lever: str, setting: str, seconds: float) -> list[dict]:
    """One row per pretrained encoder: its numbers beside its random twin's."""
    want = {
        ("pocus", "linear probe", "accuracy"): "pocus_probe",
        ("pocus", "kNN", "accuracy"): "pocus_knn",
        ("hc18", None, "dice"): "hc18_dice",
    }
    df = df[df.label_fraction.fillna(1.0) == 1.0]
    out = []
    for enc, g in df[df.source == "pretrained"].groupby("encoder", sort=False):
        twin = df[(df.source == "random") & (df.backbone == g.backbone.iloc[0])]
        rnd = twin.encoder.iloc[0] if len(twin) else "random:?"
        row: dict[str, Any] = {"arm": arm, "lever": lever, "setting": setting, "encoder": enc,
                               "random": rnd, "seconds": round(seconds, 1)}  # fmt: skip
        for (task, proto, metric), key in want.items():
            sel = (df.task == task) & (df.metric == metric)
            if proto is not None:
                sel &= df.protocol == proto
            ours, base = df[sel & (df.encoder == enc)], df[sel & (df.encoder == rnd)]
            if ours.empty or base.empty:
                continue
            o, b = ours.iloc[0], base.iloc[0]
            row[key] = [round(float(o.value), 4), round(float(o.ci_low), 4),
                        round(float(o.ci_high), 4)]  # fmt: skip
            row[key + "_random"] = [round(float(b.value), 4), round(float(b.ci_low), 4),
                                    round(float(b.ci_high), 4)]  # fmt: skip
            row[key + "_n_test"] = int(o.n_test)
            row[key + "_sep"] = ("▲" if o.ci_low > b.ci_high else
                                 "▼" if o.ci_high < b.ci_low else "≈")  # fmt: skip
        out.append(row)
    return out


def _evaluate(entries: list, cfg: BenchmarkConfig, data_root: str, tasks: tuple[str, ...],
              cache: Path) -> pd.DataFrame:  # fmt: skip
    ts = [t for t in build_tasks(cfg, data_root) if t.name in tasks]
    return run_benchmark(
        cfg,
        profile="cpu",
        data_root=data_root,
        tasks=ts,
        found=entries,
        cache_dir=cache,
        log=lambda s: print("   ", s, flush=True),
    ).results


def _ft_lr(runs_root: Path, data_root: str) -> list[dict]:
    entry = next(e for e in discover_checkpoints("cpu", root=runs_root, data_root=data_root)
                 if e.name == "02_uscl_sample_pairs")  # fmt: skip
    cfg = eval_config()
    task = next(t for t in build_tasks(cfg, data_root) if t.name == "pocus")
    out = []
    for lr in (1e-2, 1e-3, 1e-4):
        ft = dataclasses.replace(cfg.finetune, lr=lr)
        for e in [entry, *reference_encoders([entry], supervised=False)]:
            t0 = time.time()
            rows, ex = protocols.partial_ft_protocol(
                e.build(0, img_size=cfg.img_size), task, entry=e, profile="cpu", cfg=ft,
                n_folds=2, selects=("val",),
            )  # fmt: skip
            pf = ex["per_fold"]
            n = int(pf["n_test"].sum())
            out.append({"arm": "ft_lr", "lever": "fine-tuning lr", "setting": f"lr {lr:g}",
                        "encoder": e.name, "n_test": n,
                        "val_selected": round(float((pf.accuracy * pf.n_test).sum() / n), 4),
                        "last_epoch": round(float((pf.last_accuracy * pf.n_test).sum() / n), 4),
                        "seconds": round(time.time() - t0, 1)})  # fmt: skip
            print("   ", out[-1], flush=True)
    return out


def run_arm(arm: str, runs_root: Path, data_root: str, work: Path) -> list[dict]:
    """Train (if needed) and evaluate one arm; rows for the table."""
    cache = work / "features"
    if arm in ("eval_cap400", "eval_all"):
        found = discover_checkpoints("cpu", root=runs_root, data_root=data_root)
        found += discover_checkpoints("cpu", root=runs_root, name_prefix=SYNTHETIC_PREFIX)
        if arm == "eval_cap400":
            found = [e for e in found if e.name == "02_uscl_sample_pairs"]
        found = [e for e in found if e.name.removeprefix(SYNTHETIC_PREFIX) not in SKIP_ALL]
        if not found:
            raise FileNotFoundError(f"no checkpoints under {runs_root}/papermill_runs/cpu_real")
        cap = 400 if arm == "eval_cap400" else 0
        t0 = time.time()
        df = _evaluate(found, eval_config(max_items=cap), data_root, ("pocus",), cache)
        setting = ("a 400-item cap (533 frames, 12 patients; 07's former setting)" if cap
                   else "all 2,110 frames (73 patients)")  # fmt: skip
        return _rows(df, arm, "evaluation set", setting, time.time() - t0)
    if arm == "ft_lr":
        return _ft_lr(runs_root, data_root)
    root = work / arm
    if arm.startswith("uscl"):
        over: dict[str, Any] = {"data.data_root": data_root}
        over.update({"uscl_len20": {"optim.epochs": 20}, "uscl_mix": {"optim.epochs": 30},
                     "uscl_128": {"optim.epochs": 20, "data.img_size": 128}}[arm])  # fmt: skip
        cfg = uscl.USCLConfig.preset("cpu", **over)
        data = _mix_data(cfg, 100) if arm == "uscl_mix" else None
        secs = _pretrain("uscl", cfg, root, data_root, data)
        preset_epochs = uscl.USCLConfig.preset("cpu").optim.epochs
        setting = {"uscl_len20": f"USCL 20 epochs ({preset_epochs} in the cpu preset)",
                   "uscl_mix": "USCL POCUS + 100 synthetic videos, 30 epochs",
                   "uscl_128": "USCL 128 px, 20 epochs"}[arm]  # fmt: skip
        lever = {"uscl_len20": "pretraining length", "uscl_mix": "synthetic + real mix",
                 "uscl_128": "image size"}[arm]  # fmt: skip
        size = cfg.data.img_size
    else:
        cfg = openus.OpenUSConfig.preset("cpu", **{"data.data_root": data_root,
                                                   "data.frames_per_clip": 10**6})  # fmt: skip
        secs = _pretrain("openus", cfg, root, data_root)
        setting = f"OpenUS on all frames ({CPU_FRAMES_PER_CLIP} per clip in the preset)"
        lever, size = "frames per clip", 64
    found = discover_checkpoints("cpu", root=root, data_root=data_root)
    t0 = time.time()
    df = _evaluate(found, eval_config(img_size=size), data_root, ("pocus", "hc18"), cache)
    rows = _rows(df, arm, lever, setting, secs + time.time() - t0)
    for r in rows:
        r["pretrain_s"] = round(secs, 1)
    return rows


def _cell(v: list[float] | None, sep: str = "") -> str:
    if not v or any(math.isnan(x) for x in v):
        return "–"
    return f"{100 * v[0]:.1f} [{100 * v[1]:.1f}, {100 * v[2]:.1f}]{(' ' + sep) if sep else ''}"


def markdown(rows: list[dict], header: dict[str, Any]) -> str:
    """The levers table: one line per (arm, encoder); then the fine-tuning lr lines."""
    lines = [
        f"Measured {header['date']} on {header['machine']} ({header['threads']} threads), commit "
        f"{header['commit']}, {header['minutes']:.1f} min in all.",
        "",
        "| lever | setting | encoder | POCUS probe vs random | POCUS kNN vs random "
        "| HC18 Dice vs random |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["arm"] == "ft_lr":
            continue
        keys = ("pocus_probe", "pocus_knn", "hc18_dice")
        cells = [f"{_cell(r.get(k), r.get(k + '_sep', ''))} vs {_cell(r.get(k + '_random'))}"
                 if r.get(k) else "–" for k in keys]  # fmt: skip
        lines.append(f"| {r['lever']} | {r['setting']} | {r['encoder']} | " + " | ".join(cells)
                     + " |")  # fmt: skip
    ft = [r for r in rows if r["arm"] == "ft_lr"]
    if ft:
        lines += ["", "| fine-tuning lr | encoder | val-selected epoch | last epoch | n test |",
                  "|---|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['setting']} | {r['encoder']} | {100 * r['val_selected']:.1f} | "
                  f"{100 * r['last_epoch']:.1f} | {r['n_test']} |" for r in ft]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--runs", default=".", help="repository root holding the committed runs' "
                    "checkpoints (papermill_runs/cpu_real, papermill_runs/cpu)")  # fmt: skip
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "uslib_real_levers"))
    ap.add_argument("--only", nargs="*", choices=ARMS, default=list(ARMS))
    ap.add_argument("--results", default=str(RESULTS / "real_levers"))
    args = ap.parse_args(argv)
    import platform
    import subprocess

    import torch

    t0, work, rows = time.time(), Path(args.out), []
    dest = Path(args.results)
    if dest.with_suffix(".json").is_file():  # keep the arms not rerun
        rows = [r for r in json.loads(dest.with_suffix(".json").read_text())["rows"]
                if r["arm"] not in args.only]  # fmt: skip
    for arm in args.only:
        print(f"== {arm}", flush=True)
        rows += run_arm(arm, Path(args.runs), args.data_root, work)
        rows.sort(key=lambda r: ARMS.index(r["arm"]))
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip()  # fmt: skip
        header = {"date": time.strftime("%Y-%m-%d"), "machine": platform.node() or "this machine",
                  "threads": torch.get_num_threads(), "commit": sha,
                  "minutes": (time.time() - t0) / 60, "data_root": args.data_root}  # fmt: skip
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.with_suffix(".json").write_text(json.dumps({"header": header, "rows": rows},
                                                        indent=1, ensure_ascii=False))  # fmt: skip
        dest.with_suffix(".md").write_text(markdown(rows, header))
    print(dest.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()

"""``run_benchmark``: notebook 07 in one call (every encoder x every task x every protocol).

Encoders: every pretrained checkpoint of the profile (``discovery.discover_checkpoints``), a
random-init baseline of each architecture, and a supervised reference (full fine-tuning from random
init). Tasks: synthetic lung / breast / liver classification, breast-lesion and fetal-head
segmentation, plus POCUS and HC18 when ``data_root`` holds them. Protocols: ``protocols``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import torch
from torch import nn

from uslib.config import ConfigBase, EvalConfig
from uslib.evaluation import protocols
from uslib.evaluation.cost import cost_table
from uslib.evaluation.discovery import EncoderEntry, discover_checkpoints, reference_encoders
from uslib.evaluation.features import extract_features, file_fingerprint
from uslib.evaluation.report import results_frame
from uslib.evaluation.tasks import EvalTask, real_tasks, synthetic_task


@dataclass(frozen=True)
class BenchmarkConfig(ConfigBase):
    """Settings of notebook 07 (defaults = smoke: tiny data, one epoch, two folds).

    ``finetune`` is USCL's partial fine-tuning (paper: Adam lr 0.01, wd 1e-4, 100 epochs, batch
    32, 5 folds; notes §B.8), ``seg`` the frozen-encoder decoder training (paper: Adam 1e-3, 100
    epochs, batch 16; OpenUS §1.5), ``supervised`` full fine-tuning from random init (paper:
    TinyUSFM's AdamW 1e-4, batch 8, 400 epochs; §2.4).
    """

    img_size: int = 32  # image side of every task
    n_per_class: int = 6  # synthetic items per class (classification pools)
    n_per_class_seg: int = 8  # synthetic items per class before keeping non-empty masks
    cls_tasks: tuple[str, ...] = ("lung",)  # smoke: one task per code path
    seg_tasks: tuple[str, ...] = ("fetal_head",)
    folds: int = 2  # grouped folds of every pool
    ft_folds: int = 1  # folds actually fine-tuned (costly)
    sup_folds: int = 1  # folds of the supervised reference (costliest: full fine-tuning)
    seg_folds: int = 1  # folds actually segmented (costly)
    label_fractions: tuple[float, ...] = (0.25, 1.0)
    seg_label_fractions: tuple[float, ...] = (1.0,)
    knn_k: int = 10
    bootstrap: int = 200
    finetune_tasks: tuple[str, ...] = ("lung",)
    finetune_augment: bool = False  # USCL's crop + flip in partial FT (notebook 02 uses it)
    supervised_tasks: tuple[str, ...] = ("lung",)
    finetune: EvalConfig = field(
        default_factory=lambda: EvalConfig(epochs=1, lr=1e-2, weight_decay=1e-4, batch_size=16)
    )
    seg: EvalConfig = field(default_factory=lambda: EvalConfig(epochs=1, batch_size=16))
    supervised: EvalConfig = field(
        default_factory=lambda: EvalConfig(epochs=1, lr=1e-3, weight_decay=0.0, batch_size=16)
    )
    real_max_items: int = 60  # cap per real set (whole patients); 0 = no cap
    real_folds: int = 2  # shipped folds used on real sets (5 = all)
    fallback_backbones: tuple[str, ...] = ("resnet18_smoke",)  # when no checkpoint exists
    cost_img_size: int = 224  # GFLOPs reported at this size (the papers' 224²)
    seed: int = 0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu": {
            "cls_tasks": ("lung", "breast", "liver"), "seg_tasks": ("breast", "fetal_head"),
            "img_size": 64, "n_per_class": 100, "n_per_class_seg": 60, "folds": 5,
            "ft_folds": 2, "seg_folds": 2, "label_fractions": (0.01, 0.05, 0.1, 0.25, 1.0),
            "seg_label_fractions": (0.25, 1.0), "knn_k": 20, "bootstrap": 1000,
            # finetune lr 1e-3, not §B.8's 0.01: at 8 epochs 0.01 wipes out the pretrained last
            # block (measured in notebook 02's protocol; see USCLConfig's cpu preset)
            "finetune": {"epochs": 8, "batch_size": 32, "lr": 1e-3},
            # seg 25 epochs, not 40: notebook 07 took 12.4 min at 40 (budget ~10; dfd620f)
            "seg": {"epochs": 25, "batch_size": 8},
            "supervised": {"epochs": 10, "batch_size": 16, "lr": 1e-3}, "sup_folds": 1,
            # every real item: the former 400-item cap kept 533 POCUS frames of 12 patients and
            # probe CIs ~60 points wide; all 2,110 (73 patients): ~20 (benchmarks/results/
            # real_levers.md)
            "real_max_items": 0, "real_folds": 5,
        },
        "paper": {
            "cls_tasks": ("lung", "breast", "liver"), "seg_tasks": ("breast", "fetal_head"),
            "img_size": 224, "n_per_class": 200, "n_per_class_seg": 200, "folds": 5,
            "ft_folds": 5, "sup_folds": 5, "seg_folds": 5,
            "label_fractions": (0.01, 0.05, 0.1, 0.25, 1.0),
            "seg_label_fractions": (0.2, 0.4, 0.6, 0.8, 1.0), "knn_k": 20, "bootstrap": 2000,
            "finetune": {"epochs": 100, "batch_size": 32, "lr": 1e-2, "weight_decay": 1e-4},
            "seg": {"epochs": 100, "batch_size": 16},
            "supervised": {"epochs": 400, "batch_size": 8, "lr": 1e-4, "weight_decay": 0.0},
            "supervised_tasks": ("lung", "breast", "liver", "pocus"),
            "finetune_tasks": ("lung", "pocus"), "real_max_items": 0, "real_folds": 5,
        },
    }  # fmt: skip

    def real_only(self) -> BenchmarkConfig:
        """The real-data track's settings (issue 16): the real tasks alone (the synthetic ones
        are scored by the synthetic run), frozen-encoder protocols only (POCUS linear probe and
        kNN, HC18 SegDecoder).

        Partial fine-tuning and the supervised reference are left to the synthetic track and, on
        POCUS, to notebook 02's protocol: the cpu preset scores every POCUS frame
        (``real_max_items`` 0), whose 4x larger folds would make fine-tuning the 22 encoders the
        longest step of the track, while the frozen protocols cost a few seconds each.
        """
        return self.replace(cls_tasks=(), seg_tasks=(), finetune_tasks=(), supervised_tasks=())


@dataclass
class BenchmarkResult:
    """Everything notebook 07 shows and saves.

    Attributes:
        results: long results table (``report.RESULT_COLUMNS``).
        cost: params / GFLOPs / images per second per architecture.
        encoders: the evaluated encoder entries.
        tasks: ``[(key, data, n_items, n_folds)]`` of the evaluated tasks.
        extras: per (encoder, task key): ``confusion`` matrices and segmentation ``overlay``
            arrays.
        notes: human-readable remarks (fallbacks, missing data).
        seconds: wall time per stage.
    """

    results: pd.DataFrame
    cost: pd.DataFrame
    encoders: list[EncoderEntry]
    tasks: list[tuple[str, str, int, int]]
    extras: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def build_tasks(cfg: BenchmarkConfig, data_root: str | Path | None = None) -> list[EvalTask]:
    """Synthetic tasks of ``cfg`` plus the real ones found under ``data_root``."""
    tasks = [
        synthetic_task(
            t,
            "classification",
            n_per_class=cfg.n_per_class,
            img_size=cfg.img_size,
            folds=cfg.folds,
            seed=cfg.seed,
        )
        for t in cfg.cls_tasks
    ]
    tasks += [
        synthetic_task(
            t,
            "segmentation",
            n_per_class=cfg.n_per_class_seg,
            img_size=cfg.img_size,
            folds=cfg.folds,
            seed=cfg.seed,
        )
        for t in cfg.seg_tasks
    ]
    if data_root is not None:
        tasks += real_tasks(
            data_root,
            img_size=cfg.img_size,
            max_items=cfg.real_max_items or None,
            seed=cfg.seed,
            max_folds=cfg.real_folds,
        )
    return tasks


def _checkpoint_id(entry: EncoderEntry, seed: int) -> str:
    if entry.spec_path is not None:
        return file_fingerprint(entry.spec_path.parent / "encoder.safetensors")
    return f"{entry.source}:{entry.architecture}:seed{seed}"


def _evaluate_encoder(
    entry: EncoderEntry,
    tasks: list[EvalTask],
    cfg: BenchmarkConfig,
    profile: str,
    cache_dir: Path | None,
    extras: dict,
) -> list[dict]:
    """Every protocol of ``cfg`` for one encoder (features extracted once per task, cached)."""
    enc = entry.build(cfg.seed, img_size=cfg.img_size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows: list[dict] = []
    kw = {"entry": entry, "profile": profile, "seed": cfg.seed, "n_boot": cfg.bootstrap}
    for task in tasks:
        if task.kind == "classification":
            split_id = f"{task.data}:n{len(task.records)}:s{cfg.img_size}:seed{cfg.seed}"
            ckpt = _checkpoint_id(entry, cfg.seed)
            feats = extract_features(enc, task.records, device=device, cache_dir=cache_dir,
                                     checkpoint_id=ckpt, split_id=split_id)  # fmt: skip
            r, ex = protocols.linear_probe_protocol(
                enc, task, features=feats, fractions=cfg.label_fractions, **kw
            )
            r += protocols.knn_protocol(enc, task, features=feats, k=cfg.knn_k, **kw)[0]
            if task.name in cfg.finetune_tasks:
                r += protocols.partial_ft_protocol(
                    enc, task, cfg=cfg.finetune, n_folds=cfg.ft_folds, augment=cfg.finetune_augment,
                    entry=entry, profile=profile, seed=cfg.seed,
                )[0]  # fmt: skip
        else:
            r, ex = protocols.segmentation_protocol(
                enc, task, cfg=cfg.seg, n_folds=cfg.seg_folds, fractions=cfg.seg_label_fractions,
                **kw,
            )  # fmt: skip
        rows += r
        extras[(entry.name, task.key)] = ex
    return rows


def _evaluate_supervised(
    entry: EncoderEntry, tasks: list[EvalTask], cfg: BenchmarkConfig, profile: str
) -> list[dict]:
    rows: list[dict] = []
    for task in tasks:
        if task.name in cfg.supervised_tasks and task.kind == "classification":
            rows += protocols.supervised_protocol(
                nn.Identity(), task, entry=entry, profile=profile, seed=cfg.seed,
                cfg=cfg.supervised, n_folds=cfg.sup_folds,
            )[0]  # fmt: skip
    return rows


def _cost(baselines: list[EncoderEntry], cfg: BenchmarkConfig) -> pd.DataFrame:
    """Cost rows of one random-init encoder per architecture."""
    archs = {e.architecture: e for e in baselines}
    return cost_table(
        {a: e.build(cfg.seed, img_size=cfg.img_size) for a, e in archs.items()},
        cfg.img_size,
        flops_img_size=cfg.cost_img_size,
    )


def run_benchmark(
    cfg: BenchmarkConfig,
    *,
    profile: str,
    data_root: str | Path | None = None,
    tasks: list[EvalTask] | None = None,
    found: list[EncoderEntry] | None = None,
    root: str | Path | None = None,
    cache_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> BenchmarkResult:
    """Evaluate every encoder of ``profile`` on every task with every protocol.

    Args:
        cfg: benchmark settings (``BenchmarkConfig.preset(profile)``).
        profile: whose run folders to search for checkpoints (and the label of every row).
        data_root: folder holding real layouts (POCUS, HC18); None = synthetic only.
        tasks: prebuilt tasks (default ``build_tasks(cfg, data_root)``).
        found: pretrained entries (default ``discover_checkpoints(profile, root=root)``).
        root: repository root holding ``papermill_runs/`` (default: this repository).
        cache_dir: feature cache folder (None: no cache).
        log: progress printer (one line per encoder).

    Returns:
        ``BenchmarkResult``.
    """
    t0 = time.perf_counter()
    found = discover_checkpoints(profile, root=root) if found is None else found
    notes = []
    if not found:
        notes.append(
            f"no pretrained checkpoint under papermill_runs/{profile}/*/checkpoints/: "
            f"evaluating random-init baselines of {list(cfg.fallback_backbones)} only"
        )
    refs = reference_encoders(
        found,
        extra_backbones=() if found else cfg.fallback_backbones,
        supervised=bool(cfg.supervised_tasks),
    )
    tasks = build_tasks(cfg, data_root) if tasks is None else tasks
    seconds = {"data": time.perf_counter() - t0}
    rows, extras = [], {}
    cache = Path(cache_dir) if cache_dir is not None else None
    baselines = [r for r in refs if r.source == "random"]
    for entry in [*found, *baselines, *(r for r in refs if r.source == "supervised")]:
        t1 = time.perf_counter()
        if entry.source == "supervised":
            rows += _evaluate_supervised(entry, tasks, cfg, profile)
        else:
            rows += _evaluate_encoder(entry, tasks, cfg, profile, cache, extras)
        seconds[entry.name] = time.perf_counter() - t1
        log(f"{entry.name}: {seconds[entry.name]:.0f} s")
    cost = _cost(baselines, cfg)
    seconds["total"] = time.perf_counter() - t0
    return BenchmarkResult(
        results=results_frame(rows),
        cost=cost,
        encoders=[*found, *refs],
        tasks=[(t.key, t.data, len(t.records), len(t.folds)) for t in tasks],
        extras=extras,
        notes=notes,
        seconds=seconds,
    )

"""Which encoders notebook 07 evaluates: every pretrained checkpoint of a profile's run folders,
plus a random-init baseline and a supervised reference for each architecture.

Checkpoints are found, never listed by hand: ``papermill_runs/<profile>/*/checkpoints/
encoder.safetensors`` next to ``encoder.yaml`` (written by ``uslib.runs.Run.save_encoder``; it names
the backbone and its constructor kwargs). The run's ``config.yaml`` says what data the encoder was
pretrained on, which feeds the contamination flag of the tables.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from uslib.models.adapter import adapt_encoder
from uslib.paths import run_set
from uslib.runs import ENCODER_SPEC, ENCODER_WEIGHTS, load_encoder, read_encoder_spec, repo_root

SOURCES: tuple[str, ...] = ("pretrained", "random", "supervised")


@dataclass(frozen=True)
class EncoderEntry:
    """One encoder to evaluate.

    Attributes:
        name: display name (run folder name for checkpoints, ``random:<backbone>`` or
            ``supervised:<backbone>`` for references).
        backbone: registry name for ``uslib.models.create_backbone``.
        kwargs: constructor kwargs.
        source: ``"pretrained"``, ``"random"`` (random init, frozen: the lower reference) or
            ``"supervised"`` (same architecture trained with labels by full fine-tuning from
            random init: the upper reference).
        method: pretraining method name (``""`` for references).
        spec_path: ``encoder.yaml`` of a checkpoint (None for references).
        pretrain_data: datasets seen in pretraining, e.g. ``("synthetic:lung",)`` or
            ``("real:pocus",)``.
        input_norm: ``(mean, std)`` applied to [0, 1] images before the encoder, as in its
            pretraining (``encoder.yaml`` key ``input_norm``); references of the same
            architecture inherit it so that comparisons share the input.
    """

    name: str
    backbone: str
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    source: str = "pretrained"
    method: str = ""
    spec_path: Path | None = None
    pretrain_data: tuple[str, ...] = ()
    input_norm: tuple[float, float] | None = None

    def build(self, seed: int = 0, img_size: int | None = None) -> nn.Module:
        """The encoder: checkpoint weights for ``pretrained``, seeded random init otherwise.

        Args:
            seed: seed of a random initialisation.
            img_size: evaluation image side; an encoder fixed to another size gets its inputs
                resized (``adapt_encoder``), and ``input_norm`` is applied either way.
        """
        from uslib.models import create_backbone

        if self.source == "pretrained":
            if self.spec_path is None:
                raise ValueError(f"pretrained entry {self.name!r} has no spec_path")
            enc = load_encoder(self.spec_path, raw=True)[0]
        else:
            torch.manual_seed(seed)
            enc = create_backbone(self.backbone, **self.kwargs)
        return adapt_encoder(enc, img_size, self.input_norm)

    @property
    def architecture(self) -> str:
        """Backbone name plus kwargs, the key shared by an encoder and its references."""
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.kwargs.items()))
        return f"{self.backbone}({extra})" if extra else self.backbone


def _norm(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    if isinstance(value, list | tuple) and len(value) == 2:
        return float(value[0]), float(value[1])
    raise ValueError(f"input_norm must be [mean, std], got {value!r}")


def _pretrain_data(spec: dict[str, Any], run_dir: Path) -> tuple[str, ...]:
    """Datasets of the pretraining run, from the spec or the run's ``config.yaml``."""
    for key in ("pretrain_data", "datasets", "dataset"):
        if spec.get(key):
            v = spec[key]
            return tuple(v) if isinstance(v, list | tuple) else (str(v),)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        return ()
    data = (yaml.safe_load(cfg_path.read_text()) or {}).get("data") or {}
    task = str(data.get("task", ""))
    if not task:
        return ()
    return (f"real:{task}",) if data.get("data_root") else (f"synthetic:{task}",)


def discover_checkpoints(
    profile: str,
    *,
    root: str | Path | None = None,
    data_root: str | Path | None = None,
    name_prefix: str = "",
) -> list[EncoderEntry]:
    """Every pretrained encoder saved under ``<root>/papermill_runs/<run set>/*/checkpoints/``.

    Args:
        profile: ``smoke`` / ``cpu`` / ``paper``.
        root: repository root (default ``uslib.runs.repo_root()``).
        data_root: given: the real-data run set (``<profile>_real``, ``paths.run_set``).
        name_prefix: put before each run name (e.g. ``"synthetic:"`` for the synthetic
            encoders that the real-data track evaluates beside its own).

    Returns:
        One ``EncoderEntry`` per run folder holding both ``encoder.safetensors`` and
        ``encoder.yaml``, sorted by run name.

    Raises:
        ValueError: an ``encoder.yaml`` without a ``backbone`` key (the file is named).
    """
    base = Path(root if root is not None else repo_root()) / "papermill_runs"
    base = base / run_set(profile, data_root)
    out = []
    for spec_path in sorted(base.glob(f"*/checkpoints/{ENCODER_SPEC}")):
        if not (spec_path.parent / ENCODER_WEIGHTS).is_file():
            continue
        spec = read_encoder_spec(spec_path)  # names the file and the missing field
        run_dir = spec_path.parent.parent
        out.append(
            EncoderEntry(
                name=f"{name_prefix}{run_dir.name}",
                backbone=str(spec["backbone"]),
                kwargs=dict(spec.get("kwargs") or {}),
                source="pretrained",
                method=str(spec.get("method", "")),
                spec_path=spec_path,
                pretrain_data=_pretrain_data(spec, run_dir),
                input_norm=_norm(spec.get("input_norm")),
            )
        )
    return out


SYNTHETIC_PREFIX = "synthetic:"
"""Name prefix of the synthetic run's encoders when the real-data track evaluates them."""


def track_encoders(
    profile: str, data_root: str | Path | None = None, *, root: str | Path | None = None
) -> list[EncoderEntry]:
    """The pretrained encoders notebook 07 evaluates: those of its run set; in the real-data
    track (``data_root`` given) also the synthetic run's, named ``synthetic:<run>`` (the
    synthetic-to-real rows, clean by construction: they never saw a real image)."""
    found = discover_checkpoints(profile, root=root, data_root=data_root)
    if data_root:
        found += discover_checkpoints(profile, root=root, name_prefix=SYNTHETIC_PREFIX)
    return found


def reference_encoders(
    entries: list[EncoderEntry], *, extra_backbones: tuple[str, ...] = (), supervised: bool = True
) -> list[EncoderEntry]:
    """A random-init baseline (and a supervised reference) per distinct architecture.

    Args:
        entries: discovered checkpoints (their architectures are covered).
        extra_backbones: further backbone names to cover (e.g. when no checkpoint exists yet).
        supervised: also add ``supervised:<backbone>`` entries.

    Returns:
        Reference entries, random ones first, in first-seen architecture order.
    """
    archs: dict[str, EncoderEntry] = {}
    for e in entries:
        archs.setdefault(e.architecture, e)
    for b in extra_backbones:
        archs.setdefault(b, EncoderEntry(name=b, backbone=b, kwargs={}))
    kinds = ("random", "supervised") if supervised else ("random",)
    return [
        EncoderEntry(
            name=f"{k}:{e.backbone}",
            backbone=e.backbone,
            kwargs=dict(e.kwargs),
            source=k,
            input_norm=e.input_norm,
        )
        for k in kinds
        for e in archs.values()
    ]


def contamination(entry: EncoderEntry, eval_data: str) -> str:
    """Why a metric of ``entry`` on ``eval_data`` may be optimistic (``""`` if it is clean).

    Args:
        entry: the evaluated encoder.
        eval_data: ``"synthetic:<task>"`` or ``"real:<dataset>"``.

    Returns:
        A short reason, e.g. ``"pretrained on real:pocus (self-supervised; labels unused)"``.

    Ref: OpenUS §1.4 (its pretraining corpus includes BUSI, BUS-BRA, TN3K, Fetal Planes).
    """
    if eval_data not in entry.pretrain_data:
        return ""
    if eval_data.startswith("synthetic:"):
        return f"pretrained on the same generator ({eval_data}; different samples)"
    return f"pretrained on {eval_data} (self-supervised; labels unused)"


def describe(entries: list[EncoderEntry]) -> str:
    """One line per entry (for notebook output)."""
    return "\n".join(
        json.dumps(
            {
                "name": e.name,
                "source": e.source,
                "backbone": e.architecture,
                "pretrain_data": list(e.pretrain_data),
            }
        )
        for e in entries
    )

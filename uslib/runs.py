"""Run folders: one per notebook (or CLI run) and profile, with config, provenance and results.

``papermill_runs/<profile>/<name>/`` holds ``config.yaml``, ``provenance.json`` (git sha and dirty
flag, package versions, seed, device, start and end time), ``metrics.json``, ``history.csv``,
``tables/`` (CSV + Markdown), ``figures/`` (PNG) and ``checkpoints/`` (not committed). Paths resolve
from the repository root, found once from the installed package, so a notebook behaves the same
under Jupyter, papermill ``--cwd`` and nbval.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import random
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from uslib.config import ConfigBase
from uslib.paths import repo_relative, repo_root, runs_root  # re-exported (home: uslib.paths)

_PACKAGES = ("torch", "torchvision", "timm", "accelerate", "datasets", "numpy", "uslib")
ENCODER_WEIGHTS = "encoder.safetensors"
ENCODER_SPEC = "encoder.yaml"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=repo_root(), capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def provenance(seed: int) -> dict[str, Any]:
    """Git sha and dirty flag, package versions, seed, device and host of this process."""
    versions = {}
    for pkg in _PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_sha": _git("rev-parse", "HEAD") or None,
        "git_dirty": bool(dirty),
        "packages": versions,
        "python": platform.python_version(),
        "seed": seed,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "host": platform.node(),
        "start": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


@dataclass
class Run:
    """A run folder and the helpers that write into it."""

    name: str
    profile: str
    dir: Path
    seed: int
    publish: bool = False

    def _sub(self, sub: str) -> Path:
        path = self.dir / sub
        path.mkdir(parents=True, exist_ok=True)
        return path

    def save_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Merge ``metrics`` into ``metrics.json`` (profile recorded); returns the merged dict.

        Wall-clock values (keys ending ``_s`` or naming ``wall``) are refused: they go to
        :meth:`save_timings`, so two runs of one config write byte-identical ``metrics.json``.
        """
        timed = [k for k in metrics if k.endswith("_s") or "wall" in k]
        if timed:
            raise ValueError(f"{timed} look like timings: use Run.save_timings, not save_metrics")
        path = self.dir / "metrics.json"
        merged = json.loads(path.read_text()) if path.is_file() else {}
        merged.update(metrics)
        merged["profile"] = self.profile
        path.write_text(json.dumps(merged, indent=2, default=float))
        return merged

    def save_timings(self, seconds: dict[str, float]) -> Path:
        """Write wall-clock timings to ``timings.json``, apart from ``metrics.json``.

        Timings differ from run to run; keeping them out of ``metrics.json`` lets two runs of
        the same config be compared byte for byte.
        """
        path = self.dir / "timings.json"
        merged = json.loads(path.read_text()) if path.is_file() else {}
        merged.update({k: round(float(v), 3) for k, v in seconds.items()})
        path.write_text(json.dumps(merged, indent=2))
        return path

    def save_table(self, df: Any, name: str) -> Path:
        """Write a DataFrame as ``tables/<name>.csv`` and ``.md``; returns the CSV path."""
        folder = self._sub("tables")
        df.to_csv(folder / f"{name}.csv", index=False)
        (folder / f"{name}.md").write_text(df.to_markdown(index=False) + "\n")
        return folder / f"{name}.csv"

    def save_figure(self, fig: Any, name: str, dpi: int = 110) -> Path:
        """Write a Figure as ``figures/<name>.png`` (and to ``<repo>/figures/`` when publishing)."""
        path = self._sub("figures") / f"{name}.png"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        if self.publish:
            prefix = self.name.split("_", 1)[0]
            published = repo_root() / "figures" / f"{prefix}_{name}.png"
            published.parent.mkdir(exist_ok=True)
            fig.savefig(published, dpi=dpi, bbox_inches="tight")
        return path

    def save_history(self, history: Any) -> Path:
        """Write a ``History`` (or DataFrame) as ``history.csv``."""
        df = history.to_frame() if hasattr(history, "to_frame") else history
        df.to_csv(self.dir / "history.csv", index=False)
        if getattr(history, "epochs", None):
            history.to_frame("epochs").to_csv(self.dir / "history_epochs.csv", index=False)
        return self.dir / "history.csv"

    def save_encoder(self, encoder: torch.nn.Module, spec: dict[str, Any]) -> Path:
        """Save an encoder for evaluation: ``checkpoints/encoder.safetensors`` + ``encoder.yaml``.

        Both files are written to temporary names and renamed (atomic), with mode 0644 like every
        other output.

        Args:
            encoder: the backbone module.
            spec: at least ``backbone`` (its registry name) and ``kwargs`` (constructor kwargs),
                so ``create_backbone(spec["backbone"], **spec["kwargs"])`` rebuilds it; the
                driver adds input normalisation, method, epoch and provenance
                (``uslib.pretraining.encoder_record``).
        """
        from safetensors.torch import save_file

        if "backbone" not in spec:
            raise ValueError(f"encoder spec needs a 'backbone' key, got {sorted(spec)}")
        folder = self._sub("checkpoints")
        state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
        tmp = folder / (ENCODER_WEIGHTS + ".tmp")
        save_file(state, str(tmp))
        text = yaml.safe_dump({**spec, "kwargs": dict(spec.get("kwargs") or {})}, sort_keys=False)
        tmp_spec = folder / (ENCODER_SPEC + ".tmp")
        tmp_spec.write_text(text)
        for t, final in ((tmp, ENCODER_WEIGHTS), (tmp_spec, ENCODER_SPEC)):
            os.chmod(t, 0o644)
            os.replace(t, folder / final)
        return folder / ENCODER_WEIGHTS

    def finish(self) -> None:
        """Record the end time in ``provenance.json``."""
        path = self.dir / "provenance.json"
        prov = json.loads(path.read_text()) if path.is_file() else {}
        prov["end"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        path.write_text(json.dumps(prov, indent=2))


def start(
    name: str,
    cfg: ConfigBase | None = None,
    *,
    profile: str = "smoke",
    out_dir: str | Path | None = None,
    seed: int = 0,
    publish: bool = False,
    verbose: bool = True,
    data_root: str | Path | None = None,
) -> Run:
    """Create (or reuse) the run folder, write config and provenance, seed everything.

    A reused folder starts with no ``metrics.json`` / ``timings.json`` (they merge within one
    run, and keys of an earlier run must not survive into this one); checkpoints, tables and
    figures stay until the run rewrites them (``fit`` may resume from the checkpoints).

    Args:
        name: run name, the notebook stem (``"02_uscl_sample_pairs"``).
        cfg: the resolved config, written to ``config.yaml``.
        profile: ``smoke`` / ``cpu`` / ``paper``.
        out_dir: explicit folder; default ``runs_root(profile, data_root) / name``
            (``papermill_runs/<profile>/<name>``, or ``<profile>_real`` with real data).
        seed: global seed.
        publish: also write figures to ``<repo>/figures/``.
        verbose: print the resolved config and a one-line environment summary.
        data_root: the real data the run reads (``None``: the synthetic default); picks the
            default run set.
    """
    folder = Path(out_dir) if out_dir is not None else runs_root(profile, data_root) / name
    if not folder.is_absolute():
        folder = repo_root() / folder
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.json", "timings.json"):
        (folder / stale).unlink(missing_ok=True)
    seed_everything(seed)
    prov = provenance(seed)
    (folder / "provenance.json").write_text(json.dumps(prov, indent=2))
    if cfg is not None:
        cfg.to_yaml(folder / "config.yaml")
    if verbose:
        sha = (prov["git_sha"] or "no-git")[:8] + ("+dirty" if prov["git_dirty"] else "")
        print(
            f"run {name} | profile {profile} | seed {seed} | {prov['device']} "
            f"x{prov['threads']} threads | torch {prov['packages']['torch']} | git {sha}"
        )
        print(f"run folder: {repo_relative(folder)}")
    return Run(name=name, profile=profile, dir=folder, seed=seed, publish=publish)


def find_runs(profile: str, pattern: str = "*", data_root: str | Path | None = None) -> list[Path]:
    """Run folders of ``profile`` (its real-data set when ``data_root`` is given) whose name
    matches ``pattern``, sorted."""
    root = runs_root(profile, data_root)
    return sorted(p for p in root.glob(pattern) if p.is_dir()) if root.is_dir() else []


def find_encoders(profile: str, data_root: str | Path | None = None) -> list[Path]:
    """Every ``checkpoints/encoder.yaml`` under the run set's folders (pretrained encoders)."""
    return sorted(
        p / "checkpoints" / ENCODER_SPEC
        for p in find_runs(profile, data_root=data_root)
        if (p / "checkpoints" / ENCODER_SPEC).is_file()
    )


def read_encoder_spec(spec_path: str | Path) -> dict[str, Any]:
    """Read and validate an ``encoder.yaml``; every failure names the file (and the field).

    Raises:
        FileNotFoundError: the spec is missing.
        ValueError: not YAML, not a mapping, no ``backbone``, or ``kwargs`` / ``input_norm`` of
            the wrong form.
    """
    spec_path = Path(spec_path)
    if not spec_path.is_file():
        raise FileNotFoundError(f"encoder spec not found: {spec_path}")
    try:
        spec = yaml.safe_load(spec_path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{spec_path}: not valid YAML ({err})") from err
    if not isinstance(spec, dict):
        raise ValueError(f"{spec_path}: expected a mapping with a 'backbone' field, got {spec!r}")
    if not isinstance(spec.get("backbone"), str) or not spec["backbone"]:
        raise ValueError(f"{spec_path}: missing field 'backbone' (the registry name to rebuild)")
    if not isinstance(spec.setdefault("kwargs", {}) or {}, dict):
        raise ValueError(f"{spec_path}: field 'kwargs' must be a mapping, got {spec['kwargs']!r}")
    spec["kwargs"] = spec["kwargs"] or {}
    norm = spec.get("input_norm")
    if norm is not None and not (isinstance(norm, list | tuple) and len(norm) == 2):
        raise ValueError(f"{spec_path}: field 'input_norm' must be [mean, std], got {norm!r}")
    return spec


def load_encoder(
    spec_path: str | Path, *, raw: bool = False
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild an encoder saved by ``Run.save_encoder``; returns ``(module, spec)``.

    By default the module takes images in [0, 1] and applies the spec's recorded
    ``input_norm`` itself (``uslib.models.adapter.EncoderAdapter``), so features extracted from
    it match notebook 07's. ``raw=True`` gives the bare backbone, which expects input already
    normalised (for loading weights into a method).

    Raises:
        FileNotFoundError: the spec or weights file is missing (the path is named).
        ValueError: an invalid spec (``read_encoder_spec``).
        uslib.models.checkpoints.CheckpointError: unreadable weights, or weights that do not fit
            the rebuilt backbone (the file and the keys are named).
    """
    from uslib.models import create_backbone
    from uslib.models.checkpoints import CheckpointError, read_state_dict

    spec_path = Path(spec_path)
    spec = read_encoder_spec(spec_path)
    weights = spec_path.parent / ENCODER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"encoder weights not found: {weights}")
    state = read_state_dict(weights)
    model = create_backbone(spec["backbone"], **spec["kwargs"])
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"{weights} does not fit {spec['backbone']}({spec['kwargs']}) from {spec_path}: {err}"
        ) from err
    if raw or spec.get("input_norm") is None:
        return model, spec
    from uslib.models.adapter import adapt_encoder

    return adapt_encoder(model, norm=tuple(spec["input_norm"])), spec

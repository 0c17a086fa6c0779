"""Typed, frozen configuration objects with per-profile presets.

One home per value: paper values live in a config class's ``PRESETS["paper"]`` (citing the paper
section), smoke values are the dataclass defaults, and notebooks or the CLI only pick a profile and
pass a few overrides. Overrides that are ``None`` are dropped (timm's rule), unknown keys are
rejected with the valid ones listed, and nested sub-configs are overridden with a dict or a
dotted key (``optim.lr=1e-3``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

PROFILES: tuple[str, ...] = ("smoke", "cpu", "paper")
"""The three profiles (ARCHITECTURE.md): CI/nbval, this 2-core box, a GPU box at paper scale."""

C = TypeVar("C", bound="ConfigBase")


class ConfigError(ValueError):
    """A configuration key or value that cannot be used."""


def _prune(d: Mapping[str, Any]) -> dict[str, Any]:
    """Drop ``None`` values, recursively through nested dicts."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if v is None:
            continue
        out[k] = _prune(v) if isinstance(v, Mapping) else v
    return out


def _nest(d: Mapping[str, Any]) -> dict[str, Any]:
    """Turn dotted keys (``"optim.lr"``) into nested dicts."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        head, _, rest = k.partition(".")
        if rest:
            out.setdefault(head, {})
            if not isinstance(out[head], dict):
                raise ConfigError(f"key {head!r} is given both as a value and as a section")
            out[head].update(_nest({rest: v}))
        else:
            out[k] = v
    return out


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Coerce YAML/CLI scalars to the annotated type (tuples from lists, ints to floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for a in args:
            try:
                return _coerce(a, value, key)
            except (TypeError, ValueError):
                continue
        raise ConfigError(f"{key}: cannot use {value!r} as {tp}")
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key) for v in value)
        return tuple(_coerce(a, v, key) for a, v in zip(args, value, strict=True))
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected a bool, got {value!r}")
    if tp in (int, float, str) and not isinstance(value, tp):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


@dataclass(frozen=True)
class ConfigBase:
    """Base of every config: presets, validated overrides, YAML round-trip.

    Subclasses are frozen dataclasses whose defaults are the *smoke* values, so a bare
    constructor is always cheap. ``PRESETS`` maps a profile to nested override dicts applied on
    top of the defaults.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def preset(cls: type[C], profile: str = "smoke", **overrides: Any) -> C:
        """The config of ``profile`` with ``overrides`` applied (``None`` values dropped).

        Args:
            profile: one of ``PROFILES``.
            **overrides: field values; nested sections as dicts or dotted keys.

        Raises:
            ConfigError: unknown profile or key (the message lists the valid ones).
        """
        if profile not in PROFILES:
            raise ConfigError(f"unknown profile {profile!r}; valid: {list(PROFILES)}")
        return cls().replace(**cls.PRESETS.get(profile, {})).replace(**overrides)

    def replace(self: C, **overrides: Any) -> C:
        """A copy with ``overrides`` applied; ``None`` values are dropped, unknown keys raise."""
        changes = _nest(_prune(overrides))
        hints = typing.get_type_hints(type(self))
        valid = {f.name: f for f in fields(self)}
        kwargs: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in valid:
                raise ConfigError(
                    f"unknown key {key!r} for {type(self).__name__}; valid keys: {sorted(valid)}"
                )
            current = getattr(self, key)
            if isinstance(current, ConfigBase):
                if isinstance(value, ConfigBase):
                    value = value.to_dict()
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{key} is a section; give a dict, got {value!r}")
                kwargs[key] = current.replace(**value)
            else:
                kwargs[key] = _coerce(hints[key], value, f"{type(self).__name__}.{key}")
        return dataclasses.replace(self, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists, for YAML)."""

        def conv(v: Any) -> Any:
            if isinstance(v, ConfigBase):
                return v.to_dict()
            if isinstance(v, tuple | list):
                return [conv(x) for x in v]
            return v

        return {f.name: conv(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        """Inverse of ``to_dict`` (unknown keys raise)."""
        return cls().replace(**d)

    def to_yaml(self, path: str | Path | None = None) -> str:
        """YAML text of the config; also written to ``path`` when given."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls: type[C], src: str | Path) -> C:
        """Read a config from a YAML file path or YAML text."""
        is_path = isinstance(src, Path) or ("\n" not in src and Path(src).is_file())
        text = Path(src).read_text() if is_path else str(src)
        return cls.from_dict(yaml.safe_load(text) or {})


@dataclass(frozen=True)
class OptimConfig(ConfigBase):
    """Optimisation and loop settings read by ``uslib.engine.fit``.

    ``epochs`` counts passes over the training set; ``max_steps`` (optimizer steps) overrides it
    when set. Schedules: linear warmup over ``warmup_epochs``, then ``hold_epochs`` at the peak
    (USCL's "10 constant epochs"), then cosine (or constant) decay to ``min_lr``.
    """

    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 1e-3
    min_lr: float = 0.0
    weight_decay: float = 0.05
    weight_decay_end: float | None = None  # cosine wd schedule end (DINO/iBOT); None: fixed
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9  # sgd only
    schedule: str = "cosine"  # cosine | constant
    warmup_epochs: float = 0.0
    hold_epochs: float = 0.0
    epochs: int = 2
    max_steps: int | None = None
    batch_size: int = 8
    accumulate_steps: int = 1
    grad_clip: float | None = None
    grad_clip_mode: str = "global"  # global (one norm) | per_parameter (DINO/iBOT clip_gradients)
    mixed_precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | no | bf16 | fp16
    compile: bool = False  # torch.compile the method (opt-in; falls back to eager on failure)
    num_workers: int = 0
    checkpoint_every: int = 0  # optimizer steps; 0 = only at the end
    log_every: int = 1
    drop_last: bool = True


@dataclass(frozen=True)
class EvalConfig(ConfigBase):
    """Downstream-evaluation protocol settings (``uslib.evaluation``)."""

    folds: int = 2
    epochs: int = 2
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 16
    label_fractions: tuple[float, ...] = (0.1, 1.0)
    bootstrap: int = 200
    knn_k: int = 20


CPU_FRAMES_PER_CLIP = 8
"""``cpu`` presets' ``data.frames_per_clip`` on real clips: 8 evenly spaced frames of each of the
118 POCUS clips (944 of 2,110 frames), about the size of the synthetic pools, so that the real-data
track keeps each notebook near its ~8 min budget (issue 16's "frame sampling per clip" lever)."""


@dataclass(frozen=True)
class DataConfig(ConfigBase):
    """Where the data comes from and how it is shaped.

    ``data_root=None`` selects the embedded synthetic generator; otherwise a local dataset root.
    """

    task: str = "lung"  # synthetic task / real layout name
    data_root: str | None = None
    img_size: int = 64
    in_chans: int = 1
    n_per_class: int = 8  # synthetic stills per class (train split)
    n_videos: int = 12  # synthetic videos (video methods)
    frames_per_video: int = 8
    val_fraction: float = 0.2
    frames_per_clip: int | None = None  # real clips: at most this many frames each (None: all)
    seed: int = 0


@dataclass(frozen=True)
class MethodConfig(ConfigBase):
    """Base of every method config: shared ``data``, ``optim`` and ``eval`` sections."""

    backbone: str = "resnet18_smoke"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

"""The one pretraining driver: every notebook (02-06) and ``python -m uslib.train`` call it.

``pretrain(name, cfg, run)`` builds the method from its ``MethodSpec``, gets its ``TrainData``,
calls ``engine.fit`` with the method's model-selection key (``Method.select_on``; ``None``
keeps the last epoch), writes the selected encoder to ``run.dir/checkpoints/encoder.*`` through
``Method.encoder_spec()`` plus the method name, the selected epoch and the pretraining data's
provenance, and reloads that encoder into the method. Nothing here is specific to one paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import PartialState

from uslib import runs
from uslib.config import MethodConfig
from uslib.engine import History, KeepBest, fit
from uslib.methods import Method, MethodSpec, TrainData, get_method


@dataclass
class PretrainResult:
    """What ``pretrain`` returns.

    Attributes:
        method: the trained method, its ``encoder`` holding the selected weights.
        history: the ``History`` of ``fit`` (epoch rows carry ``best_epoch`` when selecting).
        data: the ``TrainData`` it trained on.
        encoder_spec: the written ``encoder.yaml`` content.
        selected_epoch: the epoch whose encoder was kept.
    """

    method: Method
    history: History
    data: TrainData
    encoder_spec: dict[str, Any]
    selected_epoch: int


def encoder_record(
    spec: MethodSpec, method: Method, data: TrainData, epoch: int, value: float | None
) -> dict[str, Any]:
    """The ``encoder.yaml`` content: the method's ``encoder_spec()`` plus run facts.

    Keys: ``backbone``, ``kwargs``, ``input_norm`` (from the method), ``method``, ``epoch``,
    ``select_on`` and its value (when selecting), ``pretrain_data`` (provenance, e.g.
    ``["real:pocus"]``) and ``data_root`` (the local root used, or ``None``). No run name, host
    or time, so the same config gives the same bytes from a notebook or the CLI.
    """
    rec = {**method.encoder_spec(), "method": spec.name, "epoch": int(epoch)}
    if method.select_on is not None:
        rec["select_on"] = method.select_on[0]
        if value is not None and math.isfinite(value):
            rec[method.select_on[0]] = float(value)
    rec["pretrain_data"] = list(data.provenance)
    rec["data_root"] = data.data_root
    return rec


def train_data(name: str, cfg: MethodConfig, method: Method | None = None) -> TrainData:
    """Method ``name``'s ``TrainData`` for ``cfg``, with the engine's loop handed to data stages
    that train a proxy (``MethodSpec.data_needs_fit``)."""
    spec = get_method(name)
    return spec.train_data(cfg, method, **({"fit": fit} if spec.data_needs_fit else {}))


def pretrain(
    name: str,
    cfg: MethodConfig,
    run: runs.Run,
    *,
    data: TrainData | None = None,
    method: Method | None = None,
    resume: bool = False,
    progress: bool = True,
) -> PretrainResult:
    """Pretrain method ``name`` with ``cfg`` into ``run``'s folder and keep its selected encoder.

    Args:
        name: registry name of the method (``uslib.methods.list_methods()``).
        cfg: its resolved config (``cfg.data.data_root`` chooses real data; ``None`` synthetic).
        run: the ``uslib.runs.Run`` whose folder receives history, checkpoints and the encoder.
        data: ``TrainData`` already built by the spec's ``train_data`` (default: build it).
        method: a method from the spec's ``build(cfg)`` (default: build one).
        resume: continue from ``run.dir/checkpoints/latest`` (default: start afresh).
        progress: show the progress bar of ``fit``.

    Returns:
        A ``PretrainResult``; ``run.dir/checkpoints/encoder.{safetensors,yaml}`` hold the
        selected encoder, ``history.csv`` / ``history_epochs.csv`` the logged rows.
    """
    spec = get_method(name)
    if not isinstance(cfg, spec.config_cls):
        raise TypeError(f"method {name!r} needs a {spec.config_cls.__name__}, got {type(cfg)}")
    method = method if method is not None else spec.build(cfg)
    data = data if data is not None else train_data(name, cfg, method)
    state = PartialState()  # under accelerate launch / torchrun only the main rank writes

    def save(epoch: int, m: Method, value: float) -> None:
        if state.is_main_process:
            run.save_encoder(m.encoder, encoder_record(spec, m, data, epoch, value))

    callbacks = []
    if method.select_on is not None:  # no validation value: every epoch "improves", last kept
        callbacks.append(KeepBest(method.select_on[0], save, mode=method.select_on[1]))
    history = fit(
        method, data.train, cfg.optim, val_data=data.val, run_dir=run.dir, resume=resume,
        seed=cfg.seed, callbacks=callbacks, collate_fn=data.collate_fn,
        batch_sampler=data.batch_sampler, val_batch_sampler=data.val_batch_sampler,
        progress=progress,
    )  # fmt: skip
    spec_path = Path(run.dir) / "checkpoints" / runs.ENCODER_SPEC
    if state.is_main_process:
        run.save_history(history)
        if method.select_on is None or not spec_path.is_file():  # keep the last epoch
            save(history.epochs[-1]["epoch"] if history.epochs else 0, method, math.nan)
    state.wait_for_everyone()
    encoder, written = runs.load_encoder(spec_path, raw=True)
    method.encoder.load_state_dict(encoder.state_dict())
    return PretrainResult(method, history, data, written, int(written["epoch"]))

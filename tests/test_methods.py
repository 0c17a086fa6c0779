"""The Method contract, checked for every registered method at its ``smoke`` preset.

A new method passes these by registering in ``uslib.methods.METHODS``: finite loss parts,
frozen modules without gradients and in eval mode, EMA teachers moved by exactly the scheduled
momentum, bit-identical exact resume mid-epoch (weights, EMA teacher, buffers, history), and the
CLI and the notebook driver writing byte-identical encoders. ``toy_ema`` (tests/method_toys.py)
is a second method with an EMA teacher; ``LeakyTeacherEMA`` is a planted bug the checks catch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import method_toys
import pytest
import torch
from torch.utils.data import DataLoader

from uslib import runs
from uslib.engine import fit
from uslib.methods import Method, Progress, TrainData, get_method, list_methods
from uslib.ops.schedules import cosine_ramp
from uslib.pretraining import pretrain, train_data
from uslib.train import main as train_cli

METHOD_NAMES = list_methods()  # method_toys registered toy_ema on import


def _setup(name: str) -> tuple[Any, Method, TrainData]:
    spec = get_method(name)
    cfg = spec.config_cls.preset("smoke")
    method = spec.build(cfg)
    return cfg, method, train_data(name, cfg, method)


def _batch(cfg: Any, data: TrainData) -> Any:
    kw: dict[str, Any] = (
        {"batch_sampler": data.batch_sampler}
        if data.batch_sampler is not None
        else {"batch_size": cfg.optim.batch_size}
    )
    torch.manual_seed(0)
    return next(iter(DataLoader(data.train, collate_fn=data.collate_fn, **kw)))


def check_loss_parts_finite(method: Method, batch: Any) -> dict[str, torch.Tensor]:
    out = method.train().training_step(batch)
    assert "loss" in out and out["loss"].ndim == 0, "training_step must return a scalar 'loss'"
    for k, v in out.items():
        assert torch.isfinite(v).all(), f"loss part {k!r} is not finite: {v}"
    return out


def check_frozen_modules(method: Method, batch: Any) -> None:
    """Frozen modules stay in eval mode and get no gradient; the rest does get gradients."""
    method.train()
    frozen = method.frozen_modules()
    for m in frozen:
        assert not m.training, f"frozen {type(m).__name__} is in train mode after method.train()"
    method.zero_grad(set_to_none=True)
    method.training_step(batch)["loss"].backward()
    frozen_ids = {id(p) for m in frozen for p in m.parameters()}
    for name, p in method.named_parameters():
        if id(p) in frozen_ids:
            assert p.grad is None, f"frozen parameter {name} received a gradient"
    trained = [
        n for n, p in method.named_parameters() if id(p) not in frozen_ids and p.grad is not None
    ]
    assert trained, "no trainable parameter received a gradient"
    method.zero_grad(set_to_none=True)


def check_ema_update(method: Method) -> None:
    """``on_step_end`` moves each teacher by exactly ``m = teacher_momentum()`` of its progress."""
    for teacher, student in method.ema_pairs():
        with torch.no_grad():  # make student and teacher differ
            for p in student.parameters():
                p.add_(0.01 * torch.randn_like(p))
        method.set_progress(Progress(step=3, total_steps=10, epoch=1, steps_per_epoch=3))
        m = method.teacher_momentum()
        assert 0.0 <= m < 1.0
        s_params = dict(student.named_parameters())
        expected = {
            n: m * t.detach().clone() + (1 - m) * s_params[n].detach()
            for n, t in teacher.named_parameters()
            if n in s_params
        }
        assert expected, "an EMA pair shares no parameter names"
        method.on_step_end()
        for n, t in teacher.named_parameters():
            if n in expected:
                torch.testing.assert_close(t.detach(), expected[n], rtol=1e-6, atol=1e-7)


def _state(method: Method) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.state_dict().items()}


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_loss_parts_finite_and_frozen_modules(name: str) -> None:
    cfg, method, data = _setup(name)
    batch = _batch(cfg, data)
    check_loss_parts_finite(method, batch)
    check_frozen_modules(method, batch)
    check_ema_update(method)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_resume_mid_epoch_is_bit_identical(name: str, tmp_path: Path) -> None:
    cfg, _, _ = _setup(name)
    spec = get_method(name)

    def run(stop: int | None, run_dir: Path, resume: bool = True) -> tuple[Method, Any]:
        method = spec.build(cfg)
        data = train_data(name, cfg, method)
        hist = fit(method, data.train, cfg.optim, val_data=data.val, run_dir=run_dir,
                   resume=resume, seed=cfg.seed, stop_at_step=stop, progress=False,
                   collate_fn=data.collate_fn, batch_sampler=data.batch_sampler,
                   val_batch_sampler=data.val_batch_sampler)  # fmt: skip
        return method, hist

    ref, ref_hist = run(None, tmp_path / "ref", resume=False)
    per_epoch = ref_hist.epochs[0]["step"]
    total = ref_hist.steps[-1]["step"]
    stop = per_epoch + max(1, per_epoch // 2) if per_epoch > 1 else 1
    assert stop < total, "smoke preset too short to interrupt mid-run"
    run(stop, tmp_path / "cut")
    res, res_hist = run(None, tmp_path / "cut")
    a, b = _state(ref), _state(res)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    drop = {"images_per_s"}
    strip = [
        [{k: v for k, v in r.items() if k not in drop} for r in h.steps]
        for h in (ref_hist, res_hist)
    ]
    assert strip[0] == strip[1] and ref_hist.epochs == res_hist.epochs
    assert res.progress == ref.progress


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_cli_and_notebook_driver_write_identical_encoders(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("USLIB_ROOT", str(tmp_path))
    cli_dir = train_cli(
        ["--method", name, "--profile", "smoke", "--run-dir", str(tmp_path / "cli"), "--no-resume"]
    )
    spec = get_method(name)
    cfg = spec.config_cls.preset("smoke")
    run = runs.start(
        "02_nb", cfg, profile="smoke", out_dir=tmp_path / "nb", seed=cfg.seed, verbose=False
    )
    result = pretrain(name, cfg, run, progress=False)
    for f in (runs.ENCODER_WEIGHTS, runs.ENCODER_SPEC):
        cli_bytes = (cli_dir / "checkpoints" / f).read_bytes()
        assert cli_bytes == (run.dir / "checkpoints" / f).read_bytes(), f"{f} differs"
    assert result.encoder_spec["method"] == name
    assert result.encoder_spec["pretrain_data"] == list(result.data.provenance)


def test_toy_ema_momentum_schedule() -> None:
    cfg, method, _ = _setup("toy_ema")
    values = []
    for step in (0, 5, 10):
        method.set_progress(Progress(step=step, total_steps=10))
        values.append(method.teacher_momentum())
    assert values[0] == pytest.approx(0.9) and values[-1] == pytest.approx(1.0)
    assert values[1] == pytest.approx(cosine_ramp(0.5, 0.9, 1.0)) == pytest.approx(0.95)


def test_planted_leaky_teacher_is_caught() -> None:
    cfg = method_toys.ToyEMAConfig()
    torch.manual_seed(0)
    leaky = method_toys.LeakyTeacherEMA(cfg)
    batch = _batch(cfg, method_toys.train_data(cfg))
    with pytest.raises(AssertionError, match="frozen parameter teacher"):
        check_frozen_modules(leaky, batch)


def test_fit_sets_progress_before_each_forward() -> None:
    cfg, method, data = _setup("toy_ema")
    seen: list[Progress] = []
    original = method.training_step

    def spy(batch: Any) -> dict[str, torch.Tensor]:
        seen.append(method.progress)
        return original(batch)

    method.training_step = spy  # type: ignore[method-assign]
    fit(method, data.train, cfg.optim, progress=False, seed=0)
    assert [p.step for p in seen] == list(range(len(seen)))
    per_epoch = seen[0].steps_per_epoch
    assert all(p.total_steps == len(seen) and p.epoch == p.step // per_epoch for p in seen)

"""Tests of uslib.engine: overfitting, exact resume, atomic checkpoints, NaN guard, schedules."""

from __future__ import annotations

import math

import pytest
import torch
from engine_toys import ToyImages, ToyRegressor

from uslib.config import OptimConfig
from uslib.engine import KeepBest, NonFiniteLossError, fit
from uslib.engine.checkpoint import latest_checkpoint
from uslib.models.params import weight_decay_groups as param_groups
from uslib.ops.schedules import warmup_cosine

OPT = OptimConfig(
    optimizer="adamw",
    lr=3e-3,
    weight_decay=0.0,
    batch_size=4,
    epochs=6,
    warmup_epochs=1,
    checkpoint_every=0,
)


def _weights(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_overfits_eight_images() -> None:
    method = ToyRegressor()
    hist = fit(method, ToyImages(8), OPT.replace(epochs=25, lr=1e-2, batch_size=8), progress=False)
    losses = hist.to_frame()["loss"].tolist()
    assert len(losses) == 25
    assert losses[-1] < 0.5 * losses[0], losses


def test_interrupted_run_resumes_bit_identically(tmp_path) -> None:
    opt = OPT.replace(checkpoint_every=2)
    ref = ToyRegressor()
    h_ref = fit(ref, ToyImages(12), opt, run_dir=tmp_path / "a", progress=False)

    first = ToyRegressor()
    fit(first, ToyImages(12), opt, run_dir=tmp_path / "b", stop_at_step=5, progress=False)
    assert latest_checkpoint(tmp_path / "b" / "checkpoints").name == "step_0000005"
    second = ToyRegressor(seed=123)  # different init: everything must come from the checkpoint
    h_res = fit(second, ToyImages(12), opt, run_dir=tmp_path / "b", progress=False)

    assert [r["loss"] for r in h_res.steps] == [r["loss"] for r in h_ref.steps]
    assert h_res.epochs == h_ref.epochs
    for k, v in _weights(ref).items():
        assert torch.equal(v, _weights(second)[k]), k


def test_crash_during_checkpoint_keeps_previous(tmp_path, monkeypatch) -> None:
    opt = OPT.replace(checkpoint_every=2, epochs=2)
    fit(ToyRegressor(), ToyImages(8), opt, run_dir=tmp_path, stop_at_step=2, progress=False)
    good = latest_checkpoint(tmp_path / "checkpoints")
    assert good is not None and good.name == "step_0000002"

    import accelerate

    real_save = accelerate.Accelerator.save_state

    def crashing_save(self, output_dir=None, **kw):
        real_save(self, output_dir, **kw)  # files written into the .tmp folder...
        raise KeyboardInterrupt("power cut")  # ...then the process dies before the rename

    monkeypatch.setattr(accelerate.Accelerator, "save_state", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        fit(ToyRegressor(), ToyImages(8), opt, run_dir=tmp_path, progress=False)
    monkeypatch.setattr(accelerate.Accelerator, "save_state", real_save)

    assert latest_checkpoint(tmp_path / "checkpoints") == good
    resumed = fit(ToyRegressor(), ToyImages(8), opt, run_dir=tmp_path, progress=False)
    assert resumed.steps[-1]["step"] == 4


def test_nan_guard_names_step_and_parts(tmp_path) -> None:
    opt = OPT.replace(checkpoint_every=1, epochs=2)
    with pytest.raises(NonFiniteLossError, match=r"step 3 .*'mse'"):
        fit(ToyRegressor(nan_at_call=4), ToyImages(8), opt, run_dir=tmp_path, progress=False)
    last = latest_checkpoint(tmp_path / "checkpoints")
    assert last is not None and last.name == "step_0000003"


def test_gradient_accumulation_matches_large_batch() -> None:
    a, b = ToyRegressor(), ToyRegressor()
    fit(a, ToyImages(16), OPT.replace(batch_size=8, epochs=2), progress=False)
    fit(b, ToyImages(16), OPT.replace(batch_size=4, accumulate_steps=2, epochs=2), progress=False)
    for k, v in _weights(a).items():
        torch.testing.assert_close(v, _weights(b)[k], rtol=1e-4, atol=1e-5)


def test_epoch_callbacks_and_validation() -> None:
    seen = []
    hist = fit(
        ToyRegressor(),
        ToyImages(8),
        OPT.replace(epochs=3),
        val_data=ToyImages(4, seed=1),
        callbacks=[lambda e, m, row: seen.append(m.training) or {"cb": float(e)}],
        progress=False,
    )
    assert [r["epoch"] for r in hist.epochs] == [0, 1, 2]
    assert all("val_loss" in r and r["cb"] == r["epoch"] for r in hist.epochs)
    assert seen == [False, False, False]  # callbacks run in eval mode
    vals = [r["val_loss"] for r in hist.epochs]
    assert len(set(vals)) == 3  # the weights change, so the validation loss does
    assert hist.best_epoch("val_loss")["epoch"] == vals.index(min(vals))
    assert hist.best_epoch("val_loss", mode="max")["epoch"] == vals.index(max(vals))


def test_warmup_hold_cosine_values() -> None:
    kw = dict(total_steps=20, base=1.0, final=0.0, warmup_steps=4, hold_steps=6)
    assert warmup_cosine(0, **kw) == 0.0
    assert warmup_cosine(2, **kw) == 0.5
    assert warmup_cosine(4, **kw) == warmup_cosine(9, **kw) == 1.0
    assert math.isclose(warmup_cosine(15, **kw), 0.5)  # half-way through the 10 cosine steps
    assert warmup_cosine(20, **kw) == 0.0
    assert warmup_cosine(15, **{**kw, "kind": "constant"}) == 1.0
    with pytest.raises(ValueError, match="linear"):
        warmup_cosine(0, 10, 1.0, kind="linear")


def test_lr_follows_schedule_in_fit() -> None:
    hist = fit(
        ToyRegressor(),
        ToyImages(8),
        OPT.replace(epochs=4, warmup_epochs=1, batch_size=4, hold_epochs=1),
        progress=False,
    )
    lrs = [r["lr"] for r in hist.steps]
    assert lrs[0] == 0.0 and lrs[2] == lrs[3] == lrs[4] == OPT.lr
    assert lrs[-1] < lrs[5] < OPT.lr


def test_no_decay_groups() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    decay, no_decay = param_groups(model, 0.05)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_callbacks_see_the_row_so_far() -> None:
    rows = []
    fit(
        ToyRegressor(),
        ToyImages(8),
        OPT.replace(epochs=2),
        val_data=ToyImages(4, seed=1),
        callbacks=[
            lambda e, m, row: {"twice": 2 * row["val_loss"]},
            lambda e, m, row: rows.append(dict(row)),
        ],
        progress=False,
    )
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(r["twice"] == pytest.approx(2 * r["val_loss"]) for r in rows)  # earlier cb's value


def test_keep_best_min_max_ties_and_missing_key() -> None:
    saved = []
    keep = KeepBest("v", lambda e, m, v: saved.append((e, v)), mode="min")
    for e, v in enumerate([3.0, 2.0, 2.0, 5.0, 1.0]):
        out = keep(e, None, {"v": v})
    assert saved == [(0, 3.0), (1, 2.0), (4, 1.0)] and out == {"best_epoch": 4.0}
    saved.clear()
    up = KeepBest("acc", lambda e, m, v: saved.append(e), mode="max")
    for e, v in enumerate([0.5, 0.7, 0.7, 0.6]):
        up(e, None, {"acc": v})
    assert saved == [0, 1] and up.best_epoch == 1  # earliest epoch wins the tie
    saved.clear()
    last = KeepBest("missing", lambda e, m, v: saved.append(e))
    for e in range(3):
        last(e, None, {"epoch": e})
    assert saved == [0, 1, 2]  # no value to select on: every epoch replaces the previous one
    with pytest.raises(ValueError, match="mode"):
        KeepBest("v", print, mode="best")


def test_keep_best_state_survives_resume(tmp_path) -> None:
    """An interrupted run must not overwrite its best weights with a worse epoch after resuming.

    Selecting on the *highest* validation loss makes epoch 0 the best (the loss falls), so a
    callback that forgot its state on resume would save again at epoch 2.
    """
    opt = OPT.replace(epochs=4, checkpoint_every=2)

    def run(folder: str, stop: int | None = None) -> tuple[list[int], KeepBest]:
        saved: list[int] = []
        keep = KeepBest("val_loss", lambda e, m, v: saved.append(e), mode="max")
        val = ToyImages(4, seed=1)
        fit(ToyRegressor(), ToyImages(8), opt, val_data=val, run_dir=tmp_path / folder,
            callbacks=[keep], stop_at_step=stop, progress=False)  # fmt: skip
        return saved, keep

    ref_saved, ref = run("a")
    assert ref_saved == [0]  # the premise: the validation loss falls after epoch 0
    run("b", stop=4)  # interrupted after epoch 1 (2 steps per epoch)
    res_saved, res = run("b")
    assert res_saved == [] and res.best_epoch == ref.best_epoch == 0 and res.best == ref.best


def test_on_epoch_start_before_each_epoch_not_on_a_mid_epoch_resume(tmp_path) -> None:
    class Recorder(ToyRegressor):
        def __init__(self) -> None:
            super().__init__()
            self.starts: list[int] = []

        def on_epoch_start(self, epoch: int) -> None:
            self.starts.append(epoch)

    opt = OPT.replace(epochs=3, checkpoint_every=1)  # ToyImages(8), batch 4: 2 steps per epoch
    whole = Recorder()
    fit(whole, ToyImages(8), opt, progress=False)
    assert whole.starts == [0, 1, 2]
    first, second = Recorder(), Recorder()
    fit(first, ToyImages(8), opt, run_dir=tmp_path, stop_at_step=3, progress=False)
    fit(second, ToyImages(8), opt, run_dir=tmp_path, progress=False)  # resumes inside epoch 1
    assert first.starts == [0, 1] and second.starts == [2]


def test_fit_writes_progress_for_a_watcher(tmp_path) -> None:
    import json

    fit(ToyRegressor(), ToyImages(8), OPT.replace(epochs=2), run_dir=tmp_path, progress=False)
    state = json.loads((tmp_path / "progress.json").read_text())
    assert state["step"] == state["total_steps"] and state["epochs"] == 2
    assert math.isfinite(state["loss"]) and state["images_per_s"] > 0


def test_compile_flag_falls_back_to_eager_when_the_compiler_fails(monkeypatch) -> None:
    eager = ToyRegressor()
    fit(eager, ToyImages(8), OPT.replace(epochs=1), progress=False)

    def broken_compile(self, *a, **k) -> None:  # what a missing C++ toolchain looks like
        def fail(*args, **kwargs):
            raise RuntimeError("inductor: no working C++ compiler")

        self._compiled_call_impl = fail

    monkeypatch.setattr(torch.nn.Module, "compile", broken_compile)
    method = ToyRegressor()
    with pytest.warns(UserWarning, match="torch.compile failed on the first step"):
        fit(method, ToyImages(8), OPT.replace(epochs=1, compile=True), progress=False)
    assert method._compiled_call_impl is None
    for k, v in _weights(eager).items():  # the eager fallback trains the same run
        assert torch.equal(v, _weights(method)[k]), k

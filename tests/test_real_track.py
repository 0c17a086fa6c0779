"""The real-data track (issue 16): its own run set, the encoders it evaluates, contamination flags,
the real pretraining inputs of every method, and the one command's dry run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_evaluation import _fake_run

from uslib import runs
from uslib.paths import repo_root, run_set, runs_root

POCUS_PRETRAINED = ("02_", "03_", "04_", "05_", "06_")  # every method's run in the real track


def test_run_set_keeps_real_runs_apart(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("USLIB_ROOT", str(tmp_path))
    assert run_set("cpu") == "cpu" and run_set("cpu", "/data") == "cpu_real"
    assert run_set("cpu", real=True) == "cpu_real"
    assert runs_root("smoke", "/data") == tmp_path / "papermill_runs" / "smoke_real"
    run = runs.start("03_x", None, profile="smoke", data_root="/data", verbose=False)
    assert run.dir == tmp_path / "papermill_runs" / "smoke_real" / "03_x"
    assert runs.find_runs("smoke", data_root="/data") == [run.dir]
    assert runs.find_runs("smoke") == []  # the synthetic run set never sees it


def test_track_encoders_and_contamination_flags(tmp_path) -> None:
    """Pretrained on POCUS => POCUS rows flagged, HC18 rows not; synthetic-to-real rows clean."""
    from uslib.evaluation.discovery import contamination, track_encoders

    _fake_run(tmp_path, "03_openus_pretraining", "vit_smoke", run_set="cpu_real",
              pretrain_data=["real:pocus"])  # fmt: skip
    _fake_run(tmp_path, "03_openus_pretraining", "vit_smoke")  # synthetic run
    assert [e.name for e in track_encoders("cpu", root=tmp_path)] == ["03_openus_pretraining"]
    real, syn = track_encoders("cpu", "/data", root=tmp_path)
    assert (real.name, syn.name) == ("03_openus_pretraining", "synthetic:03_openus_pretraining")
    assert real.pretrain_data == ("real:pocus",) and syn.pretrain_data == ("synthetic:lung",)
    assert contamination(real, "real:pocus").startswith("pretrained on real:pocus")
    assert contamination(real, "real:hc18") == ""  # cross-organ transfer
    assert contamination(syn, "real:pocus") == "" and contamination(syn, "real:hc18") == ""


def test_committed_real_track_flags_every_pocus_row() -> None:
    """The committed real-track table: rows of encoders pretrained on POCUS are flagged on POCUS
    and only there; random, supervised and synthetic-to-real rows never are."""
    path = repo_root() / "papermill_runs" / "cpu_real" / "07_evaluation" / "tables" / "results.csv"
    if not path.is_file():
        pytest.skip("no committed real-track run (make reproduce-real)")
    r = pd.read_csv(path, keep_default_na=False)
    assert set(r["task"]) == {"pocus", "hc18"}
    mine = r[r["encoder"].str.startswith(POCUS_PRETRAINED)]
    assert not mine.empty
    assert (mine.loc[mine.task == "pocus", "contamination"] != "").all()
    assert (mine.loc[mine.task == "hc18", "contamination"] == "").all()
    others = r[~r["encoder"].str.startswith(POCUS_PRETRAINED)]
    assert others["encoder"].str.startswith(("random:", "supervised:", "synthetic:")).all()
    assert (others["contamination"] == "").all()
    assert r["encoder"].str.startswith("synthetic:").any()  # the synthetic-to-real rows


def test_real_pretraining_inputs(shared_data) -> None:
    """Every image method reads POCUS frames only from a root holding POCUS and HC18 (HC18 stays
    unseen: the cross-organ rows), ``frames_per_clip`` evenly spaced frames per clip."""
    from uslib.config import CPU_FRAMES_PER_CLIP
    from uslib.data.sources import pocus_frame_array
    from uslib.methods import mae, spad_tokenizer, tinyusfm, tinyusfm_data

    frames, root = pocus_frame_array(shared_data, 32, 2)
    assert root.name == "pocus_lung" and frames.dtype == np.uint8
    assert frames.shape[1:] == (32, 32) and 118 <= len(frames) <= 2 * 118
    over = {"data.data_root": str(shared_data), "data.img_size": 32}
    cfg = mae.MAEConfig.preset("smoke", **over, **{"data.frames_per_clip": 2})
    images, prov, _ = mae.pretrain_images(cfg)
    assert prov == ("real:pocus",) and np.array_equal(images, frames)
    tcfg = tinyusfm.TinyUSFMConfig.preset("smoke", **over, **{"data.frames_per_clip": 2})
    pool, prov, _ = tinyusfm_data.pool_dataset(tcfg.data)
    assert prov == ("real:pocus",) and len(pool) == len(frames)
    assert pool[0]["image"].shape == (1, 32, 32) and float(pool[0]["image"].max()) <= 1.0
    scfg = spad_tokenizer.SPADTokenizerConfig.preset("smoke", **over,
                                                     **{"data.frames_per_clip": 1})  # fmt: skip
    data = spad_tokenizer.train_data(scfg)
    assert data.provenance == ("real:pocus",) and len(data.train) == 118
    assert set(data.train.grid_keys()) == {(5, 1, 32, 32)}  # 2-D items only
    assert mae.MAEConfig.preset("cpu").data.frames_per_clip == CPU_FRAMES_PER_CLIP


def test_reproduce_dry_run_of_the_data_root(tmp_path, capsys) -> None:
    from uslib.reproduce import _check_data_root

    missing = str(tmp_path / "nowhere")
    assert _check_data_root(missing, skip_missing=True) == 0
    assert "skipped" in capsys.readouterr().out
    assert _check_data_root(missing, skip_missing=False) == 2
    (tmp_path / "empty").mkdir()
    assert _check_data_root(str(tmp_path / "empty"), skip_missing=True) == 2
    assert "empty" in capsys.readouterr().err


def test_real_track_parameters_exist_in_their_notebooks() -> None:
    from uslib.reproduce import REAL_TRACK_PARAMS

    for stem, params in REAL_TRACK_PARAMS.items():
        nb = json.loads((repo_root() / "notebooks" / f"{stem}.ipynb").read_text())
        cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
        for name in params:
            assert f"\n{name}:" in "\n" + "".join(cell["source"]), (stem, name)


@pytest.mark.parametrize("nb", sorted((Path(__file__).parents[1] / "notebooks").glob("0*.ipynb")))
def test_every_notebook_takes_data_root(nb) -> None:
    """The real track passes ``data_root`` to every notebook; each must declare it."""
    cells = json.loads(nb.read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
    assert "\ndata_root:" in "\n" + "".join(cell["source"]), nb.name


def _lever_frame(ours: tuple[float, float, float], rnd: tuple[float, float, float]) -> pd.DataFrame:
    row = {"task": "pocus", "protocol": "linear probe", "metric": "accuracy", "label_fraction": 1.0,
           "backbone": "resnet18(in_chans=1)", "n_test": 2110}  # fmt: skip
    return pd.DataFrame([
        {**row, "encoder": "02_uscl_sample_pairs", "source": "pretrained",
         "value": ours[0], "ci_low": ours[1], "ci_high": ours[2]},
        {**row, "encoder": "random:resnet18", "source": "random",
         "value": rnd[0], "ci_low": rnd[1], "ci_high": rnd[2]},
    ])  # fmt: skip


@pytest.mark.parametrize(
    "ours, rnd, mark",
    [((0.9, 0.85, 0.95), (0.7, 0.6, 0.8), "▲"), ((0.5, 0.4, 0.59), (0.7, 0.6, 0.8), "▼"),
     ((0.8, 0.7, 0.9), (0.7, 0.6, 0.8), "≈"), ((0.8, 0.8, 0.9), (0.7, 0.6, 0.8), "≈")],
)  # fmt: skip
def test_levers_rows_pair_each_encoder_with_its_random_twin(ours, rnd, mark) -> None:
    """The levers table compares against the random init of the same backbone and calls a
    separation only when the CIs do not touch (a shared end point is an overlap)."""
    from benchmarks.real_levers import _rows, markdown

    (row,) = _rows(_lever_frame(ours, rnd), "eval_all", "evaluation set", "all frames", 1.0)
    assert row["random"] == "random:resnet18" and row["pocus_probe_sep"] == mark
    assert row["pocus_probe"] == list(ours) and row["pocus_probe_random"] == list(rnd)
    assert "hc18_dice" not in row  # no HC18 rows in the frame: no cell invented
    head = {"date": "d", "machine": "m", "threads": 2, "commit": "c", "minutes": 1.0}
    text = markdown([row], head)
    assert f"{100 * ours[0]:.1f} [{100 * ours[1]:.1f}, {100 * ours[2]:.1f}] {mark}" in text


def test_readme_levers_block_is_the_committed_table(tmp_path) -> None:
    """The README's levers block is benchmarks/results/real_levers.md, verbatim."""
    from uslib.figures import LEVERS_END, LEVERS_START, rewrite_levers

    table = repo_root() / "benchmarks" / "results" / "real_levers.md"
    readme = (repo_root() / "README.md").read_text()
    block = readme.split(LEVERS_START, 1)[1].split(LEVERS_END, 1)[0]
    assert block.strip() == table.read_text().strip()
    copy = tmp_path / "README.md"
    copy.write_text(f"a\n{LEVERS_START}\nold\n{LEVERS_END}\nb\n")
    assert rewrite_levers(copy, table) and "old" not in copy.read_text()
    assert not rewrite_levers(copy, tmp_path / "missing.md")

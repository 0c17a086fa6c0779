"""The published figures and the README blocks made from run records: style, chance levels,
captions, the list of figures, the POCUS table, and prose that quotes no measured number."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from uslib.evaluation.report import RUN_LABELS, readme_section
from uslib.evaluation.tasks import chance_level
from uslib.figures import (
    FIGURES_END,
    FIGURES_START,
    POCUS_END,
    POCUS_START,
    TINYUSFM_END,
    TINYUSFM_RUN,
    TINYUSFM_START,
    caption,
    figures_block,
    pocus_block,
    render_history,
    tinyusfm_block,
)
from uslib.runs import repo_root
from uslib.viz.evaluation import plot_label_efficiency, plot_metric_intervals
from uslib.viz.style import METHOD_COLORS, RANDOM_COLOR, encoder_style

ROOT = repo_root()


def test_one_colour_per_named_run_and_random_init_grey_dashed() -> None:
    assert set(METHOD_COLORS) == set(RUN_LABELS)
    assert len(set(METHOD_COLORS.values())) == len(METHOD_COLORS)
    assert encoder_style("random:resnet18") == {"color": RANDOM_COLOR, "linestyle": "--"}
    assert encoder_style("02_uscl_sample_pairs")["color"] == METHOD_COLORS["02_uscl_sample_pairs"]


def test_chance_level_is_one_over_the_number_of_classes() -> None:
    from uslib.data.synthetic import TASKS

    assert chance_level("synthetic:lung") == pytest.approx(1 / len(TASKS["lung"].classes))
    assert chance_level("synthetic:liver") == pytest.approx(1 / len(TASKS["liver"].classes))
    assert chance_level("real:pocus") == pytest.approx(1 / 3)
    assert chance_level("real:hc18") is None and chance_level("nonsense") is None


def _res() -> pd.DataFrame:
    rows = []
    for enc, bb, acc in (("02_uscl_sample_pairs", "resnet18", 0.8),
                         ("random:resnet18", "resnet18", 0.5),
                         ("06_spad_vit", "spad_vit_cpu", 0.45),
                         ("random:spad_vit_cpu", "spad_vit_cpu", 0.35)):  # fmt: skip
        for lf in (0.1, 1.0):
            rows.append({"task": "lung", "data": "synthetic:lung", "protocol": "linear probe",
                         "metric": "accuracy", "encoder": enc, "backbone": bb,
                         "value": acc * lf**0.1, "std": 0.03, "ci_low": acc - 0.05,
                         "ci_high": acc + 0.05, "label_fraction": lf})  # fmt: skip
    return pd.DataFrame(rows)


def test_score_figures_run_from_0_to_100_with_a_chance_line() -> None:
    eff = plot_label_efficiency(_res(), task="lung", metric="accuracy", protocol="linear probe")
    axes = [ax for ax in eff.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["ResNet-18", "SPAD-ViT-XS"]  # panel per backbone
    for ax in axes:
        assert ax.get_ylim() == (0.0, 100.0)
        chance = [ln for ln in ax.get_lines() if ln.get_label() == "chance (1/K)"]
        assert len(chance) == 1 and chance[0].get_ydata()[0] == pytest.approx(100 / 3)
    assert "band: ± std over folds" in eff.get_suptitle()
    ci = plot_metric_intervals(_res(), metric="accuracy", protocol="linear probe")
    ax = ci.axes[0]
    assert ax.get_xlim() == (0.0, 100.0)
    assert "95 % bootstrap CI" in ci.get_suptitle() and "linear probe" in ci.get_suptitle()
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert names == ["USCL ResNet-18", "random init ResNet-18", "PUMIT SPAD-ViT-XS",
                     "random init SPAD-ViT-XS"]  # fmt: skip


def test_training_loss_figure_draws_the_validation_curve_where_recorded(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "02_uscl_sample_pairs"
    run.mkdir(parents=True)
    pd.DataFrame({"step": range(1, 41), "loss": [3 - i / 20 for i in range(40)]}).to_csv(
        run / "history.csv", index=False
    )
    pd.DataFrame({"epoch": [0, 1], "step": [20, 40], "val_loss": [2.5, 2.0]}).to_csv(
        run / "history_epochs.csv", index=False
    )
    (png,) = render_history(run, tmp_path / "figs")
    assert png.name == "02_uscl_sample_pairs_training_loss.png" and png.is_file()
    assert "validation loss per epoch" in caption(png, tmp_path / "runs")
    (run / "history_epochs.csv").write_text("epoch,step\n0,20\n")
    assert "validation" not in caption(png, tmp_path / "runs")
    with pytest.raises(ValueError, match="no caption"):
        caption(tmp_path / "figs" / "99_mystery.png", tmp_path / "runs")


def test_repository_readme_lists_every_published_figure() -> None:
    pngs = sorted((ROOT / "figures").glob("*.png"))
    readme = ROOT / "README.md"
    if not pngs or FIGURES_START not in readme.read_text():
        pytest.skip("no published figures yet (make reproduce, then make figures)")
    section = readme_section(readme, FIGURES_START, FIGURES_END)
    assert section == figures_block(ROOT / "figures", ROOT / "papermill_runs" / "cpu", ROOT)
    assert {p.name for p in pngs} == set(re.findall(r"\[`([^`]+\.png)`\]", section))
    for ref in re.findall(r"\]\((figures/[^)]+\.png)\)", readme.read_text()):
        assert (ROOT / ref).is_file(), f"README shows {ref}, which does not exist"


def test_repository_readme_pocus_table_agrees_with_the_runs() -> None:
    readme = ROOT / "README.md"
    run = ROOT / "papermill_runs" / "cpu" / "02_uscl_sample_pairs" / "tables"
    if POCUS_START not in readme.read_text() or not run.is_dir():
        pytest.skip("no notebook 02 cpu run committed yet")
    assert readme_section(readme, POCUS_START, POCUS_END) == pocus_block(ROOT).strip()


def test_pocus_block_reads_the_tables_and_the_command(tmp_path: Path) -> None:
    run = tmp_path / "papermill_runs" / "cpu_real" / "02_uscl_sample_pairs"
    (run / "tables").mkdir(parents=True)
    pd.DataFrame({"init": ["random init", "random init", "USCL (ours)", "USCL (ours)"],
                  "select": ["test", "val"] * 2, "folds": 5, "mean": [70.04, 65.0, 80.0, 75.55],
                  "std": [1.0, 2.0, 3.0, 4.0]}).to_csv(run / "tables" / "protocol_summary.csv",
                                                       index=False)  # fmt: skip
    pd.DataFrame({"init": ["random init"] * 2, "select": ["test", "test"],
                  "n_test": [10, 12]}).to_csv(run / "tables" / "protocol_per_fold.csv",
                                              index=False)  # fmt: skip
    (run / "metrics.json").write_text(json.dumps({"pretrain_videos": 7}))
    nb = {"metadata": {"papermill": {"parameters": {"profile": "cpu", "data_root": "/d/p"}}}}
    (run.parent / "02_uscl_sample_pairs.ipynb").write_text(json.dumps(nb))
    block = pocus_block(tmp_path)
    assert "| 70.0 ± 1.0 " in block and "| 75.5 ± 4.0 " in block  # mean ± std of the table
    assert "real POCUS frames, 22 test images over 5 folds" in block
    assert "pretrained on 7 POCUS clips" in block and "94.19 (README)" in block
    assert "-p data_root /d/p" in block and "-p profile cpu" in block


def test_repository_readme_results_prose_quotes_no_measured_number() -> None:
    """Measured numbers in the Results section live only in generated blocks (checked against
    the tables above); hand-written prose may cite settings (64 px, 60 epochs) but no decimal
    score, which would go stale on the next run."""
    text = (ROOT / "README.md").read_text()
    if "## Results" not in text:
        pytest.skip("README has no Results section")
    section = text[text.index("## Results") : text.index("\n## ", text.index("## Results") + 3)]
    prose = re.sub(r"<!-- (\w+):start -->.*?<!-- \1:end -->", "", section, flags=re.S)
    assert re.findall(r"\d+\.\d+", prose) == []


def test_repository_readme_tinyusfm_arms_agree_with_the_run() -> None:
    readme, runs = ROOT / "README.md", ROOT / "papermill_runs" / "cpu"
    if TINYUSFM_START not in readme.read_text() or not (runs / TINYUSFM_RUN).is_dir():
        pytest.skip("no notebook 05 cpu run committed yet")
    assert readme_section(readme, TINYUSFM_START, TINYUSFM_END) == tinyusfm_block(runs).strip()


def test_tinyusfm_block_reads_the_probe_and_coverage_tables(tmp_path: Path) -> None:
    run = tmp_path / "cpu" / TINYUSFM_RUN
    (run / "tables").mkdir(parents=True)
    pd.DataFrame({"encoder": ["random init", "coreset-distilled"], "accuracy": [0.4, 0.61234],
                  "ci_low": [0.35, 0.555], "ci_high": [0.45, 0.6666]}).to_csv(
        run / "tables" / "linear_probe.csv", index=False)  # fmt: skip
    pd.DataFrame({"selection": ["dual rank", "random"], "size": [36, 36],
                  "clusters covered": [12, 11], "k-center radius": [0.17449, 0.3]}).to_csv(
        run / "tables" / "coreset_coverage.csv", index=False)  # fmt: skip
    (run / "metrics.json").write_text(json.dumps({"probe_task": "lung", "pool": 1200,
                                                  "coreset": 36}))  # fmt: skip
    block = tinyusfm_block(tmp_path / "cpu")
    assert "| 61.2 [55.5, 66.7]" in block and "| 40.0 [35.0, 45.0]" in block  # x100, 1 decimal
    assert "lung probe acc (%)" in block and "pool 1,200 stills, coreset 36" in block
    assert "| 11 " in block and "| 0.174 " in block

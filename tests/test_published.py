"""The published numbers as data, and the tables that set them beside ours."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from uslib.evaluation.published import (
    COLUMNS,
    REFERENCES,
    published_numbers,
    published_value,
    reference_for,
)
from uslib.evaluation.report import (
    CONTAMINATION_MARK,
    README_END,
    README_START,
    SMOKE_NOTE,
    format_value,
    readme_agrees,
    readme_block,
    results_frame,
    summary_table,
    update_readme,
    write_tables,
)


@pytest.mark.parametrize(
    ("id_", "value"),
    [
        ("openus_fetal_planes_acc", 90.3),
        ("openus_busi_acc", 87.8),
        ("openus_busbra_dice", 91.0),
        ("openus_tn3k_dice", 82.7),
        ("tinyusfm_unius_cls_acc", 84.91),
        ("tinyusfm_unius_seg_dice", 85.78),
        ("uscl_pocus_acc_readme", 94.19),
        ("uscl_pocus_acc_resultfile", 95.42),
        ("uscl_pocus_imagenet_acc", 84.0),
        ("dmae_in1k_75", 84.0),
        ("dmae_in1k_95", 83.6),
        ("dmae_in1k_98", 82.4),
    ],
)
def test_headline_numbers_match_the_notes(id_, value):
    assert published_value(id_) == value


def test_table_schema_and_filters():
    df = published_numbers()
    assert tuple(df.columns) == COLUMNS
    assert df["id"].is_unique and (df["value"] > 0).all()
    assert set(df["paper"]) >= {"OpenUS", "TinyUSFM", "USCL", "DMAE"}
    assert (df["source"].str.len() > 0).all() and (df["notes"].str.len() > 0).all()
    pocus = published_numbers("uscl", "pocus", metric="accuracy")  # case-insensitive
    assert set(pocus["value"]) >= {94.19, 95.42, 84.0}
    assert published_numbers("PUMIT").empty  # nothing verified to quote (notes §C.10)
    openus = published_numbers("OpenUS", "BUSI")
    assert openus.loc[openus.metric == "accuracy", "std"].item() == 0.4
    with pytest.raises(KeyError, match="no published number"):
        published_value("nope")


def test_label_efficiency_rows_end_at_the_headline():
    for ds, head in (("BUS-BRA", 91.0), ("TN3K", 82.7)):
        curve = published_numbers("OpenUS", ds, metric="dice").dropna(subset=["label_fraction"])
        curve = curve.sort_values("label_fraction")
        assert curve["value"].is_monotonic_increasing
        assert curve["value"].iloc[-1] == head


def test_references_point_at_existing_rows():
    from uslib.evaluation import protocols

    ours = {protocols.PROBE, protocols.KNN, protocols.PARTIAL_TEST, protocols.PARTIAL_LAST,
            protocols.SUPERVISED, protocols.SEG_FROZEN}  # fmt: skip
    for (task, protocol, metric), ids in REFERENCES.items():
        assert protocol in ours
        rows = reference_for(task, metric, protocol)
        assert sorted(rows["id"]) == sorted(ids)
        assert (rows["metric"] == metric).all()
    assert reference_for("liver", "accuracy", protocols.PROBE).empty
    assert reference_for("lung", "accuracy", protocols.PROBE).empty  # USCL fine-tuned, not probed


def _results(profile: str = "cpu") -> pd.DataFrame:
    rows = []
    for enc, src, acc in (("uscl", "pretrained", 0.9), ("random:resnet18", "random", 0.5)):
        for lf in (0.1, 1.0):
            rows.append(
                {
                    "task": "lung",
                    "data": "synthetic:lung",
                    "kind": "classification",
                    "protocol": "partial FT, best test epoch (USCL)",
                    "encoder": enc,
                    "source": src,
                    "metric": "accuracy",
                    "value": acc * lf**0.1,
                    "std": 0.02,
                    "label_fraction": lf,
                    "profile": profile,
                    "contamination": "pretrained on the same generator"
                    if src == "pretrained"
                    else "",
                }
            )
    rows.append(
        {
            "task": "fetal_head",
            "data": "synthetic:fetal_head",
            "kind": "segmentation",
            "protocol": "frozen + SegDecoder",
            "encoder": "uscl",
            "metric": "hd95",
            "value": 3.456,
            "std": np.nan,
            "label_fraction": 1.0,
            "profile": profile,
            "contamination": "",
        }
    )
    return results_frame(rows)


def test_format_value_units():
    assert format_value("accuracy", 0.9031, 0.0044) == "90.3 ± 0.4"
    assert format_value("hd95", 3.456) == "3.46"
    assert format_value("dice", float("nan")) == "–"


def test_summary_table_sets_papers_beside_ours_with_flags():
    s = summary_table(_results())
    lung = s[s.task == "lung"].iloc[0]
    assert lung["uscl"].startswith("90.0 ± 2.0") and lung["uscl"].endswith(CONTAMINATION_MARK)
    assert lung["random:resnet18"] == "50.0 ± 2.0"
    assert lung["paper"] == "94.19 (USCL, POCUS, README)"
    assert "paper: real data, ours: synthetic" in lung["notes"]
    assert "pretrained on this data" in lung["notes"]
    assert s[s.task == "fetal_head"]["paper"].item() == ""
    assert list(s.columns[:5]) == ["task", "data", "profile", "protocol", "metric"]
    smoke = summary_table(_results("smoke"))
    assert all(SMOKE_NOTE in n for n in smoke["notes"])
    assert summary_table(_results(), metrics=("hd95",))["metric"].tolist() == ["hd95"]
    low = summary_table(_results(), label_fraction=0.1)
    assert len(low) == 1 and low["uscl"].item().startswith("7")


def test_write_tables_and_readme_round_trip(tmp_path):
    summary = summary_table(_results())
    paths = write_tables(summary, tmp_path / "figures", "07_summary")
    assert {p.suffix for p in paths.values()} == {".csv", ".md", ".tex"}
    assert "\\begin{tabular}" in paths["tex"].read_text()
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{README_START}\nold\n{README_END}\n\nmore text\n")
    saved = pd.read_csv(paths["csv"], keep_default_na=False, dtype=str)
    block = readme_block(saved, profile="cpu", source="figures/07_summary.csv")
    assert update_readme(readme, block) and not update_readme(readme, block)
    assert readme.read_text().endswith("more text\n")
    assert readme_agrees(readme, paths["csv"], profile="cpu")
    # a changed number breaks the agreement
    readme.write_text(readme.read_text().replace("90.0", "91.0"))
    assert not readme_agrees(readme, paths["csv"], profile="cpu")
    bad = tmp_path / "bad.md"
    bad.write_text("no markers")
    with pytest.raises(ValueError, match="results:start"):
        update_readme(bad, block)


def test_figures_cli_rewrites_readme_in_agreement_with_tables(tmp_path):
    from uslib.figures import main

    tables = tmp_path / "papermill_runs" / "cpu" / "07_evaluation" / "tables"
    tables.mkdir(parents=True)
    probe = _results().assign(protocol="linear probe")
    pd.concat([_results(), probe]).to_csv(tables / "results.csv", index=False)
    pd.DataFrame(
        [{"backbone": "vit_smoke", "params_m": 0.03, "gflops": 0.01, "images_per_s": 1e4}]
    ).to_csv(tables / "cost.csv", index=False)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_START}\n{README_END}\n")
    assert main(["--profile", "cpu", "--root", str(tmp_path)]) == 0
    figs = tmp_path / "figures"
    assert (figs / "07_summary.csv").is_file() and (figs / "07_cost.png").is_file()
    assert (figs / "07_label_efficiency_lung.png").is_file()
    assert readme_agrees(readme, figs / "07_summary.csv", profile="cpu")
    assert main(["--profile", "paper", "--root", str(tmp_path)]) == 1  # no run records

    # smoke runs render into their own folder and never touch the published figures or README
    smoke = tmp_path / "papermill_runs" / "smoke" / "07_evaluation" / "tables"
    smoke.mkdir(parents=True)
    pd.concat([_results(), probe]).assign(value=0.123).to_csv(smoke / "results.csv", index=False)
    before = readme.read_text(), (figs / "07_summary.csv").read_text()
    assert main(["--profile", "smoke", "--root", str(tmp_path)]) == 0
    assert (readme.read_text(), (figs / "07_summary.csv").read_text()) == before
    assert (tmp_path / "papermill_runs" / "smoke" / "_figures" / "07_summary.csv").is_file()


def test_evaluation_figures_are_figures():
    from matplotlib.figure import Figure

    from uslib.viz import evaluation as viz

    res = pd.concat([_results(), _results().assign(protocol="linear probe")])
    figs = [
        viz.plot_label_efficiency(res, task="lung", metric="accuracy", protocol="linear probe"),
        viz.plot_metric_intervals(res, metric="accuracy", protocol="linear probe"),
        viz.plot_segmentation_overlays(np.zeros((2, 8, 8)), np.eye(8)[None].repeat(2, 0),
                                       np.eye(8)[None].repeat(2, 0)),
        viz.plot_cost_table(pd.DataFrame({"backbone": ["a", "b"], "params_m": [1.0, 2.0],
                                          "gflops": [0.1, 0.2], "images_per_s": [10.0, 5.0]})),
        viz.plot_confusion(np.array([[3, 1], [0, 4]]), ["x", "y"]),
    ]  # fmt: skip
    assert all(isinstance(f, Figure) for f in figs)
    ax = figs[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "100"]  # % of labels


def test_vs_random_table_pairs_each_encoder_with_its_backbone_twin():
    """Each pretrained encoder is compared with the random-init encoder of its own backbone, and
    the mark follows the interval rule (a hand-made case for ▲, ▼ and ≈)."""
    from uslib.evaluation.report import separation, vs_random_table

    def row(enc, source, backbone, task, lo, v, hi, protocol="linear probe", metric="accuracy"):
        return {"task": task, "protocol": protocol, "metric": metric, "encoder": enc,
                "source": source, "backbone": backbone, "value": v, "ci_low": lo, "ci_high": hi,
                "label_fraction": 1.0, "contamination": ""}  # fmt: skip

    res = results_frame([
        row("uscl", "pretrained", "resnet18", "lung", 0.7, 0.8, 0.9),
        row("random:resnet18", "random", "resnet18", "lung", 0.4, 0.5, 0.6),
        row("mae", "pretrained", "vit", "lung", 0.1, 0.2, 0.3),
        row("random:vit", "random", "vit", "lung", 0.75, 0.85, 0.95),  # resnet's numbers differ
        row("mae", "pretrained", "vit", "breast", 0.4, 0.5, 0.6, "frozen + SegDecoder", "dice"),
        row("random:vit", "random", "vit", "breast", 0.5, 0.55, 0.7, "frozen + SegDecoder", "dice"),
        row("lonely", "pretrained", "vmamba", "lung", 0.1, 0.2, 0.3),  # no random twin: no row
        row("uscl", "pretrained", "resnet18", "lung", 0.1, 0.2, 0.3, "kNN"),  # not a headline
    ])  # fmt: skip
    t = vs_random_table(res).set_index("encoder")
    assert list(t.index) == ["uscl", "mae"]
    assert t.loc["uscl", "lung · probe acc"] == "80.0 [70.0, 90.0] vs 50.0 [40.0, 60.0] ▲"
    assert t.loc["mae", "lung · probe acc"] == "20.0 [10.0, 30.0] vs 85.0 [75.0, 95.0] ▼"
    assert t.loc["mae", "breast · seg Dice"] == "50.0 [40.0, 60.0] vs 55.0 [50.0, 70.0] ≈"
    assert t.loc["uscl", "breast · seg Dice"] == ""
    assert separation(0.5, 0.6, 0.6, 0.7) == "≈"  # touching intervals do not separate
    assert separation(float("nan"), 0.6, 0.1, 0.2) == "≈"


def test_readme_shows_the_vs_random_table_when_saved(tmp_path):
    """With a saved vs-random table beside the summary, the README block is that table (the wide
    summary is linked), and readme_agrees checks it."""
    from uslib.evaluation.report import VS_RANDOM, read_vs_random, vs_random_table

    res = _results().query("encoder == 'uscl' and task == 'lung'")
    res = res.assign(protocol="linear probe", backbone="resnet18", ci_low=0.8, ci_high=0.95)
    rand = res.assign(source="random", encoder="random:resnet18", value=0.5, ci_low=0.4,
                      ci_high=0.6)  # fmt: skip
    both = pd.concat([res, rand.assign(contamination="")])
    figs = tmp_path / "figures"
    paths = write_tables(summary_table(both), figs, "07_summary")
    write_tables(vs_random_table(both), figs, VS_RANDOM)
    vs = read_vs_random(paths["csv"])
    assert vs is not None and not vs.empty
    summary = pd.read_csv(paths["csv"], keep_default_na=False, dtype=str)
    block = readme_block(summary, profile="cpu", source="figures/07_summary.csv", vs_random=vs)
    assert "figures/07_vs_random.csv" in block and "`figures/07_summary.md`" in block
    assert "▲" in block
    readme = tmp_path / "README.md"
    readme.write_text(f"{README_START}\n{README_END}\n")
    update_readme(readme, block)
    assert readme_agrees(readme, paths["csv"], profile="cpu")
    readme.write_text(readme.read_text().replace("▲", "≈"))
    assert not readme_agrees(readme, paths["csv"], profile="cpu")


def test_readme_timings_come_from_the_run_record(tmp_path):
    """The README timings section is rendered from reproduce.json; editing a number there is
    caught by comparing with the record (as test_repository_readme_timings_agree does)."""
    import json

    from uslib.evaluation.report import readme_section
    from uslib.figures import TIMINGS_END, TIMINGS_START, rewrite_timings, timings_block

    rec = {"make": "make reproduce PROFILE=cpu", "start": "2026-12-07T06:00:00+00:00",
           "machine": {"cpu_count": 2, "torch_threads": 2, "matmul_gflops_fp32": 197.6,
                       "loadavg_1min_at_start": 0.1},
           "notebooks": {"02_x": {"seconds": 300.0, "git_sha": "abcdef123", "command": "make r",
                                  "loadavg_1min_at_end": 1.9},
                         "01_y": {"seconds": 12.0, "git_sha": "abcdef123", "command": "make r",
                                  "loadavg_1min_at_end": 1.0}},
           "total_s": 312.0}  # fmt: skip
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "reproduce.json").write_text(json.dumps(rec))
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{TIMINGS_START}\nold\n{TIMINGS_END}\nb\n")
    assert rewrite_timings(readme, runs, "cpu")
    section = readme_section(readme, TIMINGS_START, TIMINGS_END)
    assert section == timings_block(rec, "cpu").strip()
    assert "Total 5.2 min" in section and "197.6 GFLOP/s" in section
    assert section.index("01_y") < section.index("02_x")
    assert "|5.0|abcdef1|`maker`|1.9|" in section.replace(" ", "")


def test_repository_readme_timings_agree_with_the_run_record():
    import json

    from uslib.evaluation.report import readme_section
    from uslib.figures import TIMINGS_END, TIMINGS_START, timings_block
    from uslib.runs import repo_root

    readme, rec = (
        repo_root() / "README.md",
        repo_root() / "papermill_runs" / "cpu" / "reproduce.json",
    )
    if TIMINGS_START not in readme.read_text() or not rec.is_file():
        pytest.skip("no timings section or no committed cpu run record")
    expected = timings_block(json.loads(rec.read_text()), "cpu").strip()
    assert readme_section(readme, TIMINGS_START, TIMINGS_END) == expected


def test_human_names_for_encoders():
    from uslib.evaluation.report import human_name

    assert human_name("02_uscl_sample_pairs", "resnet18(in_chans=1)") == "USCL ResNet-18"
    assert human_name("random:resnet18") == "random init ResNet-18"
    assert human_name("supervised:vmamba_small") == "supervised VMamba-S"
    assert human_name("random:vit_cpu") == "random init vit cpu"
    assert human_name("my_run") == "my_run"  # unknown run folders keep their name

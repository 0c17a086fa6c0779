"""The dataset catalog holds the notes' facts: counts, access levels, overlaps."""

from __future__ import annotations

import pytest

from uslib.data.catalog import (
    ACCESS_LEVELS,
    PAPERS,
    catalog_summary,
    filter_catalog,
    load_catalog,
    pretrain_eval_overlap,
)


def test_openus_corpus_matches_readme_table():
    # 42 datasets summing to 309,364 images (openus_tinyusfm.md §1.4)
    pre = filter_catalog(paper="openus", role="pretrain")
    assert len(pre) == 42 and pre["dataset_id"].is_unique
    assert int(pre["n_images"].sum()) == 309_364
    assert (pre["licence"] == "").all()  # "Licences are not stated upstream"


def test_unius_bench_has_17_datasets_and_60940_images():
    bench = filter_catalog(paper="tinyusfm", role="downstream")
    assert len(bench) == 17 and int(bench["n_images"].sum()) == 60_940
    assert bench["tasks"].str.contains(r"\[inferred\]").all()  # task split is inferred
    assert len(set(bench["body_part"])) == 15  # 15 organs in the README figure


def test_us4_subsets_add_up_and_release_status():
    sub = filter_catalog(paper="uscl", role="pretrain")
    us4 = sub[sub["dataset_id"] == "us4"].iloc[0]
    parts = sub[sub["dataset_id"] != "us4"]
    assert len(parts) == 4
    assert int(parts["n_images"].sum()) == us4["n_images"] == 23_231
    assert int(parts["n_videos"].sum()) == us4["n_videos"] == 1_051
    assert us4["access"] == "never released"
    assert set(parts.loc[parts["access"] == "private", "name"]) == {
        "Liver Fibrosis",
        "COVID19-LUSMS",
    }
    assert filter_catalog(access="never released")["name"].tolist() == ["US-4"]


def test_pumit_has_55_datasets_two_of_them_ultrasound():
    pre = filter_catalog(paper="pumit", role="pretrain")
    assert pre["dataset_id"].nunique() == 55
    assert set(pre.loc[pre["modality"] == "US", "dataset_id"]) == {"busi", "hc18"}


def test_columns_and_vocabularies():
    cat = load_catalog()
    assert set(cat["access"]) <= set(ACCESS_LEVELS)
    assert set(cat["paper"]) <= set(PAPERS)
    assert (cat["evidence"] != "").all()
    for name in ("POCUS (Born et al.)", "BUSI", "HC", "Fetal Planes", "BUS-BRA", "TN3K"):
        assert name in set(cat["name"]), name
    cat.loc[0, "name"] = "changed"  # load_catalog returns a copy
    assert load_catalog().loc[0, "name"] != "changed"


def test_filter_by_organ_task_and_case():
    heart = filter_catalog(organ="HEART", task="segmentation")
    assert {"camus", "echonet_dynamic"} <= set(heart["dataset_id"])
    assert heart["organ"].str.contains("heart").all()
    with pytest.raises(ValueError, match="valid"):
        filter_catalog(paper="mae")
    with pytest.raises(ValueError, match="valid"):
        filter_catalog(organ="spleenish")


def test_openus_evaluates_on_sets_it_pretrained_on():
    overlap = pretrain_eval_overlap("openus")
    assert set(overlap["dataset_id"]) == {"busi", "bus_bra", "tn3k", "fetal_planes"}


def test_summary_counts_datasets_and_images():
    s = catalog_summary(filter_catalog(paper="openus", role="pretrain"), by=("access",))
    assert s["n_rows"].sum() == 42
    assert s["n_images"].sum() == 309_364
    assert set(s["access"]) <= set(ACCESS_LEVELS)

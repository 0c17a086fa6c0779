"""The benchmark suite (``python -m benchmarks``) and the GPU script (``benchmarks/gpu.sh``).

Fast (tiny sizes, one iteration) and without timed assertions: these check that the code runs
and records what it must (JSON keys, threads, load average, commit), not how fast anything is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import gpu, harness, scaling, suite  # noqa: E402


def test_share_of_peak_hand_case() -> None:
    # 2 GFLOP in 0.5 s = 4 GFLOP/s, on an 8 GFLOP/s peak: half of it
    assert harness.share_of_peak(2e9, 0.5, 8e9) == pytest.approx(0.5)
    assert harness.share_of_peak(3e12, 1.0, 989e12) == pytest.approx(3 / 989)
    assert harness.share_of_peak(None, 1.0, 1e9) is None
    assert harness.share_of_peak(1e9, 0.0, 1e9) is None
    assert harness.share_of_peak(1e9, 1.0, None) is None


def test_bf16_peak_table_by_device_name() -> None:
    assert gpu.bf16_peak("NVIDIA H100 80GB HBM3") == (989e12, "H100 SXM")
    assert gpu.bf16_peak("NVIDIA H100 PCIe") == (756e12, "H100 PCIe")
    assert gpu.bf16_peak("NVIDIA H200") == (989e12, "H200")
    assert gpu.bf16_peak("NVIDIA A100-SXM4-80GB") == (None, None)  # measured instead


def test_coreset_projection_arithmetic() -> None:
    small = {"n": 100_000, "select_s": 10.0, "peak_alloc_mb": 100.0, "peak_rss_mb": 1000.0}
    big = {"n": 1_000_000, "select_s": 100.0, "peak_alloc_mb": 400.0, "peak_rss_mb": 2000.0}
    p = suite.coreset_projection([small, big])
    assert p["select_s"] == pytest.approx(220.0)  # linear from 1 M
    assert p["select_s_affine"] == pytest.approx(220.0)  # a = 0 here
    assert "100.0 s x 2200000 / 1000000" in p["select_time_arithmetic"]


def test_coreset_projection_refuses_a_negative_slope() -> None:
    # quick run c9f95b1: the 20 K row (warm-up, load) took longer than the 100 K row
    small = {"n": 20_000, "select_s": 37.26, "peak_alloc_mb": 183.8, "peak_rss_mb": 900.0}
    big = {"n": 100_000, "select_s": 25.69, "peak_alloc_mb": 599.0, "peak_rss_mb": 1500.0}
    p = suite.coreset_projection([small, big])
    assert p["select_s_affine"] is None and "no projection" in p["select_time_affine_arithmetic"]
    assert p["select_s"] > 0  # linear from the largest size stays


def test_two_point_fit_hand_case() -> None:
    # coreset.json: 24.79 s at 100 K, 84.58 s at 1 M: b = 59.79 / 900000 s/row; at 2.2 M:
    # 84.58 + 59.79 x 1.2 M / 0.9 M = 84.58 + 79.72 = 164.30 s
    fit = scaling.two_point_fit(100_000, 24.79, 1_000_000, 84.58, 2_200_000)
    assert fit["value"] == pytest.approx(164.30, abs=0.01)
    assert fit["slope"] == pytest.approx(59.79 / 900_000)
    assert "= 164.3 s" in fit["arithmetic"]
    assert scaling.two_point_fit(20_000, 37.26, 100_000, 25.69, 2_200_000)["value"] is None


def test_gpu_projection_hand_case() -> None:
    # 1,000 images x 10 epochs x 1 TFLOP = 1e16 FLOP; at 1 PFLOP/s x MFU 0.5 = 5e14 FLOP/s:
    # 20 GPU-seconds; 8 GPUs: 2.5 s of wall time
    p = scaling.gpu_projection(1_000, 10, 1e12, 1e15, mfu=0.5, gpus=(1, 8))
    assert p["total_flops"] == pytest.approx(1e16)
    assert p["gpu_seconds"] == pytest.approx(20.0)
    assert p["gpu_hours"] == pytest.approx(20.0 / 3600)
    assert p["wall_hours"][8] == pytest.approx(2.5 / 3600)
    assert "= 1e+16 FLOP" in p["arithmetic"] and "20 GPU-s" in p["arithmetic"]
    assert scaling.h100_peak() == 989e12


def test_recipes_come_from_the_presets() -> None:
    from uslib.methods.dmae import DMAEConfig
    from uslib.methods.openus import OpenUSConfig
    from uslib.methods.tinyusfm import TinyUSFMConfig

    recs = {r["run"].split(" (")[0]: r for r in scaling.recipes()}
    assert recs["OpenUS pretraining"]["epochs"] == OpenUSConfig.preset("paper").optim.epochs
    assert recs["TinyUSFM distillation"]["images"] == TinyUSFMConfig.preset("paper").coreset_budget
    assert recs["DMAE distillation"]["epochs"] == DMAEConfig.preset("paper").optim.epochs


def test_readme_block_is_what_the_committed_json_generates() -> None:
    text = (ROOT / "README.md").read_text()
    found = scaling.readme_block(text)
    assert found is not None, "README.md lacks the <!-- bench:start --> ... end markers"
    suite_json = scaling.block_suite(found)
    assert suite_json is not None and suite_json.exists(), suite_json
    assert found == scaling.block(suite_json), (
        "README's generated block is stale: run python -m benchmarks.scaling --readme README.md"
        f" --suite {suite_json.relative_to(ROOT)}"
    )


def test_count_flops_counts_cpu_attention() -> None:
    import torch

    q = torch.randn(2, 4, 16, 8, requires_grad=True)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    # QK^T and AV: 2 x (2 B H L L E) = 2 x 2 x 2 x 4 x 16 x 16 x 8
    assert harness.count_flops(lambda: sdpa(q, q, q)) == 2 * 2 * 2 * 4 * 16 * 16 * 8
    assert harness.count_flops(lambda: sdpa(q, q, q).sum().backward()) == 3.5 * 65536


def test_plan_ids_are_unique_and_select_filters() -> None:
    rows = suite.plan("quick")
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids))
    kinds = {"train_step", "loader", "synthetic", "augment", "scan", "coreset", "features"}
    assert {r["kind"] for r in rows} == kinds
    steps = [r for r in rows if r["kind"] == "train_step"]
    assert all(r["profile_step"] == (r["profile"] == "cpu") for r in steps)
    picked = suite.select(rows, "train_step/mae/*,loader/spad/cpu/3d")
    assert [r["id"] for r in picked] == [
        "train_step/mae/smoke", "train_step/mae/cpu", "loader/spad/cpu/3d"
    ]  # fmt: skip


def test_gpu_sh_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu.sh")], check=True)


def test_gpu_dry_run_writes_its_json(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run", "--threads", "1",
           "--only", "mae,spad/3d", "--out", str(tmp_path)]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, capture_output=True, text=True, timeout=120)
    res = json.loads((tmp_path / "gpu.json").read_text())
    assert res["dry_run"] is True and res["peak_flops"] > 0 and res["peak_source"]
    assert {"device", "git", "rows", "scan", "vmamba_scan", "flop_counter"} <= set(res)
    assert [(r["method"], r["variant"]) for r in res["rows"]] == [("mae", ""), ("spad", "3d")]
    for r in res["rows"]:
        assert "error" not in r, r
        for key in ("images_per_s", "peak_memory_mib", "flops_per_step", "mfu", "batch"):
            assert key in r
        assert r["flops_per_step"] > 0
    cases = res["scan"]["cases"]
    assert cases and all(c["within_tolerance"] for c in cases)
    assert {"max_abs_diff_out", "max_rel_diff_grad", "ours_over_other_fwd_bwd"} <= set(cases[0])
    assert "# GPU benchmark (dry run, CPU)" in (tmp_path / "gpu.md").read_text()


def test_suite_tiny_rows_record_threads_load_and_commit(tmp_path: Path) -> None:
    only = "train_step/mae/smoke,loader/mae/smoke,features/mae/smoke,scan/*"
    res = suite.main(["--tiny", "--threads", "1", "--only", only, "--out", str(tmp_path)])
    assert res is not None
    written = json.loads((tmp_path / "suite_tiny.json").read_text())
    assert written["mode"] == "tiny" and written["threads"] == 1
    assert written["matmul_peak"]["used"] > 0 and written["git"]["commit"]
    rows = {r["id"]: r for r in written["rows"]}
    assert set(rows) == set(only.split(",")[:3]) | {"scan/L64_D16_N1"}
    for r in rows.values():
        assert "error" not in r, r
        assert r["threads"] == 1
        assert r["loadavg_1min_before"] >= 0 and r["loadavg_1min_after"] >= 0
        assert r["git_commit"] == written["git"]["commit"] and isinstance(r["git_dirty"], bool)
    step = rows["train_step/mae/smoke"]
    assert step["flops_per_step"] > 0 and step["peak_rss_delta_mib"] is not None
    assert step["share_of_matmul_peak"] == pytest.approx(
        step["flops_per_step"] / step["best_s"] / written["matmul_peak"]["used"]
    )
    prof = step["step_profile"]  # tiny mode profiles the smoke steps
    assert 0 < len(prof["ops"]) <= 8 and prof["profiled_step_s"] > 0
    assert sum(o["share_of_step"] for o in prof["ops"]) + prof["other_share"] >= 0.999
    assert isinstance(step["profile_reported"], bool)
    loader = rows["loader/mae/smoke"]
    assert set(loader["images_per_s_by_workers"]) == {"0", "1", "2"}
    assert loader["ratio_to_step_best"] > 0 and isinstance(loader["meets_2x"], bool)
    md = (tmp_path / "suite_tiny.md").read_text()
    for head in ("## Training step", "## DataLoader vs training step", "## Selective scan",
                 "## Evaluation feature extraction"):  # fmt: skip
        assert head in md
    assert ("### `train_step/mae/smoke`" in md) == step["profile_reported"]

"""The papermill runner on tiny notebooks: order, outputs, parameters, failure reporting."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from uslib.reproduce import NotebookFailed, main, notebooks_in, reproduce


def _notebook(folder: Path, name: str, body: str) -> None:
    params = new_code_cell("profile: str = 'smoke'  # profile\nfactor: int = 2  # multiplier")
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[new_markdown_cell(f"# {name[:2]} tiny"), params, new_code_cell(body)])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, folder / name)


def test_runs_in_order_and_injects_profile(tmp_path: Path, capsys) -> None:
    src, out = tmp_path / "nb", tmp_path / "out"
    src.mkdir()
    _notebook(src, "02_second.ipynb", "print('second', profile)")
    _notebook(src, "01_first.ipynb", "print('first', profile, factor * 2)")
    done = reproduce("cpu", notebooks_dir=src, out_dir=out)
    assert [n for n, _ in done] == ["01_first.ipynb", "02_second.ipynb"]
    executed = nbformat.read(out / "01_first.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "first cpu 4" in text
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)
    assert "01_first.ipynb" in capsys.readouterr().out


def test_first_failure_stops_and_names_notebook_and_cell(tmp_path: Path) -> None:
    src, out = tmp_path / "nb", tmp_path / "out"
    src.mkdir()
    _notebook(src, "01_ok.ipynb", "x = 1")
    _notebook(src, "02_bad.ipynb", "raise ValueError('boom')")
    _notebook(src, "03_never.ipynb", "x = 3")
    with pytest.raises(
        NotebookFailed, match=r"02_bad\.ipynb failed in cell \d+ \(ValueError: boom"
    ):
        reproduce("smoke", notebooks_dir=src, out_dir=out)
    assert (out / "01_ok.ipynb").is_file() and not (out / "03_never.ipynb").exists()


def test_only_and_empty_folder(tmp_path: Path) -> None:
    _notebook(tmp_path, "01_a.ipynb", "1")
    _notebook(tmp_path, "07_b.ipynb", "1")
    assert [p.name for p in notebooks_in(tmp_path, ["07"])] == ["07_b.ipynb"]
    with pytest.raises(FileNotFoundError, match="no NN_"):
        reproduce("smoke", notebooks_dir=tmp_path / "empty", out_dir=tmp_path / "o")


def test_cli_returns_nonzero_on_failure(tmp_path: Path, monkeypatch) -> None:
    import uslib.reproduce as rp

    def failing(*a, **k):
        raise NotebookFailed("03_x.ipynb failed in cell 4 (KeyError: 'a')")

    monkeypatch.setattr(rp, "reproduce", failing)
    assert main(["--profile", "smoke"]) == 1


def test_heartbeat_reports_cell_and_training_progress(tmp_path: Path, capfd, monkeypatch) -> None:
    import uslib.reproduce as rp

    monkeypatch.setattr(rp, "HEARTBEAT_S", 0.5)
    src, out = tmp_path / "nb", tmp_path / "out"
    src.mkdir()
    body = (
        "import json, pathlib, time\n"
        f"d = pathlib.Path({str(out)!r}) / '01_slow_pretrain'\n"
        "d.mkdir(parents=True, exist_ok=True)\n"
        "state = dict(step=3, total_steps=9, epoch=0, epochs=3, loss=0.5, images_per_s=7.0)\n"
        "(d / 'progress.json').write_text(json.dumps({**state, 'time': time.time()}))\n"
        "time.sleep(3)"
    )
    _notebook(src, "01_slow.ipynb", body)
    reproduce("smoke", notebooks_dir=src, out_dir=out)
    captured = capfd.readouterr()
    lines = [ln for ln in captured.out.splitlines() if ln.strip().startswith("..")]
    # three code cells: parameters, injected parameters, body
    assert lines, captured.out
    assert any("cell 3/3" in ln and "01_slow_pretrain: step 3/9 epoch 1/3" in ln for ln in lines), (
        lines
    )
    assert "without encryption" not in captured.err  # IPC kernel transport


def test_cell_status_counts_code_cells(tmp_path: Path) -> None:
    from uslib.reproduce import cell_status

    nb = new_notebook(cells=[new_markdown_cell("# x"), new_code_cell("1"), new_code_cell("2")])
    nb.cells[1].metadata["papermill"] = {"status": "completed"}
    nb.cells[2].metadata["papermill"] = {"status": "pending"}
    nbformat.write(nb, tmp_path / "a.ipynb")
    assert cell_status(tmp_path / "a.ipynb") == (1, 2)
    assert cell_status(tmp_path / "missing.ipynb") == (0, 0)


def test_run_record_names_command_machine_and_seconds(tmp_path: Path) -> None:
    import json

    from uslib.reproduce import matmul_gflops, run_record

    src, out = tmp_path / "nb", tmp_path / "out"
    src.mkdir()
    _notebook(src, "01_a.ipynb", "x = 1")
    record = run_record("smoke", None, ["--profile", "smoke"])
    reproduce("smoke", notebooks_dir=src, out_dir=out, record=record)
    saved = json.loads((out / "reproduce.json").read_text())
    assert saved["make"] == "make reproduce PROFILE=smoke" and "01_a" in saved["notebooks"]
    assert saved["total_s"] == saved["notebooks"]["01_a"]["seconds"] > 0
    _notebook(src, "02_b.ipynb", "x = 2")  # a later --only run keeps 01's entry
    reproduce(
        "smoke", notebooks_dir=src, out_dir=out, only=["02"], record=run_record("smoke", None, [])
    )
    saved = json.loads((out / "reproduce.json").read_text())
    assert set(saved["notebooks"]) == {"01_a", "02_b"}
    assert saved["total_s"] == pytest.approx(sum(v["seconds"] for v in saved["notebooks"].values()))
    assert saved["machine"]["cpu_count"] >= 1 and saved["machine"]["matmul_gflops_fp32"] > 0
    assert 0 < matmul_gflops(n=64, repeats=1)


def test_papermill_reads_every_typed_parameter_of_every_notebook() -> None:
    """``x: int | None = None`` lines are parameters to papermill too (else it warns 'Passed
    unknown parameter' for each one passed, e.g. data_root / out_dir)."""
    import ast
    import json
    from pathlib import Path

    from papermill.translators import PythonTranslator

    from uslib.reproduce import typed_parameters_translator

    translator = typed_parameters_translator()
    stock_misses = 0
    for nb in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        cell = next(c for c in cells if "parameters" in c["metadata"].get("tags", []))
        src = "".join(cell["source"])
        names = [node.target.id for node in ast.parse(src).body]
        assert [p.name for p in translator.inspect({"source": src})] == names, nb.name
        stock_misses += len(names) - len(PythonTranslator.inspect({"source": src}))
    assert stock_misses > 0  # the stock pattern skips the `| None` lines this one reads

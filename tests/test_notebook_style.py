"""Every notebook in notebooks/ follows the anatomy rules; the checker catches each breach."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from notebook_style import style_problems

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_follows_house_style(path: Path) -> None:
    assert path.name[:2].isdigit() and path.name[2] == "_", "name must be NN_<what>.ipynb"
    assert style_problems(path) == []


def _write(tmp_path: Path, cells: list) -> Path:
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    path = tmp_path / "01_x.ipynb"
    nbformat.write(nb, path)
    return path


def _params(src: str = "profile: str = 'smoke'  # profile") -> nbformat.NotebookNode:
    cell = new_code_cell(src)
    cell.metadata["tags"] = ["parameters"]
    return cell


def test_checker_accepts_a_good_notebook(tmp_path: Path) -> None:
    good = _write(tmp_path, [new_markdown_cell("# 01 · Demo"), _params(), new_code_cell("x = 1")])
    assert style_problems(good) == []


@pytest.mark.parametrize(
    ("cells", "message"),
    [
        ([new_markdown_cell("Demo"), _params()], "first cell"),
        ([new_markdown_cell("# 01 x"), new_code_cell("x = 1")], "exactly one"),
        ([new_markdown_cell("# 01 x"), new_code_cell("y = 2"), _params()], "first code cell"),
        ([new_markdown_cell("# 01 x"), _params(), new_code_cell("def f():\n    pass")], "function"),
        ([new_markdown_cell("# 01 x"), _params(), new_code_cell("%pip install x")], "pip"),
        (
            [new_markdown_cell("# 01 x"), _params(), new_code_cell("import sys\nsys.path")],
            "sys.path",
        ),
        (
            [new_markdown_cell("# 01 x"), _params(), new_code_cell("p = '/home/me/data'")],
            "absolute",
        ),
        ([new_markdown_cell("# 01 x"), _params("k: int = 2  # k = 2 n")], "more than one '='"),
        (
            [new_markdown_cell("# 01 x"), _params(), new_code_cell("\n".join(["a = 1"] * 16))],
            "16 lines",
        ),
    ],
)
def test_checker_flags_each_rule(tmp_path: Path, cells: list, message: str) -> None:
    problems = style_problems(_write(tmp_path, cells))
    assert any(message in p for p in problems), problems


def test_checker_flags_stored_outputs(tmp_path: Path) -> None:
    cell = new_code_cell("1 + 1")
    cell.outputs = [
        nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)
    ]
    path = _write(tmp_path, [new_markdown_cell("# 01 x"), _params(), cell])
    assert any("outputs" in p for p in style_problems(path))

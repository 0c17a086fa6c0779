"""The notebook anatomy rules (HOUSE_STYLE §4.6), checked with nbformat and no kernel."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

MAX_LINES = 15
_FORBIDDEN = [
    (re.compile(r"^\s*(def|class)\s", re.M), "defines a function or class"),
    (re.compile(r"^\s*[!%]\s*pip\b", re.M), "installs packages (!pip / %pip)"),
    (re.compile(r"^\s*!\s*wget\b", re.M), "downloads with !wget"),
    (re.compile(r"\bsys\.path\b"), "touches sys.path"),
    (
        re.compile(r"""["'](/(home|root|Users|work|tmp|mnt|data)\b|[A-Za-z]:\\)"""),
        "uses an absolute path",
    ),
]


def style_problems(path: Path) -> list[str]:
    """Every rule the notebook at ``path`` breaks (empty when it follows them all)."""
    nb = nbformat.read(path, as_version=4)
    cells = nb.cells
    problems: list[str] = []
    if not cells or cells[0].cell_type != "markdown" or not re.match(r"# \d\d\b", cells[0].source):
        problems.append("first cell must be markdown starting '# NN'")
    code = [c for c in cells if c.cell_type == "code"]
    tagged = [i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        problems.append(f"needs exactly one cell tagged 'parameters', found {len(tagged)}")
    elif tagged[0] != 0:
        problems.append("the 'parameters' cell must be the first code cell")
    for c in (code[t] for t in tagged):
        for n, line in enumerate(c.source.splitlines(), 1):
            # papermill's parameter inspection warns on every line holding more than one '='
            if not line.lstrip().startswith("#") and line.count("=") > 1:
                problems.append(f"parameters line {n} has more than one '=': {line.strip()!r}")
    for i, c in enumerate(code):
        where = f"code cell {i + 1}"
        if c.get("outputs") or c.get("execution_count") is not None:
            problems.append(f"{where} has stored outputs")
        n = len(c.source.strip().splitlines())
        if n > MAX_LINES:
            problems.append(f"{where} has {n} lines (max {MAX_LINES})")
        for pattern, what in _FORBIDDEN:
            if pattern.search(c.source):
                problems.append(f"{where} {what}")
    if nb.metadata.get("kernelspec", {}).get("name") not in (None, "python3"):
        problems.append("kernelspec must be 'python3'")
    return problems

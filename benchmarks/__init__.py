"""Benchmarks of uslib: ``python -m benchmarks`` (the suite, ``suite.py``), ``benchmarks/gpu.sh``
(``gpu.py``) and the per-topic ``bench_*.py`` scripts.

The ``bench_*.py`` scripts run as ``python benchmarks/bench_x.py`` and import their helper as
``from recording import ...`` (the script's folder is then first on ``sys.path``). So that the
suite can import them as ``benchmarks.bench_x``, this folder is appended to ``sys.path`` here.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.append(_HERE)

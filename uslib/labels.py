"""Label conventions shared by ``data`` (records) and ``losses`` (ignore index), bottom layer."""

from __future__ import annotations

UNLABELLED = -1
"""Label of an unlabelled item (USCL's code uses 9999; we use -1 and say so)."""

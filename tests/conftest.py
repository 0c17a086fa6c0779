"""Shared pytest fixtures and options."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(
    os.environ.get("USLIB_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: needs --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def tiny_images() -> torch.Tensor:
    return torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def tiny_clip() -> torch.Tensor:
    return torch.rand(2, 4, 1, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA

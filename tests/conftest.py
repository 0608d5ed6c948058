"""Shared fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MARGIN_THEORY_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The genuine datasets beside the project (`../shared/data`), or skip."""
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"genuine data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and problems: one intra-op thread is fastest and immune to OpenMP
    spin-waiting when the 2 cores are shared (restored after the module)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)

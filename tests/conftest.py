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

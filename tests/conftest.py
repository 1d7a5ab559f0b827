"""Shared test fixtures.

The real data live in ``../shared/data`` beside the repository (or where
``$PSFAX_SHARED_DATA`` points).  Tests that need a file skip with a reason
when it cannot be found.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Directory of the real sample data (ZTF quadrant, AIA images)."""
    return Path(os.environ.get("PSFAX_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real sample data not found at {path} (set PSFAX_SHARED_DATA)")
    return path


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep PSF/sample caches of the test run out of the user's cache, but keep
    JAX's compilation cache shared so repeated runs stay fast."""
    os.environ.setdefault("PSFAX_CACHE_DIR", str(tmp_path_factory.mktemp("psfax-cache")))
    yield

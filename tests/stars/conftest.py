"""Fixtures of the stars tests: the real ZTF quadrant, read once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

SCIENCE = "ztf_20200924431759_000655_zr_c13_o_q3_sciimg.fits.gz"
MASK = "ztf_20200924431759_000655_zr_c13_o_q3_mskimg.fits.gz"


@pytest.fixture(scope="session")
def ztf_files(shared_data: Path) -> tuple[Path, Path]:
    science, mask = shared_data / SCIENCE, shared_data / MASK
    if not (science.exists() and mask.exists()):
        pytest.skip(f"ZTF sample not found in {shared_data}")
    return science, mask


@pytest.fixture(scope="session")
def ztf_exposure(ztf_files):
    from psfax.stars.exposure import read_exposure

    return read_exposure(*ztf_files)


@pytest.fixture(scope="session")
def galsim_field():
    """1024 x 1024 GalSim quadrant, 200 stars of known spatially varying PSF (shared by the
    pipeline and CLI tests, so that the CLI run reuses the compiled fit programs)."""
    from stars_synthetic import render_field

    return render_field(shape=(1024, 1024), n_stars=200, seed=5)

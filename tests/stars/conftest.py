"""Fixtures of the stars tests: the real ZTF quadrant (``ztf_files``, tests/conftest.py), read once per session."""

from __future__ import annotations

import pytest


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


@pytest.fixture(scope="session")
def galsim_fit_and_progress(galsim_field):
    """The pipeline's :class:`~psfax.stars.pipeline.ImageFit` of ``galsim_field`` (one run per session)
    and the progress messages it gave."""
    from psfax.stars import fit_image

    messages = []
    return fit_image(galsim_field.image, header=galsim_field.header, progress=messages.append), messages


@pytest.fixture(scope="session")
def galsim_fit(galsim_fit_and_progress):
    return galsim_fit_and_progress[0]

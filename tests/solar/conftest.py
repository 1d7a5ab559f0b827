"""Fixtures of the solar tests: the real AIA 171 images of the aia-sample."""

from __future__ import annotations

import warnings

import pytest


@pytest.fixture(scope="session")
def aia_map(aia_level1_file):
    """The real full-disk AIA 171 level-1 image, binned to 128 x 128 (float64)."""
    from psfax.solar.prep import read_level1

    return read_level1(aia_level1_file)


@pytest.fixture(scope="session")
def aia_map_4096(aia_map):
    """Full-resolution full-disk map, built as aiapy's own fixture does (resample to 4096 x 4096)."""
    import astropy.units as u

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return aia_map.resample((4096, 4096) * u.pixel)


@pytest.fixture(scope="session")
def aia_cutout(aia_cutout_file):
    """A real full-resolution (0.6"/px) AIA 171 cut-out, 705 x 769."""
    from psfax.solar.prep import read_level1

    return read_level1(aia_cutout_file)

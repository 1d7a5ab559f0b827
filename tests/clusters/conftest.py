"""Shared fixture: paint red-sequence (or other) galaxies onto an image cube."""

import numpy as np
import pytest

from psfax.clusters.centres import RedSequence
from psfax.clusters.config import load_config
from psfax.clusters.prior import mstar_i


def _paint(cube, xy, ratio, i_mag=None, z=0.4, sigma=1.5):
    """Add Gaussian sources (sigma px) at the (x, y) rows of ``xy`` to the (4, H, W) ``cube`` in place, with
    i magnitude ``i_mag`` (default m*_i(z), zero point 30) and band fluxes ``ratio`` (4,) times the i flux."""
    _, h, w = cube.shape
    yy, xx = np.mgrid[:h, :w]
    flux_i = 10.0 ** (-0.4 * ((mstar_i(z) if i_mag is None else i_mag) - 30.0))
    for x, y in xy:
        blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
        cube += flux_i * np.asarray(ratio)[:, None, None] * blob
    return cube


@pytest.fixture
def red_sequence():
    """The red-sequence model of the shipped ci prior."""
    return RedSequence.from_config(load_config("ci"))


@pytest.fixture
def paint(red_sequence):
    """paint(cube, xy, z=0.4, ratio=None): galaxies of the red sequence at z (or of the given flux ratios)."""
    def paint_sources(cube, xy, z=0.4, ratio=None):
        k = int(np.argmin(np.abs(red_sequence.z - z)))
        return _paint(cube, xy, red_sequence.flux_ratio[k] if ratio is None else ratio, z=z)
    return paint_sources

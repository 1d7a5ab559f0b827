"""The flux model error ``phi`` (psfax.stars.empirical): scatter beyond the noise, as a fraction."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from psfax.stars.empirical import apply_flux_model_error, excess_fraction


@pytest.mark.parametrize("phi", [0.005, 0.01, 0.03])
def test_excess_fraction_recovers_the_scatter_beyond_the_noise(phi):
    # 4000 ratios about 1.02 with per-star noise 0.2-1 % and an extra Gaussian scatter phi: the robust
    # spread (MAD) has a relative standard error of ~1.17 / sqrt(n) ~ 2 %, i.e. ~0.03 % of a 1.2 % total,
    # which the noise subtraction amplifies by total / phi (~2x at phi = 0.5 %): 0.15 % is > 2.5 sigma
    rng = np.random.default_rng(7)
    n = 4000
    noise = 1.02 * rng.uniform(0.002, 0.01, n)
    values = 1.02 + rng.normal(0.0, np.sqrt(noise**2 + (phi * 1.02) ** 2))
    assert excess_fraction(values, noise) == pytest.approx(phi, abs=1.5e-3)


def test_excess_fraction_is_zero_when_the_noise_covers_the_scatter():
    rng = np.random.default_rng(8)
    noise = rng.uniform(0.002, 0.01, 4000)
    values = 1.0 + rng.normal(0.0, 0.9 * noise)  # less scatter than the stated noise
    assert excess_fraction(values, noise) == 0.0


def test_apply_flux_model_error_adds_phi_flux_in_quadrature():
    table = Table({"flux_fit": [100.0, -50.0, 1e4], "flux_err": [3.0, 4.0, 10.0]})
    apply_flux_model_error(table, 0.01)
    np.testing.assert_allclose(table["flux_err"], np.hypot([3.0, 4.0, 10.0], [1.0, 0.5, 100.0]), rtol=1e-12)


def _gaussian_psf(sigma=1.0, k=2, size=15):
    from psfax.fitting.spatial import PolynomialBasis
    from psfax.fitting.table import TableGrid
    from psfax.psf import EmpiricalPSF

    length = TableGrid((size, size), k).length
    off = (np.arange(length) - (length - 1) / 2) / k
    g0 = np.exp(-(off[None, :] ** 2 + off[:, None] ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    return EmpiricalPSF(g0[None], k, size, PolynomialBasis(0))


def _blend(x, y, flux, group_id, floor=0.07):
    from psfax.stars.empirical import blend_variance

    return blend_variance(_gaussian_psf(), np.asarray(x, float), np.asarray(y, float), np.asarray(flux, float),
                          np.asarray(group_id), np.full((100, 100), 25.0), np.zeros((100, 100), bool), 5.0, 15, floor)


def test_blend_variance_is_zero_alone_or_without_a_floor():
    assert np.all(_blend([30.0, 60.0], [30.0, 60.0], [1e4, 1e4], [1, 2]) == 0.0)  # each alone in its group
    assert np.all(_blend([50.0, 52.0], [40.0, 40.0], [1e4, 1e4], [7, 7], floor=0.0) == 0.0)


def test_blend_variance_grows_as_neighbours_close_in():
    # Two equal stars in one group, 2 px apart on pixel centres: mirror images of each other, so equal terms;
    # the neighbour's share falls as they separate (at 12 px their stamps barely overlap: below 1 % of the
    # value at 2 px) and grows with the neighbour's flux, by less than its square (9x for 3x the flux) since
    # the brighter star's Poisson noise lowers the weights of the pixels it covers (4.6x here)
    near = _blend([50.0, 52.0], [40.0, 40.0], [1e4, 1e4], [7, 7])
    far = _blend([50.0, 62.0], [40.0, 40.0], [1e4, 1e4], [7, 7])
    bright = _blend([50.0, 52.0], [40.0, 40.0], [1e4, 3e4], [7, 7])
    assert near[0] == pytest.approx(near[1], rel=1e-6) and near[0] > 0
    assert far[0] < 0.01 * near[0]
    assert 3 * near[0] < bright[0] < 9 * near[0]

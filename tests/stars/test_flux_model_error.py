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

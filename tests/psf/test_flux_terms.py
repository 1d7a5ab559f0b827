"""The empirical PSF's flux terms: a shape that follows the star's brightness (brighter-fatter)."""

from __future__ import annotations

import galsim
import numpy as np
import pytest

from psfax.fitting.spatial import PolynomialBasis
from psfax.fitting.table import TableGrid
from psfax.psf import BuildOptions, EmpiricalPSF, build_psf
from psfax.psf.io import read_psf_fits, write_psf_fits

SIZE = 15
SKY, GAIN = 150.0, 6.0
SIGMA, WIDENING = 1.0, 0.05  # Gaussian sigma [px] of a faint star, and its relative growth at the brightest
F_LO, F_HI = 2e3, 2e5


def widening_stars(n: int, seed: int):
    """GalSim stamps (pixel-integrated Gaussians) whose sigma grows linearly with the flux, from SIGMA at zero
    flux to SIGMA (1 + WIDENING) at F_HI; fluxes log-uniform in [F_LO, F_HI], centres within 0.5 px of the
    stamp centre, sky-subtracted, with CCD noise.  Returns data, variance, x, y, flux."""
    rng = np.random.default_rng(seed)
    flux = np.exp(rng.uniform(np.log(F_LO), np.log(F_HI), n))
    x, y = 7 + rng.uniform(-0.5, 0.5, n), 7 + rng.uniform(-0.5, 0.5, n)
    data = np.empty((n, SIZE, SIZE))
    for i in range(n):
        star = galsim.Gaussian(sigma=SIGMA * (1 + WIDENING * flux[i] / F_HI), flux=flux[i])
        image = galsim.ImageD(SIZE, SIZE, scale=1.0)
        star.drawImage(image, offset=(x[i] - 7, y[i] - 7))  # pixel-integrated (method auto)
        data[i] = image.array
    variance = (np.maximum(data, 0) + SKY) / GAIN
    return data + rng.normal(size=data.shape) * np.sqrt(variance), variance, x, y, flux


@pytest.fixture(scope="module")
def builds():
    data, variance, x, y, flux = widening_stars(500, seed=11)
    zeros = np.zeros(len(data))
    out = {}
    for degree in (0, 2):
        options = BuildOptions(oversampling=2, degree=0, flux_degree=degree, reserve_fraction=0.5)
        out[degree] = build_psf(data, variance, False, x, y, zeros, zeros, options=options, sky=0.0)
    return out, flux


def test_flux_terms_follow_a_psf_that_widens_with_the_flux(builds):
    # The brightest fifth of the reserve stars (~50, S/N ~ 500-1000), whose width grows up to 5 %: one shape for
    # all leaves their residuals far above the noise (median reduced chi2 2.85-3.70 over seeds 11-14); the
    # quadratic in phi = flux / F_max follows it (1.18-1.21).  That is also what the flux terms give on stars
    # that do not widen (1.18-1.20, against 1.04-1.10 with one shape: the bright stars alone constrain the
    # flux planes, whose noise the brightest reserve stars see), so 1.3 is a model that follows the widening
    # and 2.5 one that does not.  Fluxes of the reserve stars: median error 0.65 % (faint half) and 0.17 %
    # (bright half), 125 each, so the medians are known to 0.07 % and 0.02 %: within 0.4 % and 0.1 % (~5 SE;
    # measured -0.28 to +0.10 % and -0.02 to +0.02 %).
    out, flux = builds
    for degree, (lo, hi) in ((0, (2.5, np.inf)), (2, (0.9, 1.3))):
        table = out[degree].table
        reserve = np.asarray(table["role"]) == "reserve"
        bright = reserve & (flux >= np.quantile(flux, 0.8))
        assert lo < np.median(np.asarray(table["reduced_chi2"], float)[bright]) < hi, degree
    table = out[2].table
    ratio = np.asarray(table["flux_fit"], float) / flux  # a Gaussian holds no light beyond the 7 px radius
    reserve = np.asarray(table["role"]) == "reserve"
    for half, tolerance in ((flux < np.median(flux), 4e-3), (flux >= np.median(flux), 1e-3)):
        assert abs(np.median(ratio[reserve & half]) - 1) < tolerance
    psf = out[2].psf
    assert psf.flux_degree == 2 and psf.flux_max == pytest.approx(flux[~reserve].max(), rel=0.05)


def test_beyond_the_brightest_build_star_the_shape_stays_put():
    psf = flux_psf()
    at_max = psf.render([7.0], [7.0], [0], [0], [psf.flux_max])
    beyond = psf.render([7.0], [7.0], [0], [0], [10 * psf.flux_max])
    np.testing.assert_array_equal(at_max, beyond)
    faint = psf.render([7.0], [7.0], [0], [0], [0.0])
    assert np.abs(faint - at_max).max() > 1e-3 * at_max.max()  # the flux terms do change the shape


def flux_psf(flux_degree: int = 2) -> EmpiricalPSF:
    """A Gaussian grid plus flux terms that widen it (a made-up model for the interfaces)."""
    length = TableGrid((SIZE, SIZE), 2).length
    off = (np.arange(length) - (length - 1) / 2) / 2
    r2 = off[None, :] ** 2 + off[:, None] ** 2
    g0 = np.exp(-r2 / 2) / (2 * np.pi)
    planes = [g0] + [0.05 * g0 * (r2 - 2) / d for d in range(1, flux_degree + 1)]
    return EmpiricalPSF(np.stack(planes), 2, SIZE, PolynomialBasis(0), flux_degree=flux_degree, flux_max=5e4)


def test_a_psf_with_flux_terms_needs_the_fluxes():
    with pytest.raises(ValueError, match="changes with the star's flux .* give each star's flux estimate"):
        flux_psf().render([7.0], [7.0], [0], [0])
    with pytest.raises(ValueError, match="flux terms .* need flux_max"):
        EmpiricalPSF(flux_psf().grid, 2, SIZE, PolynomialBasis(0), flux_degree=2)
    with pytest.raises(ValueError, match="flux_degree must be 0, 1 or 2"):
        BuildOptions(flux_degree=3)


def test_fits_round_trip_keeps_the_flux_terms(tmp_path):
    from astropy.io import fits

    psf = flux_psf()
    back = read_psf_fits(write_psf_fits(psf, tmp_path / "psf.fits"))
    assert back.flux_degree == 2 and back.flux_max == psf.flux_max
    np.testing.assert_array_equal(back.grid, psf.grid)
    head = fits.getheader(tmp_path / "psf.fits")
    assert head["FLUXDEG"] == 2 and head["NTERMS"] == 3
    assert fits.getheader(tmp_path / "psf.fits", "GRID")["TERM2"] == "phi^2"

"""The fast paths of PSF photometry agree with direct pixel integration on the same stamps."""

import numpy as np
import pytest

import psfax
from galsim_stars import GAIN, READ_NOISE
from psfax.fitting import FitSettings
from psfax.fitting.params import physical_names, shape_to_u
from psfax.fitting.taylor import shape_cells
from psfax.profiles import get_profile


@pytest.mark.slow
def test_per_star_shapes_on_shape_cells_match_direct_integration(moffat_stars):
    """Fixed shapes differing per star (+-10 % in FWHM and beta - 1) run on shape-cell tables (asked for
    with min_stars_per_cell = 1: by default so few stars per cell integrate directly); forcing direct
    quadrature (max_shape_cells = 0) must give the same fits.  Both models are within 1e-4 of
    the peak of the exact PSF, so x, y, flux may differ by a small fraction of their errors: 0.02 sigma."""
    n = len(moffat_stars.stamps)
    rng = np.random.default_rng(5)
    shape = {"fwhm": 1.8 * np.exp(rng.uniform(-0.1, 0.1, n)), "beta": 1 + 1.5 * np.exp(rng.uniform(-0.1, 0.1, n))}
    centres, _ = shape_cells(np.asarray(shape_to_u(get_profile("moffat"), shape)), FitSettings().cell_radius)
    assert 1 < len(centres) <= FitSettings().max_shape_cells

    def fit(**settings):
        return psfax.fit_stamps(moffat_stars.stamps, gain=GAIN, read_noise=READ_NOISE, model="moffat",
                                shape=shape, settings=FitSettings(**settings)).table

    cells = fit(min_stars_per_cell=1)
    direct = fit(max_shape_cells=0)
    assert np.all(cells["converged"]) and np.all(direct["converged"])
    for name in ("x", "y", "flux", "bkg"):
        diff = (np.asarray(cells[f"{name}_fit"]) - direct[f"{name}_fit"]) / direct[f"{name}_err"]
        assert np.max(np.abs(diff)) < 0.02, name
    assert np.allclose(cells["flux_err"], direct["flux_err"], rtol=1e-3)


@pytest.mark.slow
def test_shared_fit_reaches_the_same_optimum_by_every_start(moffat_stars):
    """With a pilot fit of its 32 brightest stars first, without one, or stopped early (chi2_tolerance
    500) and continued from there, a shared fit of 500 stars must reach the same optimum.  Each fit
    stops within sqrt(2e-3) = 0.045 sigma of it (per parameter), so two agree within 0.1 sigma."""
    def fit(**kw):
        return psfax.fit_stamps(moffat_stars.stamps, gain=GAIN, read_noise=READ_NOISE, model="moffat",
                                shared_shape=True, **kw)

    pilot = fit(settings=FitSettings(pilot_stars=32))
    plain = fit(settings=FitSettings(pilot_stars=10**6))
    loose = fit(chi2_tolerance=500.0)
    continued = fit(start=loose)
    assert loose.table["n_iter"][0] < plain.table["n_iter"][0]  # the early stop did stop early
    for other in (plain, continued):
        assert other.table["converged"].all()
        for name in ("x", "y", "flux", "bkg"):
            diff = (np.asarray(other.table[f"{name}_fit"]) - pilot.table[f"{name}_fit"]) / pilot.table[f"{name}_err"]
            assert np.max(np.abs(diff)) < 0.1, name
        for name in ("fwhm", "beta"):
            diff = (other.table[name][0] - pilot.table[name][0]) / pilot.table[f"{name}_err"][0]
            assert abs(diff) < 0.1, name


@pytest.mark.parametrize("mode", [pytest.param({}, marks=pytest.mark.slow),
                                  pytest.param({"shared_shape": True}, marks=pytest.mark.slow),
                                  {"shape": {"fwhm": 1.8, "beta": 2.5}}], ids=["free", "shared", "photometry"])
def test_fit_started_at_its_solution_stops_there(moffat_stars, mode):
    """LM also stops at a point whose own Gauss-Newton step predicts less than the tolerance (the
    Newton decrement), so a refit from a converged result takes no step: every star keeps its values
    and covariance to rounding (1e-12; the shape goes through the table as FWHM and beta and back
    through log, a few ulp).  A fit that re-guessed any part of the start (e.g. the per-star shapes)
    would need steps and move the values by ~1e-3 of their errors or more."""
    def fit(**kw):
        return psfax.fit_stamps(moffat_stars.stamps, gain=GAIN, read_noise=READ_NOISE, model="moffat", **mode, **kw)

    first = fit()
    again = fit(start=first)
    assert np.all(first.table["converged"]) and np.all(again.table["converged"])
    assert np.all(again.table["n_iter"] == 0)
    for name in physical_names(get_profile("moffat")):
        np.testing.assert_allclose(again.table[name], first.table[name], rtol=1e-12, atol=0)
    assert np.max(np.abs(again.covariance - first.covariance)) < 1e-12 * np.max(np.abs(first.covariance))


def test_closed_form_moffat_jacobian_equals_forward_mode():
    """The pixel-integrated circular Moffat is linearised from closed-form node sums; forward-mode
    differentiation of ``stamp_psf`` (the path of every other model) must give the same model and
    Jacobian to rounding (1e-12 of each column's largest entry; seen: 1e-15), for centres anywhere on
    the stamp (the 5 x 5 inner window clipped at the edges) and FWHM 0.8-4 px, beta 1.2-5."""
    import jax
    import jax.numpy as jnp

    from psfax.fitting import Free
    from psfax.fitting.params import shape_from_u
    from psfax.profiles import stamp_psf

    profile = get_profile("moffat")
    free, size = Free(profile), (15, 15)
    rng = np.random.default_rng(8)
    n = 64
    u4 = np.column_stack([rng.uniform(0.5, 13.5, n), rng.uniform(0.5, 13.5, n), rng.uniform(1e3, 1e5, n),
                          rng.uniform(0, 200, n)])
    shape_u = np.column_stack([np.log(rng.uniform(0.8, 4.0, n)), np.log(rng.uniform(0.2, 4.0, n))])

    def forward(u, s):
        def psf(p):
            out = stamp_psf(profile, p[0], p[1], shape_from_u(profile, p[2:]), size).ravel()
            return out, out

        jac, p = jax.jacfwd(psf, has_aux=True)(jnp.concatenate([u[:2], s]))
        flux = u[2]
        return flux * p + u[3], jnp.concatenate([flux * jac[:, :2], p[:, None], jnp.ones_like(p)[:, None],
                                                 flux * jac[:, 2:]], axis=1)

    with jax.enable_x64(True):
        u4, shape_u = jnp.asarray(u4), jnp.asarray(shape_u)
        m_ref, j_ref = jax.jit(jax.vmap(forward))(u4, shape_u)
        m, j = jax.jit(jax.vmap(lambda u, s: free.linearise(jnp.concatenate([u, s]), size)))(u4, shape_u)
    assert np.max(np.abs(m - m_ref)) < 1e-12 * np.max(np.abs(m_ref))
    scale = np.max(np.abs(j_ref), axis=(0, 1))
    assert np.all(np.max(np.abs(j - j_ref), axis=(0, 1)) <= 1e-12 * scale)


@pytest.mark.parametrize("mode", [pytest.param({}, marks=pytest.mark.slow), {"shape": {"fwhm": 1.8, "beta": 2.5}}],
                         ids=["free", "photometry"])
def test_fit_in_rounds_equals_fit_in_one_go(moffat_stars, mode):
    """Stars still going after the first LM round continue from their saved LM state: with a first round
    of one iteration (nearly every star resumed) the fits equal those of a single round to rounding."""
    def fit(first_round):
        settings = FitSettings(photometry_first_round=first_round, free_shape_first_round=first_round)
        return psfax.fit_stamps(moffat_stars.stamps, gain=GAIN, read_noise=READ_NOISE, model="moffat",
                                settings=settings, **mode).table

    one_go = fit(100)
    rounds = fit(1)
    assert np.mean(one_go["n_iter"] > 1) > 0.9  # the second round did the work
    assert np.array_equal(rounds["n_iter"], one_go["n_iter"])
    for name in ("x_fit", "y_fit", "flux_fit", "bkg_fit", "flux_err", "chi2"):
        np.testing.assert_allclose(rounds[name], one_go[name], rtol=1e-12, atol=0)


def test_photometry_start_flux_is_unbiased(moffat_stars):
    """The start of PSF photometry is the least-squares flux and background at the starting position with the
    known PSF, which counts its light outside the stamp and in the border.  The starting position is the
    centroid, off the true centre by its own error, which lowers the PSF's overlap with the star: the median
    start flux is 0.24 % low on these stars (FWHM 1.8 px, beta 2.5, 15 x 15 pixels).  It must stay within
    0.5 %, an order of magnitude better than the plain sum of the excess (2 % low), which is what lets most
    stars converge in 2-3 iterations."""
    start = psfax.fit_stamps(moffat_stars.stamps, gain=GAIN, read_noise=READ_NOISE, model="moffat",
                             shape={"fwhm": 1.8, "beta": 2.5}, max_iter=0).table
    assert np.all(start["n_iter"] == 0)
    assert abs(np.median(start["flux_fit"] / moffat_stars.truth["flux"]) - 1) < 5e-3


def test_core_sigma_inverts_galsim_pixel_integrals():
    """The start's width: for a GalSim Gaussian drawn with its pixel (noise-free), the brightest pixel's share
    of the flux at the true centre's offset gives back sigma to 0.2 % (12 halvings leave 0.05 %; GalSim's
    own rendering error is ~1e-5)."""
    import galsim
    import jax

    from psfax.fitting.params import core_sigma

    with jax.enable_x64(True):
        for sigma in (0.4, 0.8, 1.5, 3.0):
            for dx, dy in ((0.0, 0.0), (0.3, -0.2), (0.49, 0.45)):
                image = galsim.Gaussian(sigma=sigma).drawImage(nx=15, ny=15, scale=1.0, offset=(dx, dy)).array
                iy, ix = np.unravel_index(np.argmax(image), image.shape)
                got = float(core_sigma(image[iy, ix], ix - (7 + dx), iy - (7 + dy)))  # unit flux: share = value
                assert got == pytest.approx(sigma, rel=2e-3), (sigma, dx, dy)


def test_masked_median_equals_numpy():
    """The start's border median (rank counting, no sort) equals numpy's median of the usable values, ties
    and even counts included, and is NaN when none is usable."""
    import jax

    from psfax.fitting.params import masked_median

    rng = np.random.default_rng(1)
    median = jax.jit(masked_median)
    with jax.enable_x64(True):
        for n in (1, 2, 3, 8, 56):
            for trial in range(40):
                values = rng.integers(0, 4, n).astype(float) if trial % 2 else rng.normal(size=n)
                ok = rng.random(n) < 0.7
                got = float(median(values, ok))
                if ok.any():
                    assert got == np.median(values[ok]), (values, ok)
                else:
                    assert np.isnan(got)

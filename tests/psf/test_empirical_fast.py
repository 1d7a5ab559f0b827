"""Fast checks of the empirical PSF: evaluation, normalisation, files, photutils, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from psfax.fitting.spatial import PolynomialBasis
from psfax.fitting.table import TableGrid
from psfax.psf import BuildOptions, EmpiricalPSF, TooFewStarsError, build_psf, fit_psf_photometry
from psfax.psf.build import usable_degree
from psfax.psf.io import read_psf_fits, write_psf_fits
from psfax.psf.photutils_interop import from_photutils, to_photutils

SIZE = 15


def gaussian_psf(k=4, sigma=1.1, degree=1):
    """A grid of node values of a round Gaussian (term 0) plus a small x-gradient of width (term 1)."""
    length = TableGrid((SIZE, SIZE), k).length
    off = (np.arange(length) - (length - 1) / 2) / k
    r2 = off[None, :] ** 2 + off[:, None] ** 2
    g0 = np.exp(-r2 / (2 * sigma**2)) / (2 * np.pi * sigma**2)
    planes = [g0] + [0.05 * g0 * (r2 / sigma**2 - 2)] * (PolynomialBasis(degree).size - 1)
    basis = PolynomialBasis(degree, 500.0, 500.0, 500.0, 500.0) if degree else PolynomialBasis(0)
    return EmpiricalPSF(np.stack(planes), k, SIZE, basis)


def test_render_matches_the_nodes_it_interpolates():
    # Keys' cubic convolution through nodes 1/4 px apart of a sigma = 1.1 px Gaussian: error O(h^4),
    # measured 2e-4 of the peak; 1e-3 leaves room without hiding a misplaced tap (which gives ~1e-1).
    psf = gaussian_psf(degree=0)
    x, y = np.array([7.3, 6.55]), np.array([6.8, 7.45])
    stamps = psf.render(x, y, [0, 0], [0, 0])
    s_c, s_k = psf.norm_sums()
    yy, xx = np.mgrid[:SIZE, :SIZE]
    truth = np.exp(-((xx - x[:, None, None]) ** 2 + (yy - y[:, None, None]) ** 2) / (2 * 1.1**2)) / (2 * np.pi * 1.1**2)
    assert np.abs(stamps * (s_c + s_k[0]) - truth).max() < 1e-3 * truth.max()


def test_unit_sum_within_the_normalisation_radius_everywhere():
    psf = gaussian_psf(degree=1)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    inside = np.hypot(xx - 7, yy - 7) <= psf.norm_radius
    for xi, yi in [(0, 0), (1000, 0), (300, 900)]:
        stamp = psf.render([7.0], [7.0], [xi], [yi])[0]
        assert abs(stamp[inside].sum() - 1.0) < 1e-12  # exact by construction, to rounding


def test_fits_round_trip(tmp_path):
    psf = gaussian_psf(k=3, degree=1)
    path = write_psf_fits(psf, tmp_path / "psf.fits")
    back = read_psf_fits(path)
    assert back.oversampling == 3 and back.basis == psf.basis and back.norm_radius == psf.norm_radius
    np.testing.assert_array_equal(back.grid, psf.grid)
    from astropy.io import fits

    head = fits.getheader(path)
    assert head["PSFKIND"] == "EMPIRICAL" and head["NTERMS"] == 3 and "PSFAXVER" in head


def test_photutils_image_psf_evaluates_like_psfax():
    # photutils interpolates the same nodes with a cubic spline, psfax with Keys' kernel: they differ by
    # the interpolation error of each (measured 3e-4 of the peak here); 2e-3 catches any shift or scaling.
    psf = gaussian_psf(degree=1)
    model = to_photutils(psf, 200.0, 700.0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    theirs = model.evaluate(xx, yy, 1.0, 7.3, 6.8)
    ours = psf.render([7.3], [6.8], [200.0], [700.0])[0]
    assert np.abs(theirs - ours).max() < 2e-3 * ours.max()
    back = from_photutils(model, stamp_size=SIZE)
    assert back.degree == 0
    np.testing.assert_allclose(back.render([7.3], [6.8], [0], [0])[0], ours, atol=1e-12)


def test_photutils_gridded_round_trip_keeps_the_variation():
    psf = gaussian_psf(degree=1)
    gridded = to_photutils(psf, grid_shape=(3, 3))
    back = from_photutils(gridded, stamp_size=SIZE)
    assert back.degree == 2  # 3 x 3 positions support degree 2; the linear model is fitted exactly
    for xi, yi in [(0.0, 0.0), (800.0, 300.0)]:
        np.testing.assert_allclose(back.render([7.2], [7.1], [xi], [yi])[0], psf.render([7.2], [7.1], [xi], [yi])[0],
                                   atol=1e-9)


def test_photometry_is_unbiased_with_masked_and_nan_pixels():
    # 400 stars from the model itself at flux 5e4 over sky 150 ADU (gain 6): flux error ~0.5 %, so the mean
    # ratio is known to 0.03 %; 0.2 % is 6 sigma.  A NaN and a masked pixel per stamp must not bias it.
    psf = gaussian_psf(degree=0)
    rng = np.random.default_rng(3)
    n = 400
    x, y = 7 + rng.uniform(-0.5, 0.5, n), 7 + rng.uniform(-0.5, 0.5, n)
    truth = 5e4 * psf.render(x, y, np.zeros(n), np.zeros(n)) + 150.0
    var = truth / 6.0 + 2.25
    data = truth + rng.normal(size=truth.shape) * np.sqrt(var)
    data[:, 0, 0] = np.nan
    mask = np.zeros(data.shape, bool)
    mask[:, 7, 8] = True
    table = fit_psf_photometry(psf, data, var, mask, np.full(n, 7.0), np.full(n, 7.0), np.zeros(n), np.zeros(n))
    assert np.all(table["dof"] == SIZE * SIZE - 2 - 4)
    ratio = np.asarray(table["flux_fit"]) / 5e4
    assert abs(ratio.mean() - 1) < 2e-3
    pulls = (np.asarray(table["x_fit"]) - x) / np.asarray(table["x_err"])
    assert 0.9 < pulls.std() < 1.1  # 400 stars: the std is known to 3.5 %


def test_too_few_stars_names_both_numbers():
    data = np.ones((20, SIZE, SIZE))
    with pytest.raises(TooFewStarsError, match="oversampling 4 and degree 1 .* need at least 96 build stars, got 16"):
        build_psf(data, 1.0, False, np.full(20, 7.0), np.full(20, 7.0), np.zeros(20), np.zeros(20),
                  options=BuildOptions(oversampling=4, degree=1))


def test_degree_falls_back_when_the_stars_sit_in_one_corner():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 300, 200), rng.uniform(0, 300, 200)  # one corner of a 3000 x 3000 image
    extent = ((0, 2999), (0, 2999))
    assert usable_degree(x, y, 2, extent) == 0
    xs, ys = rng.uniform(0, 3000, 200), rng.uniform(0, 3000, 200)
    assert usable_degree(xs, ys, 2, extent) == 2
    assert usable_degree(xs, ys * 0.6, 2, extent) == 1  # the top 40 % empty: only the linear term holds


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="oversampling must be one of"):
        BuildOptions(oversampling=5)
    with pytest.raises(ValueError, match="core must be"):
        BuildOptions(core=(1.0, 0.5))


def test_engine_fits_with_the_empirical_kind_like_the_own_fitter():
    # The same stamps through fit_stamps(psf=Empirical ...) and through fit_psf_photometry: both minimise
    # the same chi2 with the same model and variance, so they agree to the optimisers' tolerance
    # (1e-4 sigma here; 0.01 sigma catches any difference in the model or its derivatives).
    import jax

    import psfax
    from psfax.psf.kind import empirical_kind

    psf = gaussian_psf(degree=1)
    rng = np.random.default_rng(5)
    n = 40
    x, y = 7 + rng.uniform(-0.5, 0.5, n), 7 + rng.uniform(-0.5, 0.5, n)
    xi, yi = rng.uniform(0, 1000, n), rng.uniform(0, 1000, n)
    truth = 3e4 * psf.render(x, y, xi - 7, yi - 7) + 150.0
    var = truth / 6.0 + 2.25
    data = truth + rng.normal(size=truth.shape) * np.sqrt(var)
    ours = fit_psf_photometry(psf, data, var, np.zeros(data.shape, bool), np.full(n, 7.0), np.full(n, 7.0),
                              xi - 7, yi - 7)
    with jax.enable_x64(True):
        kind = empirical_kind(psf, xi, yi)
    engine = psfax.fit_stamps(data, variance=var, psf=kind, model_variance=False).table
    for name in ("x", "y", "flux"):
        diff = (np.asarray(engine[f"{name}_fit"]) - np.asarray(ours[f"{name}_fit"])) / np.asarray(ours[f"{name}_err"])
        assert np.abs(diff).max() < 0.01, name
    np.testing.assert_allclose(np.asarray(engine["flux_err"]), np.asarray(ours["flux_err"]), rtol=1e-3)


def test_the_kind_serves_any_footprint_as_its_own_stamp_placed_at_the_star():
    # A group footprint or a render window wider than the model's 15-px stamp: the model and its x, y
    # derivatives are the 15-px evaluation around the star's nearest pixel, shifted there, and zero beyond it
    # (the same arithmetic on the same numbers: equal to 1e-12 of the peak).
    import jax

    from psfax.psf.empirical import star_psf
    from psfax.psf.kind import empirical_kind

    psf = gaussian_psf(degree=1)
    with jax.enable_x64(True):
        kind = empirical_kind(psf, np.array([300.0]), np.array([700.0])).rows(0)
        arrays = psf.arrays()
        for x0, y0 in ((20.3, 9.6), (3.5001, 27.2), (7.2, 6.9)):
            v = np.array([x0, y0, 1.0, 0.0])
            model, jac = kind.linearise(v, (31, 31))
            ox, oy = int(np.rint(x0)) - 7, int(np.rint(y0)) - 7
            local = star_psf(arrays, kind.coef, kind.core_w, x0 - ox, y0 - oy)
            for got, want in zip((model, jac[:, 0], jac[:, 1]), local):
                full = np.zeros((31 + 30, 31 + 30))
                full[15 + oy:15 + oy + 15, 15 + ox:15 + ox + 15] = np.asarray(want)
                np.testing.assert_allclose(np.asarray(got).reshape(31, 31), full[15:46, 15:46], rtol=0,
                                           atol=1e-12 * float(np.max(local[0])))


def test_normal_equations_recover_a_grid_from_its_own_stamps():
    # Noise-free stamps rendered by the matrix-free operator (grid_stamps) from a known degree-1 grid: the
    # banded assembly and the block-tridiagonal Cholesky must give the grid back inside the constrained box
    # (an exact linear solve: measured 2e-15 of the peak; 1e-9 allows for the conditioning) and reproduce the
    # stamps.  A wrong tap, band shift, block index or mirrored term pair gives errors of order 1e-2 or more.
    import jax
    import jax.numpy as jnp

    from psfax.psf import empirical
    from psfax.psf.normal import constrained_nodes, solve_box, solve_grid

    grid_stamps = jax.jit(empirical.grid_stamps, static_argnums=0)  # one compilation, not one per operation

    psf = gaussian_psf(k=2, degree=1)
    rng = np.random.default_rng(1)
    n = 90
    x, y = 7 + rng.uniform(-0.5, 0.5, n), 7 + rng.uniform(-0.5, 0.5, n)
    coef = np.column_stack([np.ones(n), rng.uniform(-1, 1, (n, 2))]) * rng.uniform(0.5, 2.0, (n, 1))
    grid = psf.table_grid
    with jax.enable_x64(True):
        stamps = np.asarray(grid_stamps(grid, jnp.asarray(psf.grid), *(jnp.asarray(a) for a in (coef, x, y))))
        w = rng.uniform(0.5, 1.5, stamps.shape)
        solved = solve_grid(grid, *(jnp.asarray(a) for a in (w, coef, stamps, x, y)))
        again = np.asarray(grid_stamps(grid, jnp.asarray(solved), *(jnp.asarray(a) for a in (coef, x, y))))
    first, nodes = solve_box(grid)
    near = constrained_nodes(grid)
    box = (slice(None), slice(first, first + nodes), slice(first, first + nodes))
    assert np.abs(solved[box] - psf.grid[box])[:, near].max() < 1e-9 * psf.grid.max()
    assert np.abs(again - stamps).max() < 1e-9 * stamps.max()


def test_photometry_with_the_sky_held_fits_three_parameters():
    # Sky-subtracted stamps fitted with fit_bkg=False: bkg stays 0 (its error NaN), dof counts 3 parameters,
    # and the flux is unbiased (400 stars at 0.5 % each: 0.2 % is 8 sigma of the mean).
    psf = gaussian_psf(degree=0)
    rng = np.random.default_rng(4)
    n = 400
    x, y = 7 + rng.uniform(-0.5, 0.5, n), 7 + rng.uniform(-0.5, 0.5, n)
    truth = 5e4 * psf.render(x, y, np.zeros(n), np.zeros(n))
    var = (truth + 150.0) / 6.0 + 2.25
    data = truth + rng.normal(size=truth.shape) * np.sqrt(var)
    table = fit_psf_photometry(psf, data, var, np.zeros(data.shape, bool), np.full(n, 7.0), np.full(n, 7.0),
                               np.zeros(n), np.zeros(n), fit_bkg=False)
    assert np.all(np.asarray(table["bkg_fit"]) == 0) and np.all(np.isnan(table["bkg_err"]))
    assert np.all(table["dof"] == SIZE * SIZE - 3)
    assert abs(np.mean(np.asarray(table["flux_fit"]) / 5e4) - 1) < 2e-3


def test_the_grid_solve_runs_blas_on_one_thread_and_restores_the_callers(monkeypatch):
    """The build's solve calls LAPACK on small blocks many times in sequence, where OpenBLAS's spinning
    workers only get in the way: it runs with one thread, and the caller's count is back afterwards."""
    from threadpoolctl import threadpool_info

    from psfax.psf import build

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    seen = []
    solve = build.solve_grid
    monkeypatch.setattr(build, "solve_grid", lambda *a, **k: seen.append(blas_threads()) or solve(*a, **k))
    psf = gaussian_psf(k=2, degree=0)
    rng = np.random.default_rng(3)
    n = 80
    x, y = 7 + rng.uniform(-0.5, 0.5, n), 7 + rng.uniform(-0.5, 0.5, n)
    stamps = 1e4 * psf.render(x, y, x, y) + rng.normal(0, 1.0, (n, SIZE, SIZE))
    before = blas_threads()
    build_psf(stamps, 1.0, False, np.round(x), np.round(y), np.zeros(n), np.zeros(n),
              options=BuildOptions(oversampling=2, degree=0), sky=0.0)
    assert seen and all(set(threads) == {1} for threads in seen)
    assert blas_threads() == before

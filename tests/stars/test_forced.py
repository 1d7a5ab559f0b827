"""Forced photometry against GalSim truth: blank sky, injected stars at any S/N, bad input, stacks.

The images are drawn by GalSim (tests/stars/stars_synthetic.py: pixel-integrated Moffat stars, Poisson
noise in electrons and Gaussian read noise); the PSF is given with GalSim's true shape, so these tests
check the fixed-position fit and its errors, not the PSF fit (the slow real-quadrant tests do both).
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from stars_synthetic import BETA, render_field, true_fwhm

from psfax.errors import InputError
from psfax.stars.detect import measure_background
from psfax.stars.exposure import read_exposure
from psfax.stars.forced import (FORCED_FLAGS, STACK_FLAGS, ImagePSF, forced_exposure, forced_photometry,
                                light_curves, stack_epochs, write_forced)

SHAPE = (512, 512)


def true_psf(shape=SHAPE) -> ImagePSF:
    """GalSim's PSF of the synthetic field (FWHM varying over the image, beta fixed)."""
    return ImagePSF.from_shape_at("moffat",
                                  lambda x, y: {"fwhm": true_fwhm(x, y, shape), "beta": np.full(len(x), BETA)})


def exposure_of(field, mask=None, head=None):
    return read_exposure(field.image, mask, header=field.header if head is None else head)


def targets_at(exposure, x, y, **extra) -> Table:
    ra, dec = exposure.wcs.pixel_to_world_values(np.asarray(x, float), np.asarray(y, float))
    return Table({"ra": ra, "dec": dec, **extra})


@pytest.fixture(scope="module")
def faint_field():
    """150 GalSim stars of magnitude 18-25 (S/N ~0.3 to ~300 on this sky)."""
    return render_field(shape=SHAPE, n_stars=150, seed=11, mag_range=(18.0, 25.0))


def test_blank_sky_fluxes_are_consistent_with_zero():
    field = render_field(shape=SHAPE, n_stars=0, seed=12)
    exposure = exposure_of(field)
    grid = np.arange(16, 500, 16.0) + 0.3  # 31 x 31 targets 16 px apart: their 15 x 15 stamps do not overlap
    x, y = (a.ravel() for a in np.meshgrid(grid, grid))
    table = forced_exposure(exposure, targets_at(exposure, x, y), psf=true_psf())
    pull = np.asarray(table["flux"]) / np.asarray(table["flux_err"])
    assert np.all(table["flags"] == 0)
    # 961 independent pulls: the std of a unit normal's sample is known to 1 / sqrt(2 n) = 2.3 %, so
    # [0.9, 1.1] is > 4 sigma; the mean to 1 / sqrt(n) = 0.032 (0.15 is ~5 sigma).
    assert 0.9 < np.std(pull) < 1.1
    assert abs(np.mean(pull)) < 0.15
    # below S/N 3 a row has no magnitude but a 5-sigma limit
    faint = pull < 3
    assert np.all(np.isnan(table["mag"][faint])) and np.all(np.isfinite(table["mag_lim"][faint]))


def test_injected_stars_recovered_at_any_snr(faint_field):
    exposure = exposure_of(faint_field)
    table = forced_exposure(exposure, targets_at(exposure, faint_field.x, faint_field.y), psf=true_psf())
    flux, err = (np.asarray(table[c], float) for c in ("flux", "flux_err"))
    truth = faint_field.flux
    snr = truth / err
    assert np.all(table["flags"] == 0)
    pull = (flux - truth) / err
    # 150 stars: the pull std is known to 1/sqrt(300) = 6 %: [0.85, 1.15] is 2.5 sigma; its mean to 0.08.
    assert 0.85 < np.std(pull) < 1.15
    assert abs(np.mean(pull)) < 0.25
    for low, high in ((0.0, 5.0), (5.0, 20.0), (20.0, np.inf)):  # no S/N range biased
        sel = (snr >= low) & (snr < high)
        assert sel.sum() >= 15
        # mean pull within 3 standard errors (1 / sqrt(n)) of zero
        assert abs(np.mean(pull[sel])) < 3 / np.sqrt(sel.sum()), (low, high)
    bright = snr >= 20  # relative bias: within 3 standard errors, plus 0.2 % for the PSF tabulation
    ratio = flux[bright] / truth[bright] - 1
    assert abs(np.mean(ratio)) < 3 * np.sqrt(np.mean((err[bright] / truth[bright]) ** 2) / bright.sum()) + 2e-3
    detected = np.asarray(table["snr"]) >= 3
    np.testing.assert_allclose(table["mag"][detected], 26.0 - 2.5 * np.log10(flux[detected]))


def test_recentring_finds_an_offset_star(faint_field):
    exposure = exposure_of(faint_field)
    bright = np.argsort(faint_field.flux)[-20:]
    x, y = faint_field.x[bright] + 0.7, faint_field.y[bright] - 0.5  # WCS off by 0.86 px
    held = forced_exposure(exposure, targets_at(exposure, x, y), psf=true_psf())
    moved = forced_exposure(exposure, targets_at(exposure, x, y), psf=true_psf(), recentre=2.0)
    truth = faint_field.flux[bright]
    # held 0.86 px off a FWHM ~1.3 px star the flux is far low; recentred it is back within 3 errors
    assert np.median(held["flux"] / truth) < 0.8
    assert np.all(np.abs(moved["flux"] - truth) < 3 * moved["flux_err"] + 0.01 * truth)
    assert np.all(np.hypot(moved["x"] - faint_field.x[bright], moved["y"] - faint_field.y[bright]) < 0.1)
    assert np.all(moved["flags"] == 0)


def test_bad_targets_are_flagged_never_dropped(faint_field):
    ny, nx = SHAPE
    mask = np.zeros(SHAPE, np.int32)
    star = int(np.argmax(faint_field.flux))
    ix, iy = int(np.rint(faint_field.x[star])), int(np.rint(faint_field.y[star]))
    mask[iy - 1: iy + 2, ix - 1: ix + 2] = 1  # the core of one star masked
    empty = (40, 40)
    mask[empty[1] - 10: empty[1] + 11, empty[0] - 10: empty[0] + 11] = 1  # a whole stamp masked
    exposure = exposure_of(faint_field, mask)
    x = [faint_field.x[star], empty[0], 2.0, -50.0, nx + 300.0]
    y = [faint_field.y[star], empty[1], 200.0, 100.0, 30.0]
    table = forced_exposure(exposure, targets_at(exposure, x, y, name=list("abcde")), psf=true_psf())
    assert list(table["target_id"]) == list("abcde")  # every target keeps its row, in order
    flags = np.asarray(table["flags"])
    bit = FORCED_FLAGS
    assert flags[0] == bit["masked"] and np.isfinite(table["flux"][0])  # fitted on the unmasked wings
    # the wings alone still measure the star: within 5 errors (a Moffat's wings carry ~60 % of its flux)
    assert abs(table["flux"][0] - faint_field.flux[star]) < 5 * table["flux_err"][0]
    assert flags[1] == bit["masked"] | bit["no_fit"] and np.isnan(table["flux"][1])
    assert flags[2] == bit["edge"] and np.isfinite(table["flux"][2])
    assert np.all(flags[3:] == bit["off_image"]) and np.all(np.isnan(table["flux"][3:]))


def test_saturated_pixel_is_flagged(faint_field):
    head = faint_field.header.copy()
    star = int(np.argmax(faint_field.flux))
    head["SATURATE"] = float(faint_field.image[int(np.rint(faint_field.y[star])),
                                               int(np.rint(faint_field.x[star]))]) - 1.0
    exposure = exposure_of(faint_field, head=head)
    table = forced_exposure(exposure, targets_at(exposure, faint_field.x[[star]], faint_field.y[[star]]),
                            psf=true_psf())
    assert table["flags"][0] & FORCED_FLAGS["saturated"] and table["flags"][0] & FORCED_FLAGS["masked"]


def test_targets_without_radec_and_image_without_wcs_raise(faint_field):
    exposure = exposure_of(faint_field)
    with pytest.raises(InputError, match="needs ra and dec columns"):
        forced_exposure(exposure, Table({"x": [1.0], "y": [2.0]}), psf=true_psf())
    bare = read_exposure(faint_field.image, header=fits.Header({"GAIN": 6.0, "READNOI": 9.0, "MAGZP": 26.0}))
    with pytest.raises(InputError, match="needs a celestial WCS"):
        forced_exposure(bare, targets_at(exposure, [10.0], [10.0]), psf=true_psf())
    with pytest.raises(InputError, match="a moffat needs fwhm, beta"):
        ImagePSF.constant("moffat", fwhm=2.0)


def test_light_curves_and_stack_of_two_epochs(faint_field, tmp_path):
    exposure = exposure_of(faint_field)
    exposures = [exposure, exposure]  # two epochs (the same pixels: this tests the bookkeeping)
    targets = targets_at(exposure, list(faint_field.x[:5]) + [-100.0], list(faint_field.y[:5]) + [10.0])
    table = forced_photometry(exposures, targets, psf=true_psf())
    assert len(table) == 12
    curves = light_curves(table)
    assert [len(curves[str(i)]) for i in range(6)] == [2, 2, 2, 2, 2, 0]
    stack = stack_epochs(table)
    assert list(stack["flags"]) == [0] * 5 + [STACK_FLAGS["off_every_image"]]
    err = np.asarray(table["flux_ujy_err"]).reshape(2, 6)[:, :5]
    np.testing.assert_allclose(stack["flux_ujy_err"][:5], 1 / np.sqrt((1 / err ** 2).sum(axis=0)))
    # two equal epochs: the stack is their flux, with chi2 0
    np.testing.assert_allclose(stack["flux_ujy"][:5], np.asarray(table["flux_ujy"])[:5])
    np.testing.assert_allclose(stack["chi2"][:5], 0.0, atol=1e-9)
    assert list(stack["target_id"]) == [str(i) for i in range(6)]
    paths = write_forced(table, tmp_path)
    assert (tmp_path / "lightcurves" / "5.parquet") in paths
    assert len(Table.read(tmp_path / "lightcurves" / "0.parquet")) == 2


def test_failed_free_fits_get_a_fixed_position_flux(faint_field):
    """The stars pipeline's fallback: rows whose free fit failed are re-fitted at the detection position."""
    from psfax.fitting.flags import NOT_CONVERGED, OFF_STAMP, TOO_FEW_PIXELS
    from psfax.stars.forced import refit_failed
    from psfax.stars.pipeline import FitOptions
    from psfax.stars.stamps import cut_stamps

    exposure = exposure_of(faint_field)
    background = measure_background(exposure)
    bright = np.argsort(faint_field.flux)[-4:]
    stamps = cut_stamps(exposure, background, faint_field.x[bright] + 0.2, faint_field.y[bright] - 0.1, 15)
    stamps.mask[3] = True  # no usable pixel: stays NaN, its flag says why
    n = len(bright)
    table = Table({"x_fit": np.full(n, 11.0), "x_err": np.ones(n), "y_fit": np.full(n, 3.0), "y_err": np.ones(n),
                   "flux_fit": [np.nan, 5.0, 1e9, np.nan], "flux_err": [np.nan, 1.0, 1e3, np.nan],
                   "bkg_fit": np.zeros(n), "bkg_err": np.ones(n), "chi2": np.ones(n), "dof": np.ones(n, int),
                   "reduced_chi2": np.ones(n), "flags": [NOT_CONVERGED, 0, NOT_CONVERGED | OFF_STAMP, TOO_FEW_PIXELS]})
    x, y = faint_field.x[bright], faint_field.y[bright]
    psf = true_psf().value_at(x, y)
    refitted = refit_failed(table, stamps, background, psf, exposure.gain, FitOptions())
    assert list(refitted) == [True, False, True, False]
    assert table["flux_fit"][1] == 5.0 and np.isnan(table["flux_fit"][3])  # untouched
    truth, flux, err = faint_field.flux[bright[[0, 2]]], table["flux_fit"][[0, 2]], table["flux_err"][[0, 2]]
    # held 0.22 px from the true centre (the detection's error): the flux is low by a few % of a FWHM-1.3 px
    # star, so allow 3 errors plus 8 %
    assert np.all(np.abs(flux - truth) < 3 * err + 0.08 * truth), (flux, truth, err)
    assert np.all(np.isfinite(err)) and np.all(np.isnan(table["x_err"][[0, 2]]))
    np.testing.assert_allclose(table["x_fit"][[0, 2]], stamps.x_init[[0, 2]])

"""The empirical PSF on the real ZTF quadrant: linearity of its photometry with the image's own stars."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import psfax
from psfax.psf.kind import empirical_kind
from psfax.stars import fit_exposure
from psfax.stars.empirical import floor_variance, stamp_sky
from psfax.stars.stamps import cut_stamps, stamp_fits

SHIFT = (0, 37)  # px (x, y): integer, so a copy keeps its star's sub-pixel phase; > 2 stamps away
SCALES = (0.3, 0.1, 0.05)


@pytest.fixture(scope="module")
def empirical_fit(ztf_exposure):
    return fit_exposure(ztf_exposure, photometry=False, psf="empirical")


def _fluxes(exposure, background, fit, x, y):
    """Flux of the empirical PSF fitted at image (x, y) through the engine, as the catalog does."""
    stamps = cut_stamps(exposure, background, x, y, fit.options.stamp_size)
    stamps = dataclasses.replace(stamps, variance=floor_variance(stamps, background, fit.psf_choice.model_error_floor))
    kind = empirical_kind(fit.psf_choice.psf, x, y)
    table = psfax.fit_stamps(stamps.data, variance=stamps.variance, mask=stamps.mask, psf=kind,
                             model_variance=False).table
    return np.asarray(table["flux_fit"], float), np.asarray(table["flux_err"], float), np.asarray(table["flags"])


@pytest.mark.slow
def test_scaled_copies_of_real_stars_come_back_linear(empirical_fit):
    # Copies of the image's own unflagged PSF stars, sky-subtracted and scaled by k, are added SHIFT px
    # away on empty sky (no bad pixel, nothing above 5 sky sigma) and fitted like the catalog's sources.
    # flux(copy) = k flux(star) + the site's noise, so sum(copies) / (k sum(stars)) per flux tercile must
    # be 1; the issue's target is 0.3 % down to k = 0.05, and each bin's statistical error (the sites' flux
    # errors) must be below 0.1 % for the check to mean anything.
    fit = empirical_fit
    exposure, background, stamps = fit.exposure, fit.background, fit.psf_stamps
    role = np.asarray(fit.psf_choice.build.table["role"])
    x, y = stamps.x0 + stamps.x_init, stamps.y0 + stamps.y_init
    xs, ys = x + SHIFT[0], y + SHIFT[1]
    ok = (role != "rejected") & ~stamps.mask.any(axis=(1, 2)) & stamp_fits(xs, ys, exposure.shape, stamps.size)
    site = cut_stamps(exposure, background, xs[ok], ys[ok], stamps.size)
    empty = ~site.mask.any(axis=(1, 2)) & np.all(site.data - stamp_sky(background, site)
                                                  < 5 * np.median(background.rms), axis=(1, 2))
    index = np.flatnonzero(ok)[empty]
    assert len(index) > 200, len(index)
    flux, _, flags = _fluxes(exposure, background, fit, x[index], y[index])
    good = (flags == 0) & (flux > 0)
    index, flux = index[good], flux[good]
    source = stamps.data[index] - stamp_sky(background, _subset(stamps, index))
    bins = np.array_split(np.argsort(flux), 3)
    for k in SCALES:
        image = exposure.data.astype(float).copy()
        for s, i in zip(source, index):
            image[stamps.y0[i] + SHIFT[1]:stamps.y0[i] + SHIFT[1] + stamps.size,
                  stamps.x0[i] + SHIFT[0]:stamps.x0[i] + SHIFT[0] + stamps.size] += k * s
        injected = dataclasses.replace(exposure, data=image)
        copy, copy_err, _ = _fluxes(injected, background, fit, xs[index], ys[index])
        for b in bins:
            ratio = copy[b].sum() / (k * flux[b].sum())
            error = np.sqrt(np.sum(copy_err[b] ** 2)) / (k * flux[b].sum())
            assert error < 1e-3, (k, error)
            assert abs(ratio - 1) < 3e-3, (k, ratio, error)


def _subset(stamps, index):
    return dataclasses.replace(stamps, **{f.name: getattr(stamps, f.name)[index] for f in dataclasses.fields(stamps)})

"""Injection-recovery through the whole stars pipeline on the real ZTF quadrant, with the image's own stars.

Copies of the 30 brightest PSF stars (21 x 21 px, sep's sky subtracted, their own Poisson noise added), scaled
to AB 15-19 mag, are added on clear sky (no 3-sigma detection within 25 px): half within 150 px of the star
they were cut from (where the PSF is that star's own), half anywhere.  The pipeline runs on the injected image
with its PSF stars taken, as from a reference catalog, among the uninjected image's sources farther than 20 px
from every copy (the copies are measured, not modelled).  A copy's truth is ``scale x`` its source star's flux
in the same catalog.  ``benchmarks/bench_injection.py`` measures more kinds of site; this is its clear-sky core.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from astropy.table import Table
from scipy.spatial import cKDTree

from psfax.stars import fit_exposure
from psfax.stars.detect import detect_sources

HALF = 10  # copies are 21 x 21 px
OWN_PSF = 150.0  # px


def _sources(fit, n=30):
    """Rows of ``fit.catalog`` of the ``n`` brightest unflagged PSF stars >= 40 px from the edge."""
    cat = fit.catalog
    ny, nx = fit.exposure.shape
    x, y = np.asarray(cat["x_fit"], float), np.asarray(cat["y_fit"], float)
    ok = (np.asarray(cat["psf_star"]) & (np.asarray(cat["flags"]) == 0) & (x > 40) & (x < nx - 41)
          & (y > 40) & (y < ny - 41))
    return np.flatnonzero(ok)[np.argsort(-np.asarray(cat["flux_fit"], float)[ok])][:n]


def _clear_sites(fit, rng, n, clear=25.0):
    """Up to ``n`` positions >= ``clear`` px from every 3-sigma detection and from each other, 10 px from bad
    pixels and 20 px from the edge."""
    exposure = fit.exposure
    faint = detect_sources(exposure, fit.background, threshold=3.0)
    ny, nx = exposure.shape
    x, y = rng.uniform(20, nx - 21, 40 * n), rng.uniform(20, ny - 21, 40 * n)
    ok = cKDTree(np.column_stack([faint["x"], faint["y"]])).query(np.column_stack([x, y]))[0] > clear
    keep = []
    for k in np.flatnonzero(ok):  # test set-up: greedy thinning
        i, j = int(np.rint(x[k])), int(np.rint(y[k]))
        if exposure.bad[j - 10:j + 11, i - 10:i + 11].any():
            continue
        if all((x[k] - x[m]) ** 2 + (y[k] - y[m]) ** 2 >= clear**2 for m in keep):
            keep.append(k)
            if len(keep) == n:
                break
    return x[keep], y[keep]


@pytest.mark.slow
def test_copies_of_real_stars_come_back_unbiased_with_honest_errors(ztf_exposure, tmp_path):
    # Tolerances: ~150 copies per kind at S/N 20-200 (the flux model error caps S/N near 100): the median
    # ratio's standard error is ~0.1 %, so |median - 1| < 0.5 % (the bias target) has > 4 sigma of room;
    # the std of 150 unit pulls scatters by ~6 %, so [0.8, 1.2] is ~3 sigma around the issue's [0.9, 1.1].  Pulls
    # under the catalog's flux_err (as a user has it) at the own-PSF sites only: a copy far from its source star
    # carries the PSF of another place of the quadrant (~1 % in flux; its pulls had std 1.8 in
    # benchmarks/bench_injection.py once the phase constraints took the flux model error to ~0).  The pull takes
    # the copy's error alone, its upper bound: the copy holds scale x its source star's noise, which the truth,
    # measured on the same pixels, shares and which partly cancels (with the truth's error in quadrature, the
    # lower bound, the own-PSF pulls were 0.87).
    rng = np.random.default_rng(3)
    fit = fit_exposure(ztf_exposure)
    cat, exposure, background = fit.catalog, fit.exposure, fit.background
    source = _sources(fit)
    sx, sy = np.asarray(cat["x_fit"], float)[source], np.asarray(cat["y_fit"], float)[source]
    x, y = _clear_sites(fit, rng, 1200)
    d, nearest = cKDTree(np.column_stack([sx, sy])).query(np.column_stack([x, y]))
    own = np.flatnonzero(d < OWN_PSF)[:150]
    anywhere = np.setdiff1d(np.arange(len(x)), own)[:150]
    sites = np.concatenate([own, anywhere])
    pick = np.concatenate([nearest[own], rng.integers(0, len(source), len(anywhere))])
    mags = rng.uniform(15.0, 19.0, len(sites))
    scale = 10 ** (-0.4 * (mags - exposure.zero_point)) / np.asarray(cat["flux_fit"], float)[source][pick]
    image = exposure.data.astype(np.float64).copy()
    tx, ty = np.empty(len(sites)), np.empty(len(sites))
    for k, (i, s) in enumerate(zip(pick, scale)):  # test set-up: one copy each
        cx, cy = int(np.rint(sx[i])), int(np.rint(sy[i]))
        window = np.s_[cy - HALF:cy + HALF + 1, cx - HALF:cx + HALF + 1]
        copy = (exposure.data[window] - background.level[window]) * s
        copy += rng.normal(0.0, np.sqrt(np.maximum(copy, 0) / exposure.gain))
        dx, dy = int(np.rint(x[sites[k]])) - cx, int(np.rint(y[sites[k]])) - cy
        image[cy + dy - HALF:cy + dy + HALF + 1, cx + dx - HALF:cx + dx + HALF + 1] += copy
        tx[k], ty[k] = sx[i] + dx, sy[i] + dy
    host = np.column_stack([cat["x_fit"], cat["y_fit"]]).astype(float)
    away = cKDTree(np.column_stack([tx, ty])).query(host)[0] > 20.0
    reference = tmp_path / "sources.parquet"
    Table({"ra": cat["ra"], "dec": cat["dec"], "mag": cat["mag_aper"]})[away].write(reference)
    after = fit_exposure(dataclasses.replace(exposure, data=image.astype(np.float32)), catalog=str(reference))
    new = after.catalog
    pos = np.column_stack([new["x_fit"], new["y_fit"]]).astype(float)
    tree = cKDTree(np.where(np.isfinite(pos), pos, -1e9))
    d_src, row_src = tree.query(np.column_stack([sx, sy]))
    assert np.all(d_src < 0.5)
    flux_src = np.asarray(new["flux_fit"], float)[row_src]
    truth = scale * flux_src[pick]
    d, row = tree.query(np.column_stack([tx, ty]))
    found = d < 1.0
    print(f"found {found.mean():.3f}; flux model error {after.psf_choice.flux_model_error:.4f}")
    assert found.mean() >= 0.98  # the clear-sky completeness target
    flux = np.asarray(new["flux_fit"], float)[row]
    unflagged = found & (np.asarray(new["flags"])[row] == 0)
    for name, kind in (("own PSF", slice(0, len(own))), ("anywhere", slice(len(own), None))):
        sel = np.zeros(len(sites), bool)
        sel[kind] = True
        sel &= unflagged
        err = np.asarray(new["flux_err"], float)[row]  # the source's noise in the copy cancels against the truth
        ratio = flux[sel] / truth[sel] - 1
        pull = (flux[sel] - truth[sel]) / err[sel]
        print(f"{name}: n {sel.sum()}, median ratio - 1 {np.median(ratio):+.4f}, pull std {np.std(pull):.3f}")
        assert sel.sum() >= 100
        assert abs(np.median(ratio)) < 5e-3
        if name == "own PSF":  # copies far from their source carry another place's PSF: no pull target there
            assert 0.8 < np.std(pull) < 1.2

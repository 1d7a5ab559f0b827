"""PSF photometry of faint, sky-dominated GalSim stars (matched-filter S/N 5-20): pulls, flux bias, iterations.

Stars from :func:`survey_stars.make_survey_stars` (power-law counts, so most are near S/N 5), the shape
held at the truth.  Statistics are over the stars fitted without a flag; the flagged ones (a start on a
noise peak that walks off the stamp; none since the start's peak search) are counted separately.  Sampling errors for N stars: the standard
deviation of a unit pull has ``1 / sqrt(2 N)``, its mean ``1 / sqrt(N)``; tolerances are about 3 of them
around what the estimator is expected to do at this S/N.
"""

from __future__ import annotations

import numpy as np
import pytest

import psfax
from galsim_stars import GAIN, READ_NOISE, pulls
from survey_stars import make_survey_stars


def faint_fit(fwhm, n, seed, dtype=np.float64):
    shape = {"fwhm": fwhm, "beta": 2.5}
    stars = make_survey_stars("moffat", shape, n, seed=seed, snr_range=(5.0, 20.0))
    table = psfax.fit_stamps(stars.stamps, gain=GAIN, read_noise=READ_NOISE, model="moffat", shape=shape,
                             dtype=dtype).table
    return stars, table


def check_faint_statistics(stars, table, max_flagged, max_position_std=1.15):
    """``max_position_std``: the largest position pull width allowed (see the call)."""
    ok = np.asarray(table["flags"]) == 0
    # S/N-5 stars whose start sat on a noise peak near the edge left the stamp (flagged): 2 % of S/N 5-1000
    # stars before the start's peak search kept to 3 x 3 sums within 3 px of the centre, none of 2,000 since
    assert np.mean(~ok) < max_flagged
    m = int(ok.sum())
    std_tol, mean_tol = 3 / np.sqrt(2 * m), 3 / np.sqrt(m)
    for name in ("x", "y"):
        p = pulls(table, stars.truth, name)[ok]
        # the Cramer-Rao error is a lower bound that a non-linear fit at S/N 5 exceeds: the scatter may be
        # above it (by up to max_position_std), not below
        assert 1 - std_tol < np.std(p) < max_position_std + std_tol, name
        # the core of the distribution follows the Fisher error (the normal-equivalent width from the median
        # absolute deviation: 1.00-1.07 measured at every width); the excess is a tail of stars held by a
        # noise peak
        assert abs(1.4826 * np.median(np.abs(p - np.median(p))) - 1) < 0.1, name
        # no direction is preferred: the mean within 3 standard errors of a mean of pulls this wide
        assert abs(np.mean(p)) < 3 * np.std(p) / np.sqrt(m), name
    pf = pulls(table, stars.truth, "flux")[ok]
    # flux enters linearly: its Fisher error holds (0.97-0.99 measured)
    assert abs(np.std(pf) - 1) < 0.05 + std_tol
    # the flux is biased high by ~0.1 sigma (the fitted position finds the noise's brightest spot; model-based
    # weights leave no weighting bias): +0.12 sigma measured on S/N 5-1000; allow up to 0.25 sigma
    assert -mean_tol < np.mean(pf) < 0.25 + mean_tol
    rel = (np.asarray(table["flux_fit"]) / stars.truth["flux"] - 1)[ok]
    # the same in relative terms: 0.1 sigma of a S/N-5 to 20 flux is 0.5-2 %
    assert abs(np.median(rel)) < 0.03
    return np.asarray(table["n_iter"])


def test_faint_photometry_fwhm_1_8():
    """600 stars of FWHM 1.8 px: unbiased positions, flux pulls of unit width, a small known flux bias,
    and few iterations (the damping by overshoot and the least-squares start: 2.8 on average for S/N 5-1000,
    5.2 before them; here at most 4)."""
    stars, table = faint_fit(1.8, 600, seed=21)
    n_iter = check_faint_statistics(stars, table, max_flagged=0.06)
    assert n_iter.mean() < 4.0  # 3.5 measured (3.3 when 3.7 % walked off the stamp after an iteration or two)
    assert np.mean(table["converged"]) > 0.95  # 1.000 measured (0.963 before the start's peak search)


@pytest.mark.slow
@pytest.mark.parametrize("fwhm", [0.9, 3.0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_faint_photometry_other_widths(fwhm, dtype):
    """2,000 stars undersampled (FWHM 0.9 px, as ZTF) and wide (3.0 px), in both precisions: the same
    statistics, and iterations within 5 on average."""
    stars, table = faint_fit(fwhm, 2000, seed=22, dtype=dtype)
    # undersampled at S/N 5-20, a star's position likelihood has a mode at each nearby noise peak: 1 % of the
    # position pulls lie beyond 4, and the widths are 1.18-1.28 over seeds 22-24 (3.0 px: 1.03-1.04); 1.35
    # catches a tail half again as heavy
    n_iter = check_faint_statistics(stars, table, max_flagged=0.09, max_position_std=1.35 if fwhm < 1 else 1.15)
    assert n_iter.mean() < 5.0  # 4.0 (0.9 px) and 3.5 (3.0 px) measured in float64

"""Free-shape fits that run towards the parametrisation's boundary stop there, flagged SHAPE_UNCONSTRAINED.

GalSim truth: a Gaussian fitted as a Moffat has its optimum at beta -> infinity (no finite beta fits
better), and faint sky-dominated stars (S/N 5-20) often have none either (beta -> 1 with the flux
growing into wings the stamp cannot see, or beta -> infinity).  Before the stop the faint ones ran to
the 100-iteration limit.
"""

from __future__ import annotations

import numpy as np
import pytest

import psfax
from psfax.fitting import flags as F
from galsim_stars import GAIN, READ_NOISE, make_stars
from survey_stars import make_survey_stars


@pytest.mark.slow  # the stop and its flag also run in `make test`, at the faint limits (below)
def test_gaussian_as_moffat_stops_at_the_gaussian_limit():
    """40 bright Gaussians (FWHM 1.8 px) fitted as free Moffats: the fits that head for beta -> infinity stop
    past beta = 51 within a dozen iterations, flagged and not converged; the FWHM and flux are the
    Gaussian's all the same (the Moffat there differs from its Gaussian limit by ~1 % of the peak)."""
    stars = make_stars("gaussian", {"fwhm": 1.8}, n=40, seed=5)
    t = psfax.fit_stamps(stars.stamps, gain=GAIN, read_noise=READ_NOISE, model="moffat").table
    lost = (np.asarray(t["flags"]) & F.SHAPE_UNCONSTRAINED) != 0
    assert np.mean(lost) > 0.7  # 37 of 40 measured; the others converge at beta 34-51
    assert np.all(np.asarray(t["beta"])[lost] > F.MAX_BETA)
    assert np.all(np.asarray(t["flags"])[lost] & F.NOT_CONVERGED) and not np.any(t["converged"][lost])
    assert np.max(t["n_iter"]) <= 12  # measured 6-12; 12-30 before the stop (converging at beta up to 1e13)
    # a Moffat of beta 34-80 is within 1-2 % of the Gaussian: FWHM and flux within 3 %
    assert np.all(np.abs(np.asarray(t["fwhm"]) / 1.8 - 1) < 0.03)  # 1.8 % measured, as before the stop
    assert np.all(np.abs(np.asarray(t["flux_fit"]) / stars.truth["flux"] - 1) < 0.03)  # 1.2 % measured


def test_faint_free_shapes_stop_at_the_limits_bright_ones_do_not():
    """400 survey stars (S/N 5-1000, FWHM 1.8 px, Moffat beta 2.5) with free shapes: no fit runs past
    48 iterations (8 % of such stars ran to the 100-iteration limit before the stop), the stars stopped at a limit are the faint ones
    (none above S/N 50, where beta is measured), and every flagged one is beyond a stated limit."""
    stars = make_survey_stars("moffat", {"fwhm": 1.8, "beta": 2.5}, 400, seed=31)
    t = psfax.fit_stamps(stars.stamps, gain=GAIN, read_noise=READ_NOISE, model="moffat").table
    lost = (np.asarray(t["flags"]) & F.SHAPE_UNCONSTRAINED) != 0
    fwhm, beta = np.asarray(t["fwhm"]), np.asarray(t["beta"])
    assert np.all((fwhm[lost] < F.MIN_FWHM) | (beta[lost] < F.MIN_BETA) | (beta[lost] > F.MAX_BETA))
    assert not np.any(lost[stars.truth["snr"] > 50])
    assert np.max(t["n_iter"]) <= 48  # 22 measured
    # the bound bites where the shape is unmeasurable: most stars of S/N < 10 (73 % measured; 40 % at
    # S/N 10-20, 8 % at 20-50)
    assert np.mean(lost[stars.truth["snr"] < 10]) > 0.4

"""Faint, sky-dominated GalSim stars as a survey image has them: fluxes set by signal-to-noise ratio.

``S/N`` is the matched-filter ratio of a star of known position and shape,
``S/N(F) = F sqrt(sum_i P_i^2 / var_i)`` with ``P`` the pixel-integrated PSF
(unit sum) at the stamp centre and ``var_i = (SKY + F P_i) / GAIN + (READ_NOISE / GAIN)^2``
(ADU^2): the flux over its Cramer-Rao error when flux alone is fitted.  With
SKY = 150 ADU, a FWHM 1.8 px Moffat has S/N 5 at ~110 ADU and S/N 1000 at ~1e5 ADU.

Survey counts rise towards faint magnitudes, ``dN/dm ~ 10^(0.3 m)``, i.e.
``N(>F) ~ F^-0.75``: between S/N 5 and 1000, 65 % of the stars have S/N < 20.
"""

from __future__ import annotations

import numpy as np

from galsim_stars import GAIN, READ_NOISE, SIZE, SKY, StarSet, galsim_profile, make_stars

COUNT_SLOPE = 0.75
"""``N(>F) ~ F^-COUNT_SLOPE``: 2.5 x the slope 0.3 of star counts per magnitude at intermediate latitudes."""


def centred_psf(model: str, shape: dict) -> np.ndarray:
    """GalSim's pixel-integrated PSF (unit flux) on a SIZE x SIZE stamp, centred."""
    import galsim

    img = galsim.ImageD(SIZE, SIZE, scale=1.0)
    galsim_profile(model, shape, 1.0).drawImage(img)
    return img.array


def matched_snr(flux, psf: np.ndarray) -> np.ndarray:
    """Matched-filter S/N of stars of ``flux`` (ADU) with the PSF image ``psf`` (see the module docstring)."""
    flux = np.atleast_1d(np.asarray(flux, float))
    p = psf.ravel()
    var = (SKY + np.outer(flux, p)) / GAIN + (READ_NOISE / GAIN) ** 2
    return flux * np.sqrt(np.sum(p * p / var, axis=1))


def flux_at_snr(snr, psf: np.ndarray) -> np.ndarray:
    """Flux (ADU) of matched-filter S/N ``snr`` (inverse of :func:`matched_snr`, which rises monotonically
    with flux; interpolated in log-log on a dense grid, better than 1e-4 relative)."""
    grid = np.geomspace(1.0, 1e9, 4000)
    return np.exp(np.interp(np.log(snr), np.log(matched_snr(grid, psf)), np.log(grid)))


def make_survey_stars(model: str, shape: dict, n: int, seed: int = 0, snr_range=(5.0, 1000.0),
                      slope: float = COUNT_SLOPE) -> StarSet:
    """n GalSim stars (as :func:`galsim_stars.make_stars`) with fluxes drawn from ``N(>F) ~ F^-slope``
    between the fluxes of S/N ``snr_range``; ``truth["snr"]`` holds each star's S/N."""
    psf = centred_psf(model, shape)
    f_lo, f_hi = flux_at_snr(np.asarray(snr_range, float), psf)
    rng = np.random.default_rng(seed + 1_000_003)
    flux = rng.uniform(f_hi ** -slope, f_lo ** -slope, n) ** (-1.0 / slope)
    stars = make_stars(model, shape, n=n, seed=seed, flux=flux)
    stars.truth["snr"] = matched_snr(flux, psf)
    return stars

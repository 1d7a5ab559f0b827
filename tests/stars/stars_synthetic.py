"""A synthetic CCD quadrant drawn by GalSim (the independent reference renderer).

Moffat stars whose log FWHM varies linearly across the image, pixel-integrated
(GalSim convolves with the pixel), on a flat sky, with Poisson noise in
electrons and Gaussian read noise, returned in ADU with a ZTF-like header.
"""

from __future__ import annotations

import dataclasses

import galsim
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

GAIN, READ_NOISE, SKY, ZERO_POINT, BETA = 6.0, 9.0, 150.0, 26.0, 2.5
HALF = 15  # drawn stamps are 31 x 31


@dataclasses.dataclass
class Field:
    image: np.ndarray
    header: fits.Header
    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray

    def fwhm(self, x, y):
        return true_fwhm(np.asarray(x), np.asarray(y), self.image.shape)


def true_fwhm(x, y, shape, f0=1.3, gx=0.2, gy=-0.12):
    """FWHM [px] at (x, y): ``f0 exp(gx X + gy Y)`` with X, Y in [-1/2, 1/2] across the image,
    so that log FWHM is linear in (x, y), a degree-1 model of psfax's (log-FWHM) spatial fit."""
    ny, nx = shape
    return f0 * np.exp(gx * (x / (nx - 1) - 0.5) + gy * (y / (ny - 1) - 0.5))


def header(shape) -> fits.Header:
    ny, nx = shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [nx / 2, ny / 2]
    wcs.wcs.cdelt = [-1.0 / 3600, 1.0 / 3600]
    head = wcs.to_header()
    head.update({"GAIN": GAIN, "READNOI": READ_NOISE, "SATURATE": 60000.0, "MAGZP": ZERO_POINT,
                 "MAGZPUNC": 0.0, "SEEING": 1.6, "PIXSCALE": 1.0})
    return head


def render_field(shape=(1024, 1024), n_stars=300, seed=3, min_separation=24.0,
                 mag_range=(14.5, 18.0)) -> Field:
    """Draw ``n_stars`` isolated Moffat stars (at least ``min_separation`` px apart)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    x, y = _isolated_positions(rng, n_stars, shape, min_separation)
    mag = rng.uniform(*mag_range, size=len(x))
    flux = 10 ** (-0.4 * (mag - ZERO_POINT))  # ADU
    image = np.zeros(shape)
    for xi, yi, fi in zip(x, y, flux):  # test set-up, a few hundred stars
        ix, iy = int(np.rint(xi)), int(np.rint(yi))
        psf = galsim.Moffat(beta=BETA, fwhm=float(true_fwhm(xi, yi, shape)), flux=float(fi))
        stamp = psf.drawImage(nx=2 * HALF + 1, ny=2 * HALF + 1, scale=1.0, offset=(xi - ix, yi - iy))
        image[iy - HALF: iy + HALF + 1, ix - HALF: ix + HALF + 1] += stamp.array
    electrons = rng.poisson(np.maximum(image + SKY, 0) * GAIN).astype(float)
    electrons += rng.normal(0.0, READ_NOISE, size=shape)
    return Field(image=(electrons / GAIN).astype(np.float32), header=header(shape), x=x, y=y, flux=flux)


def _isolated_positions(rng, n, shape, min_separation):
    ny, nx = shape
    margin = HALF + 2
    xs, ys = [], []
    for _ in range(50 * n):  # rejection sampling for the test set-up
        x, y = rng.uniform(margin, nx - 1 - margin), rng.uniform(margin, ny - 1 - margin)
        if all((x - a) ** 2 + (y - b) ** 2 >= min_separation ** 2 for a, b in zip(xs, ys)):
            xs.append(x)
            ys.append(y)
            if len(xs) == n:
                break
    return np.array(xs), np.array(ys)

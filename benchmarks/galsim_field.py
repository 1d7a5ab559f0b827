"""Stars across a field whose PSF is not a Moffat, drawn by GalSim (the independent truth).

PSF at image position (X, Y) in a ``FIELD`` x ``FIELD`` px image (u = X / FIELD - 0.5, v likewise):
``(1 - h) * Kolmogorov(fwhm) * OpticalPSF(defocus, coma, astigmatism) + h * Gaussian(2 fwhm0)`` (a
halo), with ``fwhm = fwhm0 (1 + 0.1 u)``, ``h = 0.08 (1 + 0.5 v)`` and the whole sheared by ``g1 = 0.03 u``
(the optical part, fixed, is built once per ``fwhm0``: GalSim's OpticalPSF is slow to construct).
Each stamp is drawn (profile convolved with the pixel) at a sub-pixel offset within +-0.5 px of its centre,
Poisson and read noise added; the noise-free stamp and the unit-flux stamp of the star centred on its pixel
(which defines the flux within the normalisation radius) are kept.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

GAIN, READ_NOISE, SKY = 6.0, 9.0, 150.0
SIZE = 15
FIELD = 3000.0


@dataclass
class Field:
    stamps: np.ndarray
    variance: np.ndarray  # from the noise-free truth (independent of the noise)
    truth_images: np.ndarray  # noise-free, with sky
    centred: np.ndarray  # unit flux, star on the stamp's central pixel centre
    x: np.ndarray  # stamp positions
    y: np.ndarray
    x_image: np.ndarray
    y_image: np.ndarray
    flux: np.ndarray
    fwhm0: float


@functools.cache
def optics(fwhm0):
    import galsim

    return galsim.OpticalPSF(lam_over_diam=0.35 * fwhm0, defocus=0.2, coma1=0.15, astig1=0.1, obscuration=0.3)


def psf_at(X, Y, fwhm0):
    import galsim

    u, v = X / FIELD - 0.5, Y / FIELD - 0.5
    atmos = galsim.Kolmogorov(fwhm=fwhm0 * (1 + 0.1 * u))
    halo = 0.08 * (1 + 0.5 * v)
    return galsim.Add([(1 - halo) * galsim.Convolve(atmos, optics(fwhm0)),
                       halo * galsim.Gaussian(fwhm=2.0 * fwhm0)]).shear(g1=0.03 * u)


def make_field(n: int, fwhm0: float, seed: int = 0, flux_range=(2e4, 5e5)) -> Field:
    import galsim

    rng = np.random.default_rng(seed)
    centre = (SIZE - 1) / 2
    x = centre + rng.uniform(-0.5, 0.5, n)
    y = centre + rng.uniform(-0.5, 0.5, n)
    X, Y = rng.uniform(0, FIELD, n), rng.uniform(0, FIELD, n)
    flux = np.exp(rng.uniform(*np.log(flux_range), n))
    truth, centred = np.empty((n, SIZE, SIZE)), np.empty((n, SIZE, SIZE))
    for i in range(n):
        psf = psf_at(X[i], Y[i], fwhm0)
        img = galsim.ImageD(SIZE, SIZE, scale=1.0)
        psf.withFlux(flux[i]).drawImage(img, offset=(x[i] - centre, y[i] - centre))
        truth[i] = img.array + SKY
        psf.drawImage(img)
        centred[i] = img.array
    electrons = rng.poisson(truth * GAIN) + rng.normal(0.0, READ_NOISE, truth.shape)
    variance = truth / GAIN + (READ_NOISE / GAIN) ** 2
    return Field(electrons / GAIN, variance, truth, centred, x, y, X + x - centre, Y + y - centre, flux, fwhm0)

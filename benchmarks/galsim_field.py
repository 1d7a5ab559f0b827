"""Stars across a field whose PSF is not a Moffat, drawn by GalSim (the independent truth).

PSF at image position (X, Y) in a ``FIELD`` x ``FIELD`` px image (u = X / FIELD - 0.5, v likewise):
``(1 - h) * Kolmogorov(fwhm) * OpticalPSF(defocus, coma, astigmatism) + h * Gaussian(2 fwhm0)`` (a
halo), with ``fwhm = fwhm0 (1 + 0.1 u)``, ``h = 0.08 (1 + 0.5 v)`` and the whole sheared by ``g1 = 0.03 u``
(the optical part, fixed, is built once per ``fwhm0``: GalSim's OpticalPSF is slow to construct).
Each stamp is drawn (profile convolved with the pixel), Poisson and read noise added; the noise-free stamp is kept.  The truth is stated in psfax's convention for
an empirical PSF (:func:`psfax.psf.normal.phase_constraints`): a star's position is its light centroid under
the phase window.  Each star's windowed centroid ``(cx, cy)`` relative to GalSim's profile centre is measured
on the pixel-integrated profile sampled at the window's nodes; the positions ``x, y`` are those centroids (within
+-0.5 px of the stamp centre, as for stamps cut around detections), and the unit-flux stamp ``centred`` (which
defines the flux within the normalisation radius) is drawn with the centroid on the central pixel centre.
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
    x: np.ndarray  # stamp positions (windowed light centroids)
    y: np.ndarray
    x_image: np.ndarray
    y_image: np.ndarray
    flux: np.ndarray
    fwhm0: float
    cx: np.ndarray  # windowed light centroid minus the profile centre [px]
    cy: np.ndarray


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


def windowed_centroid(profile, oversampling: int = 4) -> tuple[float, float]:
    """Offset [px] from its centre of the point about which the pixel-integrated ``profile``'s first moments
    under psfax's phase window (SIZE-px stamps, the window centred on that point) vanish, from the profile's
    values at the window's nodes (``oversampling`` per px): Newton's method on the windowed moment ``m(c)``
    (its Jacobian by finite differences at the start), to 1e-6 px."""
    import galsim

    from psfax.fitting.table import TableGrid
    from psfax.psf.normal import node_offsets, phase_window

    grid = TableGrid((SIZE, SIZE), oversampling)
    offsets, window = node_offsets(grid), phase_window(grid)
    pixelated = galsim.Convolve(profile, galsim.Pixel(1.0))

    def moment(c):
        values = pixelated.drawImage(nx=len(offsets), ny=len(offsets), scale=1.0 / oversampling, method="no_pixel",
                                     offset=tuple(-np.asarray(c) * oversampling)).array * window
        return np.array([(values * offsets[None, :]).sum(), (values * offsets[:, None]).sum()]) / values.sum()

    c, h = np.zeros(2), 1e-3
    m = moment(c)
    jacobian = np.column_stack([(moment(c + h * e) - m) / h for e in np.eye(2)])
    for _ in range(20):
        c = c - np.linalg.solve(jacobian, m)
        m = moment(c)
        if np.abs(m).max() < 1e-6:
            return float(c[0]), float(c[1])
    raise RuntimeError("the windowed centroid did not converge")


def make_field(n: int, fwhm0: float, seed: int = 0, flux_range=(2e4, 5e5)) -> Field:
    import galsim

    rng = np.random.default_rng(seed)
    centre = (SIZE - 1) / 2
    x = centre + rng.uniform(-0.5, 0.5, n)
    y = centre + rng.uniform(-0.5, 0.5, n)
    X, Y = rng.uniform(0, FIELD, n), rng.uniform(0, FIELD, n)
    flux = np.exp(rng.uniform(*np.log(flux_range), n))
    truth, centred = np.empty((n, SIZE, SIZE)), np.empty((n, SIZE, SIZE))
    cx, cy = np.empty(n), np.empty(n)
    for i in range(n):
        psf = psf_at(X[i], Y[i], fwhm0)
        cx[i], cy[i] = windowed_centroid(psf)
        img = galsim.ImageD(SIZE, SIZE, scale=1.0)
        psf.withFlux(flux[i]).drawImage(img, offset=(x[i] - cx[i] - centre, y[i] - cy[i] - centre))
        truth[i] = img.array + SKY
        psf.drawImage(img, offset=(-cx[i], -cy[i]))
        centred[i] = img.array
    electrons = rng.poisson(truth * GAIN) + rng.normal(0.0, READ_NOISE, truth.shape)
    variance = truth / GAIN + (READ_NOISE / GAIN) ** 2
    return Field(electrons / GAIN, variance, truth, centred, x, y, X + x - centre, Y + y - centre, flux, fwhm0,
                 cx, cy)

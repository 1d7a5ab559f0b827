"""Conversion between :class:`~psfax.psf.empirical.EmpiricalPSF` and photutils' ``ImagePSF`` / ``GriddedPSFModel``.

Both sides sample a PSF ``oversampling`` times per pixel with the star at the array's centre, and the
value at a node is what a pixel centred there receives per unit flux, so node values pass unchanged:

* :func:`to_photutils`: at one image position an ``ImagePSF`` of the normalised node values (the core, if
  any, sampled at the nodes); with ``grid_shape`` a ``GriddedPSFModel`` of such images at a regular grid of
  positions over the model's extent.  photutils interpolates with a cubic spline where psfax uses Keys'
  cubic convolution: the two agree to the interpolation error (a few 1e-4 of the peak at 4 samples/px).
* :func:`from_photutils`: an ``ImagePSF`` becomes a degree-0 model; a ``GriddedPSFModel`` a polynomial of
  the highest degree (<= 2) its grid of positions supports, fitted to the grid images by least squares.
  Fluxes fitted with the result are the light within ``norm_radius`` (photutils' are the PSF image's sum).
"""

from __future__ import annotations

import numpy as np

from psfax.errors import InputError, InputTypeError
from psfax.fitting.spatial import PolynomialBasis
from psfax.fitting.table import TableGrid
from psfax.psf.empirical import OVERSAMPLINGS, EmpiricalPSF


def to_photutils(psf: EmpiricalPSF, x: float | None = None, y: float | None = None, *, grid_shape=None):
    """``ImagePSF`` at image position (x, y) (default: the polynomial's centre), or with ``grid_shape``
    (ny, nx) a ``GriddedPSFModel`` over the model's extent."""
    from photutils.psf import GriddedPSFModel, ImagePSF

    b = psf.basis
    if grid_shape is None:
        x = b.x_mid if x is None else x
        y = b.y_mid if y is None else y
        return ImagePSF(psf.image_at(x, y), oversampling=psf.oversampling)
    from astropy.nddata import NDData

    ny, nx = grid_shape
    xs = np.linspace(b.x_mid - b.x_half, b.x_mid + b.x_half, nx)
    ys = np.linspace(b.y_mid - b.y_half, b.y_mid + b.y_half, ny)
    positions = [(float(px), float(py)) for py in ys for px in xs]
    data = np.stack([psf.image_at(px, py) for px, py in positions])
    return GriddedPSFModel(NDData(data, meta={"grid_xypos": positions, "oversampling": psf.oversampling}))


def from_photutils(model, stamp_size: int = 15, norm_radius: float | None = None) -> EmpiricalPSF:
    """An :class:`EmpiricalPSF` from a photutils ``ImagePSF`` or ``GriddedPSFModel`` (integer oversampling
    2-4, the same on both axes, PSF centred in its image)."""
    from photutils.psf import GriddedPSFModel, ImagePSF

    if isinstance(model, GriddedPSFModel):
        data = np.asarray(model.data, float)
        xy = np.asarray(model.grid_xypos, float)
    elif isinstance(model, ImagePSF):
        data = np.asarray(model.data, float)[None]
        xy = None
        if not np.allclose(model.origin, (np.array(data.shape[:0:-1]) - 1) / 2):
            raise InputError(f"the ImagePSF must have its origin at the image centre, got {model.origin}")
    else:
        raise InputTypeError(f"model must be a photutils ImagePSF or GriddedPSFModel, got {type(model).__name__}")
    over = np.atleast_1d(np.asarray(model.oversampling))
    k = int(over[0])
    if not np.all(over == k) or k not in OVERSAMPLINGS:
        raise InputError(f"oversampling must be one of {OVERSAMPLINGS} on both axes, got {over.tolist()}")
    if data.shape[1] % 2 == 0 or data.shape[2] % 2 == 0:
        raise InputError(f"the PSF image must have odd sides (its centre on a node), got {data.shape[1:]}")
    length = TableGrid((stamp_size, stamp_size), k).length
    planes = np.stack([_centre_in(d, length) for d in data])
    if xy is None:
        basis, grid = PolynomialBasis(0), planes
    else:
        degree = _grid_degree(xy)
        basis = PolynomialBasis.fit_to(xy, degree)
        design = basis(xy[:, 0], xy[:, 1])  # (positions, terms)
        grid = np.linalg.lstsq(design, planes.reshape(len(planes), -1), rcond=None)[0].reshape(
            basis.size, length, length)
    return EmpiricalPSF(grid, k, stamp_size, basis, None, norm_radius,
                        meta={"source": f"photutils {type(model).__name__}"})


def _centre_in(image: np.ndarray, length: int) -> np.ndarray:
    """``image`` (odd sides) cropped or zero-padded to (length, length), centre on centre."""
    out = np.zeros((length, length))
    c = (length - 1) // 2
    ny, nx = image.shape
    hy, hx = min((ny - 1) // 2, c), min((nx - 1) // 2, c)
    cy, cx = (ny - 1) // 2, (nx - 1) // 2
    out[c - hy:c + hy + 1, c - hx:c + hx + 1] = image[cy - hy:cy + hy + 1, cx - hx:cx + hx + 1]
    return out


def _grid_degree(xy: np.ndarray) -> int:
    """Highest degree <= 2 with at least degree + 1 distinct x and y grid positions."""
    return int(min(2, len(np.unique(xy[:, 0])) - 1, len(np.unique(xy[:, 1])) - 1))

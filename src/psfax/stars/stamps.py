"""Stamps: small square cut-outs around stars, with a variance and a bad-pixel mask.

A stamp of ``size`` x ``size`` px (odd) is centred on the rounded detection
position; its corner ``(x0, y0)`` is the image pixel of stamp pixel (0, 0), so a
position fitted in stamp pixels maps to the image as ``x = x0 + x_fit``,
``y = y0 + y_fit``, and the sub-pixel offset of the star is kept.

Variance per pixel [ADU^2] (pixels not sky-subtracted)::

    var = max(data - sky, 0) / gain + sky_rms^2

the Poisson noise of the source's electrons plus the sky noise measured by sep
around the star (``sky_rms``, which holds the sky's Poisson noise, the read
noise and whatever the processing added: on the real ZTF quadrant it is 1.11 x
the prediction ``sqrt(sky / gain + (read_noise / gain)^2)``; psf.json reports
both).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from psfax.errors import InputError
from psfax.fitting.problem import variance_model
from psfax.stars.detect import Background
from psfax.stars.exposure import Exposure


@dataclasses.dataclass(frozen=True)
class Stamps:
    """N stamps of S x S pixels: data [ADU], variance [ADU^2], mask (True = bad),
    integer corners ``x0, y0`` and the initial centres ``x_init, y_init`` in stamp pixels."""

    data: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    x_init: np.ndarray
    y_init: np.ndarray

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def size(self) -> int:
        return self.data.shape[1]


def stamp_fits(x: np.ndarray, y: np.ndarray, shape: tuple[int, int], size: int) -> np.ndarray:
    """True where a ``size`` x ``size`` stamp centred on the rounded (x, y) lies inside the image."""
    half = size // 2
    ny, nx = shape
    col, row = np.rint(x), np.rint(y)
    return (col >= half) & (row >= half) & (col <= nx - 1 - half) & (row <= ny - 1 - half)


def cut_stamps(exposure: Exposure, background: Background, x, y, size: int = 15) -> Stamps:
    """Stamps around image positions (x, y) [px]; every stamp must lie inside the image."""
    if size < 5 or size % 2 == 0:
        raise InputError(f"stamp size must be an odd number >= 5, got {size}")
    x, y = np.asarray(x, float), np.asarray(y, float)
    if not stamp_fits(x, y, exposure.shape, size).all():
        raise InputError(f"{exposure.name}: some stamp centres are closer than {size // 2} px to the edge")
    half = size // 2
    x0 = np.rint(x).astype(int) - half
    y0 = np.rint(y).astype(int) - half
    offsets = np.arange(size)
    flat = (y0[:, None] + offsets)[:, :, None] * exposure.shape[1] + (x0[:, None] + offsets)[:, None, :]
    data = np.take(exposure.data, flat).astype(np.float64)  # flat indices: 3x faster than [rows, cols]
    sky = np.take(background.level, flat).astype(np.float64)
    sky_rms = np.take(background.rms_map, flat).astype(np.float64)
    mask = np.take(exposure.bad, flat)
    data = np.where(mask, sky, data)  # keep bad pixels finite; they are excluded by the mask
    variance = noise_variance(data, sky, sky_rms, exposure.gain)
    return Stamps(data=data, variance=variance, mask=mask, x0=x0, y0=y0,
                  x_init=x - x0, y_init=y - y0)


def noise_variance(data: np.ndarray, sky: np.ndarray, sky_rms: np.ndarray, gain: float) -> np.ndarray:
    """Variance [ADU^2] of pixels ``data`` over a sky ``sky`` of noise ``sky_rms`` [ADU]
    (see the module docstring)."""
    return variance_model(data - sky, sky_rms ** 2, gain, 0.0)

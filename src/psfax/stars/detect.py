"""Sky background and source detection with sep (SExtractor's algorithms as a library).

:func:`measure_background` gives a smooth sky map; :func:`detect_sources`
finds sources above ``threshold`` times the sky noise in the sky-subtracted
image and measures each one (centroid, second moments, aperture flux, peak).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import sep
from astropy.table import Table

from psfax.errors import InputError
from psfax.stars.exposure import Exposure

#: sep's OBJ_MERGED bit: the object was deblended from a larger one.
SEP_BLENDED = 1


@dataclasses.dataclass(frozen=True)
class Background:
    """Sky level ``level`` [ADU] and sky noise ``rms_map`` [ADU] per pixel, global noise ``rms``."""

    level: np.ndarray
    rms_map: np.ndarray
    rms: float


def measure_background(exposure: Exposure, box: int = 64, filter_size: int = 3) -> Background:
    """Sky level and noise maps by sep's mesh of ``box`` x ``box`` px with a ``filter_size``
    median filter.  Bad pixels are excluded from the mesh statistics.
    """
    if box < 8:
        raise InputError(f"background box must be >= 8 px, got {box}")
    sky = sep.Background(exposure.data, mask=exposure.bad, bw=box, bh=box,
                         fw=filter_size, fh=filter_size)
    return Background(level=sky.back(), rms_map=sky.rms(), rms=float(sky.globalrms))


def detect_sources(exposure: Exposure, background: Background, *, threshold: float = 5.0,
                   min_area: int = 5, aperture_radius: float = 5.0, model: np.ndarray | None = None) -> Table:
    """Sources more than ``threshold`` x rms above the sky, over >= ``min_area`` pixels.

    ``model``: an image of source models [ADU above the sky] subtracted first (detection in the residual
    image); the noise is then ``sqrt(rms^2 + max(model, 0) / gain)`` per pixel, the models' Poisson noise added.

    Returns a Table with image coordinates ``x, y`` (0-based pixel centres),
    second moments ``a, b, theta`` [px, rad], ``npix``, ``peak`` (sky-subtracted
    maximum [ADU]), ``raw_peak`` (maximum of the raw 3x3 pixels around the
    centroid, for the saturation cut), ``aper_flux, aper_flux_err`` in a circle of
    ``aperture_radius`` px [ADU], ``mag_aper`` through the zero point, and
    ``sep_flag`` (sep's bits; 1 = deblended from a blend).
    """
    if threshold <= 0:
        raise InputError(f"detection threshold must be > 0 (in units of the sky rms), got {threshold}")
    sky_subtracted = exposure.data - background.level
    err = background.rms
    if model is not None:
        sky_subtracted = sky_subtracted - model
        err = np.sqrt(background.rms_map.astype(np.float64) ** 2 + np.maximum(model, 0.0) / exposure.gain)
        err = np.where(exposure.bad, background.rms, err).astype(np.float32)
    image = np.where(exposure.bad, 0.0, sky_subtracted).astype(np.float32)
    objects = sep.extract(image, threshold, err=err, mask=exposure.bad,
                          minarea=min_area, segmentation_map=False)
    x, y = objects["x"], objects["y"]
    flux, flux_err, _ = sep.sum_circle(image, x, y, aperture_radius, err=err,
                                       gain=exposure.gain, mask=exposure.bad)
    with np.errstate(divide="ignore", invalid="ignore"):
        mag = np.where(flux > 0, exposure.zero_point - 2.5 * np.log10(flux), np.nan)
    return Table({
        "x": x, "y": y, "a": objects["a"], "b": objects["b"], "theta": objects["theta"],
        "npix": objects["npix"], "peak": objects["peak"],
        "raw_peak": _raw_peak(exposure.data, x, y), "aper_flux": flux, "aper_flux_err": flux_err,
        "mag_aper": mag, "sep_flag": objects["flag"].astype(np.int32),
    })


def _raw_peak(data: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Maximum of the 3x3 raw pixels around each rounded (x, y), NaN-safe."""
    ny, nx = data.shape
    col = np.clip(np.rint(x).astype(int), 1, nx - 2)
    row = np.clip(np.rint(y).astype(int), 1, ny - 2)
    offsets = np.arange(-1, 2)
    patch = data[row[:, None, None] + offsets[None, :, None], col[:, None, None] + offsets[None, None, :]]
    return np.nanmax(patch.reshape(len(x), 9), axis=1) if len(x) else np.zeros(0, np.float32)

"""Level 1 -> 1.5 registration of full-disk AIA images (the geometry of aia_prep).

The image is rotated by its roll angle so that solar north is up, scaled to
0.6 arcsec per pixel (or a multiple of it for binned images) and shifted so
that the reference pixel (the Sun's centre for AIA) lands at the array
centre.  The geometry follows what aiapy 0.12.1 ``register`` does through
sunpy's ``GenericMap.rotate(recenter=True)`` and ``submap``, so pixels and
header agree:

1. pad the array with ``missing`` so the rotated frame fits
   (``pad = ceil((extent - size) / 2)`` per axis, ``extent`` the bounding box
   of the rotated and scaled corners);
2. output pixel ``o`` of the padded frame samples the input at
   ``r + R^-1 (o - c) / s``: ``r`` the reference pixel, ``c`` the array
   centre, ``R`` the map's rotation matrix, ``s`` the scale factor;
3. clip to the input range, remove the negative padding, crop an
   ``n x n`` window around the new reference pixel;
4. header: ``CRPIX`` and ``CRVAL`` of the new reference, ``PCi_j = R R^-1``
   (identity), ``CDELT`` divided by ``s``, ``CROTA`` and ``CD`` removed,
   ``R_SUN = RSUN_OBS / CDELT1``, ``LVL_NUM = 1.5``, ``BITPIX = -64``.

The resampling is a JAX kernel (:mod:`psfax.solar.interpolate`) with
B-spline interpolation of order 1 or 3.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from psfax.device import compute_context, resolve_device, resolve_dtype
from psfax.errors import InputError, InputTypeError
from psfax.solar.header import add_history
from psfax.solar.interpolate import affine_transform

TARGET_SCALE_ARCSEC = 0.6
FULL_FRAME = (4096, 4096)


@dataclass(frozen=True)
class RegistrationGeometry:
    """Everything the resampling needs, in 0-based pixels (x first)."""

    matrix: np.ndarray          # (2, 2): padded output (x, y) -> padded input (x, y)
    offset: np.ndarray          # (2,)
    pad: tuple[int, int]        # (pad_x, pad_y) added to the input on each side
    unpad: tuple[int, int]      # (unpad_x, unpad_y) removed from the output on each side
    padded_shape: tuple[int, int]
    crop: tuple[slice, slice]   # (rows, cols) of the unpadded output kept
    crpix: tuple[float, float]  # FITS (1-based) reference pixel of the result
    scale_factor: float


def register(smap, *, order: int = 3, missing=None, dtype=None, device=None):
    """Register a full-disk level-1 AIA Map to level 1.5 (north up, 0.6"/px, Sun centred).

    Parameters
    ----------
    smap : sunpy ``AIAMap`` of a full-disk image.
    order : spline interpolation order, 1 (bilinear) or 3 (cubic, default).
    missing : value for pixels that fall outside the input (default: the image minimum).
    dtype, device : precision and device of the resampling.

    Returns a new Map; the input is not modified.
    """
    _check_aia_map(smap)
    if order not in (1, 3):
        raise InputError(f"order must be 1 or 3, got {order!r}")
    check_full_disk(smap)
    if missing is not None and (isinstance(missing, bool) or not isinstance(missing, (int, float, np.number))
                                or not np.isfinite(missing)):
        raise InputError(f"missing must be a finite number, got {missing!r}")
    geometry = registration_geometry(smap)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    with compute_context(dt, dev):
        out, finite = _register_pixels(jnp.asarray(smap.data, dtype=dt), jnp.asarray(geometry.matrix, dtype=dt),
                                       jnp.asarray(geometry.offset, dtype=dt),
                                       jnp.asarray(np.nan if missing is None else missing, dtype=dt),
                                       pad=geometry.pad, padded_shape=geometry.padded_shape, order=order)
        if not finite:
            raise InputError("register: the image contains NaN or infinite values")
        out = np.asarray(out)
    (r0, r1), (c0, c1) = [(s.start, s.stop) for s in geometry.crop]
    uy, ux = geometry.unpad[1], geometry.unpad[0]
    out = out[uy:out.shape[0] - uy, ux:out.shape[1] - ux][r0:r1, c0:c1]
    meta = registered_header(smap, geometry, out.shape, order=order)
    return smap._new_instance(out, meta, plot_settings=copy.deepcopy(smap.plot_settings))


@partial(jax.jit, static_argnames=("pad", "padded_shape", "order"))
def _register_pixels(data, matrix, offset, missing, *, pad, padded_shape, order):
    """Pad with ``missing`` (NaN: the image minimum), resample, clip to the input range (sunpy's
    ``clip=True``); and whether every input pixel is finite (checked here: one pass fewer over the image)."""
    missing = jnp.where(jnp.isnan(missing), data.min(), missing)
    padded = jnp.pad(data, ((pad[1], pad[1]), (pad[0], pad[0])), constant_values=missing)
    out = affine_transform(padded, matrix, offset, output_shape=padded_shape, order=order, cval=missing)
    lower = jnp.minimum(jnp.maximum(missing, out.min()), padded.min())
    upper = jnp.maximum(jnp.minimum(missing, out.max()), padded.max())
    return jnp.clip(out, lower, upper), jnp.all(jnp.isfinite(data))


def registration_geometry(smap) -> RegistrationGeometry:
    """The affine map, padding and crop that take ``smap`` to level 1.5 (see module notes)."""
    ny, nx = smap.data.shape
    scale = _target_scale(smap)
    s = smap.scale[0].to_value("arcsec / pix") / scale
    rmatrix = np.asarray(smap.rotation_matrix, dtype=np.float64)
    inverse = np.linalg.inv(rmatrix)
    corners = np.array(list(itertools.product([-0.5, nx - 0.5], [-0.5, ny - 0.5])))
    rotated = (rmatrix @ corners.T).T * s
    extent = rotated.max(axis=0) - rotated.min(axis=0)
    diff = np.ceil((extent - np.array([nx, ny])) / 2).astype(int)
    pad = (int(max(diff[0], 0)), int(max(diff[1], 0)))
    unpad = (int(-min(diff[0], 0)), int(-min(diff[1], 0)))
    padded_shape = (ny + 2 * pad[1], nx + 2 * pad[0])
    centre = (np.array(padded_shape[::-1]) - 1) / 2.0
    ref = np.array([smap.reference_pixel.x.to_value("pix"), smap.reference_pixel.y.to_value("pix")])
    rotation_centre = ref + np.array(pad)
    matrix = inverse / s
    offset = rotation_centre - matrix @ centre
    # reference pixel after the unpadding, then the n x n crop around it (as sunpy submap does)
    crpix = centre + 1 - np.array(unpad)
    out_shape = (padded_shape[0] - 2 * unpad[1], padded_shape[1] - 2 * unpad[0])
    half = np.floor(crpix[0]) + np.array([-1, 1]) * ny / 2
    lo = int(np.floor(half[0] + 0.5))
    hi = int(np.ceil(half[1] - 1 - 0.5) + 1)
    rows = slice(int(np.clip(lo, 0, out_shape[0])), int(np.clip(hi, 0, out_shape[0])))
    cols = slice(int(np.clip(lo, 0, out_shape[1])), int(np.clip(hi, 0, out_shape[1])))
    final_crpix = (float(crpix[0] - cols.start), float(crpix[1] - rows.start))
    return RegistrationGeometry(matrix, offset, pad, unpad, padded_shape, (rows, cols), final_crpix, s)


def registered_header(smap, geometry: RegistrationGeometry, shape, *, order: int):
    """Header of the level-1.5 map (deep copy of ``smap.meta``, updated)."""
    meta = copy.deepcopy(smap.meta)
    ref = smap.reference_coordinate
    pc = np.asarray(smap.rotation_matrix) @ np.linalg.inv(np.asarray(smap.rotation_matrix))
    units = smap.spatial_units
    meta["crval1"] = ref.Tx.to_value(units[0])
    meta["crval2"] = ref.Ty.to_value(units[1])
    meta["crpix1"], meta["crpix2"] = geometry.crpix
    meta["naxis1"], meta["naxis2"] = shape[1], shape[0]
    meta["PC1_1"], meta["PC1_2"], meta["PC2_1"], meta["PC2_2"] = pc[0, 0], pc[0, 1], pc[1, 0], pc[1, 1]
    meta["cdelt1"] = smap.scale[0].value / geometry.scale_factor
    meta["cdelt2"] = smap.scale[1].value / geometry.scale_factor
    for key in ("CROTA1", "CROTA2", "CD1_1", "CD1_2", "CD2_1", "CD2_2"):
        meta.pop(key, None)
    meta["r_sun"] = meta["rsun_obs"] / meta["cdelt1"]
    meta["lvl_num"] = 1.5
    meta["bitpix"] = -64
    add_history(meta, f"register: spline order {order}, scale factor {geometry.scale_factor:.6f}")
    return meta


def _target_scale(smap) -> float:
    """0.6"/px, or the nearest multiple of it for a binned image (not 4096 x 4096)."""
    cdelt = smap.scale[0].to_value("arcsec / pix")
    ratio = round(cdelt / TARGET_SCALE_ARCSEC)
    if ratio != 1 and smap.data.shape != FULL_FRAME:
        return ratio * TARGET_SCALE_ARCSEC
    return TARGET_SCALE_ARCSEC


def check_full_disk(smap) -> None:
    """Raise InputError unless the whole solar disk lies inside the image.

    Fast geometric test: the disk centre in pixels (world (0, 0) through the
    map's WCS) must be at least one disk radius (``RSUN_OBS / CDELT``) from
    every edge of the image (edges at -0.5 and n - 0.5).
    """
    rsun = smap.rsun_obs.to_value("arcsec")
    cx, cy = smap.wcs.world_to_pixel_values(0.0, 0.0)
    rx = rsun / smap.scale[0].to_value("arcsec / pix")
    ry = rsun / smap.scale[1].to_value("arcsec / pix")
    ny, nx = smap.data.shape
    inside = (cx - rx >= -0.5 and cx + rx <= nx - 0.5 and cy - ry >= -0.5 and cy + ry <= ny - 0.5)
    if not inside:
        raise InputError(f"register needs a full-disk image: the solar disk (centre pixel "
                         f"({cx:.1f}, {cy:.1f}), radius {rx:.1f} px) is not inside the "
                         f"{nx} x {ny} image")


def _check_aia_map(smap) -> None:
    from sunpy.map.sources.sdo import AIAMap

    if not isinstance(smap, AIAMap):
        raise InputTypeError(f"expected a sunpy AIAMap, got {type(smap).__name__}")

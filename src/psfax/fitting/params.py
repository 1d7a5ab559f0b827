"""Parameters of a star fit and the transforms that keep them valid.

The optimizers work on an unconstrained vector per star
``u = [x0, y0, flux, bkg, *shape_u]`` with ``shape_u`` the unconstrained shape:

* ``fwhm = exp(u)`` (px, > 0);
* ``beta = 1 + exp(u)`` (> 1);
* ``(g1, g2) = s tanh(|s|) / |s|`` for ``s = (u_g1, u_g2)`` (``|g| < 1``).

Constraints are reached through these maps, never by clipping.  Reported
parameters are ``x_fit, y_fit, flux_fit, bkg_fit, fwhm[, beta][, ellipticity,
theta]`` with errors propagated by the Jacobian of the map (delta method).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

import numpy as np

from psfax.fitting.flags import MAX_BETA, MAX_OFFSET, MIN_BETA, MIN_FWHM
from psfax.profiles import (FWHM_PER_SIGMA, Profile, ellipticity_to_shear, get_profile, pixel_values,
                            shear_to_ellipticity)

N_STAR = 4
"""Per-star parameters that every mode fits: x0, y0, flux, bkg."""
START_BETA = 2.5
"""Moffat index every fit starts from (a typical ground-based seeing profile)."""


def _tanhc(s):
    """tanh(s) / s, smooth through s = 0."""
    small = s < 1e-4
    safe = jnp.where(small, 1.0, s)
    return jnp.where(small, 1.0 - s * s / 3.0, jnp.tanh(safe) / safe)


def shape_from_u(profile: Profile, shape_u) -> dict:
    """Physical shape dict from the unconstrained shape vector (last axis)."""
    names = profile.shape_names
    out = {"fwhm": jnp.exp(shape_u[..., names.index("fwhm")])}
    if "beta" in names:
        out["beta"] = 1.0 + jnp.exp(shape_u[..., names.index("beta")])
    if profile.elliptical:
        s1, s2 = shape_u[..., names.index("g1")], shape_u[..., names.index("g2")]
        f = _tanhc(jnp.sqrt(s1 * s1 + s2 * s2 + 1e-300))
        out["g1"], out["g2"] = s1 * f, s2 * f
    return out


def shape_to_u(profile: Profile, shape: dict, dtype=float) -> np.ndarray:
    """Unconstrained shape vector (..., k) from a physical shape dict (numpy, on the host).

    Elliptical shapes are given as ``g1, g2`` or as ``ellipticity`` and ``theta``.
    """
    from psfax.errors import InputError

    if profile.elliptical and "g1" not in shape and "ellipticity" in shape:
        g1, g2 = ellipticity_to_shear(np.asarray(shape["ellipticity"], float), np.asarray(shape.get("theta", 0.0), float))
        shape = {**shape, "g1": g1, "g2": g2}
    missing = [n for n in profile.shape_names if n not in shape]
    if missing:
        raise InputError(f"shape for model {profile.name!r} needs {missing}, got {sorted(shape)}")
    cols = []
    for name in profile.shape_names:
        value = np.asarray(shape[name], dtype=dtype)
        if name == "fwhm":
            _check_range(value, name, low=0.0)
            cols.append(np.log(value))
        elif name == "beta":
            _check_range(value, name, low=1.0)
            cols.append(np.log(value - 1.0))
        else:
            cols.append(value)
    if profile.elliptical:
        g1, g2 = cols[-2], cols[-1]
        g = np.hypot(g1, g2)
        if np.any(g >= 1.0):
            raise InputError(f"shape shear |g| must be < 1, got max {float(np.max(g))}")
        scale = np.where(g > 0, np.arctanh(g) / np.where(g > 0, g, 1.0), 1.0)
        cols[-2], cols[-1] = g1 * scale, g2 * scale
    return np.stack(np.broadcast_arrays(*cols), axis=-1).astype(dtype)


def beyond_shape_limits(shape: dict):
    """True where a fitted physical ``shape`` (numpy or JAX) has run past what data can constrain:
    ``fwhm < MIN_FWHM`` or ``beta > MAX_BETA`` (:mod:`psfax.fitting.flags`, SHAPE_UNCONSTRAINED)."""
    out = shape["fwhm"] < MIN_FWHM
    return out | (shape["beta"] < MIN_BETA) | (shape["beta"] > MAX_BETA) if "beta" in shape else out


def _check_range(value, name, low):
    from psfax.errors import InputError

    with np.errstate(invalid="ignore"):
        ok = np.all(np.isfinite(value) & (value > low))
    if not ok:
        raise InputError(f"shape {name!r} must be finite and > {low}, got {value}")


def physical_names(profile: Profile) -> list[str]:
    """Names of the reported parameters, in covariance order."""
    names = ["x_fit", "y_fit", "flux_fit", "bkg_fit", "fwhm"]
    if "beta" in profile.shape_names:
        names.append("beta")
    if profile.elliptical:
        names += ["ellipticity", "theta"]
    return names


def physical(profile: Profile, u):
    """Reported parameter vector (see :func:`physical_names`) from one star's ``u``."""
    shape = shape_from_u(profile, u[N_STAR:])
    out = [u[0], u[1], u[2], u[3], shape["fwhm"]]
    if "beta" in shape:
        out.append(shape["beta"])
    if profile.elliptical:
        e, theta = shear_to_ellipticity(shape["g1"], shape["g2"])
        out += [e, theta]
    return jnp.stack(out)


def physical_covariance(profile: Profile, u, cov_u):
    """Covariance of :func:`physical` from the covariance of ``u`` (delta method)."""
    t = jax.jacfwd(lambda v: physical(profile, v))(u)
    return t @ cov_u @ t.T


def initial_star_params(data, weight, grid_x, grid_y):
    """Starting ``[x0, y0, flux, bkg]`` and the core width (px) of one stamp.

    bkg: median of the usable border pixels (none usable: the lowest usable
    pixel); flux: sum of the usable excess;
    peak pixel: the largest 3 x 3 sum of excess within MAX_OFFSET px of the stamp centre (stamps are cut
    at detections; the single brightest pixel of a S/N-5 star is often noise, and 2 % of such fits
    started near the edge walked off the stamp);
    centre: excess-weighted centroid within 2 px of the peak pixel;
    core width: :func:`core_sigma` of the peak pixel's share of the flux, at the centre's offset.
    """
    ok = weight > 0
    edge = jnp.concatenate([data[0], data[-1], data[1:-1, 0], data[1:-1, -1]])
    edge_ok = jnp.concatenate([ok[0], ok[-1], ok[1:-1, 0], ok[1:-1, -1]])
    bkg = masked_median(edge, edge_ok)
    lowest = jnp.min(jnp.where(ok, data, jnp.inf))  # no usable border: the faintest usable pixel
    bkg = jnp.where(jnp.isfinite(bkg), bkg, jnp.where(jnp.isfinite(lowest), lowest, 0.0))
    excess = jnp.where(ok, data - bkg, 0.0)
    ny, nx = excess.shape
    padded = jnp.pad(excess, 1)
    box = sum(padded[i:i + ny, j:j + nx] for i in range(3) for j in range(3))
    central = jnp.maximum(jnp.abs(grid_x - (nx - 1) / 2), jnp.abs(grid_y - (ny - 1) / 2)) <= MAX_OFFSET
    peak_idx = jnp.argmax(jnp.where(central & ok, box, -jnp.inf))
    px, py = grid_x.ravel()[peak_idx], grid_y.ravel()[peak_idx]
    near = (jnp.abs(grid_x - px) <= 2) & (jnp.abs(grid_y - py) <= 2)
    pos = jnp.where(near, jnp.maximum(excess, 0.0), 0.0)
    total = jnp.sum(pos)
    x0 = jnp.where(total > 0, jnp.sum(pos * grid_x) / jnp.where(total > 0, total, 1.0), px)
    y0 = jnp.where(total > 0, jnp.sum(pos * grid_y) / jnp.where(total > 0, total, 1.0), py)
    flux = jnp.sum(excess)
    peak = excess.ravel()[peak_idx]
    ratio = jnp.where((peak > 0) & (flux > peak), peak / jnp.where(flux > 0, flux, 1.0), 1.0 / (2 * jnp.pi))
    return jnp.stack([x0, y0, flux, bkg]), core_sigma(ratio, px - x0, py - y0)


def masked_median(values, ok):
    """Median of ``values[ok]`` (1-D; NaN when none is ok), as ``numpy.median``: the mean of the elements
    of ranks ``(n - 1) // 2`` and ``n // 2`` among the ``n`` ok ones.  Ranks come from all pairwise
    comparisons (ties broken by index), which for a stamp border's few dozen pixels beats a sort."""
    index = jnp.arange(values.shape[0])
    row, col = values[:, None], values[None, :]
    before = (col < row) | ((col == row) & (index[None, :] < index[:, None]))
    rank = jnp.sum(before & ok[None, :], axis=1)
    n = jnp.sum(ok)
    lower = jnp.sum(jnp.where(ok & (rank == (n - 1) // 2), values, 0.0))
    upper = jnp.sum(jnp.where(ok & (rank == n // 2), values, 0.0))
    return jnp.where(n > 0, 0.5 * (lower + upper), jnp.nan)


def core_sigma(ratio, offset_x, offset_y, steps: int = 12):
    """Width ``sigma`` (px, 0.1 to 5) of the circular Gaussian whose pixel integral holds ``ratio`` of its flux in
    the pixel whose centre lies at ``(offset_x, offset_y)`` px from the Gaussian's centre.

    That fraction (:func:`psfax.profiles.pixel_values`, a product of erf differences) falls as ``sigma``
    grows (for ``|e| <= 1/2``): bisection in ``ln sigma``, ``steps`` halvings (12: 0.1 % of sigma).
    """
    gaussian = get_profile("gaussian")

    def fraction(sigma):
        return pixel_values(gaussian, offset_x, offset_y, {"fwhm": FWHM_PER_SIGMA * sigma})

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        too_wide = fraction(jnp.exp(mid)) < ratio
        return jnp.where(too_wide, lo, mid), jnp.where(too_wide, mid, hi)

    # a loop, not unrolled: twelve inlined copies of erf made the compiled start ~3x larger and slower to load
    bounds = (jnp.full_like(ratio, math.log(0.1)), jnp.full_like(ratio, math.log(5.0)))
    lo, hi = jax.lax.fori_loop(0, steps, halve, bounds)
    return jnp.exp(0.5 * (lo + hi))


def fwhm_of_core_sigma(profile: Profile, sigma, beta):
    """FWHM (px) of the profile whose peak per unit flux equals that of a Gaussian of width ``sigma``:
    ``2 sqrt(2 ln 2) sigma`` for Gaussians; the Moffat of index ``beta`` with ``a^2 = 2 (beta - 1) sigma^2``
    (peak ``(beta - 1) / (pi a^2)``) has ``fwhm = 2 a sqrt(2^(1/beta) - 1)``."""
    if profile.name.endswith("gaussian"):
        return FWHM_PER_SIGMA * sigma
    return 2.0 * sigma * jnp.sqrt(2.0 * (beta - 1.0) * jnp.expm1(jnp.log(2.0) / beta))

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

import jax
import jax.numpy as jnp

import numpy as np

from psfax.profiles import FWHM_PER_SIGMA, Profile, ellipticity_to_shear, shear_to_ellipticity

N_STAR = 4
"""Per-star parameters that every mode fits: x0, y0, flux, bkg."""


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
    """Starting ``[x0, y0, flux, bkg]`` and a FWHM guess (px) from one stamp.

    bkg: median of the usable border pixels (none usable: the lowest usable
    pixel); flux: sum of the usable excess;
    centre: excess-weighted centroid within 2 px of the brightest pixel;
    FWHM: Gaussian width with the same peak-to-flux ratio.
    """
    ok = weight > 0
    edge = jnp.concatenate([data[0], data[-1], data[1:-1, 0], data[1:-1, -1]])
    edge_ok = jnp.concatenate([ok[0], ok[-1], ok[1:-1, 0], ok[1:-1, -1]])
    bkg = jnp.nanmedian(jnp.where(edge_ok, edge, jnp.nan))
    lowest = jnp.min(jnp.where(ok, data, jnp.inf))  # no usable border: the faintest usable pixel
    bkg = jnp.where(jnp.isfinite(bkg), bkg, jnp.where(jnp.isfinite(lowest), lowest, 0.0))
    excess = jnp.where(ok, data - bkg, 0.0)
    peak_idx = jnp.argmax(excess)
    px, py = grid_x.ravel()[peak_idx], grid_y.ravel()[peak_idx]
    near = (jnp.abs(grid_x - px) <= 2) & (jnp.abs(grid_y - py) <= 2)
    pos = jnp.where(near, jnp.maximum(excess, 0.0), 0.0)
    total = jnp.sum(pos)
    x0 = jnp.where(total > 0, jnp.sum(pos * grid_x) / jnp.where(total > 0, total, 1.0), px)
    y0 = jnp.where(total > 0, jnp.sum(pos * grid_y) / jnp.where(total > 0, total, 1.0), py)
    flux = jnp.sum(excess)
    peak = jnp.max(excess)
    sigma2 = jnp.where((peak > 0) & (flux > peak), flux / (2 * jnp.pi * jnp.maximum(peak, 1e-30)), 1.0)
    fwhm = jnp.clip(FWHM_PER_SIGMA * jnp.sqrt(sigma2), 0.6, 8.0)
    return jnp.stack([x0, y0, flux, bkg]), fwhm

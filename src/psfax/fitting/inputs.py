"""Checks of what a user passes to ``fit_stamps`` and ``render_stamps``: each bad input raises a
:class:`psfax.PsfaxError` naming the parameter and the bad value."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from psfax.errors import InputError, InputTypeError
from psfax.fitting.params import shape_to_u
from psfax.fitting.problem import bucket_size, variance_model
from psfax.profiles import ellipticity_to_shear


class Batch(NamedTuple):
    """The checked stamps of a fit: pixel rows (data, usable, extra variance), each (N padded, M)."""

    rows: tuple
    gain: float
    read_noise: float
    model_variance: bool
    positions: np.ndarray | None
    n_usable: np.ndarray  # (N,)
    bad: np.ndarray  # (N,) bool: some pixels were not finite or had variance <= 0
    size: tuple[int, int]


def batch(stamps, variance, mask, positions, gain, read_noise, model_variance) -> Batch:
    """Checked stamps, weights and positions of ``fit_stamps`` (see there)."""
    data, var, usable, bad = stamp_arrays(stamps, variance, mask)
    n, ny, nx = data.shape
    positions = positions_array(positions, n)
    model_variance = variance is None if model_variance is None else bool(model_variance)
    gain, read_noise = noise_parameters(gain, read_noise, need_gain=variance is None or model_variance)
    extra = variances(data, var, variance is not None, model_variance, gain, read_noise)
    rows = tuple(pad(a.reshape(n, -1)) for a in (np.nan_to_num(data), usable, extra))
    return Batch(rows, gain, read_noise, model_variance, positions, usable.reshape(n, -1).sum(axis=1), bad, (ny, nx))


def too_few_pixels(n_usable, n_free):
    """True for stamps with no more usable pixels than free parameters (raises when that is all of them)."""
    too_few = n_usable <= n_free
    if too_few.all():
        raise InputError(f"no stamp has more usable pixels ({int(n_usable.max())} at most) than the {n_free} "
                         "free parameters")
    return too_few


def stamp_arrays(stamps, variance, mask):
    """Check shapes and finiteness; returns data, variance, usable (float), per-star bad-pixel flag."""
    if not hasattr(stamps, "shape"):
        raise InputTypeError(f"stamps must be an array, got {type(stamps).__name__}")
    data = np.asarray(stamps, dtype=float)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or min(data.shape) == 0:
        raise InputError(f"stamps must have shape (N, ny, nx) or (ny, nx), got {np.shape(stamps)}")

    def same(name, arr, kind):
        a = np.asarray(arr, dtype=kind)
        a = a[None] if a.ndim == 2 else a
        if a.shape != data.shape:
            raise InputError(f"{name} must have the shape of stamps {data.shape}, got {np.shape(arr)}")
        return a

    var = same("variance", variance, float) if variance is not None else np.ones_like(data)
    bad_mask = same("mask", mask, bool) if mask is not None else np.zeros(data.shape, bool)
    invalid = ~np.isfinite(data) | ~np.isfinite(var) | (var <= 0)
    usable = ~bad_mask & ~invalid
    bad = (invalid & ~bad_mask).reshape(len(data), -1).any(axis=1)
    return data, np.where(usable, var, 1.0), usable.astype(float), bad


def noise_parameters(gain, read_noise, need_gain):
    """``(gain, read_noise)`` as floats (1, 0 when not needed and not given)."""
    if gain is None:
        if need_gain:
            raise InputError("give variance= or gain= (e-/ADU, with read_noise= in e-) so that pixels can be weighted")
        return 1.0, 0.0
    gain = float(gain)
    read_noise = 0.0 if read_noise is None else float(read_noise)
    if not (np.isfinite(gain) and gain > 0):
        raise InputError(f"gain must be a positive number (e-/ADU), got {gain}")
    if not (np.isfinite(read_noise) and read_noise >= 0):
        raise InputError(f"read_noise must be a non-negative number (e-), got {read_noise}")
    return gain, read_noise


def variances(data, var, variance_given, model_variance, gain, read_noise):
    """The variance not coming from the model (``extra``, ADU^2) of each pixel: the given one, the
    data-based noise model, or zero when the model supplies it all."""
    if not variance_given:
        return np.zeros_like(data) if model_variance else variance_model(np.nan_to_num(data), 0.0, gain, read_noise)
    return var


def positions_array(positions, n):
    """Image positions (N, 2) or None, checked against the N stamps."""
    if positions is None:
        return None
    p = np.asarray(positions, dtype=float)
    if p.ndim != 2 or p.shape[1] != 2 or not np.all(np.isfinite(p)):
        raise InputError(f"positions must be a finite (N, 2) array of image (x, y), got shape {p.shape}")
    if len(p) != n:
        raise InputError(f"positions has {len(p)} rows but there are {n} stamps: give one (x, y) per stamp")
    return p


def held_shape_u(profile, shape, n, dt):
    """Unconstrained held shapes (N padded, k) from ``shape=`` (each value a scalar or one per stamp)."""
    if not isinstance(shape, dict):
        raise InputTypeError(f"shape must be a dict of shape parameters, got {type(shape).__name__}")
    for name, value in shape.items():
        if np.ndim(value) not in (0, 1) or (np.ndim(value) == 1 and len(value) != n):
            raise InputError(f"shape[{name!r}] must be a scalar or have one value per stamp ({n}), "
                             f"got shape {np.shape(value)}")
    u = shape_to_u(profile, shape, dtype=dt)
    # padded stars repeat the last shape, so that one shape for all stays recognisable (table path)
    return pad(np.broadcast_to(u, (n, u.shape[-1])), mode="edge")


def pad(a, mode="constant"):
    """Pad the leading axis to :func:`bucket_size` (zeros, or ``mode="edge"``: repeat the last row)."""
    a = np.asarray(a)
    widths = [(0, bucket_size(len(a)) - len(a))] + [(0, 0)] * (a.ndim - 1)
    return np.pad(a, widths, mode=mode)


def stamp_size(shape):
    """``(ny, nx)`` of ``render_stamps``' ``shape``."""
    try:
        ny, nx = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise InputError(f"shape must be (ny, nx), got {shape!r}") from None
    if ny < 1 or nx < 1:
        raise InputError(f"shape must be positive, got {shape!r}")
    return ny, nx


def render_columns(params, profile):
    """``x, y, flux, bkg`` and the shape (``g1, g2`` for elliptical profiles), each (N,), from the
    ``params`` of ``render_stamps`` (a Table or a dict; ``<name>`` or ``<name>_fit``), checked: one
    length N >= 1 (or scalars), finite positions and fluxes, fwhm > 0, beta > 1 (:data:`MIN_BETA`)."""
    if not (hasattr(params, "keys") or hasattr(params, "colnames")):
        raise InputTypeError(f"params must be a dict or an astropy Table, got {type(params).__name__}")
    names = list(params.keys()) if hasattr(params, "keys") else list(params.colnames)

    def column(name, default=None):
        for key in (name, f"{name}_fit"):
            if key in names:
                return _numbers(params[key], key)
        if default is None:
            raise InputError(f"render_stamps needs {name!r} (or {name + '_fit'!r}) in params")
        return np.atleast_1d(np.asarray(default, dtype=float))

    values = {k: column(k, 0.0 if k == "bkg" else None) for k in ("x", "y", "flux", "bkg")}
    values.update({k: column(k) for k in profile.shape_names if k not in ("g1", "g2")})
    if profile.elliptical:
        values.update(_shear_columns(column))
    lengths = {k: len(v) for k, v in values.items() if len(v) != 1}
    if len(set(lengths.values())) > 1:
        raise InputError(f"render_stamps: params have different lengths {lengths}; give one value or N each")
    n = max(len(v) for v in values.values())
    _check_shape_values(values)
    return {k: np.broadcast_to(v, (n,)) for k, v in values.items()}, n


MIN_BETA = 1.0
"""A Moffat of index beta has finite total flux only for beta > 1 (its normalisation is (beta - 1) / (pi a^2)),
and the engine's unit-flux profiles need it: render_stamps refuses beta <= 1 as fit_stamps' shape= does."""


def _numbers(value, key):
    if value is None:
        raise InputError(f"render_stamps: params[{key!r}] is None; give a number or an array of numbers")
    try:
        a = np.atleast_1d(np.asarray(value, dtype=float))
    except (TypeError, ValueError):
        raise InputError(f"render_stamps: params[{key!r}] must be numbers, got {value!r}") from None
    if a.ndim != 1 or a.size == 0:
        raise InputError(f"render_stamps: params[{key!r}] must be a scalar or a non-empty 1-D array, "
                         f"got shape {a.shape}")
    return a


def _check_shape_values(values):
    for key in ("x", "y", "flux", "bkg"):
        if not np.all(np.isfinite(values[key])):
            raise InputError(f"render_stamps: {key} must be finite, got {values[key]}")
    with np.errstate(invalid="ignore"):
        if not np.all(values["fwhm"] > 0):  # NaN fails too
            raise InputError(f"render_stamps: fwhm must be finite and > 0 (px), got {values['fwhm']}")
        if "beta" in values and not np.all(values["beta"] > MIN_BETA):
            raise InputError(f"render_stamps: beta must be finite and > {MIN_BETA} (finite total flux), "
                             f"got {values['beta']}")
    for key in values:
        if not np.all(np.isfinite(values[key])):
            raise InputError(f"render_stamps: {key} must be finite, got {values[key]}")


def _shear_columns(column):
    """(g1, g2) from ``g1, g2`` or from ``ellipticity`` (1 - b/a) and ``theta`` (rad)."""
    try:
        return {"g1": column("g1"), "g2": column("g2")}
    except InputError:
        e, theta = column("ellipticity", 0.0), column("theta", 0.0)
        if np.any((e < 0) | (e >= 1)):
            raise InputError(f"ellipticity must be in [0, 1), got {e}") from None
        g1, g2 = ellipticity_to_shear(e, theta)
        return {"g1": g1, "g2": g2}

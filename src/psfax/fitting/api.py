"""``fit_stamps`` and ``render_stamps``: the public entry points of the fitting engine."""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from psfax.device import compute_context, resolve_device, resolve_dtype
from psfax.errors import InputError, InputTypeError
from psfax.fitting import flags as F
from psfax.fitting import optimizers
from psfax.fitting.params import (N_STAR, START_BETA, fwhm_of_core_sigma, initial_star_params, physical_covariance,
                                  physical_names, shape_to_u)
from psfax.fitting.problem import (Setup, StampData, bucket_size, cell_model, fixed_model, free_model, map_stars,
                                   pixel_grid, table_model)
from psfax.fitting.taylor import shape_cells, taylor_stack
from psfax.fitting.table import build_table, interpolate
from psfax.fitting.result import FitResult, SharedShape, physical_batch, results_table
from psfax.fitting.shared import blocks, shared_covariance
from psfax.fitting.spatial import PolynomialBasis
from psfax.fitting.spd import spd_inverse
from psfax.programs import persistent_jit
from psfax.profiles import DEFAULT_ACCURACY, Accuracy, ellipticity_to_shear, get_profile, render_stamps_batch

OPTIMIZERS = ("lm", "tncg", "adam", "scipy")
MAX_SHAPE_CELLS = 64
"""Fixed per-star shapes spanning more shape cells than this (each ~11 MB of tables in float64 for
15 x 15 stamps) are integrated directly instead (:mod:`psfax.fitting.taylor`)."""
CPU_CHUNK = 128
"""On the CPU, stars are processed 128 at a time (cache-sized) (see ``optimizers._in_chunks``)."""


def fit_stamps(stamps, *, variance=None, mask=None, model="moffat", pixel_integrated=True, shared_shape=False,
               shape=None, optimizer="lm", gain=None, read_noise=None, dtype=None, device=None,
               positions=None, spatial_degree=0, model_variance=None, accuracy: Accuracy = DEFAULT_ACCURACY,
               max_iter=100, start: FitResult | None = None, chi2_tolerance: float | None = None) -> FitResult:
    """Fit ``flux * PSF(x - x0, y - y0) + bkg`` to N stamps at once, minimising chi2.

    Parameters
    ----------
    stamps : (N, ny, nx) array (or one (ny, nx) stamp), ADU.
    variance : same shape, ADU^2, or None to derive it from ``gain`` (e-/ADU)
        and ``read_noise`` (e-): ``var = max(d, 0) / gain + (read_noise / gain)^2``
        from the data ``d``, or from the current model when ``model_variance``.
    mask : same shape, bool, True where a pixel is bad (excluded).
    model : "gaussian", "moffat", "elliptical_gaussian" or "elliptical_moffat".
    pixel_integrated : integrate the profile over each pixel (else sample at centres).
    shared_shape : one shape for all stars (per-star x, y, flux, bkg); with
        ``positions`` (N, 2) image (x, y) and ``spatial_degree`` 1 or 2 the
        shape varies as a polynomial over the image.
    shape : dict of shape parameters held fixed (PSF photometry), each a scalar
        or an (N,) array, e.g. ``{"fwhm": 2.0, "beta": 2.5}``.
    optimizer : "lm" (default), "tncg", "adam" or "scipy" (reference, CPU loop).
    model_variance : recompute the variance from the model each iteration
        (default: True when ``variance`` is None).  With a ``variance`` given it
        is added to the model's Poisson and read-noise variance: pass only the
        part the model does not contain (e.g. of a subtracted sky).
    dtype, device : float32/float64 and "cpu"/"gpu" (defaults: float64 on CPU,
        float32 on GPU).
    start : an earlier FitResult of the same model on the same stamps (e.g.
        before outliers were masked): its finite ``x, y, flux, bkg``, each
        star's shape and, in shared mode, its shape coefficients are the
        starting point (a fit started at its own solution stops there, with
        ``n_iter = 0``).
    chi2_tolerance : LM stops once a step predicts a chi2 decrease below this
        (default: 1e-6 per star for independent fits; 1e-3 for the total chi2
        of a shared shape, which puts every parameter within 0.03 sigma of the
        optimum).  A looser value suits fits that only rank stars by chi2.

    Returns
    -------
    FitResult with ``table`` columns ``x_fit, y_fit, flux_fit, bkg_fit`` and
    their ``_err``, shape columns (``fwhm``, ``beta``, ``ellipticity``,
    ``theta`` as the model has them, with errors; fixed ones with error 0),
    ``chi2, dof, reduced_chi2, converged, n_iter, flags``.  Positions are in
    stamp pixels, (0, 0) the centre of the first pixel.  Errors are the square
    roots of the diagonal of the inverse Fisher matrix.
    """
    profile = get_profile(model)
    if optimizer not in OPTIMIZERS:
        raise InputError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if shared_shape and shape is not None:
        raise InputError("give either shape= (held fixed) or shared_shape=True (fitted), not both")
    if chi2_tolerance is not None and not (np.isfinite(chi2_tolerance) and chi2_tolerance > 0):
        raise InputError(f"chi2_tolerance must be a positive number, got {chi2_tolerance}")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    data, var, usable, bad = _validate_arrays(stamps, variance, mask)
    n, ny, nx = data.shape
    if model_variance is None:
        model_variance = variance is None
    gain, read_noise = _noise_parameters(gain, read_noise, need_gain=variance is None or model_variance)
    if variance is None and not model_variance:
        var = np.maximum(np.nan_to_num(data), 0.0) / gain + (read_noise / gain) ** 2
    extra = np.zeros_like(data) if variance is None and model_variance else var
    if spatial_degree and not shared_shape:
        raise InputError("spatial_degree needs shared_shape=True")
    basis = PolynomialBasis.fit_to(positions, spatial_degree) if shared_shape else None
    n_free = N_STAR + (len(profile.shape_names) if shape is None and not shared_shape else 0)
    n_usable = usable.reshape(n, -1).sum(axis=1)
    too_few = n_usable <= n_free
    if too_few.all():
        raise InputError(f"no stamp has more usable pixels ({int(n_usable.max())} at most) than the {n_free} "
                         "free parameters")

    setup = Setup(profile, (ny, nx), bool(pixel_integrated), accuracy, bool(model_variance), int(max_iter),
                  chunk=CPU_CHUNK if dev.platform == "cpu" else 0)
    flags = np.where(bad, F.BAD_PIXELS, 0) | np.where(too_few, F.TOO_FEW_PIXELS, 0)
    with compute_context(dt, dev):
        stars = StampData(*(jnp.asarray(_pad(a.reshape(n, -1)), dt) for a in (np.nan_to_num(data), usable, extra)),
                          jnp.asarray(gain, dt), jnp.asarray(read_noise, dt))
        active = jnp.asarray(_pad(~too_few))
        fixed_u = None if shape is None else _fixed_shape_u(profile, shape, n, dt)
        out = _solve(setup, optimizer, stars, active, fixed_u, basis, positions, dt,
                     None if start is None else _start_point(start, model, n, basis), chi2_tolerance)
    options = _options(model, pixel_integrated, shared_shape, shape, optimizer, gain, read_noise, dt, model_variance,
                       spatial_degree, accuracy)
    return _assemble(profile, setup, optimizer, out, n, flags, n_usable, n_free, options)


def _options(model, pixel_integrated, shared_shape, shape, optimizer, gain, read_noise, dt, model_variance,
             spatial_degree, accuracy):
    """Options recorded with the result (JSON-ready)."""
    return {"model": model, "pixel_integrated": bool(pixel_integrated), "shared_shape": bool(shared_shape),
            "shape": None if shape is None else {k: np.asarray(v).tolist() for k, v in shape.items()},
            "optimizer": optimizer, "gain": float(gain), "read_noise": float(read_noise), "dtype": str(np.dtype(dt)),
            "model_variance": bool(model_variance), "spatial_degree": int(spatial_degree),
            "quadrature_order": accuracy.quadrature_order}


def _validate_arrays(stamps, variance, mask):
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


def _noise_parameters(gain, read_noise, need_gain):
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


def _fixed_shape_u(profile, shape, n, dt):
    if not isinstance(shape, dict):
        raise InputTypeError(f"shape must be a dict of shape parameters, got {type(shape).__name__}")
    for name, value in shape.items():
        if np.ndim(value) not in (0, 1) or (np.ndim(value) == 1 and len(value) != n):
            raise InputError(f"shape[{name!r}] must be a scalar or have one value per stamp ({n}), "
                             f"got shape {np.shape(value)}")
    u = shape_to_u(profile, shape, dtype=dt)
    # padded stars repeat the last shape, so that one shape for all stays recognisable (table path)
    return _pad(np.broadcast_to(u, (n, u.shape[-1])), mode="edge")


def _start_point(start, model, n, basis):
    """``(x, y, flux, bkg)`` (N, 4) and unconstrained shapes (N, k) of ``start`` (NaN where unknown), and
    its shared coefficients (or None)."""
    if not isinstance(start, FitResult):
        raise InputTypeError(f"start must be a FitResult, got {type(start).__name__}")
    if start.model != model or len(start.table) != n:
        raise InputError(f"start must be a {model!r} fit of the same {n} stamps, got a {start.model!r} fit of "
                         f"{len(start.table)}")
    u4 = np.column_stack([np.asarray(start.table[c], float) for c in ("x_fit", "y_fit", "flux_fit", "bkg_fit")])
    profile = get_profile(model)
    shape = {name: np.asarray(start.table[name], float) for name in physical_names(profile)[N_STAR:]}
    known = np.all([np.isfinite(v) for v in shape.values()], axis=0)
    shape_u = np.full((n, len(profile.shape_names)), np.nan)
    shape_u[known] = shape_to_u(profile, {name: v[known] for name, v in shape.items()})
    coef = None
    if basis is not None and start.shared is not None:
        if start.shared.coef.shape[0] != basis.size:
            raise InputError(f"start has {start.shared.coef.shape[0]} spatial terms, this fit {basis.size}")
        coef = np.asarray(start.shared.coef, float).ravel()
    return u4, shape_u, coef


def _pad(a, mode="constant"):
    """Pad the leading axis to :func:`bucket_size` (zeros, or ``mode="edge"``: repeat the last row)."""
    a = np.asarray(a)
    widths = [(0, bucket_size(len(a)) - len(a))] + [(0, 0)] * (a.ndim - 1)
    return np.pad(a, widths, mode=mode)


@persistent_jit(static_argnames=("setup",))
def _initial(setup, stars, start):
    """Starting [x0, y0, flux, bkg] (N, 4) from the stamps and a starting unconstrained shape per star
    (N, k): the FWHM of its core width at beta = START_BETA, round; the finite entries of ``start`` (N, 4 + k)
    take precedence."""
    ny, nx = setup.size
    gx, gy = pixel_grid(setup.size, stars.data.dtype)
    gx, gy = gx.reshape(ny, nx), gy.reshape(ny, nx)
    u4, sigma = map_stars(setup, lambda d, u: initial_star_params(d, u, gx, gy),
                           stars.data.reshape(-1, ny, nx), stars.usable.reshape(-1, ny, nx))
    fwhm = jnp.clip(fwhm_of_core_sigma(setup.profile, sigma, START_BETA), 0.6, 8.0)
    shape = {"fwhm": jnp.log(fwhm), "beta": jnp.full_like(fwhm, math.log(START_BETA - 1.0))}
    shape_u = jnp.stack([shape.get(name, jnp.zeros_like(fwhm)) for name in setup.profile.shape_names], axis=-1)
    guess = jnp.concatenate([u4, shape_u], axis=1)
    v = jnp.where(jnp.isfinite(start), start, guess)
    return v[:, :N_STAR], v[:, N_STAR:]


def _solve(setup, optimizer, stars, active, fixed_u, basis, positions, dt, start=None, tolerance=None):
    """Run the optimizer; returns (values, cov, chi2, converged, n_iter) per star and SharedShape|None.

    Host-side preparation is numpy; every device computation is one compiled program (no eager JAX
    operations, which a new process would each have to lower)."""
    start_u4, start_shape, start_coef = (None, None, None) if start is None else start
    known = np.full((len(active), N_STAR + setup.n_shape), np.nan)
    if start_u4 is not None:
        known[:len(start_u4)] = np.concatenate([start_u4, start_shape], axis=1)
    u4, shape_u0 = _initial(setup, stars, jnp.asarray(known, dt))
    profile = setup.profile
    if basis is not None:
        pos = np.zeros((len(active), 2)) if positions is None else _pad(np.asarray(positions, float))
        bvals = jnp.asarray(basis(pos[:, 0], pos[:, 1]), dt)
        if start_coef is None:
            coef0 = np.zeros((basis.size, setup.n_shape))
            coef0[0] = np.nanmedian(np.where(np.asarray(active)[:, None], np.asarray(shape_u0), np.nan), axis=0)
            coef0 = jnp.asarray(np.ravel(coef0), dt)
            if optimizer == "lm":
                coef0 = optimizers.pilot_coefficients(setup, u4, coef0, bvals, stars, active)
        else:
            coef0 = jnp.asarray(np.ravel(start_coef), dt)
        u, coef, conv, n_iter, b = optimizers.solve_shared(optimizer, setup, u4, coef0, bvals, stars, active,
                                                           tolerance)
        if b is None:
            b = _shared_blocks(setup, u, coef, bvals, stars, active)
        *per_star, cov_c = _finish_shared(setup, u, coef, bvals, b)
        shared = SharedShape(profile, basis, np.asarray(coef).reshape(basis.size, -1), np.asarray(cov_c))
        active = np.asarray(active)
        return (*per_star, np.broadcast_to(conv, active.shape) & active, np.broadcast_to(n_iter, active.shape)), shared
    aux_axis, order = 0, None
    if fixed_u is None:
        model_of, aux = free_model, jnp.zeros((len(active), 0), dt)
        v0 = jnp.concatenate([u4, shape_u0], axis=1)
    elif setup.tabulated and np.all(fixed_u == fixed_u[0]):
        model_of, aux, v0, aux_axis = table_model, build_table_jit(setup, jnp.asarray(fixed_u[0], dt)), u4, None
    elif setup.tabulated and (cells := _shape_cell_tables(setup, fixed_u, dt)) is not None:
        (aux, order), model_of, aux_axis = cells, cell_model, (None, 0)
        v0, active, stars, _ = optimizers.select_stars(jnp.asarray(order), u4, active, stars, None, aux_axis=None)
        fixed_u = fixed_u[order]
    else:
        model_of, aux, v0 = fixed_model, jnp.asarray(fixed_u, dt), u4
    if fixed_u is not None:
        given = np.isfinite(known[:, 2]) if order is None else np.isfinite(known[order, 2])
        one_shape = model_of is fixed_model and np.all(fixed_u == fixed_u[0])
        v0 = _aperture_corrected(setup, model_of, jnp.asarray(fixed_u[:1], dt) if one_shape else aux, stars, v0, given)
    v, conv, n_iter, cov_chi2 = optimizers.solve_independent(optimizer, setup, model_of, v0, aux, stars, active,
                                                             aux_axis, tolerance)
    if cov_chi2 is None:
        cov_chi2 = _fisher_covariance(setup, model_of, v, aux, stars, aux_axis)
    values, cov, chi2 = v, *cov_chi2
    if fixed_u is None:
        values, cov = _physical_jit(setup, values, cov)
    else:  # report the fixed shape with zero variance
        values, cov = _with_fixed_shape(setup, values, cov, jnp.asarray(fixed_u, dt))
    out = (values, cov, chi2, conv & active, n_iter)
    if order is not None:
        out = optimizers.take(out, jnp.asarray(np.argsort(order)))
    return out, None


@persistent_jit(static_argnames=("setup", "model_of"))
def _aperture_corrected(setup, model_of, aux, stars, u4, given):
    """Starting flux and background of PSF photometry (but where ``given`` by ``start``) corrected for the
    PSF's light that the stamp misses or that its border adds to the background estimate.

    With ``P`` the known PSF of a star at the stamp centre (one for all stars when ``aux`` of the direct
    model holds one shape), the excess over the border median sums
    ``flux (sum_usable P - n_usable leak)``, ``leak`` being the mean of ``P`` over the usable border
    pixels (light the median took for background), and the background is high by ``flux leak``.
    Without it, the start of a FWHM 1.8 px Moffat is 2 % faint (~10 sigma for bright stars) and a
    third of the stars need a third LM iteration.
    """
    ny, nx = setup.size
    centre = jnp.asarray([(nx - 1) / 2, (ny - 1) / 2, 1.0, 0.0], u4.dtype)
    if model_of is table_model:
        psf = table_model(setup, centre, aux)[None]
    elif model_of is cell_model:
        tables, (cell, _) = aux
        psf = interpolate(setup.grid, tables[:, 0], centre[0], centre[1])[0].reshape(tables.shape[0], -1)[cell]
    else:
        psf = jax.vmap(lambda shape_u: fixed_model(setup, centre, shape_u))(aux)
    border = jnp.ones((ny, nx), bool).at[1:-1, 1:-1].set(False).ravel()
    on_border = stars.usable * border
    leak = jnp.sum(on_border * psf, axis=1) / jnp.maximum(jnp.sum(on_border, axis=1), 1.0)
    inside = jnp.sum(stars.usable * psf, axis=1) - jnp.sum(stars.usable, axis=1) * leak
    flux = u4[:, 2] / jnp.where(inside > 0, inside, 1.0)
    return jnp.where(given[:, None], u4, u4.at[:, 2].set(flux).at[:, 3].add(-flux * leak))


def _shape_cell_tables(setup, fixed_u, dt):
    """Tables of the shape cells of ``fixed_u`` (:mod:`psfax.fitting.taylor`) and each star's cell and
    offset, stars sorted by cell (so that a chunk's tables stay in cache), and that order (numpy);
    None when the shapes span more than MAX_SHAPE_CELLS cells."""
    centres, cell = shape_cells(fixed_u)
    if len(centres) > MAX_SHAPE_CELLS:
        return None
    n_cells = 1 << (len(centres) - 1).bit_length()  # padded to a power of two: few shapes to compile for
    tables = cell_tables(setup, jnp.asarray(np.pad(centres, ((0, n_cells - len(centres)), (0, 0)), mode="edge"), dt))
    order = np.argsort(cell, kind="stable")
    cell = cell[order]
    return (tables, (jnp.asarray(cell, jnp.int32), jnp.asarray(fixed_u[order] - centres[cell], dt))), order


def _physical(profile, v, cov_v):
    return physical_batch(profile, v), jax.vmap(partial(physical_covariance, profile))(v, cov_v)


@persistent_jit(static_argnames=("setup",))
def _physical_jit(setup, v, cov_v):
    return _physical(setup.profile, v, cov_v)


@persistent_jit(static_argnames=("setup", "model_of", "aux_axis"))
def _fisher_covariance(setup, model_of, v, aux, stars, aux_axis):
    """Inverse-Fisher covariance (N, P, P) and chi2 (N,) at the solution ``v``."""
    fish, chi2 = optimizers.fisher_batch(setup, model_of, v, aux, stars, aux_axis)
    return spd_inverse(fish), chi2


@persistent_jit(static_argnames=("setup",))
def _with_fixed_shape(setup, v, cov_v, fixed_u):
    """Append the fixed shape (zero variance) to [x0, y0, flux, bkg] and map to reported parameters."""
    k = setup.n_shape
    return _physical(setup.profile, jnp.concatenate([v, fixed_u], axis=1), jnp.pad(cov_v, ((0, 0), (0, k), (0, k))))


@persistent_jit(static_argnames=("setup",))
def build_table_jit(setup, shape_u):
    return build_table(setup.profile, setup.grid, shape_u)


@persistent_jit(static_argnames=("setup",))
def cell_tables(setup, centres):
    """Table stacks (:func:`psfax.fitting.taylor.taylor_stack`) of the shape cells ``centres`` (C, k)."""
    return jax.lax.map(partial(taylor_stack, setup.profile, setup.grid), centres)


@persistent_jit(static_argnames=("setup",))
def _shared_blocks(setup, u, coef, bvals, stars, active):
    return blocks(setup, u, coef, bvals, stars, active)


@persistent_jit(static_argnames=("setup",))
def _finish_shared(setup, u, coef, bvals, b):
    """Reported values, their inverse-Fisher covariance and chi2 per star, and the coefficients'
    covariance, from the Gauss-Newton blocks ``b`` at the solution."""
    cov_v, cov_c = shared_covariance(b, bvals, setup.n_shape)
    v = jnp.concatenate([u, bvals @ coef.reshape(bvals.shape[1], -1)], axis=1)
    return (*_physical(setup.profile, v, cov_v), b.chi2, cov_c)


def _assemble(profile, setup, optimizer, out, n, flags, n_usable, n_free, options) -> FitResult:
    per_star, shared = out
    values, cov, chi2, conv, n_iter = (np.asarray(o)[:n] for o in per_star)
    names = physical_names(profile)
    fitted = (flags & F.TOO_FEW_PIXELS) == 0
    variances = np.diagonal(cov, axis1=1, axis2=2)
    n_check = n_free if options["shape"] is None and not options["shared_shape"] else N_STAR
    singular = fitted & ~np.all(np.isfinite(variances[:, :n_check]) & (variances[:, :n_check] > 0), axis=1)
    ok = fitted & ~singular
    values = np.where(fitted[:, None], values, np.nan)
    errors = np.where(ok[:, None], np.sqrt(np.abs(variances)), np.nan)
    cov = np.where(ok[:, None, None], cov, np.nan)
    ny, nx = setup.size
    off = fitted & (np.maximum(np.abs(values[:, 0] - (nx - 1) / 2), np.abs(values[:, 1] - (ny - 1) / 2)) > F.MAX_OFFSET)
    flags = (flags | np.where(singular, F.SINGULAR, 0) | np.where(off, F.OFF_STAMP, 0)
             | np.where(fitted & ~conv, F.NOT_CONVERGED, 0)).astype(np.int32)
    dof = (n_usable - n_free).astype(np.int64)
    table = results_table(names, values, errors, np.where(fitted, chi2, np.nan), dof, fitted & conv,
                        n_iter.astype(np.int32), flags)
    return FitResult(table, cov, names, profile.name, setup.pixel_integrated, optimizer, shared, options)


def render_stamps(params, shape, *, model="moffat", pixel_integrated=True, accuracy: Accuracy = DEFAULT_ACCURACY,
                  dtype=None, device=None):
    """Noise-free stamps ``flux * PSF(x - x0, y - y0) + bkg`` (N, ny, nx) from parameters.

    ``params``: an astropy Table (e.g. ``FitResult.table``) or a dict with
    ``x, y, flux`` (or ``x_fit, y_fit, flux_fit``), optional ``bkg``, and the
    model's shape parameters (``fwhm``, ``beta``; ``ellipticity`` and
    ``theta`` or ``g1`` and ``g2`` for elliptical models), each a scalar or an
    (N,) array.  ``shape``: ``(ny, nx)`` of a stamp; positions in its pixels.
    """
    profile = get_profile(model)
    ny, nx = _stamp_size(shape)

    def column(name, default=None):
        for key in (name, f"{name}_fit"):
            if key in params.keys() if hasattr(params, "keys") else key in params.colnames:
                return np.atleast_1d(np.asarray(params[key], dtype=float))
        if default is None:
            raise InputError(f"render_stamps needs {name!r} (or {name + '_fit'!r}) in params")
        return np.atleast_1d(np.asarray(default, dtype=float))

    x, y, flux, bkg = column("x"), column("y"), column("flux"), column("bkg", 0.0)
    shape_values = {name: column(name) for name in profile.shape_names if name not in ("g1", "g2")}
    if profile.elliptical:
        shape_values.update(_shear_columns(column))
    n = max(len(a) for a in [x, y, flux, bkg, *shape_values.values()])
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    def padded(a):  # to a bucket size: one compiled program serves many N
        return jnp.asarray(_pad(np.broadcast_to(a, (n,)), mode="edge"), dt)

    with compute_context(dt, dev):
        arrays = [padded(a) for a in (x, y, flux, bkg)]
        shape_arr = {k: padded(v) for k, v in shape_values.items()}
        out = render_stamps_batch(profile, *arrays, shape_arr, (ny, nx), pixel_integrated=bool(pixel_integrated),
                                  accuracy=accuracy)
        return np.asarray(out)[:n]


def _stamp_size(shape):
    try:
        ny, nx = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise InputError(f"shape must be (ny, nx), got {shape!r}") from None
    if ny < 1 or nx < 1:
        raise InputError(f"shape must be positive, got {shape!r}")
    return ny, nx


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

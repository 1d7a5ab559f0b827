"""PSF photometry with an :class:`~psfax.psf.empirical.EmpiricalPSF`: per-star (x, y, flux, bkg).

Each star minimises ``chi2 = sum w (d - flux P(x - x0, y - y0) - bkg)^2``, ``w = 1 / variance`` on
usable pixels (variance given, held fixed), by Levenberg-Marquardt on the four parameters, all stars
at once (``vmap``, :data:`STAR_CHUNK` stars per loop) for at most ``max_iter`` iterations, each star until a
step lowers its chi2 by less than :data:`CHI2_STOP` (that last step moved each parameter by about sqrt(1e-4) = 0.01 of its error or less; a
step is taken only when chi2 drops; the damping is divided by 10 after a success and multiplied by 10 after a
failure).  A batch runs as long as its slowest star, so every star gets :data:`FIRST_ROUND` iterations and
the few unfinished ones (1.5 % of the real ZTF quadrant's PSF stars) go on alone from where they stopped
(flux and background re-solved there, damping reset) for the rest of ``max_iter``.  The Jacobian ``[flux dP/dx0, flux dP/dy0, P, 1]`` comes in closed form from the table
interpolation.  Errors are the square roots of the diagonal of the inverse Fisher matrix ``(J^T W J)^-1`` at
the solution.

The PSF's spatial terms are evaluated at each star's starting image position (the PSF changes by far
less than its errors over the < 1 px a fit moves a star).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from astropy.table import Table

from psfax.device import compute_context, resolve_device, resolve_dtype
from psfax.fitting import flags as F
from psfax.fitting.problem import bucket_size
from psfax.programs import persistent_jit
from psfax.psf.empirical import EmpiricalPSF, PSFArrays, star_psf

PARAMS = ("x", "y", "flux", "bkg")
CHI2_STOP = 1e-4
"""A star's fit stops at an accepted step that lowers its chi2 by less than this."""
STAR_CHUNK = 128
"""Stars per batched loop (``lax.map`` over the chunks): a chunk stops with its slowest star (0.18 s against
0.21 s per call with one loop for the quadrant's 1,232 PSF stars, 2 cores)."""
FIRST_ROUND = 6
"""Iterations every star gets before the unfinished ones go on alone (the time per call falls from 0.44 s
to about 0.2 s on the quadrant's 1,232 stars, 2 cores)."""


def fit_psf_photometry(psf: EmpiricalPSF, data, variance, mask, x_init, y_init, x_corner, y_corner, *,
                       fit_bkg: bool = True, max_iter: int = 30, dtype=None, device=None) -> Table:
    """Fit every stamp (N, S, S) with ``psf``; ``x_init, y_init`` the starting stamp positions, ``x_corner,
    y_corner`` the image position of stamp pixel (0, 0).  Non-finite data or variance <= 0 are masked.
    ``fit_bkg=False`` holds the background at zero (data already sky-subtracted; ``bkg_err`` is then NaN).

    Returns a table with ``x_fit, y_fit`` (stamp pixels), ``flux_fit`` (the light within
    ``psf.norm_radius``), ``bkg_fit`` and their ``_err``, ``chi2, dof, reduced_chi2, converged, flags``.
    """
    data = np.asarray(data, float)
    n = len(data)
    usable = ~np.asarray(mask, bool) & np.isfinite(data) & np.isfinite(variance) & (np.asarray(variance) > 0)
    w = np.where(usable, 1.0 / np.where(usable, variance, 1.0), 0.0)
    x_init, y_init = np.asarray(x_init, float), np.asarray(y_init, float)
    coef, core_w = psf.weights_at(np.asarray(x_corner) + x_init, np.asarray(y_corner) + y_init)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    with compute_context(dt, dev):
        stars = [np.nan_to_num(data), w, coef, core_w]
        v, cov, chi2, converged = _lm_in_rounds(psf.arrays(dt), stars, x_init, y_init, int(max_iter),
                                                bool(fit_bkg), dt)
    n_usable = usable.reshape(n, -1).sum(axis=1)
    if not fit_bkg:
        cov[:, 3, 3] = np.nan
    return photometry_table(v, cov, chi2, converged.astype(bool), n_usable, psf.stamp_size, 3 + int(fit_bkg))


def photometry_table(v, cov, chi2, converged, n_usable, stamp_size, n_free: int = len(PARAMS)) -> Table:
    """The fit columns (photutils names) from values (N, 4), covariances (N, 4, 4) and chi2 (``n_free``
    fitted parameters: a fixed one has a NaN variance)."""
    var = np.diagonal(cov, axis1=1, axis2=2)
    singular = ~np.all(np.isfinite(var[:, :n_free]) & (var[:, :n_free] > 0), axis=1)
    too_few = n_usable <= n_free
    centre = (stamp_size - 1) / 2
    off = np.maximum(np.abs(v[:, 0] - centre), np.abs(v[:, 1] - centre)) > F.MAX_OFFSET
    flags = (np.where(~converged, F.NOT_CONVERGED, 0) | np.where(too_few, F.TOO_FEW_PIXELS, 0)
             | np.where(singular & ~too_few, F.SINGULAR, 0) | np.where(off, F.OFF_STAMP, 0)).astype(np.int32)
    table = Table()
    for i, name in enumerate(PARAMS):
        table[f"{name}_fit"] = np.where(too_few, np.nan, v[:, i])
        table[f"{name}_err"] = np.where(singular | too_few, np.nan, np.sqrt(np.abs(var[:, i])))
    dof = (n_usable - n_free).astype(np.int64)
    table["chi2"] = np.where(too_few, np.nan, chi2)
    table["dof"] = dof
    with np.errstate(divide="ignore", invalid="ignore"):
        table["reduced_chi2"] = np.where(dof > 0, table["chi2"] / dof, np.nan)
    table["converged"] = converged & ~too_few
    table["flags"] = flags
    return table


def _linearise(arrays: PSFArrays, coef, core_w, v):
    """Model (S*S,) and Jacobian (S*S, 4) of one star at ``v = [x0, y0, flux, bkg]``."""
    p, px, py = (a.ravel() for a in star_psf(arrays, coef, core_w, v[0], v[1]))
    return v[2] * p + v[3], jnp.stack([v[2] * px, v[2] * py, p, jnp.ones_like(p)], axis=1)


def _start(arrays, d, w, coef, core_w, x0, y0, free):
    """Flux and background at the starting position: the weighted linear least squares of ``d = F P + B``
    (``B`` held at 0 when not ``free[3]``)."""
    p = star_psf(arrays, coef, core_w, x0, y0)[0].ravel()
    j = jnp.stack([p, free[3] * jnp.ones_like(p)], axis=1)
    a = j.T @ (w[:, None] * j) + jnp.diag(jnp.stack([1e-12, 1.0 - free[3] + 1e-12]))
    fb = jnp.linalg.solve(a, j.T @ (w * d))
    return jnp.stack([x0, y0, fb[0], fb[1]])


def _lm_in_rounds(arrays, stars, x_init, y_init, max_iter, fit_bkg, dt):
    """:func:`_lm` for :data:`FIRST_ROUND` iterations on every star (above one chunk padded to whole
    :data:`STAR_CHUNK` chunks with copies of the first), then for the rest of ``max_iter`` on the unfinished ones
    (padded to a bucket size with copies of one, so that few programs are compiled): NumPy (values (N, 4),
    covariances (N, 4, 4), chi2, converged)."""
    def run(rows, x, y, iterations):
        inputs = (jnp.asarray(a, dt) for a in (*(a[rows] for a in stars), x, y))
        return [np.array(o, float) for o in _lm(arrays, *inputs, max_iter=iterations, fit_bkg=fit_bkg)]

    first = min(FIRST_ROUND, max_iter)
    n = len(x_init)
    every = np.concatenate([np.arange(n), np.zeros(-n % STAR_CHUNK if n > STAR_CHUNK else 0, int)])
    v, cov, chi2, converged = (o[:n] for o in run(every, x_init[every], y_init[every], first))
    left = np.flatnonzero(converged == 0)
    if left.size and max_iter > first:
        rows = np.concatenate([left, np.repeat(left[:1], bucket_size(left.size) - left.size)])
        again = run(rows, v[rows, 0], v[rows, 1], max_iter - first)
        for full, part in zip((v, cov, chi2, converged), again):
            full[rows] = np.asarray(part, float)
    return v, cov, chi2, converged


@persistent_jit(static_argnames=("max_iter", "fit_bkg"))
def _lm(arrays, data, w, coef, core_w, x_init, y_init, *, max_iter, fit_bkg):
    n = data.shape[0]
    d, w = data.reshape(n, -1), w.reshape(n, -1)
    free = jnp.asarray([1.0, 1.0, 1.0, float(fit_bkg)], data.dtype)
    fixed = jnp.diag(1.0 - free)

    def one(d, w, c, cw, x0, y0):
        v0 = _start(arrays, d, w, c, cw, x0, y0, free)

        def chi2_of(v):
            p = star_psf(arrays, c, cw, v[0], v[1], derivatives=False)[0].ravel()
            return jnp.sum(w * (d - v[2] * p - v[3]) ** 2)

        def body(state):
            v, lam, chi2, converged, k = state
            m, jac = _linearise(arrays, c, cw, v)
            jac = jac * free
            a = jac.T @ (w[:, None] * jac) + fixed
            g = jac.T @ (w * (d - m))
            step = jnp.linalg.solve(a + lam * jnp.diag(jnp.diag(a)) + 1e-30 * jnp.eye(4), g)
            trial = v + step
            chi2_new = chi2_of(trial)
            better = chi2_new < chi2
            done = converged | (jnp.abs(chi2 - jnp.where(better, chi2_new, chi2)) < CHI2_STOP) & better
            return (jnp.where(better, trial, v), jnp.where(better, lam * 0.1, lam * 10.0),
                    jnp.minimum(chi2_new, chi2), done | (lam > 1e8), k + 1)

        state = (v0, jnp.asarray(1e-3, d.dtype), chi2_of(v0), jnp.asarray(False), 0)
        v, lam, chi2, converged, _ = jax.lax.while_loop(lambda s: (s[4] < max_iter) & ~s[3], body, state)
        jac = _linearise(arrays, c, cw, v)[1] * free
        fisher = jac.T @ (w[:, None] * jac) + fixed
        return v, jnp.linalg.inv(fisher), chi2, converged

    args = (d, w, coef, core_w, x_init, y_init)
    if n <= STAR_CHUNK or n % STAR_CHUNK:
        return jax.vmap(one)(*args)
    chunks = jax.tree.map(lambda a: a.reshape((n // STAR_CHUNK, STAR_CHUNK) + a.shape[1:]), args)
    out = jax.lax.map(lambda a: jax.vmap(one)(*a), chunks)
    return jax.tree.map(lambda o: o.reshape((n,) + o.shape[2:]), out)

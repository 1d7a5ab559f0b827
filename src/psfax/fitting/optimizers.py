"""Dispatch to the optimizers, for independent stars and for a shared shape.

Each returns the solution and per-star (or global) ``converged`` and
iteration counts; covariances are computed afterwards from the same Fisher
matrix whatever the optimizer.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from psfax.fitting import lm, scipy_ref, shared
from psfax.fitting.adam import AdamSettings, adam_minimize, whitening
from psfax.fitting.params import N_STAR
from psfax.fitting.problem import (STAR_AXES, aux_rows, bucket_size, chi2, free_model, linearise, map_stars,
                                   per_star, star_rows, weights)
from psfax.fitting.spd import spd_inverse, spd_solve
from psfax.fitting.tncg import TNCGSettings, tncg_minimize
from psfax.programs import persistent_jit

LM_SETTINGS = lm.LMSettings()
SHARED_LM_SETTINGS = dataclasses.replace(LM_SETTINGS, dchi2=1e-3)
"""The shared fit stops once the Gauss-Newton step predicts a chi2 decrease below 1e-3: by
Cauchy-Schwarz every parameter is then within ``sqrt(1e-3) = 0.03`` of its standard error of the
quadratic model's optimum.  On ZTF, before the outliers are clipped, the iteration converges only
linearly (large residuals: the curvature Gauss-Newton neglects), so the per-star default (1e-6) would
cost some 7 more passes over all stars for nothing."""
FREE_SHAPE_LAM0 = 1e-2
"""Starting LM damping of per-star fits with a free shape, whose start (moment FWHM, beta = 2.5) is
rougher than the positions and fluxes of PSF photometry (which keeps 1e-3).  On 500 GalSim stars each
of FWHM 0.9, 1.8 and 3.0 px, 1e-3 let one star in five or more overshoot and take 7-17 iterations at
FWHM 0.9 and 1.8; 1e-2 brought nearly all to 4-6 (1e-1 was slower at 3.0 px and in photometry)."""
PILOT_DCHI2 = 1.0
"""A pilot fit (:func:`pilot_coefficients`) only seeds the shape: it stops at a predicted decrease of 1."""
TNCG_SETTINGS = TNCGSettings()
ADAM_SETTINGS = AdamSettings()


def _limit_star_shift(p):
    return lm._limit_shift(p, LM_SETTINGS.max_shift)


def _star_problem(setup, model_of, aux, star):
    """Model, weights and Gauss-Newton diagonal functions of one star."""
    def model_fn(x):
        return model_of(setup, x, aux)

    def weights_fn(m):
        return weights(setup, star, m)

    def diag_fn(x, w):
        return jnp.sum(jax.jacfwd(model_fn)(x) ** 2 * w[:, None], axis=0)

    return model_fn, weights_fn, diag_fn


@persistent_jit(static_argnames=("setup", "model_of", "aux_axis"))
def _tncg_independent(setup, model_of, v0, aux, stars, active, aux_axis):
    def one(v, a, star, act):
        model_fn, weights_fn, diag_fn = _star_problem(setup, model_of, a, star)
        s = tncg_minimize(model_fn, star.data, weights_fn, diag_fn, _limit_star_shift, v, TNCG_SETTINGS,
                          setup.max_iter, act)
        return s.x, s.converged, s.n_iter

    return _in_chunks(setup, one, v0, aux, stars, active, aux_axis)


@persistent_jit(static_argnames=("setup", "model_of", "aux_axis"))
def _adam_independent(setup, model_of, v0, aux, stars, active, aux_axis):
    def one(v, a, star):
        model_fn, weights_fn, _ = _star_problem(setup, model_of, a, star)

        def whitener(x):
            m, jac = linearise(setup, model_of, x, a)
            w = weights_fn(m)
            whiten = whitening((jac * w[:, None]).T @ jac)
            return lambda z: x + whiten @ z

        return adam_minimize(model_fn, star.data, weights_fn, whitener, v, ADAM_SETTINGS)

    x, conv, n = jax.vmap(one, in_axes=(0, aux_axis, STAR_AXES))(v0, aux, stars)
    return jnp.where(active[:, None], x, v0), conv, n


def _shared_problem(setup, u0, basis, stars, active):
    """Flat-vector model, weights, diagonal and step limit of the shared-shape problem."""
    n = u0.shape[0]

    def split(x):
        return x[: N_STAR * n].reshape(n, N_STAR), x[N_STAR * n:]

    def model_fn(x):
        return shared.models(setup, *split(x), basis).ravel()

    def weights_fn(m):
        return (shared.weights_batch(setup, stars, m.reshape(n, -1)) * active[:, None]).ravel()

    def diag_fn(x, w):
        _, jvp = jax.linearize(model_fn, x)
        size = x.shape[0]
        # stars do not share u, so one tangent per u slot gives every star's column at once
        u_diag = jnp.stack([jnp.sum((jvp(jnp.zeros(size).at[j:N_STAR * n:N_STAR].set(1.0)) ** 2 * w)
                                    .reshape(n, -1), axis=1) for j in range(N_STAR)], axis=1).ravel()
        c_diag = jnp.stack([jnp.sum(jvp(jnp.zeros(size).at[N_STAR * n + k].set(1.0)) ** 2 * w)
                            for k in range(size - N_STAR * n)])
        return jnp.concatenate([u_diag, c_diag])

    def limit_fn(p):
        du = p[: N_STAR * n].reshape(n, N_STAR)
        shift = jnp.maximum(jnp.max(jnp.abs(du[:, :2])), 1e-30)
        return p * jnp.minimum(1.0, LM_SETTINGS.max_shift / shift)

    return split, model_fn, weights_fn, diag_fn, limit_fn


@persistent_jit(static_argnames=("setup", "optimizer"))
def _first_order_shared(setup, optimizer, u0, coef0, basis, stars, active):
    split, model_fn, weights_fn, diag_fn, limit_fn = _shared_problem(setup, u0, basis, stars, active)
    x0 = jnp.concatenate([u0.ravel(), coef0])
    data = stars.data.ravel()
    if optimizer == "tncg":
        s = tncg_minimize(model_fn, data, weights_fn, diag_fn, limit_fn, x0, TNCG_SETTINGS, setup.max_iter)
        x, conv, n_iter = s.x, s.converged, s.n_iter
    else:
        def whitener(x):
            u, coef = split(x)
            b = shared.blocks(setup, u, coef, basis, stars, active)
            a_u = jax.vmap(whitening)(b.U)
            a_c = whitening(b.V - jnp.einsum("nak,nal->kl", b.W, spd_solve(b.U, b.W)))

            def to_x(z):
                zu, zc = split(z)
                return jnp.concatenate([(u + jnp.einsum("nab,nb->na", a_u, zu)).ravel(), coef + a_c @ zc])

            return to_x

        x, conv, n_iter = adam_minimize(model_fn, data, weights_fn, whitener, x0, ADAM_SETTINGS)
    u, coef = split(x)
    return u, coef, conv, n_iter


def _in_chunks(setup, one, v0, aux, stars, active, aux_axis):
    """``one(v, aux, star, active)`` for every star, in chunks (:func:`psfax.fitting.problem.map_stars`)."""
    if aux_axis is None:
        return map_stars(setup, lambda v, star, act: one(v, aux, star, act), v0, per_star(stars), active)
    if aux_axis == (None, 0):
        shared_part, star_part = aux
        return map_stars(setup, lambda v, a, star, act: one(v, (shared_part, a), star, act), v0, star_part,
                         per_star(stars), active)
    return map_stars(setup, one, v0, aux, per_star(stars), active)


def _lm_settings(model_of, dchi2):
    return dataclasses.replace(LM_SETTINGS, dchi2=dchi2,
                               lam0=FREE_SHAPE_LAM0 if model_of is free_model else LM_SETTINGS.lam0)


@persistent_jit
def _lm_outputs(s: lm.LMState):
    """(v, converged, n_iter, covariance, chi2) per star from the LM states: ``J^T W J`` is the Fisher matrix."""
    return s.v, s.converged, s.n_iter, spd_inverse(s.h), s.chi2


@persistent_jit(static_argnames=("setup", "model_of", "aux_axis"))
def _lm_run(setup, model_of, start, aux, stars, active, aux_axis, dchi2, max_iter):
    """LM on every star from ``start`` (parameters (N, P), or LM states to resume from) up to ``max_iter``
    iterations in all: the LM state per star."""
    settings = _lm_settings(model_of, dchi2)
    resume = isinstance(start, lm.LMState)

    def one(x, a, star, act):
        s = x if resume else lm.lm_start(setup, settings, model_of, x, a, star, act)
        return lm.lm_iterate(setup, settings, model_of, s, a, star, max_iter)

    return _in_chunks(setup, one, start, aux, stars, active, aux_axis)


@persistent_jit(static_argnames=("setup",))
def _lm_shared(setup, u0, coef0, basis, stars, active, dchi2):
    s = shared.lm_shared(setup, dataclasses.replace(SHARED_LM_SETTINGS, dchi2=dchi2), u0, coef0, basis, stars, active)
    return s.u, s.coef, s.converged, s.n_iter, s.b


PHOTOMETRY_FIRST_ROUND = 2
FREE_SHAPE_FIRST_ROUND = 3
"""LM iterations of the first round over all stars, for a fixed shape and for a free one: what most stars
take from psfax's start (GalSim Moffats of FWHM 1.8 px: 94 % of PSF photometry fits in 2, 98 % of free-shape
fits in 3).  A batched loop runs as long as its slowest star, so the stars still going continue in
compacted batches, each resumed from its LM state (no linearisation repeated), each round doubling the
iterations reached (2, 4, 8, ... for photometry): real sources have long tails (ZTF photometry of 7,770
sources: 49 % take 3 iterations, 2 % 8 to 23), which one long second round would make every chunk wait for."""


def _lm_in_rounds(setup, model_of, v0, aux, stars, active, aux_axis, dchi2):
    """LM on every star for the first round's iterations, then on the unfinished ones only, in rounds that
    double the iterations reached, up to ``setup.max_iter``.  Returns (v, converged, n_iter, covariance,
    chi2) per star."""
    reached = min(FREE_SHAPE_FIRST_ROUND if model_of is free_model else PHOTOMETRY_FIRST_ROUND, setup.max_iter)
    state = _lm_run(setup, model_of, v0, aux, stars, active, aux_axis, dchi2, np.int32(reached))
    size = None
    while reached < setup.max_iter:
        going = ~np.asarray(state.done)  # an inactive star starts done
        left = np.flatnonzero(going)
        if left.size == 0:
            break
        reached = min(2 * reached, setup.max_iter)
        # every later round keeps the second's batch size (one compiled program, which a new process loads
        # once), padded with a finished star: chunks of padding end at once
        size = size or bucket_size(left.size)
        filler = np.flatnonzero(~going)[:1] if (~going).any() else left[-1:]
        rows = jnp.asarray(np.concatenate([left, np.repeat(filler, size - left.size)]))
        state_r, active_r, stars_r, aux_r = select_stars(rows, state, active, stars, aux, aux_axis=aux_axis)
        part = _lm_run(setup, model_of, state_r, aux_r, stars_r, active_r, aux_axis, dchi2, np.int32(reached))
        state = _put_rows(rows, state, part)
    return _lm_outputs(state)


@persistent_jit(static_argnames=("aux_axis",))
def select_stars(rows, v, active, stars, aux, aux_axis):
    """The stars at ``rows``: their parameters (any pytree of per-star arrays), active flags, stamps and
    ``aux`` (see ``aux_rows``)."""
    return take(v, rows), active[rows], star_rows(stars, rows), aux_rows(aux, aux_axis, rows)


@persistent_jit
def take(arrays, rows):
    """``a[rows]`` for every array ``a`` of the pytree ``arrays``."""
    return jax.tree.map(lambda a: a[rows], arrays)


@persistent_jit
def _put_rows(rows, full, part):
    """The per-star pytree ``full`` with the rows ``rows`` replaced by ``part`` (repeated rows carry identical
    values)."""
    return jax.tree.map(lambda a, b: a.at[rows].set(b), full, part)


def solve_independent(optimizer, setup, model_of, v0, aux, stars, active, aux_axis=0, dchi2=None):
    """Fit every star on its own; returns (v, converged, n_iter, (covariance, chi2) or None).

    LM ends each star with its Fisher matrix ``J^T W J`` at the solution, and returns its inverse;
    the other optimizers leave the covariance to :func:`fisher_batch` (None).

    ``aux`` is per star (``aux_axis=0``, e.g. fixed shapes), shared
    (``aux_axis=None``, e.g. a PSF table) or a (shared, per-star) pair
    (``aux_axis=(None, 0)``, e.g. shape-cell tables and each star's cell).
    ``dchi2``: LM's stop on the predicted chi2 decrease per star (default ``LM_SETTINGS.dchi2``).
    """
    if optimizer == "lm":
        dchi2 = np.asarray(LM_SETTINGS.dchi2 if dchi2 is None else dchi2, v0.dtype)
        v, conv, n, cov, chi2_values = _lm_in_rounds(setup, model_of, v0, aux, stars, active, aux_axis, dchi2)
        return v, conv, n, (cov, chi2_values)
    if optimizer == "tncg":
        return (*_tncg_independent(setup, model_of, v0, aux, stars, active, aux_axis), None)
    if optimizer == "adam":
        return (*_adam_independent(setup, model_of, v0, aux, stars, active, aux_axis), None)
    v, conv, n = scipy_ref.solve_independent(setup, model_of, v0, aux, stars, active, aux_axis)
    return jnp.asarray(v, v0.dtype), conv, n, None


def solve_shared(optimizer, setup, u0, coef0, basis, stars, active, dchi2=None):
    """Fit all stars with a shared shape; returns (u, coef, converged, n_iter, blocks at the solution
    (:class:`psfax.fitting.shared.Blocks`, or None when the optimizer does not form them)).
    ``dchi2``: LM's stop on the predicted decrease of the total chi2 (default ``SHARED_LM_SETTINGS.dchi2``)."""
    if optimizer == "lm":
        dchi2 = np.asarray(SHARED_LM_SETTINGS.dchi2 if dchi2 is None else dchi2, u0.dtype)
        return _lm_shared(setup, u0, coef0, basis, stars, active, dchi2)
    if optimizer == "scipy":
        u, coef, conv, n = scipy_ref.solve_shared(setup, u0, coef0, basis, stars, active)
        return jnp.asarray(u, u0.dtype), jnp.asarray(coef, coef0.dtype), conv, n, None
    return (*_first_order_shared(setup, optimizer, u0, coef0, basis, stars, active), None)


PILOT_STARS = 128
"""Shared LM fits of more than 8 x this many stars start from a fit of the brightest ones: the pilot
costs about 8 iterations over these stars, so that one iteration saved over all stars pays for it."""


def pilot_coefficients(setup, u0, coef0, basis, stars, active):
    """Shape coefficients fitted (LM, stopping at :data:`PILOT_DCHI2`) to the :data:`PILOT_STARS` active stars of
    largest starting flux, from ``coef0``; ``coef0`` itself when there are too few stars for a pilot.

    On ZTF (1,232 stars) the full fit from the moment-based start takes 8 passes over all stars at a
    loose tolerance (16 at the strict one, three of them rejected steps); from the pilot's shape, 3.
    """
    act = np.asarray(active)
    if act.sum() <= 8 * PILOT_STARS:
        return coef0
    flux = np.where(act, np.asarray(u0[:, 2]), -np.inf)
    rows = jnp.asarray(np.sort(np.argsort(-flux, kind="stable")[:PILOT_STARS]))
    u_p, active_p, stars_p, basis_p = select_stars(rows, u0, active, stars, basis, aux_axis=0)
    return _lm_shared(setup, u_p, coef0, basis_p, stars_p, active_p, np.asarray(PILOT_DCHI2, u0.dtype))[1]


def fisher_batch(setup, model_of, v, aux, stars, aux_axis=0):
    """Per-star Fisher matrices (N, P, P) and chi2 (N,) at ``v``."""

    def one(vi, ai, si, _):
        m, jac = linearise(setup, model_of, vi, ai)
        w = weights(setup, si, m)
        return (jac * w[:, None]).T @ jac, chi2(si.data, m, w)

    return _in_chunks(setup, one, v, aux, stars, jnp.ones(v.shape[0], bool), aux_axis)

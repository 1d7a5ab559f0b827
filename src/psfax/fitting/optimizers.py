"""Dispatch to the optimizers, for independent stars and for a shared shape.

Each returns the solution and per-star (or global) ``converged`` and
iteration counts; covariances are computed afterwards from the same Fisher
matrix whatever the optimizer.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from psfax.fitting import lm, shared
from psfax.fitting.problem import STAR_AXES, chi2, weights

LM_SETTINGS = lm.LMSettings()


@partial(jax.jit, static_argnames=("setup", "model_of", "aux_axis"))
def _lm_independent(setup, model_of, v0, aux, stars, active, aux_axis):
    s = jax.vmap(lm.lm_star, in_axes=(None, None, None, 0, aux_axis, STAR_AXES, 0))(
        setup, LM_SETTINGS, model_of, v0, aux, stars, active)
    return s.v, s.converged, s.n_iter


@partial(jax.jit, static_argnames=("setup",))
def _lm_shared(setup, u0, coef0, basis, stars, active):
    s = shared.lm_shared(setup, LM_SETTINGS, u0, coef0, basis, stars, active)
    return s.u, s.coef, s.converged, s.n_iter


def solve_independent(optimizer, setup, model_of, v0, aux, stars, active, aux_axis=0):
    """Fit every star on its own; returns (v, converged, n_iter).

    ``aux`` is per star (``aux_axis=0``, e.g. fixed shapes) or shared
    (``aux_axis=None``, e.g. a PSF table).
    """
    if optimizer == "lm":
        return _lm_independent(setup, model_of, v0, aux, stars, active, aux_axis)
    raise NotImplementedError(optimizer)


def solve_shared(optimizer, setup, u0, coef0, basis, stars, active):
    """Fit all stars with a shared shape; returns (u, coef, converged, n_iter)."""
    if optimizer == "lm":
        return _lm_shared(setup, u0, coef0, basis, stars, active)
    raise NotImplementedError(optimizer)


def fisher_batch(setup, model_of, v, aux, stars, aux_axis=0):
    """Per-star Fisher matrices (N, P, P) and chi2 (N,) at ``v``."""

    def one(vi, ai, si):
        def f(p):
            m = model_of(setup, p, ai)
            return m, m

        jac, m = jax.jacfwd(f, has_aux=True)(vi)
        w = weights(setup, si, m)
        return (jac * w[:, None]).T @ jac, chi2(si.data, m, w)

    return jax.vmap(one, in_axes=(0, aux_axis, STAR_AXES))(v, aux, stars)

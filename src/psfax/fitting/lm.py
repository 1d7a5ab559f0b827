"""Batched Levenberg-Marquardt for independent stars (free or fixed shape).

Each star solves its own damped Gauss-Newton step
``(J^T W J + lam diag(J^T W J)) delta = J^T W (d - m)`` with its own damping
``lam`` (Nielsen's update from the gain ratio ``rho`` of actual to predicted
chi2 reduction) and its own convergence test; all stars advance together in
one ``lax.while_loop`` (vmapped), so there is no Python loop over stars or
iterations.  A step is stopped at ``max_shift`` px in position (the stamp
model is only trusted near its centre).

Converged: an accepted step smaller than ``xtol`` of every parameter's
standard error, or a relative chi2 decrease below ``ftol``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from psfax.fitting.problem import StampData, Setup, chi2, weights


@dataclass(frozen=True)
class LMSettings:
    """Convergence settings (immutable)."""

    xtol: float = 1e-4
    ftol: float = 1e-10
    lam0: float = 1e-3
    max_shift: float = 1.0


class LMState(NamedTuple):
    v: jnp.ndarray  # (P,) parameters
    chi2: jnp.ndarray
    lam: jnp.ndarray
    nu: jnp.ndarray
    done: jnp.ndarray  # bool
    converged: jnp.ndarray  # bool
    n_iter: jnp.ndarray  # int


def _normal_equations(setup, model_of, v, aux, star: StampData):
    def f(p):
        m = model_of(setup, p, aux)
        return m, m

    jac, m = jax.jacfwd(f, has_aux=True)(v)
    w = weights(setup, star, m)
    jw = jac * w[:, None]
    return m, w, jw.T @ jac, jw.T @ (star.data - m)


def _limit_shift(delta, max_shift):
    """Scale the step so that the centre moves at most ``max_shift`` px."""
    shift = jnp.maximum(jnp.abs(delta[0]), jnp.abs(delta[1]))
    return delta * jnp.minimum(1.0, max_shift / jnp.maximum(shift, 1e-30))


def lm_star(setup: Setup, settings: LMSettings, model_of, v0, aux, star: StampData, active):
    """Fit one star from ``v0``; ``active=False`` leaves it untouched."""
    m0 = model_of(setup, v0, aux)
    state = LMState(v0, chi2(star.data, m0, weights(setup, star, m0)), jnp.asarray(settings.lam0, v0.dtype),
                    jnp.asarray(2.0, v0.dtype), ~active, jnp.asarray(False), jnp.asarray(0))

    def step(s: LMState):
        m, w, h, g = _normal_equations(setup, model_of, s.v, aux, star)
        c = chi2(star.data, m, w)  # chi2 under this iteration's weights
        d = jnp.diag(h)
        scale = jnp.maximum(d, 1e-30 * jnp.max(d))
        delta = jnp.linalg.solve(h + s.lam * jnp.diag(scale), g)
        delta = _limit_shift(delta, settings.max_shift)
        trial = s.v + delta
        c_new = chi2(star.data, model_of(setup, trial, aux), w)
        predicted = delta @ (2.0 * g - h @ delta)
        rho = (c - c_new) / jnp.where(predicted > 0, predicted, 1e-300)
        accept = jnp.isfinite(c_new) & (c_new < c)
        small_step = jnp.max(jnp.abs(delta) * jnp.sqrt(scale)) < settings.xtol
        small_drop = (c - c_new) <= settings.ftol * jnp.maximum(c, 1.0)
        converged = accept & (small_step | small_drop)
        lam = jnp.where(accept, s.lam * jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), s.lam * s.nu)
        nu = jnp.where(accept, 2.0, 2.0 * s.nu)
        stuck = ~accept & (s.lam > 1e12)
        new = LMState(jnp.where(accept, trial, s.v), jnp.where(accept, c_new, c), lam, nu,
                      converged | stuck, converged, s.n_iter + 1)
        return jax.tree.map(lambda a, b: jnp.where(s.done, a, b), s, new)

    def cond(s):
        return ~s.done & (s.n_iter < setup.max_iter)

    return jax.lax.while_loop(cond, step, state)


def fisher(setup: Setup, model_of, v, aux, star: StampData):
    """Fisher matrix ``J^T W J`` (P, P) at ``v``, weights from the model there."""
    return _normal_equations(setup, model_of, v, aux, star)[2]

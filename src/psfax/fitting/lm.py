"""Batched Levenberg-Marquardt for independent stars (free or fixed shape).

Each star solves its own damped Gauss-Newton step
``(J^T W J + lam diag(J^T W J)) delta = J^T W (d - m)`` with its own damping
``lam`` (Nielsen's update from the gain ratio ``rho`` of actual to predicted
chi2 reduction) and its own convergence test; all stars advance together in
one ``lax.while_loop`` (vmapped), so there is no Python loop over stars or
iterations.  A step is stopped at ``max_shift`` px in position (the stamp
model is only trusted near its centre).

Converged: an accepted step smaller than ``xtol`` of every parameter's
standard error, a relative chi2 decrease below ``ftol``, a step whose
predicted chi2 decrease is below ``dchi2``, or a point whose own undamped
Gauss-Newton step would predict less than ``dchi2`` (the Newton decrement
``g^T H^-1 g``: nothing left to gain, and no linearisation spent to find it
out; a change of 1e-6 in chi2 moves parameters by ~1e-3 of their errors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from psfax.fitting.flags import MAX_OFFSET
from psfax.fitting.problem import StampData, Setup, chi2, linearise, weights


@dataclass(frozen=True)
class LMSettings:
    """Convergence settings (immutable)."""

    xtol: float = 1e-4
    ftol: float = 1e-10
    dchi2: float = 1e-6
    lam0: float = 1e-3
    max_shift: float = 1.0


class LMState(NamedTuple):
    v: jnp.ndarray  # (P,) parameters
    h: jnp.ndarray  # (P, P) J^T W J at v
    g: jnp.ndarray  # (P,) J^T W (d - m) at v
    w: jnp.ndarray  # (M,) weights at v
    chi2: jnp.ndarray
    lam: jnp.ndarray
    nu: jnp.ndarray
    done: jnp.ndarray  # bool
    converged: jnp.ndarray  # bool
    n_iter: jnp.ndarray  # int


def _normal_equations(setup, star: StampData, m, jac):
    """Weights at m, ``J^T W J``, ``J^T W (d - m)`` and chi2."""
    w = weights(setup, star, m)
    jw = jac * w[:, None]
    return w, jw.T @ jac, jw.T @ (star.data - m), chi2(star.data, m, w)


def off_centre(setup: Setup, v):
    """True when the centre ``v[:2]`` is more than MAX_OFFSET px from the stamp centre."""
    ny, nx = setup.size
    return jnp.maximum(jnp.abs(v[0] - (nx - 1) / 2), jnp.abs(v[1] - (ny - 1) / 2)) > MAX_OFFSET


def chi2_resolution(settings: LMSettings, chi2_value):
    """``(relative drop, absolute drop)`` below which a chi2 change is noise:
    ``ftol`` and ``dchi2``, raised to 8 float eps of chi2 in low precision
    (float32 cannot resolve a change of 1e-6 in a chi2 of 200)."""
    floor = 8.0 * jnp.finfo(chi2_value.dtype).eps
    return jnp.maximum(settings.ftol, floor), jnp.maximum(settings.dchi2, floor * chi2_value)


def newton_decrement(h, g):
    """``g^T H^-1 g``: the chi2 decrease the undamped Gauss-Newton step predicts (NaN or inf when H is singular)."""
    return g @ jnp.linalg.solve(h, g)


def _limit_shift(delta, max_shift):
    """Scale the step so that the centre moves at most ``max_shift`` px."""
    shift = jnp.maximum(jnp.abs(delta[0]), jnp.abs(delta[1]))
    return delta * jnp.minimum(1.0, max_shift / jnp.maximum(shift, 1e-30))


def lm_start(setup: Setup, settings: LMSettings, model_of, v0, aux, star: StampData, active):
    """The LM state of one star at ``v0``: its normal equations, the starting damping, and done (converged)
    already when inactive or when the Newton decrement says ``v0`` is the optimum."""
    w0, h0, g0, c0 = _normal_equations(setup, star, *linearise(setup, model_of, v0, aux))
    dtype = v0.dtype
    at_optimum = active & (newton_decrement(h0, g0) < chi2_resolution(settings, c0)[1])
    return LMState(v0, h0, g0, w0, c0, jnp.asarray(settings.lam0, dtype), jnp.asarray(2.0, dtype),
                   ~active | at_optimum, at_optimum, jnp.asarray(0))


def lm_iterate(setup: Setup, settings: LMSettings, model_of, state: LMState, aux, star: StampData, max_iter):
    """LM iterations of one star from ``state`` until it is done or has made ``max_iter`` (may be traced) in
    all: ``state.n_iter`` counts on, so a fit stopped by the count resumes where it was.

    One Jacobian per iteration: it is computed at the trial point and kept
    if the step is accepted.
    """
    dtype = state.v.dtype

    def step(s: LMState):
        d = jnp.diag(s.h)
        scale = jnp.maximum(d, 1e-30 * jnp.max(d))
        delta = _limit_shift(jnp.linalg.solve(s.h + s.lam * jnp.diag(scale), s.g), settings.max_shift)
        trial = s.v + delta
        m, jac = linearise(setup, model_of, trial, aux)
        c_trial = chi2(star.data, m, s.w)  # under the current weights, comparable with s.chi2
        predicted = delta @ (2.0 * s.g - s.h @ delta)
        rho = (s.chi2 - c_trial) / jnp.where(predicted > 0, predicted, 1e-300)
        accept = jnp.isfinite(c_trial) & (c_trial < s.chi2)
        small_step = jnp.max(jnp.abs(delta) * jnp.sqrt(scale)) < settings.xtol
        ftol, dchi2 = chi2_resolution(settings, s.chi2)
        small_drop = (s.chi2 - c_trial) <= ftol * jnp.maximum(s.chi2, 1.0)
        w, h, g, c = _normal_equations(setup, star, m, jac)
        at_optimum = newton_decrement(h, g) < chi2_resolution(settings, c)[1]
        converged = (accept & (small_step | small_drop | at_optimum)) | (predicted < dchi2)
        lam = jnp.where(accept, s.lam * jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), s.lam * s.nu)
        stuck = ~accept & (s.lam > 1e12)
        left = off_centre(setup, trial)  # it has left its star: stop there (flagged OFF_STAMP)
        new = LMState(trial, h, g, w, c, lam, jnp.asarray(2.0, dtype), converged | left, converged, s.n_iter + 1)
        rejected = s._replace(lam=lam, nu=2.0 * s.nu, done=stuck | converged, converged=converged, n_iter=s.n_iter + 1)
        chosen = jax.tree.map(lambda a, b: jnp.where(accept, a, b), new, rejected)
        return jax.tree.map(lambda a, b: jnp.where(s.done, a, b), s, chosen)

    def cond(s):
        return ~s.done & (s.n_iter < max_iter)

    return jax.lax.while_loop(cond, step, state)

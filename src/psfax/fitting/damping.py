"""The damping core shared by every Gauss-Newton loop (per-star LM, shared-shape LM, TNCG).

A loop proposes a step ``d`` of the damped system ``(H + lam D) d = g`` (``H = J^T W J``,
``g = J^T W (d - m)``, ``D`` the diagonal of ``H``), limited by :func:`limit_shift`, and evaluates chi2
at the trial point under the current weights.  :func:`judge` then decides, the same way for all:

* accept when chi2 decreased (and is finite);
* the damping follows Nielsen's rule from the gain ratio ``rho`` of actual to predicted decrease:
  accepted, ``lam *= max(1/3, 1 - (2 rho - 1)^3)`` and ``nu = 2``; rejected, ``lam *= nu``, ``nu *= 2``;
* stop as converged after an accepted step below ``xtol`` standard errors, a relative decrease below
  ``ftol``, or an undamped step from the point reached predicting less than ``dchi2`` (the Newton
  decrement ``g^T H^-1 g``: nothing left to gain), or when the step itself predicts less than ``dchi2``;
* stop as stuck when a step is rejected at a damping above ``max_damping``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

from psfax.fitting.settings import FitSettings


class Verdict(NamedTuple):
    accept: jnp.ndarray  # bool
    converged: jnp.ndarray  # bool
    stuck: jnp.ndarray  # bool
    lam: jnp.ndarray  # damping for the next step
    nu: jnp.ndarray  # its growth factor on the next rejection


def resolution(settings: FitSettings, dchi2, chi2_value):
    """``(relative drop, absolute drop)`` below which a chi2 change is noise: ``ftol`` and ``dchi2``,
    raised to 8 float eps of chi2 in low precision (float32 cannot resolve 1e-6 in a chi2 of 200)."""
    floor = 8.0 * jnp.finfo(chi2_value.dtype).eps
    return jnp.maximum(settings.ftol, floor), jnp.maximum(dchi2, floor * chi2_value)


def at_optimum(settings: FitSettings, dchi2, undamped_decrease, chi2_value):
    """True where the undamped Gauss-Newton step predicts less than the resolvable decrease (NaN: False)."""
    return undamped_decrease < resolution(settings, dchi2, chi2_value)[1]


def limit_shift(step, shift, max_shift):
    """``step`` scaled so that the largest centre move ``shift`` (px) is at most ``max_shift``."""
    return step * jnp.minimum(1.0, max_shift / jnp.maximum(shift, 1e-30))


def judge(settings: FitSettings, dchi2, lam, nu, chi2_now, chi2_trial, predicted, step_sigma,
          optimum_reached=False) -> Verdict:
    """The verdict on one step (see the module docstring).

    ``predicted``: the quadratic model's decrease ``d^T (2 g - H d)``; ``step_sigma``: the largest
    step in standard errors (``max |d_j| sqrt(H_jj)``); ``optimum_reached``: the Newton-decrement test
    at the trial point (:func:`at_optimum`), when the loop has it.
    """
    ftol, dchi2_floor = resolution(settings, dchi2, chi2_now)
    drop = chi2_now - chi2_trial
    accept = jnp.isfinite(chi2_trial) & (chi2_trial < chi2_now)
    small = (step_sigma < settings.xtol) | (drop <= ftol * jnp.maximum(chi2_now, 1.0)) | optimum_reached
    converged = (accept & small) | (predicted < dchi2_floor)
    rho = drop / jnp.where(predicted > 0, predicted, 1e-300)
    new_lam = jnp.where(accept, lam * jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), lam * nu)
    new_nu = jnp.where(accept, 2.0, 2.0 * nu).astype(nu.dtype)
    return Verdict(accept, converged, ~accept & (lam > settings.max_damping), new_lam, new_nu)

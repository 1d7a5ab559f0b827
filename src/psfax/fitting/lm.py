"""Batched Levenberg-Marquardt for independent stars (any PSF kind).

Each star solves its own damped Gauss-Newton step
``(J^T W J + lam diag(J^T W J)) delta = J^T W (d - m)`` with its own damping and its own stop test
(:mod:`psfax.fitting.damping`); all stars advance together in one ``lax.while_loop`` (vmapped), so
there is no Python loop over stars or iterations.  One Jacobian per iteration: it is computed at
the trial point and kept if the step is accepted.  A star ends with its Fisher matrix ``J^T W J`` at
the solution, whose inverse is its covariance.

A batched loop runs as long as its slowest star, so the first round runs every star for the few
iterations most take, and the stars still going continue in compacted batches, each resumed from its
LM state (no linearisation repeated), each round doubling the iterations reached.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from psfax.fitting import damping
from psfax.fitting.problem import (Setup, Solution, StampData, bucket_size, each_star, normal_equations, off_centre,
                                   star_rows)
from psfax.fitting.psf import PSF
from psfax.fitting.start import linear_start
from psfax.fitting.spd import spd_inverse, spd_solve
from psfax.programs import persistent_jit


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


def newton_decrement(h, g):
    """``g^T H^-1 g``: the chi2 decrease the undamped Gauss-Newton step predicts (NaN or inf when H is singular)."""
    return g @ spd_solve(h, g)


def lm_start(setup: Setup, psf: PSF, v0, given, star: StampData, active, dchi2, lam0):
    """The LM state of one star at ``v0`` with its least-squares flux and background (but where ``given``,
    :func:`psfax.fitting.start.linear_start`): its normal equations, the starting damping, and done
    (converged) already when inactive or when the Newton decrement says the start is the optimum."""
    v0, m0, jac0 = linear_start(setup, psf, v0, star, given)
    w0, h0, g0, c0 = normal_equations(setup, star, m0, jac0)
    tol = dchi2 * damping.misfit_scale(c0, degrees_of_freedom(star, v0.shape[0]))
    at_optimum = active & damping.at_optimum(setup.settings, tol, newton_decrement(h0, g0), c0)
    dtype = v0.dtype
    return LMState(v0, h0, g0, w0, c0, jnp.asarray(lam0, dtype), jnp.asarray(2.0, dtype),
                   ~active | at_optimum, at_optimum, jnp.asarray(0))


def lm_iterate(setup: Setup, psf: PSF, state: LMState, star: StampData, dchi2, max_iter):
    """LM iterations of one star from ``state`` until it is done or has made ``max_iter`` (may be traced) in
    all: ``state.n_iter`` counts on, so a fit stopped by the count resumes where it was."""
    settings = setup.settings
    dof = degrees_of_freedom(star, state.v.shape[0])

    def step(s: LMState):
        d = jnp.diag(s.h)
        scale = jnp.maximum(d, 1e-30 * jnp.max(d))
        delta = spd_solve(s.h + s.lam * jnp.diag(scale), s.g)
        delta = damping.limit_shift(delta, jnp.maximum(jnp.abs(delta[0]), jnp.abs(delta[1])), settings.max_shift)
        trial = s.v + delta
        m, jac = psf.linearise(trial, setup.size)
        w, h, g, c = normal_equations(setup, star, m, jac)
        c_trial = jnp.sum(s.w * (star.data - m) ** 2)  # under the current weights, comparable with s.chi2
        # stop tests in errors scaled by the misfit: the step's at the point it leaves, the Newton
        # decrement's at the point it reaches (as a fit resumed there tests it)
        misfit, misfit_trial = damping.misfit_scale(s.chi2, dof), damping.misfit_scale(c, dof)
        verdict = damping.judge(settings, dchi2 * misfit, s.lam, s.nu, s.chi2, c_trial,
                                delta @ (2.0 * s.g - s.h @ delta), jnp.max(jnp.abs(delta) * jnp.sqrt(scale / misfit)),
                                damping.at_optimum(settings, dchi2 * misfit_trial, newton_decrement(h, g), c),
                                overshoot=True)
        left = off_centre(setup.size, trial[0], trial[1])  # it has left its star: stop there (flagged OFF_STAMP)
        lost = psf.unconstrained(trial)  # a shape the data do not hold: stop there (SHAPE_UNCONSTRAINED)
        new = LMState(trial, h, g, w, c, verdict.lam, verdict.nu, verdict.converged | left | lost,
                      verdict.converged, s.n_iter + 1)
        rejected = s._replace(lam=verdict.lam, nu=verdict.nu, done=verdict.stuck | verdict.converged,
                              converged=verdict.converged, n_iter=s.n_iter + 1)
        chosen = jax.tree.map(lambda a, b: jnp.where(verdict.accept, a, b), new, rejected)
        return jax.tree.map(lambda a, b: jnp.where(s.done, a, b), s, chosen)

    return jax.lax.while_loop(lambda s: ~s.done & (s.n_iter < max_iter), step, state)


def degrees_of_freedom(star: StampData, n_params: int):
    """Usable pixels less the fitted parameters."""
    return jnp.sum(star.usable > 0) - n_params


@persistent_jit(static_argnames=("setup",))
def _run(setup: Setup, psf: PSF, start, stars, active, dchi2, lam0, max_iter):
    """LM on every star from ``start`` (``(v0 (N, P), flux given (N,))`` or LM states to resume from) up to
    ``max_iter`` iterations in all: the LM state per star."""
    resume = isinstance(start, LMState)

    def one(x, p, star, act):
        s = x if resume else lm_start(setup, p, *x, star, act, dchi2, lam0)
        return lm_iterate(setup, p, s, star, dchi2, max_iter)

    return each_star(setup, psf, one, start, stars, active)


@persistent_jit
def _select(rows, state, active, stars, psf_part):
    """The stars at ``rows``: their LM states, active flags, stamps and rows of the PSF's per-star fields."""
    return jax.tree.map(lambda a: a[rows], (state, psf_part)), active[rows], star_rows(stars, rows)


@persistent_jit
def _put_rows(rows, full, part):
    """The per-star pytree ``full`` with the rows ``rows`` replaced by ``part`` (repeated rows carry identical
    values)."""
    return jax.tree.map(lambda a, b: a.at[rows].set(b), full, part)


@persistent_jit
def _solution(s: LMState) -> Solution:
    """The complete solution from the final LM states: ``J^T W J`` at the solution is the Fisher matrix."""
    return Solution(s.v, spd_inverse(s.h), s.chi2, s.converged, s.n_iter, None)


def _whole_chunks(size: int, chunk: int) -> int:
    """``size`` rounded up to a multiple of ``chunk`` when above it (``chunk`` 0: as it is)."""
    return -(-size // chunk) * chunk if chunk and size > chunk else size


def solve(setup: Setup, psf: PSF, v0, stars: StampData, active, dchi2=None, given=None) -> Solution:
    """LM on every star for the first round's iterations, then on the unfinished ones only, in rounds that
    double the iterations reached, up to ``setup.max_iter``.  ``dchi2``: the stop on the predicted chi2
    decrease per star (default ``settings.dchi2``); ``given`` (N,): stars whose start flux and background
    are kept (default none: every start takes the least-squares flux and background)."""
    settings = setup.settings
    free = bool(psf.free_names)
    dchi2 = np.asarray(settings.dchi2 if dchi2 is None else dchi2, v0.dtype)
    lam0 = np.asarray(settings.free_shape_lam0 if free else settings.lam0, v0.dtype)
    reached = min(settings.free_shape_first_round if free else settings.photometry_first_round, setup.max_iter)
    given = np.zeros(len(active), bool) if given is None else np.asarray(given, bool)
    state = _run(setup, psf, (v0, given), stars, active, dchi2, lam0, np.int32(reached))
    size = None
    while reached < setup.max_iter:
        going = ~np.asarray(state.done)  # an inactive star starts done
        left = np.flatnonzero(going)
        if left.size == 0:
            break
        reached = min(2 * reached, setup.max_iter)
        # every later round keeps the second's batch size (one compiled program, which a new process loads
        # once), padded with a finished star: chunks of padding end at once.  Above one CPU chunk the size is
        # whole chunks, or map_stars would run the batch as one, as long as its slowest star
        size = size or _whole_chunks(bucket_size(left.size), setup.chunk)
        filler = np.flatnonzero(~going)[:1] if (~going).any() else left[-1:]
        rows = jnp.asarray(np.concatenate([left, np.repeat(filler, size - left.size)]))
        (state_r, psf_part), active_r, stars_r = _select(rows, state, active, stars, psf.star_part())
        part = _run(setup, psf.with_star(psf_part), state_r, stars_r, active_r, dchi2, lam0, np.int32(reached))
        state = _put_rows(rows, state, part)
    return _solution(state)

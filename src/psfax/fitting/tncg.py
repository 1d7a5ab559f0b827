"""Truncated-Newton conjugate gradient (Hessian-free) least squares.

Each outer iteration linearises the model once (``jax.linearize``) and solves
the damped Gauss-Newton system ``(J^T W J + lam D) p = J^T W (d - m)`` by
preconditioned conjugate gradients, using only products ``J v`` and
``J^T u`` (the Gauss-Newton matrix is positive semi-definite, so CG is safe;
``D`` is its diagonal, used for damping and as the Jacobi preconditioner).
The step is accepted when chi2 decreases; ``lam`` follows the ratio of the
actual to the quadratic-model decrease ``p^T (2 g - J^T W J p)`` (Nielsen).
The same code fits one star (vmapped over stars) or all stars with a shared
shape (one flat vector).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from psfax.fitting import damping, shared
from psfax.fitting.analytic import Free
from psfax.fitting.problem import Setup, Solution, StampData, each_star, fisher_covariance, star_problem
from psfax.fitting.psf import PSF
from psfax.fitting.settings import FitSettings
from psfax.programs import persistent_jit


class TNCGState(NamedTuple):
    x: jnp.ndarray
    chi2: jnp.ndarray
    lam: jnp.ndarray
    nu: jnp.ndarray
    done: jnp.ndarray
    converged: jnp.ndarray
    n_iter: jnp.ndarray


def conjugate_gradient(matvec: Callable, b, precond, iterations: int, rtol: float):
    """Solve ``A x = b`` (A symmetric positive definite) by ``iterations`` steps of preconditioned CG."""

    def body(_, c):
        x, r, z, p, rz, done = c
        ap = matvec(p)
        alpha = rz / jnp.where(p @ ap > 0, p @ ap, 1.0)
        x_new, r_new = x + alpha * p, r - alpha * ap
        z_new = precond * r_new
        rz_new = r_new @ z_new
        p_new = z_new + (rz_new / jnp.where(rz > 0, rz, 1.0)) * p
        finished = done | (jnp.sqrt(jnp.abs(rz_new)) <= rtol * jnp.sqrt(jnp.abs(b @ (precond * b))))
        keep = lambda old, new: jnp.where(done, old, new)  # noqa: E731
        return keep(x, x_new), keep(r, r_new), keep(z, z_new), keep(p, p_new), keep(rz, rz_new), finished

    z = precond * b
    init = (jnp.zeros_like(b), b, z, z, b @ z, jnp.asarray(False))
    return jax.lax.fori_loop(0, iterations, body, init)[0]


def tncg_minimize(model_fn, data, weights_fn, diag_fn, limit_fn, x0, settings: FitSettings, dchi2, active=True):
    """Minimise ``sum w (d - model_fn(x))^2`` over the flat vector x; returns the final state.

    ``weights_fn(m)``: weights at model m; ``diag_fn(x, w)``: diagonal of ``J^T W J``; ``limit_fn(p)``:
    the step after any trust limit; accept, damping and stop by :func:`psfax.fitting.damping.judge`.
    """
    dtype = x0.dtype

    def chi2_at(m, w):
        r = data - m
        return jnp.sum(w * r * r)

    m0 = model_fn(x0)
    state = TNCGState(x0, chi2_at(m0, weights_fn(m0)), jnp.asarray(settings.lam0, dtype), jnp.asarray(2.0, dtype),
                      ~jnp.asarray(active), jnp.asarray(False), jnp.asarray(0))

    def step(s: TNCGState):
        m, jvp = jax.linearize(model_fn, s.x)
        vjp = jax.linear_transpose(jvp, s.x)
        w = weights_fn(m)
        c = chi2_at(m, w)
        g = vjp(w * (data - m))[0]
        d = jnp.maximum(diag_fn(s.x, w), 1e-30)

        def gn(v):
            return vjp(w * jvp(v))[0]

        p = conjugate_gradient(lambda v: gn(v) + s.lam * d * v, g, 1.0 / (d * (1.0 + s.lam)),
                               settings.cg_iterations, settings.cg_rtol)
        p = limit_fn(p)
        jp = jvp(p)
        c_new = chi2_at(model_fn(s.x + p), w)
        v = damping.judge(settings, dchi2, s.lam, s.nu, c, c_new, 2.0 * p @ g - jnp.sum(w * jp * jp),
                          jnp.max(jnp.abs(p) * jnp.sqrt(d)))
        new = TNCGState(jnp.where(v.accept, s.x + p, s.x), jnp.where(v.accept, c_new, c), v.lam, v.nu,
                        v.converged | v.stuck, v.converged, s.n_iter + 1)
        return jax.tree.map(lambda a, b: jnp.where(s.done, a, b), s, new)

    return jax.lax.while_loop(lambda s: ~s.done & (s.n_iter < settings.max_iter), step, state)


@persistent_jit(static_argnames=("setup",))
def solve(setup: Setup, psf: PSF, v0, stars: StampData, active) -> Solution:
    """TNCG on every star on its own; the covariance from the Fisher matrix at the solution."""
    settings = setup.settings

    def one(v, p, star, act):
        model_fn, weights_fn, diag_fn = star_problem(setup, p, star)

        def limit(step):
            return damping.limit_shift(step, jnp.maximum(jnp.abs(step[0]), jnp.abs(step[1])), settings.max_shift)

        s = tncg_minimize(model_fn, star.data, weights_fn, diag_fn, limit, v, settings, settings.dchi2, act)
        return s.x, s.converged, s.n_iter

    v, converged, n_iter = each_star(setup, psf, one, v0, stars, active)
    return Solution(v, *fisher_covariance(setup, psf, v, stars), converged, n_iter, None)


@persistent_jit(static_argnames=("setup",))
def solve_shared(setup: Setup, psf: Free, u0, coef0, basis, stars: StampData, active) -> Solution:
    """TNCG on the shared problem as one flat vector (:func:`psfax.fitting.shared.flat_problem`)."""
    split, model_fn, weights_fn, diag_fn, limit_fn = shared.flat_problem(setup, psf, u0, basis, stars, active)
    x0 = jnp.concatenate([u0.ravel(), coef0])
    s = tncg_minimize(model_fn, stars.data.ravel(), weights_fn, diag_fn, limit_fn, x0, setup.settings,
                      setup.settings.dchi2)
    return shared.solution(setup, psf, *split(s.x), basis, stars, active, s.converged, s.n_iter)

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

from dataclasses import dataclass
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class TNCGSettings:
    cg_iterations: int = 10
    cg_rtol: float = 1e-6
    xtol: float = 1e-4
    ftol: float = 1e-10
    dchi2: float = 1e-6
    lam0: float = 1e-3


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


def tncg_minimize(model_fn, data, weights_fn, diag_fn, limit_fn, x0, settings: TNCGSettings, max_iter: int,
                  active=True):
    """Minimise ``sum w (d - model_fn(x))^2`` over the flat vector x; returns the final state.

    ``weights_fn(m)``: weights at model m; ``diag_fn(x, w)``: diagonal of
    ``J^T W J``; ``limit_fn(p)``: the step after any trust limit.
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
        predicted = 2.0 * p @ g - jnp.sum(w * jp * jp)
        c_new = chi2_at(model_fn(s.x + p), w)
        rho = (c - c_new) / jnp.where(predicted > 0, predicted, 1e-300)
        accept = jnp.isfinite(c_new) & (c_new < c)
        small_step = jnp.max(jnp.abs(p) * jnp.sqrt(d)) < settings.xtol
        small_drop = (c - c_new) <= settings.ftol * jnp.maximum(c, 1.0)
        converged = (accept & (small_step | small_drop)) | (predicted < settings.dchi2)
        lam = jnp.where(accept, s.lam * jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), s.lam * s.nu)
        stuck = ~accept & (s.lam > 1e12)
        new = TNCGState(jnp.where(accept, s.x + p, s.x), jnp.where(accept, c_new, c), lam,
                        jnp.where(accept, 2.0, 2.0 * s.nu).astype(dtype), converged | stuck, converged, s.n_iter + 1)
        return jax.tree.map(lambda a, b: jnp.where(s.done, a, b), s, new)

    return jax.lax.while_loop(lambda s: ~s.done & (s.n_iter < max_iter), step, state)

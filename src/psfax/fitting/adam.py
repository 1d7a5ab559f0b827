"""Adam (optax) on chi2, with the whole loop on the device.

Parameters are whitened with the Fisher matrix at the start, ``x = x0 + A z``
with ``A^T F A ~ I`` (``A = L^-T`` from the Cholesky factor ``F = L L^T`` of
each star's block; for a shared shape, the stars' 4 x 4 blocks and the
Schur complement of the shape coefficients), so that one learning rate, in
units of standard errors, serves positions, fluxes and shapes alike, and
correlated parameters (flux and width) do not slow Adam down.  The model is
not linear, so the run is split in ``rounds``, each re-whitening at its
starting point and restarting Adam.  The
learning rate decays by cosine from ``learning_rate`` to ``final_rate``
over ``steps``; weights from the model are treated as constants in the
gradient (``stop_gradient``), as in the Gauss-Newton fits.  Converged: the
last ``window`` steps changed chi2 by less than ``dchi2`` per free parameter.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from psfax.fitting import shared
from psfax.fitting.analytic import Free
from psfax.fitting.problem import STAR_AXES, Setup, Solution, StampData, fisher_covariance, star_problem
from psfax.fitting.psf import PSF
from psfax.fitting.settings import FitSettings
from psfax.fitting.spd import spd_solve
from psfax.programs import persistent_jit


def whitening(fisher):
    """``A = L^-T`` for ``F = L L^T`` (a small ridge keeps it defined): ``A^T F A = I``."""
    ridge = 1e-12 * jnp.trace(fisher) / fisher.shape[-1] + 1e-300
    chol = jnp.linalg.cholesky(fisher + ridge * jnp.eye(fisher.shape[-1], dtype=fisher.dtype))
    return jnp.linalg.inv(chol).T


def adam_minimize(model_fn, data, weights_fn, whitener, x0, settings: FitSettings):
    """Minimise ``sum w (d - model_fn(x))^2`` from x0; returns (x, converged, n_steps).

    ``whitener(x)`` returns the map ``z -> x + A z`` whitened at x.
    """
    x, conv = x0, None
    for _ in range(settings.adam_rounds):  # a fixed, small number of rounds (static)
        x, conv = _adam_round(model_fn, data, weights_fn, whitener(x), jnp.zeros_like(x0), settings)
    return x, conv, jnp.asarray(settings.adam_steps * settings.adam_rounds)


def _adam_round(model_fn, data, weights_fn, to_x, z0, settings: FitSettings):
    schedule = optax.cosine_decay_schedule(settings.adam_learning_rate, settings.adam_steps,
                                           alpha=settings.adam_final_rate / settings.adam_learning_rate)
    opt = optax.adam(schedule)

    def loss(z):
        m = model_fn(to_x(z))
        w = jax.lax.stop_gradient(weights_fn(m))
        r = data - m
        return 0.5 * jnp.sum(w * r * r)

    value_and_grad = jax.value_and_grad(loss)

    def body(i, carry):
        z, opt_state, prev, change = carry
        value, grad = value_and_grad(z)
        updates, opt_state = opt.update(grad, opt_state, z)
        at_window = (i % settings.adam_window) == 0
        change = jnp.where(at_window, jnp.abs(prev - value), change)
        prev = jnp.where(at_window, value, prev)
        return optax.apply_updates(z, updates), opt_state, prev, change

    init = (z0, opt.init(z0), loss(z0), jnp.asarray(jnp.inf, z0.dtype))
    z, _, _, change = jax.lax.fori_loop(0, settings.adam_steps, body, init)
    return to_x(z), 2.0 * change < settings.adam_dchi2 * z.size


@persistent_jit(static_argnames=("setup",))
def solve(setup: Setup, psf: PSF, v0, stars: StampData, active) -> Solution:
    """Adam on every star on its own (whitened by its Fisher matrix); the covariance from the Fisher
    matrix at the solution."""
    def one(v, part, star):
        p = psf.with_star(part)
        model_fn, weights_fn, _ = star_problem(setup, p, star)

        def whitener(x):
            m, jac = p.linearise(x, setup.size)
            whiten = whitening((jac * weights_fn(m)[:, None]).T @ jac)
            return lambda z: x + whiten @ z

        return adam_minimize(model_fn, star.data, weights_fn, whitener, v, setup.settings)

    x, converged, n_iter = jax.vmap(one, in_axes=(0, 0, STAR_AXES))(v0, psf.star_part(), stars)
    v = jnp.where(active[:, None], x, v0)
    return Solution(v, *fisher_covariance(setup, psf, v, stars), converged, n_iter, None)


@persistent_jit(static_argnames=("setup",))
def solve_shared(setup: Setup, psf: Free, u0, coef0, basis, stars: StampData, active) -> Solution:
    """Adam on the shared problem as one flat vector, whitened by the stars' 4 x 4 blocks and the Schur
    complement of the shape coefficients."""
    split, model_fn, weights_fn, _, _ = shared.flat_problem(setup, psf, u0, basis, stars, active)

    def whitener(x):
        u, coef = split(x)
        b = shared.blocks(setup, psf, u, coef, basis, stars, active)
        a_u = jax.vmap(whitening)(b.U)
        a_c = whitening(b.V - jnp.einsum("nak,nal->kl", b.W, spd_solve(b.U, b.W)))

        def to_x(z):
            zu, zc = split(z)
            return jnp.concatenate([(u + jnp.einsum("nab,nb->na", a_u, zu)).ravel(), coef + a_c @ zc])

        return to_x

    x0 = jnp.concatenate([u0.ravel(), coef0])
    x, converged, n_iter = adam_minimize(model_fn, stars.data.ravel(), weights_fn, whitener, x0, setup.settings)
    return shared.solution(setup, psf, *split(x), basis, stars, active, converged, n_iter)

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

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax


@dataclass(frozen=True)
class AdamSettings:
    learning_rate: float = 5.0
    final_rate: float = 1e-3
    steps: int = 500
    rounds: int = 3
    window: int = 50
    dchi2: float = 1e-3


def whitening(fisher):
    """``A = L^-T`` for ``F = L L^T`` (a small ridge keeps it defined): ``A^T F A = I``."""
    ridge = 1e-12 * jnp.trace(fisher) / fisher.shape[-1] + 1e-300
    chol = jnp.linalg.cholesky(fisher + ridge * jnp.eye(fisher.shape[-1], dtype=fisher.dtype))
    return jnp.linalg.inv(chol).T


def adam_minimize(model_fn, data, weights_fn, whitener, x0, settings: AdamSettings):
    """Minimise ``sum w (d - model_fn(x))^2`` from x0; returns (x, converged, n_steps).

    ``whitener(x)`` returns the map ``z -> x + A z`` whitened at x.
    """
    x, conv = x0, None
    for _ in range(settings.rounds):  # a fixed, small number of rounds (static)
        x, conv = _adam_round(model_fn, data, weights_fn, whitener(x), jnp.zeros_like(x0), settings)
    return x, conv, jnp.asarray(settings.steps * settings.rounds)


def _adam_round(model_fn, data, weights_fn, to_x, z0, settings: AdamSettings):
    schedule = optax.cosine_decay_schedule(settings.learning_rate, settings.steps,
                                           alpha=settings.final_rate / settings.learning_rate)
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
        at_window = (i % settings.window) == 0
        change = jnp.where(at_window, jnp.abs(prev - value), change)
        prev = jnp.where(at_window, value, prev)
        return optax.apply_updates(z, updates), opt_state, prev, change

    init = (z0, opt.init(z0), loss(z0), jnp.asarray(jnp.inf, z0.dtype))
    z, _, _, change = jax.lax.fori_loop(0, settings.steps, body, init)
    return to_x(z), 2.0 * change < settings.dchi2 * z.size

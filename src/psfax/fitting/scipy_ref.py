"""Reference fits with ``scipy.optimize.least_squares`` (trust-region reflective), on the CPU.

Independent stars: one ``least_squares`` call per star (a Python loop: this
is the reference, not the fast path).  Shared shape: one call on the joint
vector with a sparse block-arrow Jacobian (``tr_solver="lsmr"``).  Model and
Jacobian come from the same JAX functions as the fast fitters; with
``model_variance`` the weights are refreshed from the model between calls
(iteratively reweighted, ``reweight_rounds`` rounds).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from psfax.fitting import shared
from psfax.fitting.analytic import Free
from psfax.fitting.problem import STAR_AXES, Setup, Solution, StampData, fisher_covariance, weights
from psfax.fitting.psf import PSF


def solve(setup: Setup, psf: PSF, v0, stars: StampData, active) -> Solution:
    """Per-star ``least_squares``; the covariance from the Fisher matrix at the solution."""
    import scipy.optimize  # here, not at import: it takes 0.3 s and only the reference needs it

    model_and_jac = jax.jit(lambda v, p: p.linearise(v, setup.size))
    weights_one = jax.jit(lambda star, m: weights(setup, star, m))
    v = np.array(v0)
    conv = np.zeros(len(v), bool)
    nfev = np.zeros(len(v), np.int32)
    data = np.asarray(stars.data)
    for i in np.flatnonzero(np.asarray(active)):
        p = psf.rows(i)
        star = jax.tree.map(lambda x, ax: x if ax is None else x[i], stars, STAR_AXES)
        x = v[i]
        for _ in range(setup.settings.reweight_rounds if setup.model_variance else 1):
            sw = np.sqrt(np.asarray(weights_one(star, model_and_jac(x, p)[0])))

            def fun(q):
                return sw * (np.asarray(model_and_jac(q, p)[0]) - data[i])

            def jac(q):
                return sw[:, None] * np.asarray(model_and_jac(q, p)[1])

            sol = scipy.optimize.least_squares(fun, x, jac=jac, method="trf", x_scale="jac", max_nfev=200)
            x, nfev[i] = sol.x, nfev[i] + sol.nfev
        v[i], conv[i] = x, sol.success
    v = jnp.asarray(v, v0.dtype)
    return Solution(v, *fisher_covariance(setup, psf, v, stars), jnp.asarray(conv), jnp.asarray(nfev), None)


def solve_shared(setup: Setup, psf: Free, u0, coef0, basis, stars: StampData, active) -> Solution:
    """Joint ``least_squares`` with a sparse Jacobian."""
    import scipy.optimize
    import scipy.sparse

    k_coef = coef0.shape[0]
    idx = np.flatnonzero(np.asarray(active))
    data = np.asarray(stars.data)[idx]
    m_pix = data.shape[1]
    model_fn = jax.jit(lambda u, c: shared.models(setup, psf, u, c, basis))
    jac_fn = jax.jit(lambda u, c: shared.models_and_jacobians(setup, psf, u, c, basis))
    weights_fn = jax.jit(lambda m: shared.weights_batch(setup, stars, m))
    u, coef = np.array(u0), np.array(coef0)
    rows = np.arange(len(idx) * m_pix)

    def unpack(x):
        uu = u.copy()
        uu[idx] = x[: 4 * len(idx)].reshape(-1, 4)
        return uu, x[4 * len(idx):]

    x = np.concatenate([u[idx].ravel(), coef])
    nfev = 0
    for _ in range(setup.settings.reweight_rounds if setup.model_variance else 1):
        sw = np.sqrt(np.asarray(weights_fn(model_fn(*unpack(x))))[idx]).ravel()

        def fun(p):
            return sw * (np.asarray(model_fn(*unpack(p)))[idx].ravel() - data.ravel())

        def jac(p):
            _, ju, js = (np.asarray(a)[idx] for a in jac_fn(*unpack(p)))
            b = np.asarray(basis)[idx]
            jc = (js[:, :, None, :] * b[:, None, :, None]).reshape(len(idx) * m_pix, k_coef)
            star_cols = 4 * np.repeat(np.arange(len(idx)), m_pix)[:, None] + np.arange(4)[None, :]
            blk = scipy.sparse.csr_matrix((ju.reshape(-1, 4).ravel(), (np.repeat(rows, 4), star_cols.ravel())),
                                          shape=(len(rows), 4 * len(idx)))
            return scipy.sparse.diags(sw) @ scipy.sparse.hstack([blk, scipy.sparse.csr_matrix(jc)]).tocsr()

        sol = scipy.optimize.least_squares(fun, x, jac=jac, method="trf", tr_solver="lsmr", x_scale="jac",
                                           max_nfev=200)
        x, nfev = sol.x, nfev + sol.nfev
    u, coef = unpack(x)
    return shared.solution(setup, psf, jnp.asarray(u, u0.dtype), jnp.asarray(coef, coef0.dtype), basis, stars,
                           active, np.asarray(sol.success), np.asarray(nfev, np.int32))

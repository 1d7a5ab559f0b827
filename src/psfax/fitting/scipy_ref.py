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
import numpy as np

from psfax.fitting.problem import STAR_AXES, aux_rows, linearise, weights

REWEIGHT_ROUNDS = 3


def solve_independent(setup, model_of, v0, aux, stars, active, aux_axis):
    """Per-star ``least_squares``; returns (v, converged, n_evaluations) as numpy arrays."""
    import scipy.optimize  # here, not at import: it takes 0.3 s and only the reference needs it

    model_and_jac = jax.jit(lambda v, aux: linearise(setup, model_of, v, aux))
    weights_one = jax.jit(lambda star, m: weights(setup, star, m))
    v = np.array(v0)
    conv = np.zeros(len(v), bool)
    nfev = np.zeros(len(v), np.int32)
    data = np.asarray(stars.data)
    for i in np.flatnonzero(np.asarray(active)):
        a = aux_rows(aux, aux_axis, i)
        star = jax.tree.map(lambda x, ax: x if ax is None else x[i], stars, STAR_AXES)
        x = v[i]
        for _ in range(REWEIGHT_ROUNDS if setup.model_variance else 1):
            sw = np.sqrt(np.asarray(weights_one(star, model_and_jac(x, a)[0])))

            def fun(p):
                return sw * (np.asarray(model_and_jac(p, a)[0]) - data[i])

            def jac(p):
                return sw[:, None] * np.asarray(model_and_jac(p, a)[1])

            sol = scipy.optimize.least_squares(fun, x, jac=jac, method="trf", x_scale="jac", max_nfev=200)
            x, nfev[i] = sol.x, nfev[i] + sol.nfev
        v[i], conv[i] = x, sol.success
    return v, conv, nfev


def solve_shared(setup, u0, coef0, basis, stars, active):
    """Joint ``least_squares`` with a sparse Jacobian; returns (u, coef, converged, n_evaluations)."""
    import scipy.optimize
    import scipy.sparse

    from psfax.fitting.shared import models, models_and_jacobians, weights_batch

    k_coef = coef0.shape[0]
    idx = np.flatnonzero(np.asarray(active))
    data = np.asarray(stars.data)[idx]
    m_pix = data.shape[1]
    model_fn = jax.jit(lambda u, c: models(setup, u, c, basis))
    jac_fn = jax.jit(lambda u, c: models_and_jacobians(setup, u, c, basis))
    weights_fn = jax.jit(lambda m: weights_batch(setup, stars, m))
    u, coef = np.array(u0), np.array(coef0)
    rows = np.arange(len(idx) * m_pix)

    def unpack(x):
        uu = u.copy()
        uu[idx] = x[: 4 * len(idx)].reshape(-1, 4)
        return uu, x[4 * len(idx):]

    x = np.concatenate([u[idx].ravel(), coef])
    nfev = 0
    for _ in range(REWEIGHT_ROUNDS if setup.model_variance else 1):
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
    return u, coef, np.asarray(sol.success), np.asarray(nfev)

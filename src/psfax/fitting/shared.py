"""Levenberg-Marquardt for one PSF shape shared by all stars (block-arrow system).

Unknowns: per star ``u_i = [x0, y0, flux, bkg]`` and global shape
coefficients ``c`` (``size`` basis functions x ``k`` shape parameters; the
shape at star i is ``B_i c``, see :mod:`psfax.fitting.spatial`).  The
Gauss-Newton matrix has the block-arrow form

    [[U_1, ..., 0,  W_1],
     [ ...         ... ],
     [0, ..., U_N,  W_N],
     [W_1^T ... W_N^T, V]]

with 4 x 4 blocks ``U_i``.  A damped step eliminates the stars (Schur
complement): ``S = V - sum W_i^T U_i^-1 W_i``,
``S dc = g_c - sum W_i^T U_i^-1 g_i``, ``du_i = U_i^-1 (g_i - W_i dc)``; the
dense (4N + K)^2 matrix is never formed.  The same blocks give the exact
inverse-Fisher covariance at the solution.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from psfax.fitting.lm import LMSettings, chi2_resolution
from psfax.fitting.params import N_STAR
from psfax.fitting.problem import (STAR_AXES, StampData, Setup, chi2, direct_linearise, map_stars, per_star, star_model,
                                   table_model, weights)
from psfax.fitting.spd import spd_inverse
from psfax.fitting.table import build_table, interpolate


class Blocks(NamedTuple):
    U: jnp.ndarray  # (N, 4, 4)
    W: jnp.ndarray  # (N, 4, K)
    V: jnp.ndarray  # (K, K)
    g_u: jnp.ndarray  # (N, 4)
    g_c: jnp.ndarray  # (K,)
    chi2: jnp.ndarray  # (N,)
    w: jnp.ndarray  # (N, M) weights used
    m: jnp.ndarray  # (N, M) model


def _direct_jacobian(setup: Setup, u, shape_u):
    """Model (M,) and Jacobians wrt u (M, 4) and shape (M, k) by direct integration."""
    m, jac = direct_linearise(setup, u, shape_u, wrt_shape=True)
    return m, jac[:, :N_STAR], jac[:, N_STAR:]


def _table_jacobian(setup: Setup, u, tables):
    """Model and Jacobians from a table stack ``[T, dT/dshape_1, ...]`` (1 + k, L, L)."""
    p, px, py = interpolate(setup.grid, tables, u[0], u[1])
    p, px, py = (a.reshape(a.shape[0], -1) for a in (p, px, py))
    flux = u[2]
    m = flux * p[0] + u[3]
    ju = jnp.stack([flux * px[0], flux * py[0], p[0], jnp.ones_like(p[0])], axis=1)
    return m, ju, flux * p[1:].T


def table_stack(setup: Setup, shape_u):
    """The PSF table and its derivatives wrt the unconstrained shape, stacked (1 + k, L, L)."""

    def f(su):
        t = build_table(setup.profile, setup.grid, su)
        return t, t

    d, t = jax.jacfwd(f, has_aux=True)(shape_u)
    return jnp.concatenate([t[None], jnp.moveaxis(d, -1, 0)])


def _uses_table(setup: Setup, basis) -> bool:
    """One shape for all stars (degree 0) and pixel integration: tabulate."""
    return setup.tabulated and basis.shape[1] == 1


def models_and_jacobians(setup: Setup, u, coef, basis):
    """Per-star model (N, M) and Jacobians (N, M, 4), (N, M, k)."""
    if _uses_table(setup, basis):
        tables = table_stack(setup, coef)  # degree 0: the coefficients are the shape
        return map_stars(setup, lambda ui: _table_jacobian(setup, ui, tables), u)
    return map_stars(setup, partial(_direct_jacobian, setup), u, basis @ coef.reshape(basis.shape[1], -1))


def models(setup: Setup, u, coef, basis):
    """Per-star model (N, M)."""
    if _uses_table(setup, basis):
        table = build_table(setup.profile, setup.grid, coef)
        return map_stars(setup, lambda ui: table_model(setup, ui, table), u)
    return map_stars(setup, partial(star_model, setup), u, basis @ coef.reshape(basis.shape[1], -1))


def _star_blocks(setup: Setup, m, ju, js, basis, star: StampData, active):
    """One star's contribution: U, W (4, K), V (K, K), gradients, chi2."""
    w = weights(setup, star, m) * active
    r = star.data - m
    k = js.shape[1]
    jw = ju * w[:, None]
    sw = js * w[:, None]
    U = jw.T @ ju + jnp.where(active, 0.0, 1.0) * jnp.eye(N_STAR, dtype=ju.dtype)
    W = (jw.T @ js)[:, None, :] * basis[None, :, None]
    V = (sw.T @ js)[None, :, None, :] * (basis[:, None, None, None] * basis[None, None, :, None])  # (b, k, c, k)
    g_c = (sw.T @ r)[None, :] * basis[:, None]
    K = basis.shape[0] * k
    V = V.reshape(K, K)
    return U, W.reshape(N_STAR, K), V, jw.T @ r, g_c.reshape(K), jnp.sum(w * r * r), w


def blocks(setup: Setup, u, coef, basis, stars: StampData, active) -> Blocks:
    """Gauss-Newton blocks of the whole problem at (u, coef)."""
    m, ju, js = models_and_jacobians(setup, u, coef, basis)
    U, W, V, g_u, g_c, c, w = map_stars(setup, partial(_star_blocks, setup), m, ju, js, basis, per_star(stars), active)
    return Blocks(U, W, V.sum(0), g_u, g_c.sum(0), c, w, m)


def schur_solve(b: Blocks, lam):
    """Damped step (du, dc) of the block-arrow system (Marquardt scaling by the diagonal)."""
    du_diag = jnp.diagonal(b.U, axis1=1, axis2=2)
    Ud = b.U + lam * jax.vmap(jnp.diag)(du_diag)
    dv = jnp.diag(b.V)
    Uinv = spd_inverse(Ud)
    UiW = Uinv @ b.W  # (N, 4, K)
    S = b.V + lam * jnp.diag(dv) - jnp.einsum("nak,nal->kl", b.W, UiW)
    rhs = b.g_c - jnp.einsum("nak,na->k", UiW, b.g_u)
    dc = jnp.linalg.solve(S, rhs)
    du = jnp.einsum("nab,nb->na", Uinv, b.g_u - b.W @ dc)
    return du, dc


def newton_decrement(b: Blocks):
    """Chi2 decrease predicted by the undamped Gauss-Newton step of the blocks (NaN when singular)."""
    du, dc = schur_solve(b, 0.0)
    return _predicted(b, du, dc)


def _predicted(b: Blocks, du, dc):
    """Quadratic-model chi2 decrease ``d^T (2 g - H d)`` of the full step."""
    hu = jnp.einsum("nab,nb->na", b.U, du) + b.W @ dc
    hc = b.V @ dc + jnp.einsum("nak,na->k", b.W, du)
    return jnp.sum(du * (2 * b.g_u - hu)) + dc @ (2 * b.g_c - hc)


class SharedState(NamedTuple):
    u: jnp.ndarray
    coef: jnp.ndarray
    b: Blocks  # at (u, coef)
    lam: jnp.ndarray
    nu: jnp.ndarray
    done: jnp.ndarray
    converged: jnp.ndarray
    n_iter: jnp.ndarray


def weights_batch(setup, stars, m):
    return jax.vmap(weights, in_axes=(None, STAR_AXES, 0))(setup, stars, m)


def lm_shared(setup: Setup, settings: LMSettings, u0, coef0, basis, stars: StampData, active) -> SharedState:
    """Fit all stars with one shared shape model; returns the final state.

    One linearisation per iteration: the blocks are computed at the trial
    point (its model gives the trial chi2) and kept if the step is accepted.
    Converged as in :func:`psfax.fitting.lm.lm_iterate`, the Newton decrement
    from the Schur complement of the blocks at hand.
    """
    dtype = u0.dtype
    b0 = blocks(setup, u0, coef0, basis, stars, active)
    at_optimum = newton_decrement(b0) < chi2_resolution(settings, jnp.sum(b0.chi2))[1]
    state = SharedState(u0, coef0, b0, jnp.asarray(settings.lam0, dtype), jnp.asarray(2.0, dtype), at_optimum,
                        at_optimum, jnp.asarray(0))

    def step(s: SharedState):
        b = s.b
        c = jnp.sum(b.chi2)
        du, dc = schur_solve(b, s.lam)
        shift = jnp.maximum(jnp.max(jnp.abs(du[:, :2])), 1e-30)
        scale = jnp.minimum(1.0, settings.max_shift / shift)
        du, dc = du * scale, dc * scale
        u_new, c_new_coef = s.u + du, s.coef + dc
        b_new = blocks(setup, u_new, c_new_coef, basis, stars, active)
        c_new = jnp.sum(chi2(stars.data, b_new.m, b.w))  # under this iteration's weights, comparable with c
        predicted = _predicted(b, du, dc)
        rho = (c - c_new) / jnp.maximum(predicted, 1e-300)
        accept = jnp.isfinite(c_new) & (c_new < c)
        du_sig = jnp.abs(du) * jnp.sqrt(jnp.diagonal(b.U, axis1=1, axis2=2))
        dc_sig = jnp.abs(dc) * jnp.sqrt(jnp.maximum(jnp.diag(b.V), 0.0))
        small_step = jnp.maximum(jnp.max(jnp.where(active[:, None], du_sig, 0.0)), jnp.max(dc_sig)) < settings.xtol
        ftol, dchi2 = chi2_resolution(settings, c)
        small_drop = (c - c_new) <= ftol * jnp.maximum(c, 1.0)
        at_optimum = newton_decrement(b_new) < chi2_resolution(settings, jnp.sum(b_new.chi2))[1]
        converged = (accept & (small_step | small_drop | at_optimum)) | (predicted < dchi2)
        lam = jnp.where(accept, s.lam * jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), s.lam * s.nu)
        stuck = ~accept & (s.lam > 1e12)
        kept = jax.tree.map(lambda new, old: jnp.where(accept, new, old), b_new, b)
        return SharedState(jnp.where(accept, u_new, s.u), jnp.where(accept, c_new_coef, s.coef), kept, lam,
                           jnp.where(accept, 2.0, 2.0 * s.nu).astype(dtype), converged | stuck, converged,
                           s.n_iter + 1)

    return jax.lax.while_loop(lambda s: ~s.done & (s.n_iter < setup.max_iter), step, state)


def shared_covariance(b: Blocks, basis, k: int):
    """Inverse-Fisher covariance of each star's ``[u_i, shape_u(B_i)]`` (N, 4+k, 4+k) and of ``c`` (K, K)."""
    Uinv = spd_inverse(b.U)
    UiW = Uinv @ b.W
    S = b.V - jnp.einsum("nak,nal->kl", b.W, UiW)
    Sinv = jnp.linalg.inv(S)
    c_uu = Uinv + UiW @ Sinv @ jnp.swapaxes(UiW, 1, 2)
    c_uc = -UiW @ Sinv  # (N, 4, K)
    eye = jnp.eye(k, dtype=basis.dtype)
    B = jnp.einsum("nb,jl->njbl", basis, eye).reshape(basis.shape[0], k, -1)  # shape_u_i = B_i c
    c_us = c_uc @ jnp.swapaxes(B, 1, 2)
    c_ss = B @ Sinv @ jnp.swapaxes(B, 1, 2)
    top = jnp.concatenate([c_uu, c_us], axis=2)
    bottom = jnp.concatenate([jnp.swapaxes(c_us, 1, 2), c_ss], axis=2)
    return jnp.concatenate([top, bottom], axis=1), Sinv

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
import numpy as np

from psfax.fitting import damping
from psfax.fitting.analytic import Free
from psfax.fitting.params import N_STAR
from psfax.fitting.problem import STAR_AXES, Setup, Solution, StampData, chi2, map_stars, per_star, star_rows, weights
from psfax.fitting.spd import spd_inverse
from psfax.fitting.table import build_table, interpolate, table_linearise, table_psf
from psfax.programs import persistent_jit


class Blocks(NamedTuple):
    U: jnp.ndarray  # (N, 4, 4)
    W: jnp.ndarray  # (N, 4, K)
    V: jnp.ndarray  # (K, K)
    g_u: jnp.ndarray  # (N, 4)
    g_c: jnp.ndarray  # (K,)
    V_i: jnp.ndarray  # (N, K, K): each star's share of V
    g_c_i: jnp.ndarray  # (N, K): each star's share of g_c
    chi2: jnp.ndarray  # (N,)
    w: jnp.ndarray  # (N, M) weights used
    m: jnp.ndarray  # (N, M) model


def _table_jacobian(grid, u, tables):
    """Model and Jacobians wrt u (M, 4) and shape (M, k) from a table stack ``[T, dT/dshape_1, ...]``."""
    p, px, py = interpolate(grid, tables, u[0], u[1])
    m, ju = table_linearise(u, (p[0], px[0], py[0]))
    return m, ju, u[2] * p[1:].reshape(p.shape[0] - 1, -1).T


def table_stack(psf: Free, grid, shape_u):
    """The PSF table and its derivatives wrt the unconstrained shape, stacked (1 + k, ...polyphase)."""

    def f(su):
        t = build_table(psf.profile, grid, su)
        return t, t

    d, t = jax.jacfwd(f, has_aux=True)(shape_u)
    return jnp.concatenate([t[None], jnp.moveaxis(d, -1, 0)])


def _uses_table(psf: Free, basis) -> bool:
    """One shape for all stars (degree 0) and pixel integration: tabulate."""
    return psf.tabulated and basis.shape[1] == 1


def models_and_jacobians(setup: Setup, psf: Free, u, coef, basis):
    """Per-star model (N, M) and Jacobians (N, M, 4), (N, M, k)."""
    if _uses_table(psf, basis):
        grid = psf.grid(setup.size)
        tables = table_stack(psf, grid, coef)  # degree 0: the coefficients are the shape
        return map_stars(setup, lambda ui: _table_jacobian(grid, ui, tables), u)

    def direct(ui, shape_u):
        m, jac = psf.linearise_shape(ui, shape_u, setup.size, wrt_shape=True)
        return m, jac[:, :N_STAR], jac[:, N_STAR:]

    return map_stars(setup, direct, u, basis @ coef.reshape(basis.shape[1], -1))


def models(setup: Setup, psf: Free, u, coef, basis):
    """Per-star model (N, M)."""
    if _uses_table(psf, basis):
        grid = psf.grid(setup.size)
        table = build_table(psf.profile, grid, coef)
        return map_stars(setup, lambda ui: ui[2] * table_psf(grid, table, ui[0], ui[1]).ravel() + ui[3], u)
    return map_stars(setup, lambda ui, su: psf.evaluate(jnp.concatenate([ui, su]), setup.size),
                     u, basis @ coef.reshape(basis.shape[1], -1))


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


def blocks(setup: Setup, psf: Free, u, coef, basis, stars: StampData, active) -> Blocks:
    """Gauss-Newton blocks of the whole problem at (u, coef)."""
    m, ju, js = models_and_jacobians(setup, psf, u, coef, basis)
    U, W, V, g_u, g_c, c, w = map_stars(setup, partial(_star_blocks, setup), m, ju, js, basis, per_star(stars), active)
    return Blocks(U, W, V.sum(0), g_u, g_c.sum(0), V, g_c, c, w, m)


def schur_solve(b: Blocks, lam_u, lam_c):
    """Damped step (du, dc) of the block-arrow system (Marquardt scaling by the diagonal): star i's
    block damped by ``lam_u[i]``, the shape's by ``lam_c``."""
    du_diag = jnp.diagonal(b.U, axis1=1, axis2=2)
    Ud = b.U + lam_u[:, None, None] * jax.vmap(jnp.diag)(du_diag)
    dv = jnp.diag(b.V)
    Uinv = spd_inverse(Ud)
    UiW = Uinv @ b.W  # (N, 4, K)
    S = b.V + lam_c * jnp.diag(dv) - jnp.einsum("nak,nal->kl", b.W, UiW)
    rhs = b.g_c - jnp.einsum("nak,na->k", UiW, b.g_u)
    dc = jnp.linalg.solve(S, rhs)
    du = jnp.einsum("nab,nb->na", Uinv, b.g_u - b.W @ dc)
    return du, dc


def newton_decrement(b: Blocks):
    """Chi2 decrease predicted by the undamped Gauss-Newton step of the blocks (NaN when singular)."""
    du, dc = schur_solve(b, jnp.zeros(b.U.shape[0], b.U.dtype), 0.0)
    return jnp.sum(_predicted(b, du, dc))


def _predicted(b: Blocks, du, dc):
    """Each star's quadratic-model chi2 decrease (N,) from the step (du, dc):
    ``2 g_i.du_i + 2 g_ci.dc - du_i^T U_i du_i - 2 du_i^T W_i dc - dc^T V_i dc``; their sum is the whole
    system's ``d^T (2 g - H d)``."""
    wdc = b.W @ dc
    quad_u = jnp.einsum("na,nab,nb->n", du, b.U, du)
    quad_c = jnp.einsum("k,nkl,l->n", dc, b.V_i, dc)
    return (2 * jnp.sum(du * b.g_u, axis=1) + 2 * b.g_c_i @ dc - quad_u - 2 * jnp.sum(du * wdc, axis=1) - quad_c)


class SharedState(NamedTuple):
    u: jnp.ndarray
    coef: jnp.ndarray
    b: Blocks  # at (u, coef)
    lam: jnp.ndarray  # the shape's damping
    lam_u: jnp.ndarray  # (N,) each star's damping
    nu: jnp.ndarray
    done: jnp.ndarray
    converged: jnp.ndarray
    n_iter: jnp.ndarray


def weights_batch(setup, stars, m):
    return jax.vmap(weights, in_axes=(None, STAR_AXES, 0))(setup, stars, m)


def _step(setup: Setup, psf: Free, basis, stars: StampData, active, dchi2, s: SharedState) -> SharedState:
    """One LM iteration of the shared problem (one linearisation: the blocks at the trial point give its
    chi2 and are kept if the step is accepted).

    The step is judged as a whole (:func:`psfax.fitting.damping.judge`, Nielsen's rule for the shape's
    damping), but each star has its own damping and its own shift limit, as in per-star LM: after an
    accepted step star i's damping follows :func:`psfax.fitting.damping.overshoot_damping` of its own gain
    ratio (its chi2 drop over its share of the predicted drop).  With one damping and one shift limit
    for all, a single faint star proposing a 100-px move shrank every star's step a hundredfold, and the
    faint stars' overshoot kept the whole system from converging (300 GalSim stars of S/N 5-1000, FWHM
    1.8 px: 100 iterations, not converged).  From the photometry start of
    :func:`psfax.fitting.api.fit_stamps`, on 300 such stars at FWHM 0.9 / 1.8 / 3.0 px, one damping for
    all (with per-star shift limits) took 31 / 8 / 5 iterations, per-star damping 16 / 5 / 4."""
    settings = setup.settings
    b = s.b
    du, dc = schur_solve(b, s.lam_u, s.lam)
    du = damping.limit_shift(du, jnp.max(jnp.abs(du[:, :2]), axis=1, keepdims=True), settings.max_shift)
    u_new, coef_new = s.u + du, s.coef + dc
    b_new = blocks(setup, psf, u_new, coef_new, basis, stars, active)
    drop = b.chi2 - chi2(stars.data, b_new.m, b.w)  # under this iteration's weights
    predicted = _predicted(b, du, dc)
    du_sig = jnp.abs(du) * jnp.sqrt(jnp.diagonal(b.U, axis1=1, axis2=2))
    dc_sig = jnp.abs(dc) * jnp.sqrt(jnp.maximum(jnp.diag(b.V), 0.0))
    step_sigma = jnp.maximum(jnp.max(jnp.where(active[:, None], du_sig, 0.0)), jnp.max(dc_sig))
    optimum = damping.at_optimum(settings, dchi2, newton_decrement(b_new), jnp.sum(b_new.chi2))
    c = jnp.sum(b.chi2)
    v = damping.judge(settings, dchi2, s.lam, s.nu, c, c - jnp.sum(drop), jnp.sum(predicted), step_sigma, optimum)
    rho_u = jnp.where(predicted > 0, drop / jnp.where(predicted > 0, predicted, 1.0), 1.0)
    lam_u = jnp.where(v.accept, damping.overshoot_damping(s.lam_u, rho_u), s.lam_u * s.nu)
    kept = jax.tree.map(lambda new, old: jnp.where(v.accept, new, old), b_new, b)
    return SharedState(jnp.where(v.accept, u_new, s.u), jnp.where(v.accept, coef_new, s.coef), kept, v.lam, lam_u,
                       v.nu, v.converged | v.stuck, v.converged, s.n_iter + 1)


@persistent_jit(static_argnames=("setup",))
def lm_shared(setup: Setup, psf: Free, u0, coef0, basis, stars: StampData, active, dchi2) -> SharedState:
    """Fit all stars with one shared shape model by LM (:mod:`psfax.fitting.damping`); the final state.
    Converged as per-star LM, the Newton decrement from the Schur complement of the blocks at hand."""
    dtype = u0.dtype
    b0 = blocks(setup, psf, u0, coef0, basis, stars, active)
    at_optimum = damping.at_optimum(setup.settings, dchi2, newton_decrement(b0), jnp.sum(b0.chi2))
    lam0 = jnp.asarray(setup.settings.lam0, dtype)
    state = SharedState(u0, coef0, b0, lam0, jnp.full(u0.shape[0], lam0), jnp.asarray(2.0, dtype), at_optimum,
                        at_optimum, jnp.asarray(0))
    return jax.lax.while_loop(lambda s: ~s.done & (s.n_iter < setup.max_iter),
                              partial(_step, setup, psf, basis, stars, active, dchi2), state)


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


@persistent_jit(static_argnames=("setup",))
def solution(setup: Setup, psf: Free, u, coef, basis, stars: StampData, active, converged, n_iter,
             b: Blocks | None = None) -> Solution:
    """The complete solution at ``(u, coef)``: per star ``[u_i, B_i c]`` with its inverse-Fisher
    covariance (from the Gauss-Newton blocks, formed here when the optimizer did not), chi2, and the
    coefficients with theirs."""
    if b is None:
        b = blocks(setup, psf, u, coef, basis, stars, active)
    k = len(psf.free_names)
    cov_v, cov_c = shared_covariance(b, basis, k)
    v = jnp.concatenate([u, basis @ coef.reshape(basis.shape[1], -1)], axis=1)
    n = u.shape[0]
    return Solution(v, cov_v, b.chi2, jnp.broadcast_to(converged, (n,)) & active, jnp.broadcast_to(n_iter, (n,)),
                    (coef, cov_c))


def pilot_coefficients(setup: Setup, psf: Free, u0, coef0, basis, stars: StampData, active):
    """Shape coefficients fitted (LM, stopping at ``settings.pilot_dchi2``) to the ``settings.pilot_stars``
    active stars of largest starting flux, from ``coef0``; ``coef0`` itself when there are too few stars
    for a pilot (see :class:`psfax.fitting.settings.FitSettings`)."""
    act = np.asarray(active)
    n_pilot = setup.settings.pilot_stars
    if act.sum() <= 8 * n_pilot:
        return coef0
    flux = np.where(act, np.asarray(u0[:, 2]), -np.inf)
    rows = jnp.asarray(np.sort(np.argsort(-flux, kind="stable")[:n_pilot]))
    u_p, active_p, stars_p, basis_p = _pilot_rows(rows, u0, active, stars, basis)
    dchi2 = np.asarray(setup.settings.pilot_dchi2, u0.dtype)
    return lm_shared(setup, psf, u_p, coef0, basis_p, stars_p, active_p, dchi2).coef


@persistent_jit
def _pilot_rows(rows, u, active, stars, basis):
    return u[rows], active[rows], star_rows(stars, rows), basis[rows]


def solve(setup: Setup, psf: Free, u0, coef0, basis, stars: StampData, active, dchi2=None) -> Solution:
    """Shared-shape LM from ``(u0, coef0)``; ``dchi2``: the stop on the predicted decrease of the total
    chi2 (default ``settings.shared_dchi2``)."""
    dchi2 = np.asarray(setup.settings.shared_dchi2 if dchi2 is None else dchi2, u0.dtype)
    s = lm_shared(setup, psf, u0, coef0, basis, stars, active, dchi2)
    return solution(setup, psf, s.u, s.coef, basis, stars, active, s.converged, s.n_iter, s.b)


def flat_problem(setup: Setup, psf: Free, u0, basis, stars: StampData, active):
    """The shared problem on one flat vector ``x = [u (N x 4), coef]`` for the first-order optimizers:
    ``split``, model, weights, Gauss-Newton diagonal and step limit functions of ``x``."""
    n = u0.shape[0]

    def split(x):
        return x[: N_STAR * n].reshape(n, N_STAR), x[N_STAR * n:]

    def model_fn(x):
        return models(setup, psf, *split(x), basis).ravel()

    def weights_fn(m):
        return (weights_batch(setup, stars, m.reshape(n, -1)) * active[:, None]).ravel()

    def diag_fn(x, w):
        _, jvp = jax.linearize(model_fn, x)
        size = x.shape[0]
        # stars do not share u, so one tangent per u slot gives every star's column at once
        u_diag = jnp.stack([jnp.sum((jvp(jnp.zeros(size).at[j:N_STAR * n:N_STAR].set(1.0)) ** 2 * w)
                                    .reshape(n, -1), axis=1) for j in range(N_STAR)], axis=1).ravel()
        c_diag = jnp.stack([jnp.sum(jvp(jnp.zeros(size).at[N_STAR * n + k].set(1.0)) ** 2 * w)
                            for k in range(size - N_STAR * n)])
        return jnp.concatenate([u_diag, c_diag])

    def limit_fn(p):
        du = p[: N_STAR * n].reshape(n, N_STAR)
        return damping.limit_shift(p, jnp.max(jnp.abs(du[:, :2])), setup.settings.max_shift)

    return split, model_fn, weights_fn, diag_fn, limit_fn

"""Solves with small symmetric positive definite matrices, one per star.

The per-star covariances (``J^T W J``, 4 to 8 parameters) and the shared
fit's per-star Schur blocks are solved by a Cholesky factorisation
``A = L L^T`` written out over its rows: for a batch of matrices each step is
one vector operation across the batch, where LAPACK's batched solve makes one
small call per matrix (about ten times slower for 4 x 4 matrices on the CPU).  A matrix that is not positive
definite (singular, or indefinite by rounding) gives NaN or inf, never a
silently wrong finite answer from a failed factorisation.
"""

from __future__ import annotations

import jax.numpy as jnp


def _cholesky(a):
    """Lower factor of ``a`` (..., P, P) as a dict ``L[i, j]`` (j <= i) of (...) arrays."""
    n = a.shape[-1]
    low = {}
    for j in range(n):
        low[j, j] = jnp.sqrt(a[..., j, j] - sum(low[j, k] ** 2 for k in range(j)))
        for i in range(j + 1, n):
            low[i, j] = (a[..., i, j] - sum(low[i, k] * low[j, k] for k in range(j))) / low[j, j]
    return low


def spd_solve(a, b):
    """``x`` with ``a x = b`` for ``a`` (..., P, P) symmetric positive definite and ``b`` (..., P) or
    (..., P, K): forward substitution with ``L``, then back substitution with ``L^T``."""
    vector = b.ndim == a.ndim - 1
    rhs = b[..., None] if vector else b
    n = a.shape[-1]
    low = _cholesky(a)
    y = []
    for i in range(n):
        y.append((rhs[..., i, :] - sum(low[i, k][..., None] * y[k] for k in range(i))) / low[i, i][..., None])
    x = [None] * n
    for i in reversed(range(n)):
        x[i] = (y[i] - sum(low[k, i][..., None] * x[k] for k in range(i + 1, n))) / low[i, i][..., None]
    out = jnp.stack(x, axis=-2)
    return out[..., 0] if vector else out


def spd_inverse(a):
    """Inverse of ``a`` (..., P, P) symmetric positive definite (:func:`spd_solve` with the identity)."""
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    return spd_solve(a, jnp.broadcast_to(eye, a.shape))

"""Tabulated PSF for fixed shapes that differ from star to star (e.g. varying across an image).

A table per star would cost more than integrating directly.  Instead the
stars' unconstrained shapes ``u`` (see :mod:`psfax.fitting.params`) are
binned on a grid of cells ``2 r`` wide per axis (``r = FitSettings.cell_radius``), and each cell in use gets
the table of its centre ``a`` with its first and second derivatives, so that

    T(u) = T(a) + sum_k d_k dT/du_k + 1/2 sum_kl d_k d_l d2T/du_k du_l + O(|d|^3),   d = u - a.

With ``|d_k| <= r = 0.03`` the remainder stays below 1e-4 of the peak pixel
at FWHM 0.8 px, the bound the direct quadrature is held to
(``tests/test_profiles.py`` measures it against the exact table).  A star's stamp is one gather from its cell's stack, mixed
with the coefficients ``[1, d_k, d_k d_l (1/2 on the diagonal)]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from psfax.fitting.psf import PSF, register_psf, static
from psfax.fitting.table import TableGrid, fine_samples, interpolate_mixture, node_fields, polyphase, table_linearise

def shape_cells(shape_u: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Centres (A, k) of the cells holding the shapes (N, k), and each star's cell index (N,)."""
    shape_u = np.asarray(shape_u, float)
    lo = shape_u.min(axis=0)
    cell = np.floor((shape_u - lo) / (2 * radius)).astype(np.int64)
    used, index = np.unique(cell, axis=0, return_inverse=True)
    return lo + (used + 0.5) * 2 * radius, index.reshape(-1)


def _pairs(k: int):
    return np.triu_indices(k)


def taylor_stack(profile, grid: TableGrid, anchor_u):
    """Polyphase tables (n_terms, ...polyphase) of T, dT/du_k and d2T/du_k du_l (k <= l) at ``anchor_u``:
    the shape derivatives of the profile's fine samples, each tabulated (tabulation is linear)."""

    def samples(u):
        return fine_samples(profile, grid, u)

    first = jax.jacfwd(samples)
    second = jax.jacfwd(first)(anchor_u)
    i, j = _pairs(anchor_u.shape[0])
    terms = jnp.concatenate([samples(anchor_u)[None], jnp.moveaxis(first(anchor_u), -1, 0),
                             jnp.moveaxis(second[..., i, j], -1, 0)])
    return jax.vmap(lambda f: polyphase(grid, node_fields(grid, f)))(terms)


def taylor_coefficients(delta):
    """Mixing coefficients ``[1, d_k, c_kl d_k d_l]`` (c = 1/2 for k = l, 1 for k < l) of the stack."""
    k = delta.shape[0]
    i, j = _pairs(k)
    second = jnp.where(i == j, 0.5, 1.0) * delta[i] * delta[j]
    return jnp.concatenate([jnp.ones((1,), delta.dtype), delta, second])


@register_psf
@dataclass(frozen=True)
class Cells(PSF):
    """Known shapes differing per star, each expanded around its shape cell's centre: ``tables``
    (A, n_terms, ...polyphase) of the cells (:func:`taylor_stack`), each star's ``cell`` index and
    its shape's offset ``delta`` (N, k) from that cell's centre."""

    name = "cells"
    star_fields = ("cell", "delta")
    grid: TableGrid = static()
    tables: jnp.ndarray = None
    cell: jnp.ndarray = None
    delta: jnp.ndarray = None

    def _stamps(self, x0, y0):
        return interpolate_mixture(self.grid, self.tables, self.cell, taylor_coefficients(self.delta), x0, y0)

    def linearise(self, v, size):
        return table_linearise(v, self._stamps(v[0], v[1]))

    def evaluate(self, v, size):
        return v[2] * self._stamps(v[0], v[1])[0].ravel() + v[3]

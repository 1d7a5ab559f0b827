"""The fastest PSF kind for a profile held at known shapes (PSF photometry).

Pixel-integrated profiles (but the circular Gaussian, :attr:`Analytic.tabulated`) go through tables:
one shape for all stars -> one :class:`~psfax.fitting.table.Table`; shapes differing per star within
``settings.max_shape_cells`` shape cells, with at least ``settings.min_stars_per_cell`` stars per cell ->
:class:`~psfax.fitting.taylor.Cells`, stars sorted by cell (so that a chunk's tables stay in cache); otherwise
direct integration (:class:`Fixed`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from psfax.fitting.analytic import Analytic, Fixed
from psfax.fitting.problem import Setup
from psfax.fitting.table import Table, build_table
from psfax.fitting.taylor import Cells, shape_cells, taylor_stack
from psfax.programs import persistent_jit


def known_psf(setup: Setup, analytic: Analytic, shape_u: np.ndarray, dtype):
    """The PSF value for the known unconstrained shapes ``shape_u`` (N, k) and the order of the stars it
    expects (an index array to sort them by, or None for their own order)."""
    fixed = Fixed(analytic.profile, analytic.pixel_integrated, analytic.accuracy, jnp.asarray(shape_u, dtype))
    if not analytic.tabulated:
        return fixed, None
    grid = analytic.grid(setup.size)
    if np.all(shape_u == shape_u[0]):
        return Table(grid, _table(analytic, grid, jnp.asarray(shape_u[0], dtype))), None
    centres, cell = shape_cells(shape_u, setup.settings.cell_radius)
    if (len(centres) > setup.settings.max_shape_cells
            or len(shape_u) < setup.settings.min_stars_per_cell * len(centres)):
        return fixed, None
    n_cells = 1 << (len(centres) - 1).bit_length()  # padded to a power of two: few shapes to compile for
    padded = np.pad(centres, ((0, n_cells - len(centres)), (0, 0)), mode="edge")
    tables = _cell_tables(analytic, grid, jnp.asarray(padded, dtype), np.int32(len(centres)))
    order = np.argsort(cell, kind="stable")
    cell = cell[order]
    return Cells(grid, tables, jnp.asarray(cell, jnp.int32), jnp.asarray(shape_u[order] - centres[cell], dtype)), order


@persistent_jit(static_argnames=("analytic", "grid"))
def _table(analytic, grid, shape_u):
    return build_table(analytic.profile, grid, shape_u)


@persistent_jit(static_argnames=("analytic", "grid"))
def _cell_tables(analytic, grid, centres, n_used):
    """Table stacks (:func:`psfax.fitting.taylor.taylor_stack`) of the shape cells ``centres`` (C, k): the
    first ``n_used``; the padding's stay zero (no star reads them), which saves their build."""
    build = partial(taylor_stack, analytic.profile, grid)
    empty = jax.eval_shape(build, centres[0])

    def one(indexed):
        i, centre = indexed
        return jax.lax.cond(i < n_used, build, lambda _: jnp.zeros(empty.shape, empty.dtype), centre)

    return jax.lax.map(one, (jnp.arange(centres.shape[0]), centres))

"""The empirical PSF: an oversampled pixel grid, optionally on an analytic core, varying over the image.

For a star at image position (X, Y) and a pixel whose centre lies at offset
(dx, dy) px from the star, the pixel-integrated PSF per unit flux is

    P(dx, dy; X, Y) = [C(dx, dy) + sum_k b_k(X, Y) G_k(dx, dy)] / s(X, Y)

* ``G_k``: the grid of term k, values at the nodes ``dx = (j - c) h``,
  ``dy = (i - c) h`` with ``h = 1 / oversampling`` (2-4 samples per pixel) and
  ``c`` the centre index; between nodes Keys' six-point cubic convolution, the
  engine's table interpolation (:func:`psfax.fitting.table.interpolate_mixture`).
  The values are already pixel-integrated (the build fits them to pixels), so
  evaluation is a look-up, with no further integration.
* ``C``: the optional analytic core, a pixel-integrated circular Moffat
  (``core = (fwhm, beta)``), tabulated at 16 samples/px by
  :func:`psfax.fitting.table.build_table`; it carries the undersampled peak and
  the grid the residuals.  It is the same everywhere: the variation is the grid's.
* ``b_k``: the monomials of :class:`psfax.fitting.spatial.PolynomialBasis`
  (degree 0-2 in the scaled image coordinates).
* ``s(X, Y) = s_C + sum_k b_k s_k``: the sum of the numerator over the pixels
  whose centres lie within ``norm_radius`` px of a star centred on a pixel
  (``s_C`` and ``s_k`` the sums of the core and of each grid alone).  Hence

  **normalisation**: at every position the PSF sums to one over the pixels
  within ``norm_radius`` (default: (stamp - 1) / 2 px) of a star centred on a
  pixel, so a fitted ``flux`` is the light within that radius; the total is
  ``aperture_correction * flux`` (measured on the image when the model was built, 1.0 when unknown).

The grid covers offsets up to :attr:`psfax.fitting.table.TableGrid.half_extent`
px, enough for stamps of ``stamp_size`` with the star up to
:data:`psfax.fitting.flags.MAX_OFFSET` px off their centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from psfax.errors import InputError
from psfax.fitting.spatial import PolynomialBasis
from psfax.fitting.table import TableGrid, build_table, interpolate, interpolate_mixture, plain_table, polyphase
from psfax.profiles import get_profile
from psfax.programs import persistent_jit

OVERSAMPLINGS = (2, 3, 4)
CORE_OVERSAMPLING = 16


@dataclass(frozen=True, eq=False)
class EmpiricalPSF:
    """An empirical PSF (see the module docstring for the model and its normalisation).

    ``grid``: (terms, L, L) node values per unit flux, ``L = 2 R oversampling + 1`` with
    ``R = TableGrid((stamp_size,) * 2, oversampling).half_extent``; ``basis``: the spatial
    polynomial (its ``size`` is ``terms``); ``core``: Moffat ``(fwhm, beta)`` in px, or None;
    ``meta``: provenance and build statistics (JSON-ready).
    """

    grid: np.ndarray
    oversampling: int
    stamp_size: int
    basis: PolynomialBasis = PolynomialBasis(0)
    core: tuple[float, float] | None = None
    norm_radius: float | None = None
    aperture_correction: float = 1.0
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.oversampling not in OVERSAMPLINGS:
            raise InputError(f"oversampling must be one of {OVERSAMPLINGS}, got {self.oversampling!r}")
        if self.stamp_size < 5 or self.stamp_size % 2 == 0:
            raise InputError(f"stamp_size must be an odd number >= 5, got {self.stamp_size}")
        length = self.table_grid.length
        if np.shape(self.grid) != (self.basis.size, length, length):
            raise InputError(f"grid must have shape {(self.basis.size, length, length)} for {self.basis.size} "
                             f"spatial terms, oversampling {self.oversampling} and stamp {self.stamp_size}, "
                             f"got {np.shape(self.grid)}")
        if self.norm_radius is None:
            object.__setattr__(self, "norm_radius", (self.stamp_size - 1) / 2)
        if not 0 < self.norm_radius <= (self.stamp_size - 1) / 2:
            raise InputError(f"norm_radius must be in (0, {(self.stamp_size - 1) / 2}] px, got {self.norm_radius}")
        object.__setattr__(self, "grid", np.asarray(self.grid, float))

    @property
    def size(self) -> tuple[int, int]:
        return (self.stamp_size, self.stamp_size)

    @property
    def table_grid(self) -> TableGrid:
        """Geometry of the grid (the engine's :class:`TableGrid` at ``oversampling``)."""
        return TableGrid(self.size, self.oversampling)

    @property
    def core_grid(self) -> TableGrid:
        return TableGrid(self.size, CORE_OVERSAMPLING, hermite=True)

    @property
    def degree(self) -> int:
        return self.basis.degree

    def core_table(self, dtype=np.float64):
        """Polyphase table of the core (or None)."""
        if self.core is None:
            return None
        profile = get_profile("moffat")
        fwhm, beta = self.core
        shape_u = jnp.asarray([math.log(fwhm), math.log(beta - 1.0)], dtype)
        return build_table(profile, self.core_grid, shape_u)

    def arrays(self, dtype=None) -> PSFArrays:
        """Device arrays of the model for :func:`psf_stamps` (default dtype: the grid's, float64)."""
        dtype = self.grid.dtype if dtype is None else dtype
        tables = grid_tables(self.table_grid, jnp.asarray(self.grid, dtype))
        core = self.core_table(dtype)
        return PSFArrays(tables, core, self.table_grid, self.core_grid)

    def norm_sums(self) -> tuple[float, np.ndarray]:
        """``(s_C, s_k)``: sums within ``norm_radius`` of the core and of each grid term, star centred."""
        with jax.enable_x64(True):
            return self._norm_sums()

    def _norm_sums(self):
        c = (self.stamp_size - 1) / 2.0
        yy, xx = np.mgrid[:self.stamp_size, :self.stamp_size]
        inside = jnp.asarray(np.hypot(xx - c, yy - c) <= self.norm_radius + 1e-9, float)
        s_c, s_k = _centred_sums(self.arrays(), inside)
        return float(s_c), np.asarray(s_k)

    def weights_at(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Mixture weights at image positions: grid ``b_k / s`` (N, terms) and core ``1 / s`` (N,)."""
        b = self.basis(np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float)))
        s_c, s_k = self.norm_sums()
        s = s_c + b @ s_k
        if np.any(s <= 0):
            raise InputError("the PSF's normalisation sum is not positive at some positions (a bad model)")
        return b / s[:, None], 1.0 / s

    def render(self, x_stamp, y_stamp, x_image, y_image) -> np.ndarray:
        """Stamps (N, S, S) of unit-flux stars at stamp positions ``x_stamp, y_stamp`` (px, (0, 0) the
        first pixel's centre) whose image positions are ``x_image, y_image`` (for the spatial terms)."""
        return self._stamps(x_stamp, y_stamp, x_image, y_image, False)[0]

    def render_with_derivatives(self, x_stamp, y_stamp, x_image, y_image) -> tuple[np.ndarray, ...]:
        """:meth:`render`'s stamps P and their derivatives dP/dx_stamp, dP/dy_stamp, each (N, S, S)."""
        return self._stamps(x_stamp, y_stamp, x_image, y_image, True)

    def _stamps(self, x_stamp, y_stamp, x_image, y_image, derivatives: bool) -> tuple[np.ndarray, ...]:
        coef, core_w = self.weights_at(x_image, y_image)
        n = len(coef)
        xs, ys = (np.broadcast_to(np.asarray(v, float), (n,)) for v in (x_stamp, y_stamp))
        with jax.enable_x64(True):
            arrays = self.arrays()
            out = psf_stamps(arrays, jnp.asarray(coef), jnp.asarray(core_w), jnp.asarray(xs), jnp.asarray(ys),
                             derivatives=derivatives)
            return tuple(np.asarray(a) for a in out)

    def image_at(self, x_image: float, y_image: float) -> np.ndarray:
        """The normalised node values (L, L) at one image position (the PSF sampled ``oversampling``
        times per pixel; a core is sampled at the nodes and added)."""
        coef, core_w = self.weights_at(x_image, y_image)
        values = np.tensordot(coef[0], self.grid, axes=1)
        if self.core is not None:
            values = values + core_w[0] * self.core_at_nodes()
        return values

    def core_at_nodes(self) -> np.ndarray:
        """The core at the grid nodes, (L, L): read from its 16x table (node offsets are multiples of 1/K)."""
        k, big = self.oversampling, CORE_OVERSAMPLING
        grid, cgrid = self.table_grid, self.core_grid
        profile = get_profile("moffat")
        fwhm, beta = self.core
        plain = np.asarray(plain_table(profile, cgrid, jnp.asarray([math.log(fwhm), math.log(beta - 1.0)])))
        offsets = (np.arange(grid.length) - (grid.length - 1) / 2) / k
        index = np.rint(offsets * big + (cgrid.length - 1) / 2).astype(int)
        return plain[np.ix_(index, index)]


@persistent_jit
def _centred_sums(arrays: PSFArrays, inside):
    """Sums over ``inside`` (S, S) of the core and of each grid term for a star on the central pixel."""
    c = (arrays.grid.size[0] - 1) / 2.0
    eye = jnp.eye(arrays.tables.shape[1], dtype=arrays.tables.dtype)
    terms = jax.vmap(lambda e: interpolate_mixture(arrays.grid, arrays.tables, 0, e, c, c)[0])(eye)
    s_k = jnp.sum(terms * inside, axis=(1, 2))
    s_c = 0.0 if arrays.core is None else jnp.sum(interpolate(arrays.core_grid, arrays.core, c, c)[0] * inside)
    return s_c, s_k


class PSFArrays:
    """Device arrays of an :class:`EmpiricalPSF`: the grids' polyphase stack (1, terms, ...) and the
    core's polyphase table (or None), with their geometries (a pytree; the geometries are static)."""

    def __init__(self, tables, core, grid: TableGrid, core_grid: TableGrid):
        self.tables, self.core, self.grid, self.core_grid = tables, core, grid, core_grid


jax.tree_util.register_pytree_node(
    PSFArrays, lambda a: ((a.tables, a.core), (a.grid, a.core_grid)),
    lambda aux, children: PSFArrays(*children, *aux))


def star_psf(arrays: PSFArrays, coef, core_w, x0, y0, derivatives: bool = True):
    """One star's stamp P (S, S) and dP/dx0, dP/dy0 at stamp position (x0, y0), mixture weights ``coef``
    (``(P,)`` alone without ``derivatives``)."""
    grid_part = interpolate_mixture(arrays.grid, arrays.tables, 0, coef, x0, y0, derivatives)
    if arrays.core is None:
        return grid_part
    core_part = interpolate(arrays.core_grid, arrays.core, x0, y0, derivatives)
    return tuple(g + core_w * c for g, c in zip(grid_part, core_part))


@persistent_jit(static_argnames=("derivatives",))
def psf_stamps(arrays: PSFArrays, coef, core_w, x0, y0, derivatives: bool = True):
    """:func:`star_psf` for a batch: (N, S, S) stamps and (with ``derivatives``) dP/dx0, dP/dy0."""
    return jax.vmap(lambda *a: star_psf(arrays, *a, derivatives))(coef, core_w, x0, y0)


@persistent_jit(static_argnames=("grid",))
def grid_tables(grid: TableGrid, values):
    """The polyphase stack (1, terms, ...) of node values (terms, L, L), as one compiled program."""
    return jax.vmap(partial(polyphase, grid))(values[:, None, None])[None]


def grid_stamps(grid: TableGrid, values, coef, x0, y0):
    """The grid part only, ``sum_k coef_nk G_k`` at each star (N, S, S): linear in ``values`` (terms, L, L),
    the operator the build inverts."""
    tables = grid_tables(grid, values)
    return jax.vmap(lambda c, x, y: interpolate_mixture(grid, tables, 0, c, x, y)[0])(coef, x0, y0)

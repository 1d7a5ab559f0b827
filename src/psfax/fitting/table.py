"""Tabulated pixel-integrated PSF, for fits where the shape is shared or fixed.

The pixel-integrated PSF ``P(dx, dy) = int_box f(dx + s, dy + t) ds dt`` (box
of one pixel, ``f`` the unit-flux profile) is a smooth function of the offset
(dx, dy) of a pixel centre from the star.  It is tabulated once per shape on a
grid of spacing ``h = 1 / oversampling`` px:

1. sample ``f`` on a grid of spacing ``h`` reaching half a pixel beyond the
   table;
2. integrate over the unit box by composite Boole's rule along y, then along
   x (a sum of ``oversampling + 1`` shifted, weighted copies per axis).

A star at (x0, y0) then needs, for every pixel centre ``i``, ``P(i - x0)``.
All pixels of a stamp share the sub-grid phase of ``x0``, so one set of six
Keys cubic-convolution weights per axis (and their derivatives for d/dx0)
serves the whole stamp: ``P = sum_ab wy_a wx_b T[ky + a, kx + b]``
(see :func:`polyphase` for the memory layout that makes this one small matrix product).  With
16 samples per pixel the error stays below 2e-5 of the peak pixel down to
FWHM = 0.8 px (``tests/test_profiles.py`` measures it against direct
quadrature).  The table reaches centres up to ``margin`` px from the stamp
centre, as far as a fit may move them (:data:`psfax.fitting.flags.MAX_OFFSET`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from psfax.fitting.flags import MAX_OFFSET
from psfax.fitting.params import shape_from_u
from psfax.fitting.psf import PSF, register_psf, static
from psfax.profiles import Profile


@dataclass(frozen=True)
class TableGrid:
    """Geometry of a PSF table for stamps of ``size``."""

    size: tuple[int, int]
    oversampling: int = 16
    margin: int = int(MAX_OFFSET)

    @property
    def half_extent(self) -> int:
        """Table covers offsets in [-R, R] px with R = (stamp - 1) / 2 + margin + 1."""
        return (max(self.size) - 1) // 2 + self.margin + 1

    @property
    def length(self) -> int:
        return 2 * self.half_extent * self.oversampling + 1


def _boole_weights(oversampling: int) -> np.ndarray:
    """Composite Boole weights on ``oversampling + 1`` points spanning one pixel (sum 1)."""
    if oversampling % 4:
        raise ValueError("oversampling must be a multiple of 4 (Boole's rule)")
    w = np.zeros(oversampling + 1)
    for start in range(0, oversampling, 4):
        w[start:start + 5] += np.array([7.0, 32.0, 12.0, 32.0, 7.0])
    return w / w.sum()


def _box_integrate(fine, weights: np.ndarray, axis: int):
    """Integrate fine samples over a sliding one-pixel box along ``axis``: ``sum_j w_j f[i + j]``."""
    n = fine.shape[axis] - len(weights) + 1
    return sum(w * jax.lax.slice_in_dim(fine, j, j + n, axis=axis) for j, w in enumerate(weights))


def build_table(profile: Profile, grid: TableGrid, shape_u):
    """Polyphase table (V, V, C, C) of the pixel-integrated unit-flux PSF (see :func:`polyphase`)."""
    return polyphase(grid, plain_table(profile, grid, shape_u))


def plain_table(profile: Profile, grid: TableGrid, shape_u):
    """Table (L, L) of the pixel-integrated unit-flux PSF; offset of index j is ``(j - c) h``."""
    k, n = grid.oversampling, grid.length
    h = 1.0 / k
    dtype = shape_u.dtype
    fine = (jnp.arange(n + k, dtype=dtype) - (n + k - 1) / 2) * h
    f = profile.value(fine[None, :], fine[:, None], shape_from_u(profile, shape_u))
    w = _boole_weights(k)
    return _box_integrate(_box_integrate(f, w, 0), w, 1)


def polyphase(grid: TableGrid, table):
    """Re-lay a table (L, L) as ``E[v, u, c, d] = T[c K + v, d K + u]`` for v, u < K + TAPS - 1.

    The taps of a whole stamp (six consecutive indices per axis, repeated every
    K entries) then form one block ``E[p:p+6, s:s+6, q:q+ny, r:r+nx]`` (a
    slice, not a scattered gather): for each of the 36 taps a (ny, nx) plane
    of the stamp, so interpolation is one (3 x 36) by (36 x pixels) matrix
    product.  (Phase-major: the slice copies runs of nx values; with the taps
    innermost it would copy runs of 6, a quarter slower on the CPU.)
    """
    k, n = grid.oversampling, grid.length
    coarse = -(-n // k)
    padded = coarse * k + k + TAPS
    t = jnp.pad(table, ((0, padded - n), (0, padded - n)))
    idx = jnp.arange(k + TAPS - 1)[:, None] + jnp.arange(coarse)[None, :] * k  # (V, C)
    return t[idx[:, None, :, None], idx[None, :, None, :]]


TAPS = 6
"""Interpolation taps per axis: Keys' six-point cubic convolution (error O(h^4))."""


def _keys6(d):
    """Keys' six-point kernel at distances |d| (1981, IEEE ASSP 29, 1153)."""
    a = jnp.abs(d)
    inner = (4.0 / 3.0) * a**3 - (7.0 / 3.0) * a**2 + 1.0
    middle = -(7.0 / 12.0) * a**3 + 3.0 * a**2 - (59.0 / 12.0) * a + 2.5
    outer = (1.0 / 12.0) * a**3 - (2.0 / 3.0) * a**2 + 1.75 * a - 1.5
    return jnp.where(a <= 1.0, inner, jnp.where(a <= 2.0, middle, jnp.where(a <= 3.0, outer, 0.0)))


def _keys_weights(s):
    """Weights of taps -2 .. 3 at fraction s in [0, 1), and their derivatives d/ds."""
    taps = jnp.arange(-2, 4, dtype=s.dtype)
    return jax.jvp(lambda t: _keys6(t - taps), (s,), (jnp.ones_like(s),))


def axis_taps(grid: TableGrid, c0, n_pix: int):
    """First tap index, Keys weights and d(weights)/d(c0) along one axis for a star at c0."""
    k = grid.oversampling
    centre = (grid.length - 1) / 2
    t = (-c0) * k + centre  # table index of pixel 0's offset (0 - c0)
    lo, hi = 2.0, grid.length - 4.0 - (n_pix - 1) * k
    t = jnp.clip(t, lo, hi)
    j0 = jnp.floor(t)
    w, dw = _keys_weights(t - j0)
    return j0.astype(jnp.int32) - 2, w, -k * dw


def _stamp_taps(grid: TableGrid, x0, y0):
    """Start of the tap block ``(ky % K, kx % K, ky // K, kx // K)`` and the (3, 36) weights of
    P, dP/dx0 and dP/dy0 (outer products of the per-axis tap weights)."""
    ny, nx = grid.size
    k = grid.oversampling
    jy, wy, dwy = axis_taps(grid, y0, ny)
    jx, wx, dwx = axis_taps(grid, x0, nx)
    w = jnp.stack([jnp.outer(wy, wx), jnp.outer(wy, dwx), jnp.outer(dwy, wx)]).reshape(3, TAPS * TAPS)
    return (jy % k, jx % k, jy // k, jx // k), w


def _apply_taps(block, w):
    """Contract a tap block (..., TAPS, TAPS, ny, nx) with weights (3, 36): three stamps (..., ny, nx)."""
    lead, size = block.shape[:-4], block.shape[-2:]
    out = w @ block.reshape(lead + (TAPS * TAPS, size[0] * size[1]))
    return tuple(out[..., i, :].reshape(lead + size) for i in range(3))


def interpolate(grid: TableGrid, tables, x0, y0):
    """Stamps (..., ny, nx) of a stack of polyphase tables for a star at (x0, y0), and d/dx0, d/dy0.

    ``P = sum_ab wy_a wx_b T[ky + a, kx + b]`` for every pixel at once: the
    outer products of the tap weights (value, d/dx0, d/dy0) contract the
    gathered block's last two axes.  Returns ``(P, dP/dx0, dP/dy0)`` with the
    leading axes of ``tables``.
    """
    start, w = _stamp_taps(grid, x0, y0)
    lead = tables.shape[:-4]
    zero = jnp.zeros((), jnp.int32)
    block = jax.lax.dynamic_slice(tables, (zero,) * len(lead) + start, lead + (TAPS, TAPS) + grid.size)
    return _apply_taps(block, w)


def interpolate_mixture(grid: TableGrid, tables, index, coefficients, x0, y0):
    """``sum_c coefficients_c tables[index, c]`` interpolated at (x0, y0), and d/dx0, d/dy0.

    ``tables``: (A, C, ...polyphase); the mixture is formed on the gathered
    block only (C x 36 x ny x nx values), before the taps are applied.
    """
    start, w = _stamp_taps(grid, x0, y0)
    n_mix = tables.shape[1]
    zero = jnp.zeros((), jnp.int32)
    index = jnp.asarray(index, jnp.int32)
    block = jax.lax.dynamic_slice(tables, (index, zero) + start, (1, n_mix, TAPS, TAPS) + grid.size)[0]
    mixed = sum(coefficients[c] * block[c] for c in range(n_mix))  # (elementwise: faster than a dot here)
    return _apply_taps(mixed, w)


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def table_psf(grid: TableGrid, table, x0, y0):
    """Stamp (ny, nx) of one polyphase table for a star at (x0, y0), differentiable.

    Its derivative rule reuses the gathered block (``interpolate`` returns
    d/dx0 and d/dy0 with the value), so a Jacobian costs one gather.
    """
    return interpolate(grid, table, x0, y0)[0]


@table_psf.defjvp
def _table_psf_jvp(grid, primals, tangents):
    table, x0, y0 = primals
    d_table, d_x0, d_y0 = tangents
    value, dx, dy = interpolate(grid, table, x0, y0)
    return value, dx * d_x0 + dy * d_y0 + interpolate(grid, d_table, x0, y0)[0]


def table_linearise(v, stamps):
    """Model (M,) and Jacobian (M, 4) from the PSF stamp and its d/dx0, d/dy0: one gather gives all,
    ``d m / d[x0, y0, flux, bkg] = [flux dP/dx0, flux dP/dy0, P, 1]``."""
    p, px, py = (a.ravel() for a in stamps)
    return v[2] * p + v[3], jnp.stack([v[2] * px, v[2] * py, p, jnp.ones_like(p)], axis=1)


@register_psf
@dataclass(frozen=True)
class Table(PSF):
    """One known PSF for every star, tabulated (``table``: polyphase, from :func:`build_table`)."""

    name = "table"
    grid: TableGrid = static()
    table: jnp.ndarray = None

    def linearise(self, v, size):
        return table_linearise(v, interpolate(self.grid, self.table, v[0], v[1]))

    def evaluate(self, v, size):
        return v[2] * table_psf(self.grid, self.table, v[0], v[1]).ravel() + v[3]

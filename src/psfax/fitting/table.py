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
All pixels of a stamp share the sub-grid phase of ``x0``, so one set of tap
weights per axis (and their derivatives for d/dx0) serves the whole stamp:
``P = sum_ab wy_a wx_b T[ky + a, kx + b]`` (see :func:`polyphase` for the
memory layout that makes this one small matrix product).  Two interpolation
schemes (:class:`TableGrid`):

* **Hermite** (analytic profiles): the table also holds ``dT/dx``, ``dT/dy`` and
  ``d2T/dxdy`` (differences of ``f`` at the box edges, :func:`node_fields`), and a
  pixel reads the bicubic Hermite interpolant of its 2 x 2 nodes: 16 table
  entries per pixel, error O(h^4).
* **Keys** (tables of values only, such as an empirical PSF's grid): Keys'
  six-point cubic convolution, 36 entries per pixel, error O(h^4).  Its
  weights are separable and a stamp's pixels read nodes ``K`` apart, so a
  stamp's values alone (rendering) are computed in two passes
  (:func:`_keys_separable`) on the node values themselves, read back from the
  polyphase layout: 3-5x faster on the CPU than the one matrix product, whose
  gathered block repeats each node ``(6 / K)^2`` times.  With the derivatives
  (a fit's Jacobian, inside the batched LM loop) the matrix product measured
  faster (the grouped photometry of the real ZTF quadrant: 0.27-0.32 s
  against 0.43 s for its isolated fits) and is kept.

With 16 samples per pixel either stays below 2e-5 of the peak pixel down to
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
    hermite: bool = False
    """True: nodes hold values and derivatives, read by bicubic Hermite interpolation; False: values,
    read by Keys' six-point cubic convolution."""

    @property
    def taps(self) -> int:
        """Nodes per axis that one pixel reads."""
        return 2 if self.hermite else KEYS_TAPS

    @property
    def fields(self) -> int:
        """Values per node and axis: the value and, for Hermite, the derivative along that axis."""
        return 2 if self.hermite else 1

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
    """Polyphase table of the pixel-integrated unit-flux PSF (see :func:`polyphase`)."""
    return polyphase(grid, node_fields(grid, fine_samples(profile, grid, shape_u)))


def fine_samples(profile: Profile, grid: TableGrid, shape_u):
    """The profile on the fine grid (L + K, L + K) of spacing ``h``, reaching half a pixel beyond the
    table (axis 0: y, axis 1: x)."""
    k, n = grid.oversampling, grid.length
    fine = (jnp.arange(n + k, dtype=shape_u.dtype) - (n + k - 1) / 2) / k
    return profile.value(fine[None, :], fine[:, None], shape_from_u(profile, shape_u))


def _edge_difference(fine, k: int, axis: int):
    """``f(s + 1/2) - f(s - 1/2)`` along ``axis``: the exact derivative of the one-pixel box integral."""
    n = fine.shape[axis] - k
    return jax.lax.slice_in_dim(fine, k, k + n, axis=axis) - jax.lax.slice_in_dim(fine, 0, n, axis=axis)


def _pixel_integrals(fine, k: int):
    """The fine samples integrated over the one-pixel box centred on each table node (Boole, y then x)."""
    w = _boole_weights(k)
    return _box_integrate(_box_integrate(fine, w, 0), w, 1)


def plain_table(profile: Profile, grid: TableGrid, shape_u):
    """Table (L, L) of the pixel-integrated unit-flux PSF; offset of index j is ``(j - c) h``."""
    return _pixel_integrals(fine_samples(profile, grid, shape_u), grid.oversampling)


def node_fields(grid: TableGrid, fine):
    """What the grid's interpolation reads at each node, ``(F, F, L, L)``, from the profile's fine samples
    (:func:`fine_samples`; linear in them): for Keys (F = 1) the plain table; for Hermite (F = 2)
    ``[[T, h dT/dx], [h dT/dy, h^2 d2T/dxdy]]``, derivatives per table index.

    The derivative of a box integral along its axis is the difference of the profile at the box's two
    edges, which lie on the fine grid: ``dT/dx`` integrates ``f(x + 1/2) - f(x - 1/2)`` along y (Boole),
    ``d2T/dxdy`` is the difference of the four corners."""
    k = grid.oversampling
    t = _pixel_integrals(fine, k)
    if not grid.hermite:
        return t[None, None]
    w, h = _boole_weights(k), 1.0 / k
    t_x = _box_integrate(_edge_difference(fine, k, 1), w, 0)
    t_y = _box_integrate(_edge_difference(fine, k, 0), w, 1)
    t_xy = _edge_difference(_edge_difference(fine, k, 0), k, 1)
    return jnp.stack([jnp.stack([t, h * t_x]), jnp.stack([h * t_y, h * h * t_xy])])


def polyphase(grid: TableGrid, fields):
    """Re-lay node fields (F, F, L, L) as ``E[v, f, u, g, c, d] = fields[f, g, c K + v, d K + u]`` for
    v, u < K + taps - 1.

    The taps of a whole stamp (``taps`` consecutive indices per axis, repeated every
    K entries) then form one block ``E[p:p+taps, :, s:s+taps, :, q:q+ny, r:r+nx]`` (a
    slice, not a scattered gather): for each tap and field a (ny, nx) plane
    of the stamp, so interpolation is one (3 x n) by (n x pixels) matrix
    product, ``n = (taps F)^2``.  (Phase-major: the slice copies runs of nx values; with the taps
    innermost it would copy runs of 6, a quarter slower on the CPU.)
    """
    k, n = grid.oversampling, grid.length
    coarse = -(-n // k)
    padded = coarse * k + k + grid.taps
    t = jnp.pad(fields, ((0, 0), (0, 0), (0, padded - n), (0, padded - n)))
    idx = jnp.arange(k + grid.taps - 1)[:, None] + jnp.arange(coarse)[None, :] * k  # (V, C)
    return jnp.transpose(t[:, :, idx[:, None, :, None], idx[None, :, None, :]], (2, 0, 3, 1, 4, 5))


KEYS_TAPS = 6
"""Interpolation taps per axis of Keys' six-point cubic convolution (error O(h^4))."""


def _keys6(d):
    """Keys' six-point kernel at distances |d| (1981, IEEE ASSP 29, 1153)."""
    a = jnp.abs(d)
    inner = (4.0 / 3.0) * a**3 - (7.0 / 3.0) * a**2 + 1.0
    middle = -(7.0 / 12.0) * a**3 + 3.0 * a**2 - (59.0 / 12.0) * a + 2.5
    outer = (1.0 / 12.0) * a**3 - (2.0 / 3.0) * a**2 + 1.75 * a - 1.5
    return jnp.where(a <= 1.0, inner, jnp.where(a <= 2.0, middle, jnp.where(a <= 3.0, outer, 0.0)))


def _keys_weights(s):
    """Weights (6, 1) of taps -2 .. 3 at fraction s in [0, 1)."""
    return _keys6(s - jnp.arange(-2, 4, dtype=s.dtype))[:, None]


def _hermite_weights(s):
    """Cubic Hermite weights (2, 2) at fraction s in [0, 1): ``[node, value or slope]``,
    ``f(s) = h00 f_0 + h10 f'_0 + h01 f_1 + h11 f'_1``."""
    s2, s3 = s * s, s * s * s
    return jnp.stack([jnp.stack([2.0 * s3 - 3.0 * s2 + 1.0, s3 - 2.0 * s2 + s]),
                      jnp.stack([3.0 * s2 - 2.0 * s3, s3 - s2])])


def axis_taps(grid: TableGrid, c0, n_pix: int):
    """First tap index, weights (taps, fields) and d(weights)/d(c0) along one axis for a star at c0."""
    k = grid.oversampling
    before = (grid.taps - 2) // 2  # taps before the node at or below the point: Keys 2, Hermite 0
    t = (-c0) * k + (grid.length - 1) / 2  # table index of pixel 0's offset (0 - c0)
    t = jnp.clip(t, before, grid.length - grid.taps + before - (n_pix - 1) * k)
    j0 = jnp.floor(t)
    kernel = _hermite_weights if grid.hermite else _keys_weights
    w, dw = jax.jvp(kernel, (t - j0,), (jnp.ones_like(t),))
    return j0.astype(jnp.int32) - before, w, -k * dw


def _stamp_taps(grid: TableGrid, x0, y0, derivatives: bool = True):
    """Start of the tap block ``(ky % K, 0, kx % K, 0, ky // K, kx // K)`` and the (3, n) weights of
    P, dP/dx0 and dP/dy0 (outer products of the per-axis tap weights, in the block's order); (1, n), P's
    only, without ``derivatives``."""
    ny, nx = grid.size
    k = grid.oversampling
    jy, wy, dwy = axis_taps(grid, y0, ny)
    jx, wx, dwx = axis_taps(grid, x0, nx)
    n = (grid.taps * grid.fields) ** 2
    pairs = ((wy, wx), (wy, dwx), (dwy, wx)) if derivatives else ((wy, wx),)
    w = jnp.stack([jnp.multiply.outer(a, b) for a, b in pairs])
    zero = jnp.zeros((), jnp.int32)
    return (jy % k, zero, jx % k, zero, jy // k, jx // k), w.reshape(len(pairs), n)


def _block_shape(grid: TableGrid):
    return (grid.taps, grid.fields, grid.taps, grid.fields) + grid.size


def _apply_taps(block, w):
    """Contract a tap block (..., taps, F, taps, F, ny, nx) with weights (m, n): m stamps (..., ny, nx)."""
    lead, size = block.shape[:-6], block.shape[-2:]
    out = w @ block.reshape(lead + (w.shape[1], size[0] * size[1]))
    return tuple(out[..., i, :].reshape(lead + size) for i in range(w.shape[0]))


def keys_nodes(grid: TableGrid, tables):
    """The node values (..., C K, C K) of a stack of Keys polyphase tables (..., V, 1, V, 1, C, C):
    ``G[c K + v, d K + u] = E[v, 0, u, 0, c, d]`` for the first K phases (every node of the table, and
    zeros to the padded length)."""
    k, c = grid.oversampling, tables.shape[-1]
    first = tables[..., :k, 0, :k, 0, :, :]  # (..., v, u, c, d)
    lead = first.ndim - 4
    order = tuple(range(lead)) + (lead + 2, lead, lead + 3, lead + 1)  # (..., c, v, d, u)
    return jnp.transpose(first, order).reshape(first.shape[:lead] + (c * k, c * k))


def _keys_separable(grid: TableGrid, nodes, x0, y0, coefficients=None):
    """Keys interpolation of node values (..., N, N) for a star at (x0, y0) in two passes: pixel ``(i, j)``
    reads ``P = sum_a wy_a sum_b wx_b G[jy + a + K i, jx + b + K j]``; along x on the rows the stamp needs,
    then along y.  ``coefficients`` (C,): ``nodes`` is (C, N, N) and the block the stamp reads is mixed
    first.  Returns ``(P,)``."""
    ny, nx = grid.size
    k, taps = grid.oversampling, grid.taps
    jy, wy, _ = axis_taps(grid, y0, ny)
    jx, wx, _ = axis_taps(grid, x0, nx)
    lead = nodes.shape[:-2]
    zero = jnp.zeros((), jnp.int32)
    block = jax.lax.dynamic_slice(nodes, (zero,) * len(lead) + (jy, jx),
                                  lead + (k * (ny - 1) + taps, k * (nx - 1) + taps))
    if coefficients is not None:
        block = sum(coefficients[c] * block[c] for c in range(block.shape[0]))

    rows = sum(wx[b, 0] * block[..., :, b:b + k * (nx - 1) + 1:k] for b in range(taps))
    return (sum(wy[a, 0] * rows[..., a:a + k * (ny - 1) + 1:k, :] for a in range(taps)),)


def interpolate(grid: TableGrid, tables, x0, y0, derivatives: bool = True):
    """Stamps (..., ny, nx) of a stack of polyphase tables for a star at (x0, y0), and d/dx0, d/dy0.

    ``P = sum_ab wy_a wx_b T[ky + a, kx + b]`` for every pixel at once: the
    outer products of the tap weights (value, d/dx0, d/dy0) contract the
    gathered block's tap and field axes (Keys tables, values alone: :func:`_keys_separable`).  Returns ``(P, dP/dx0,
    dP/dy0)`` with the leading axes of ``tables`` (``(P,)`` without ``derivatives``).
    """
    if not (grid.hermite or derivatives):
        return _keys_separable(grid, keys_nodes(grid, tables), x0, y0)
    start, w = _stamp_taps(grid, x0, y0, derivatives)
    lead = tables.shape[:-6]
    zero = jnp.zeros((), jnp.int32)
    block = jax.lax.dynamic_slice(tables, (zero,) * len(lead) + start, lead + _block_shape(grid))
    return _apply_taps(block, w)


def interpolate_mixture(grid: TableGrid, tables, index, coefficients, x0, y0, derivatives: bool = True):
    """``sum_c coefficients_c tables[index, c]`` interpolated at (x0, y0), and d/dx0, d/dy0 (a 1-tuple of the
    value alone without ``derivatives``, for rendering; Keys tables: :func:`_keys_separable`).

    ``tables``: (A, C, ...polyphase); the mixture is formed on the gathered
    block only (C x n x ny x nx values), before the taps are applied.
    """
    n_mix = tables.shape[1]
    zero = jnp.zeros((), jnp.int32)
    index = jnp.asarray(index, jnp.int32)
    if not (grid.hermite or derivatives):
        nodes = jax.lax.dynamic_index_in_dim(keys_nodes(grid, tables), index, keepdims=False)  # (C, N, N)
        return _keys_separable(grid, nodes, x0, y0, coefficients)
    start, w = _stamp_taps(grid, x0, y0, derivatives)
    block = jax.lax.dynamic_slice(tables, (index, zero) + start, (1, n_mix) + _block_shape(grid))[0]
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


def shift_into(stamps, ox, oy, size):
    """Each (S, S) array of ``stamps`` placed with its first pixel at pixel ``(ox, oy)`` (integers, x the
    column) of a zero array of ``size = (ny, nx)``; what falls outside is dropped.  A stamp evaluated around a
    star's nearest pixel and shifted so is that star's model on any footprint, zero beyond the stamp."""
    ny, nx = size
    s = stamps[0].shape[0]
    rows = jnp.arange(ny) - oy.astype(jnp.int32)
    cols = jnp.arange(nx) - ox.astype(jnp.int32)
    inside = ((rows >= 0) & (rows < s))[:, None] & ((cols >= 0) & (cols < s))[None, :]
    rows, cols = jnp.clip(rows, 0, s - 1), jnp.clip(cols, 0, s - 1)
    return tuple(jnp.where(inside, a[rows][:, cols], 0.0) for a in stamps)


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

"""The grid's normal equations, assembled over all stars at once and solved directly (Cholesky).

For stars held at positions (x_n, y_n) (stamp pixels), amplitudes and spatial weights folded into
``coef_nk = a_n b_k(X_n, Y_n)``, the grid part of the model is separable per term:

    m_n = sum_k coef_nk A_y(y_n)^T G_k A_x(x_n)

with ``A(c)`` the (B, S) interpolation matrix of one axis (``A[p, i]`` the Keys weight with which node p
enters pixel i, :func:`psfax.fitting.table.axis_taps`), over the B nodes of the **solve box**: offsets up to
``(stamp - 1) / 2 + 2`` px on each axis (every node a star within 0.5 px of its stamp centre reaches; nodes
outside the box are held at zero).  Node p only meets nodes p + d with ``|d| <= 5`` in a pixel (six taps),
so ``A^T W A`` is banded and

    N[(k, p, q), (l, p + d, q + e)] = sum_n coef_nk coef_nl sum_ij w_nij A_y[p, i] A_y[p + d, i] A_x[q, j] A_x[q + e, j]

is a sum over the stars of each star's own band matrix ``sum_ij w_nij E_y E_x`` weighted by ``coef_nk coef_nl`` (k
<= l; the others are its transpose): the star products are formed once for all term pairs. Ordered by node row p,
the matrix of the box (``terms B^2`` unknowns: 4107 for 15-px stamps, oversampling 2, degree 1) is
block-tridiagonal in blocks of ``ROWS = 5`` rows; a ridge ``ridge * mean(diag N)`` (the mean over the constrained
nodes) is added on the nodes no pixel constrains: those beyond ``(stamp - 1) / 2 + 1`` px on either axis and any
with a zero diagonal; it pulls them to zero (no core) or to the core alone. Inside that box nothing is regularised.
The system is solved exactly by a block Cholesky factorisation (two scans over the ``ceil(B / 5)`` blocks); a
non-finite solution raises :class:`SingularGridError`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from psfax.errors import InputError
from psfax.fitting.table import KEYS_TAPS, TableGrid, axis_taps
from psfax.programs import persistent_jit

BAND = KEYS_TAPS - 1
"""Largest node distance coupled by one pixel (six taps: 0 .. 5)."""


class SingularGridError(InputError):
    """The grid's normal equations have no finite solution (too few usable pixels for the grid)."""


def solve_box(grid: TableGrid) -> tuple[int, int]:
    """``(first, B)``: table index of the box's first node per axis and its nodes per axis."""
    half = ((grid.size[0] - 1) // 2 + 2) * grid.oversampling
    centre = (grid.length - 1) // 2
    return centre - half, 2 * half + 1


def axis_matrix(grid: TableGrid, c0, n_pix: int):
    """(B, S) interpolation matrix of one axis for a star at ``c0``: pixel i reads ``sum_p A[p, i] g[p]``."""
    first, nodes = solve_box(grid)
    j0, w, _ = axis_taps(grid, c0, n_pix)  # a grid of values: one field, w (6, 1)
    node = j0 - first + grid.oversampling * jnp.arange(n_pix)[None, :] + jnp.arange(KEYS_TAPS)[:, None]  # (6, S)
    hits = node[:, None, :] == jnp.arange(nodes)[None, :, None]  # (6, B, S)
    return jnp.sum(jnp.where(hits, w[:, 0, None, None], 0.0), axis=0)


def _tap_pairs(grid: TableGrid, c0, n_pix: int):
    """One axis of a star at ``c0`` in the coarse form of the band: ``(s, P)`` with ``P[d, a, b] = w_t w_(t + d)``
    the products of the star's Keys tap weights ``w`` (zero off the six taps), ``t = K a + b - r``.

    Pixel i reads node ``p = j + K i + t`` (``j`` its first tap, box index; t = 0 .. 5); writing ``j = K s + r``
    (0 <= r < K), ``p = K (s + i + a) + b`` with ``K a + b = r + t``: node p is coarse node ``I = p // K`` at phase
    ``b = p % K``, reached by pixel ``i = I - s - a``.  ``P``: (2 BAND + 1, A, K), ``A = ceil((K + 5) / K)``."""
    k = grid.oversampling
    first, _ = solve_box(grid)
    j0, w, _ = axis_taps(grid, c0, n_pix)
    s, r = jnp.floor_divide(j0 - first, k), jnp.mod(j0 - first, k)
    n_a = -(-(k + KEYS_TAPS - 1) // k)
    taps = jnp.arange(n_a * k) - r  # t for each (a, b), flattened

    def weight(t):
        return jnp.where((t >= 0) & (t < KEYS_TAPS), w[jnp.clip(t, 0, KEYS_TAPS - 1), 0], 0.0)

    pairs = jnp.stack([weight(taps) * weight(taps + d) for d in range(-BAND, BAND + 1)])  # (D, A K)
    return s, pairs.reshape(2 * BAND + 1, n_a, k)


def coarse_nodes(grid: TableGrid) -> int:
    """Coarse nodes per axis of the box, ``ceil(B / K)``: node ``p = K I + b`` is coarse node I at phase b."""
    return -(-solve_box(grid)[1] // grid.oversampling)


def star_factors(grid: TableGrid, w, x0, y0):
    """One star's band matrix ``M[d, p, e, q] = sum_ij w_ij E_y[d, p, i] E_x[e, q, j]`` (the module docstring;
    ``E[d, p, i] = A[p, i] A[p + d, i]``) as two factors ``(Py, T)``, ``M = sum_a Py[d, a, b] T[a, I, e, c, J]``
    in phase-major layout ``(d, p % K, p // K, e, q % K, q // K)`` (``b = p % K``, ``I = p // K``, C =
    :func:`coarse_nodes` per axis; entries at ``p >= B``, or with ``p + d`` off the box, are not used).

    Formed tap by tap: a pixel reads six nodes per axis, so of the ``B S`` products of a dense band row only
    ``6 / K`` are not zero.  With the coarse form of :func:`_tap_pairs` per axis, ``M[d, b, I, e, c, J] =
    sum_(a, a') Py[d, a, b] Px[e, a', c] w[I - s_y - a, J - s_x - a']``: ``T`` is the sum over a' on the pixel
    rows gathered along y; the sum over a is left to the caller, who sums over the stars in the same product.
    ``Py``: (2 BAND + 1, A, K); ``T``: (A, C, 2 BAND + 1, K, C)."""
    size = grid.size[0]
    coarse = coarse_nodes(grid)
    sy, py = _tap_pairs(grid, y0, size)
    sx, px = _tap_pairs(grid, x0, size)
    n_a = py.shape[1]
    a_x = jnp.arange(coarse)[:, None] - sx - jnp.arange(size)[None, :]  # pixel column j reaches J by tap group a_x
    qx = jnp.where((a_x >= 0) & (a_x < n_a), jnp.transpose(px, (0, 2, 1))[:, :, jnp.clip(a_x, 0, n_a - 1)], 0.0)
    rows = jnp.einsum("ij,ecJj->iecJ", w, qx)  # (S, D, K, C): qx[e, c, J, j] = Px[e, a_x[J, j], c]
    pixel = jnp.arange(coarse)[None, :] - sy - jnp.arange(n_a)[:, None]  # (A, C): pixel row i = I - s_y - a
    on_y = (pixel >= 0) & (pixel < size)
    return py, jnp.where(on_y[:, :, None, None, None], rows[jnp.clip(pixel, 0, size - 1)], 0.0)


STAR_CHUNK = 64
"""Stars per step of the band assembly: each step sums its stars' band matrices into every term pair's in one
matrix product over (star, tap group), 64 x 4 deep (0.13 s against 0.20 s with 16 for the real ZTF quadrant's
~1,000 build stars at oversampling 2, 2 cores)."""


@persistent_jit(static_argnames=("grid",))
def normal_bands(grid: TableGrid, w, coef, target, x0, y0):
    """Banded normal matrix ``N[k, l, d, p, e, q]`` (the module docstring; k <= l only, stacked in the
    order of :func:`term_pairs`: the rest is its transpose; the nodes in :func:`star_factors`' phase-major layout)
    and right-hand side ``r[k, p, q] = sum_n coef_nk A_y^T (w target_n) A_x`` over N stars: ``w, target`` (N, S, S), ``coef``
    (N, terms), ``x0, y0`` (N,).  The stars' band matrices (:func:`star_factors`) are summed with weights
    ``coef_nk coef_nl`` into every pair, :data:`STAR_CHUNK` stars at a time."""
    size = grid.size[0]
    n = w.shape[0]
    pairs = jnp.stack([coef[:, k] * coef[:, l] for k, l in term_pairs(coef.shape[1])], axis=1)  # (N, pairs)
    pad = -n % STAR_CHUNK  # padding stars have zero weight
    chunks = [jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)).reshape((-1, STAR_CHUNK) + a.shape[1:])
              for a in (w, x0, y0, pairs)]

    def add_chunk(total, chunk):
        w_c, x_c, y_c, pairs_c = chunk
        py, t = jax.vmap(lambda *a: star_factors(grid, *a))(w_c, x_c, y_c)  # (C, D, A, K), (C, A, I, e, c, J)
        weighted = pairs_c[:, :, None, None, None] * py[:, None]  # (C, pairs, D, A, K)
        return total + jnp.einsum("nkdab,naIecJ->kdbIecJ", weighted, t), None

    width, k, coarse = 2 * BAND + 1, grid.oversampling, coarse_nodes(grid)
    shape = (pairs.shape[1], width, k, coarse, width, k, coarse)
    bands, _ = jax.lax.scan(add_chunk, jnp.zeros(shape, w.dtype), chunks)
    ay = jax.vmap(lambda c: axis_matrix(grid, c, size))(y0)  # (N, B, S)
    ax = jax.vmap(lambda c: axis_matrix(grid, c, size))(x0)
    rhs = jnp.einsum("nk,npi,nij,nqj->kpq", coef, ay, w * target, ax)
    return bands, rhs


def constrained_nodes(grid: TableGrid) -> np.ndarray:
    """(B, B) True at the box nodes within ``(stamp - 1) / 2 + 1`` px of the centre on both axes."""
    first, nodes = solve_box(grid)
    offsets = (first + np.arange(nodes) - (grid.length - 1) / 2) / grid.oversampling
    near = np.abs(offsets) <= (grid.size[0] - 1) / 2 + 1
    return near[:, None] & near[None, :]


ROWS = BAND
"""Node rows per block of the block-tridiagonal factorisation: rows p and p + d with |d| <= BAND lie in the
same block or in neighbouring ones."""


def term_pairs(terms: int) -> list[tuple[int, int]]:
    """The term pairs (k, l), k <= l, whose bands :func:`normal_bands` computes."""
    return [(k, l) for k in range(terms) for l in range(k, terms)]


@functools.cache
def _block_indices(terms: int, nodes: int, oversampling: int):
    """Where each band entry goes in the block-tridiagonal matrix: (flat index into the bands of
    :func:`normal_bands`, block, row, column) of the diagonal blocks and of the blocks above them (int32).
    Unknown (k, p, q) sits in block ``p // ROWS`` at ``((p % ROWS) B + q) terms + k``."""
    k, l, d, p, e, q = np.meshgrid(np.arange(terms), np.arange(terms), np.arange(-BAND, BAND + 1), np.arange(nodes),
                                   np.arange(-BAND, BAND + 1), np.arange(nodes), indexing="ij")
    ok = (p + d >= 0) & (p + d < nodes) & (q + e >= 0) & (q + e < nodes)
    pair = np.zeros((terms, terms), int)
    for i, (a, b) in enumerate(term_pairs(terms)):
        pair[a, b] = pair[b, a] = i
    lower = k > l  # N[(k, p, q), (l, p + d, q + e)] = N[(l, p + d, q + e), (k, p, q)]: read the stored k <= l band
    width, kk, coarse = 2 * BAND + 1, oversampling, -(-nodes // oversampling)
    row_node, col_node = np.where(lower, p + d, p), np.where(lower, q + e, q)
    flat = np.ravel_multi_index((pair[k, l], np.where(lower, BAND - d, BAND + d), row_node % kk, row_node // kk,
                                 np.where(lower, BAND - e, BAND + e), col_node % kk, col_node // kk),
                                (len(term_pairs(terms)), width, kk, coarse, width, kk, coarse), mode="clip")
    block, col_block = p // ROWS, (p + d) // ROWS
    row = ((p % ROWS) * nodes + q) * terms + k
    col = (((p + d) % ROWS) * nodes + q + e) * terms + l
    out = []
    for shift in (0, 1):
        sel = ok & (col_block == block + shift)
        out.append(tuple(np.asarray(a, np.int32) for a in (flat[sel], block[sel], row[sel], col[sel])))
    return out


def _block_tridiagonal_solve(diag, upper, rhs):
    """Solve a symmetric positive-definite block-tridiagonal system: diagonal blocks ``diag`` (nb, m, m),
    blocks ``upper[P]`` coupling block P to P + 1, right-hand sides (nb, m, R), by a block Cholesky
    ``L_P L_P^T = D_P - C_P C_P^T``, ``C_P = U_{P-1}^T L_{P-1}^{-T}`` (one scan down, one up)."""
    tri = jax.scipy.linalg.solve_triangular
    m, n_rhs = rhs.shape[1:]

    def down(carry, inputs):
        chol_prev, y_prev = carry
        d, u_prev, r = inputs
        c = tri(chol_prev, u_prev, lower=True).T  # U^T L^{-T}
        chol = jnp.linalg.cholesky(d - c @ c.T)
        y = tri(chol, r - c @ y_prev, lower=True)
        return (chol, y), (chol, c, y)

    zero = jnp.zeros((m, m), diag.dtype)
    upper_prev = jnp.concatenate([zero[None], upper[:-1]])  # block P's coupling to P - 1 (none for P = 0)
    eye = jnp.eye(m, dtype=diag.dtype)
    _, (chols, cs, ys) = jax.lax.scan(down, (eye, jnp.zeros((m, n_rhs), diag.dtype)), (diag, upper_prev, rhs))

    def up(x_next, inputs):
        chol, c_next, y = inputs
        x = tri(chol, y - c_next.T @ x_next, lower=True, trans=1)
        return x, x

    c_next = jnp.concatenate([cs[1:], zero[None]])
    _, xs = jax.lax.scan(up, jnp.zeros((m, n_rhs), diag.dtype), (chols, c_next, ys), reverse=True)
    return xs


@persistent_jit(static_argnames=("grid",))
def _solve(grid: TableGrid, bands, rhs, ridge, diag_index, upper_index, constraints, targets):
    """``(N + R) g = r`` through :func:`_block_tridiagonal_solve` (the module docstring), subject to
    ``a_c . g = targets[c]`` for each of the C rows ``a_c = constraints[c]`` (C, terms, B, B): Lagrange
    multipliers, ``g = g_0 - Z mu`` with ``Z = (N + R)^-1 A^T`` (one factorisation for all right-hand sides)
    and ``A Z mu = A g_0 - targets``."""
    terms, nodes = rhs.shape[0], rhs.shape[1]
    n_blocks = -(-nodes // ROWS)
    m = ROWS * nodes * terms
    flat = bands.reshape(-1)
    blocks = []
    for (where, block, row, col) in (diag_index, upper_index):
        blocks.append(jnp.zeros((n_blocks, m, m), bands.dtype).at[block, row, col].add(flat[where]))
    diag, upper = blocks
    # the diagonal in block layout, the ridge on the unconstrained nodes, identity on the padding rows
    pad_rows = n_blocks * ROWS - nodes
    near = np.pad(np.broadcast_to(constrained_nodes(grid)[:, :, None], (nodes, nodes, terms)),
                  ((0, pad_rows), (0, 0), (0, 0))).reshape(n_blocks, m)
    real = np.pad(np.ones((nodes, nodes, terms), bool), ((0, pad_rows), (0, 0), (0, 0))).reshape(n_blocks, m)
    d = jnp.diagonal(diag, axis1=1, axis2=2)
    mean_d = jnp.sum(jnp.where(near, d, 0.0)) / near.sum()
    extra = jnp.where(~real, 1.0, jnp.where(~near | (d <= 1e-12 * mean_d), ridge * mean_d, 0.0))
    diag = diag + extra[:, :, None] * jnp.eye(m, dtype=bands.dtype)

    def block_layout(a):  # (terms, B, B, R) -> (n_blocks, m, R)
        return jnp.pad(jnp.transpose(a, (1, 2, 0, 3)), ((0, pad_rows), (0, 0), (0, 0), (0, 0))).reshape(
            n_blocks, m, a.shape[-1])

    columns = block_layout(jnp.concatenate([rhs[..., None], jnp.moveaxis(constraints, 0, -1)], axis=-1))
    x = _block_tridiagonal_solve(diag, upper, columns).reshape(n_blocks * m, -1)
    a = columns.reshape(n_blocks * m, -1)[:, 1:]
    g = x[:, 0]
    if a.shape[1]:
        z = x[:, 1:]
        g = g - z @ jnp.linalg.solve(a.T @ z, a.T @ g - targets)
    g = g.reshape(n_blocks * ROWS, nodes, terms)[:nodes]
    return jnp.transpose(g, (2, 0, 1))


def solve_grid(grid: TableGrid, w, coef, target, x0, y0, *, ridge: float = 1e-3, constraints=None) -> np.ndarray:
    """Grid values (terms, L, L) minimising ``sum_n sum_ij w (target_n - sum_k coef_nk A_y^T G_k A_x)^2``
    plus the ridge of the module docstring (nodes outside the solve box are zero), subject to the linear
    ``constraints = (A, e)`` on the box's values, ``sum(A[c] * G_box) = e[c]`` (:func:`phase_constraints`;
    None: unconstrained)."""
    bands, rhs = normal_bands(grid, w, coef, target, x0, y0)
    first, nodes = solve_box(grid)
    terms = int(coef.shape[1])
    indices = _block_indices(terms, nodes, grid.oversampling)
    if constraints is None:
        constraints = (np.zeros((0, terms, nodes, nodes)), np.zeros(0))
    a, e = (jnp.asarray(v, rhs.dtype) for v in constraints)
    box = np.asarray(_solve(grid, bands, rhs, ridge, *indices, a, e))
    if not np.all(np.isfinite(box)):
        raise SingularGridError("the empirical PSF's normal equations have no finite solution "
                                f"({coef.shape[0]} stars, {coef.shape[1]} spatial terms): too few usable pixels")
    out = np.zeros((box.shape[0], grid.length, grid.length))
    out[:, first:first + nodes, first:first + nodes] = box
    return out


def node_offsets(grid: TableGrid) -> np.ndarray:
    """Offsets [px] from the star of the box's nodes along one axis, (B,)."""
    first, nodes = solve_box(grid)
    return (first + np.arange(nodes) - (grid.length - 1) / 2) / grid.oversampling


def phase_window(grid: TableGrid) -> np.ndarray:
    """(B, B) weights of :func:`phase_constraints`: ``exp(-(r / r0)^10)`` at the nodes' distance r from the star,
    ``r0 = (stamp - 1) / 2 - 1`` px (6 px for 15-px stamps: flat to 1e-3 within 3.0 px, 0.01 at 7 px).  Flat where
    a compact PSF's light is and smooth where the wings fall off, so that it leaks < 1e-6 of the light between
    the phases for pixel-integrated Gaussians of sigma 0.45-1.4 px (a cosine taper from 4 to 7 px: 8e-4 at
    1.4 px; a Gaussian window: 5e-2 at 0.45 px)."""
    offsets = node_offsets(grid)
    r0 = (grid.size[0] - 1) / 2 - 1
    return np.exp(-(np.hypot(offsets[:, None], offsets[None, :]) / r0) ** 10)


def phase_constraints(grid: TableGrid, terms: int, core_nodes=None, centre_phases: bool = True):
    """The constraints that tie the grid's sub-pixel phases to one another, as ``(A, e)`` for :func:`solve_grid`.

    A star at sub-pixel phase ``phi`` reads only the node class ``c`` whose offsets are ``phi`` modulo a pixel
    (K^2 classes at oversampling K).  Star amplitudes and positions can trade against a per-class scale and
    shift of the grid that the pixels barely see, and an empirical grid's centre is free at each position, so
    the grid is held to what a pixel-integrated PSF obeys (``w`` the window of :func:`phase_window`):

    * **equal light**: the windowed sum ``S_c = sum_class w P`` is the same in every class.  For a
      pixel-integrated PSF the sum over a pixel lattice is the total flux at any phase (the pixel's transfer
      function vanishes at every integer frequency), and under ``w`` to < 1e-6 of the light;
    * **centred**: the windowed first moments ``sum w dx P`` and ``sum w dy P`` over all nodes vanish, so a
      fitted position is the PSF's light centroid under ``w`` (at every position of the image);
    * with ``centre_phases``, the first moments vanish **in every class**, so the centroid is the position at
      any phase.  That holds where the PSF has no power at 1 cycle/px (pixel-convolved FWHM above ~2 px); an
      undersampled PSF's centroid moves with the phase by its aliased power, which the pixels then measure.

    For the model ``C + sum_k b_k G_k`` (``b_0 = 1``) the constraints hold at every position when term 0
    carries the core's share (``-L(C)``, ``core_nodes`` the core sampled at the box's nodes, (B, B)) and the
    other terms zero: ``terms (K^2 + 1)`` rows, ``terms (3 K^2 - 1)`` with ``centre_phases``.
    """
    k = grid.oversampling
    offsets = node_offsets(grid)
    nodes = len(offsets)
    phase = np.rint(offsets * k).astype(int) % k
    window = phase_window(grid)
    classes = [window * ((phase[:, None] == cy) & (phase[None, :] == cx)) for cy in range(k) for cx in range(k)]
    rows = [c - classes[0] for c in classes[1:]]
    for c in classes if centre_phases else [window]:
        rows += [c * offsets[None, :], c * offsets[:, None]]
    core = np.zeros((nodes, nodes)) if core_nodes is None else np.asarray(core_nodes, float)
    a = np.zeros((terms * len(rows), terms, nodes, nodes))
    e = np.zeros(terms * len(rows))
    for t in range(terms):
        for i, row in enumerate(rows):
            a[t * len(rows) + i, t] = row
            if t == 0:
                e[i] = -np.sum(row * core)
    return a, e

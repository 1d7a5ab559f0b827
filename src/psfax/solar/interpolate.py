"""Affine resampling of an image with B-spline interpolation of order 1 or 3, in JAX.

Conventions are those of ``scipy.ndimage.affine_transform(..., mode="constant")``:

* output pixel ``o = (x, y)`` (0-based, x the column) samples the input at
  ``A @ o + b``;
* a sample outside ``[0, n - 1]`` on either axis gets the constant ``cval``;
* inside, the order-``k`` B-spline through the pixel values is evaluated;
  neighbours beyond an edge are mirrored (``-i`` and ``2n - 2 - i``).

``jax.scipy.ndimage.map_coordinates`` stops at order 1; order 3 needs the
spline coefficients ``c`` with ``sum_j c_j B3(i - j) = s_i`` (the "prefilter").
Its exact solution is the symmetric filter ``c_i = sqrt(3) sum_k z^|k| s_{i+k}``
with ``z = sqrt(3) - 2`` on the mirror-extended signal (Unser 1999).
``|z|^33 < 1e-18``, so the filter is applied as a banded block-Toeplitz matrix
product (blocks of 32 samples, each seeing its two neighbour blocks): exact
to float64 rounding and a plain batched matmul on CPU or GPU.  The
neighbour blocks enter through rank one: sample ``j`` of the previous block
reaches output ``i`` with ``z^(i + 1) z^(31 - j)``, so each block passes its
neighbours one weighted sum instead of a 32 x 32 product; the mirrored samples
beyond the two edges enter the same way, so an image whose size is a multiple
of 32 (the full frame) is never copied into a padded frame.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SPLINE_POLE = np.sqrt(3.0) - 2.0
_BLOCK = 32


def _prefilter_factors(dtype):
    """``a`` (B, B), ``ends`` (2, B) and ``u`` (B,) of the block filter
    ``c_block = a s_block + u (ends[0] . s_prev) + flip(u) (ends[1] . s_next)``,
    ``a_ij = sqrt(3) z^|i - j|``, ``u_i = sqrt(3) z^(i + 1)``, ``ends = [z^(B - 1 - j), z^j]``."""
    i = np.arange(_BLOCK)
    a = np.sqrt(3.0) * SPLINE_POLE ** np.abs(i[:, None] - i[None, :])
    ends = np.stack([SPLINE_POLE ** (_BLOCK - 1.0 - i), SPLINE_POLE ** i])
    u = np.sqrt(3.0) * SPLINE_POLE ** (i + 1.0)
    return tuple(jnp.asarray(m, dtype=dtype) for m in (a, ends, u))


def _within_blocks(matrix, blocks, axis: int):
    """``sum_j matrix[i, j] x_j`` over the samples ``j`` of every block, in the blocks' layout:
    (nb, B, m) -> (nb, I, m) for ``axis`` 0, (n, nb, B) -> (n, nb, I) for ``axis`` 1.  Written
    so that XLA's dot yields that layout directly (an einsum would add a transpose)."""
    if axis == 1:
        return jax.lax.dot_general(blocks, matrix, (((2,), (1,)), ((), ())))
    batched = jnp.broadcast_to(matrix, (blocks.shape[0],) + matrix.shape)
    return jax.lax.dot_general(batched, blocks, (((2,), (1,)), ((0,), (0,))))


def _mirror_extension(values, axis: int, before: int, after: int):
    """The ``before`` samples preceding and the ``after`` samples following ``values`` along
    ``axis`` in its mirror extension (``s_-k = s_k``, ``s_(n - 1 + k) = s_(n - 1 - k)``, repeated
    when the array is short), read from its edges only."""
    n = values.shape[axis]

    def padded(part, left, right):
        widths = [(0, 0), (0, 0)]
        widths[axis] = (left, right)
        return jnp.pad(part, widths, mode="reflect")

    head = padded(jax.lax.slice_in_dim(values, 0, min(n, before + 1), axis=axis), before, 0)
    foot = padded(jax.lax.slice_in_dim(values, max(0, n - after - 1), n, axis=axis), 0, after)
    return (jax.lax.slice_in_dim(head, 0, before, axis=axis),
            jax.lax.slice_in_dim(foot, foot.shape[axis] - after, foot.shape[axis], axis=axis))


def _prefilter_axis(values, axis: int):
    """Cubic-spline coefficients along ``axis`` (0 or 1, mirror boundary) of a (n, m) array.

    The samples are cut into blocks of B, the last one completed from the mirror extension.
    The mirrored blocks before the first block and after the last one reach the filter only
    through their sums ``ends . s``, so the array itself is not padded when n is a multiple of B.
    """
    n = values.shape[axis]
    nb = -(-n // _BLOCK)
    tail = nb * _BLOCK - n
    before, after = _mirror_extension(values, axis, _BLOCK, tail + _BLOCK)
    ext = jnp.concatenate([values, jax.lax.slice_in_dim(after, 0, tail, axis=axis)], axis=axis) if tail else values
    blocks = ext.reshape(ext.shape[:axis] + (nb, _BLOCK) + ext.shape[axis + 1:])  # block axis, then samples
    a, ends, u = _prefilter_factors(values.dtype)
    own = _within_blocks(a, blocks, axis)
    reach = _within_blocks(ends, blocks, axis)  # what each block gives its two neighbours
    edge = [_within_blocks(ends, jnp.expand_dims(side, axis), axis)
            for side in (before, jax.lax.slice_in_dim(after, tail, tail + _BLOCK, axis=axis))]
    from_prev = jnp.concatenate([edge[0], jax.lax.slice_in_dim(reach, 0, nb - 1, axis=axis)], axis=axis)
    from_next = jnp.concatenate([jax.lax.slice_in_dim(reach, 1, nb, axis=axis), edge[1]], axis=axis)
    tail_shape = [1, 1, 1]
    tail_shape[axis + 1] = _BLOCK
    out = (own + jax.lax.slice_in_dim(from_prev, 0, 1, axis=axis + 1) * u.reshape(tail_shape)
           + jax.lax.slice_in_dim(from_next, 1, 2, axis=axis + 1) * u[::-1].reshape(tail_shape))
    return jax.lax.slice_in_dim(out.reshape(ext.shape), 0, n, axis=axis)


def spline_coefficients(image, order: int):
    """B-spline coefficients of ``image`` for interpolation of ``order`` (1: the image itself)."""
    if order == 1:
        return image
    return _prefilter_axis(_prefilter_axis(image, 0), 1)


def _weights(t, order: int):
    """B-spline weights of the ``order + 1`` neighbours for fractional offsets ``t`` in [0, 1)."""
    if order == 1:
        return (1.0 - t, t)
    t2, t3 = t * t, t * t * t
    return ((1.0 - t) ** 3 / 6.0,
            (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0,
            (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0,
            t3 / 6.0)


def _mirror(index, n: int):
    """Mirror an index that lies at most one period outside [0, n - 1]."""
    index = jnp.abs(index)
    return jnp.where(index > n - 1, 2 * (n - 1) - index, index)


def sample(coefficients, x, y, *, order: int, cval):
    """Evaluate the spline with ``coefficients`` (ny, nx) at points (x, y); ``cval`` outside."""
    ny, nx = coefficients.shape
    outside = (x < 0) | (x > nx - 1) | (y < 0) | (y > ny - 1)
    x = jnp.clip(x, 0, nx - 1)
    y = jnp.clip(y, 0, ny - 1)
    # the fractions are taken from the integer indices themselves: XLA may compute x once for the
    # indices and again (rounded otherwise) for the weights, and floor() of the two may differ by one
    ix = jnp.floor(x).astype(jnp.int32)
    iy = jnp.floor(y).astype(jnp.int32)
    wx = _weights(x - ix.astype(x.dtype), order)
    wy = _weights(y - iy.astype(y.dtype), order)
    first = -(order // 2)
    cols = [_mirror(ix + first + k, nx) for k in range(order + 1)]
    rows = [_mirror(iy + first + k, ny) * nx for k in range(order + 1)]
    flat = coefficients.ravel()
    total = jnp.zeros_like(x)
    for row, w_row in zip(rows, wy):
        line = sum(w_col * jnp.take(flat, row + col, mode="clip") for col, w_col in zip(cols, wx))
        total = total + w_row * line
    return jnp.where(outside, cval, total)


def affine_transform(image, matrix, offset, *, output_shape, order: int, cval):
    """Resample ``image`` (ny, nx): output (x, y) takes the value at ``matrix @ (x, y) + offset``."""
    oy, ox = jnp.meshgrid(jnp.arange(output_shape[0], dtype=image.dtype),
                          jnp.arange(output_shape[1], dtype=image.dtype), indexing="ij")
    x = matrix[0, 0] * ox + matrix[0, 1] * oy + offset[0]
    y = matrix[1, 0] * ox + matrix[1, 1] * oy + offset[1]
    return sample(spline_coefficients(image, order), x, y, order=order, cval=cval)

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
neighbours one weighted sum instead of a 32 x 32 product.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SPLINE_POLE = np.sqrt(3.0) - 2.0
_BLOCK = 32


def _prefilter_factors(dtype):
    """``a`` (B, B), ``ends`` (B, 2) and ``u`` (B,) of the block filter
    ``c_block = a s_block + u (ends[:, 0] . s_prev) + flip(u) (ends[:, 1] . s_next)``,
    ``a_ij = sqrt(3) z^|i - j|``, ``u_i = sqrt(3) z^(i + 1)``, ``ends = [z^(B - 1 - j), z^j]``."""
    i = np.arange(_BLOCK)
    a = np.sqrt(3.0) * SPLINE_POLE ** np.abs(i[:, None] - i[None, :])
    ends = np.stack([SPLINE_POLE ** (_BLOCK - 1.0 - i), SPLINE_POLE ** i], axis=1)
    u = np.sqrt(3.0) * SPLINE_POLE ** (i + 1.0)
    return tuple(jnp.asarray(m, dtype=dtype) for m in (a, ends, u))


def _prefilter_axis(values, axis: int):
    """Cubic-spline coefficients along ``axis`` (0 or 1, mirror boundary) of a (n, m) array."""
    n = values.shape[axis]
    widths = [(0, 0), (0, 0)]
    widths[axis] = (_BLOCK, (-(n + 2 * _BLOCK)) % _BLOCK + _BLOCK)
    ext = jnp.pad(values, widths, mode="reflect")
    blocks = ext.reshape(ext.shape[:axis] + (-1, _BLOCK) + ext.shape[axis + 1:])  # block axis, then samples
    spec = "bjw" if axis == 0 else "wbj"
    a, ends, u = _prefilter_factors(values.dtype)
    own = jnp.einsum(f"ij,{spec}->{spec.replace('j', 'i')}", a, blocks)
    reach = jnp.einsum(f"jk,{spec}->{spec.replace('j', 'k')}", ends, blocks)  # what each block gives its neighbours
    nb = blocks.shape[axis] - 2

    def blocks_from(first, arr):
        return jax.lax.slice_in_dim(arr, first, first + nb, axis=axis)

    tail_shape = [1, 1, 1]
    tail_shape[axis + 1] = _BLOCK
    out = (blocks_from(1, own)
           + blocks_from(0, jax.lax.slice_in_dim(reach, 0, 1, axis=axis + 1)) * u.reshape(tail_shape)
           + blocks_from(2, jax.lax.slice_in_dim(reach, 1, 2, axis=axis + 1)) * u[::-1].reshape(tail_shape))
    out = out.reshape(values.shape[:axis] + (-1,) + values.shape[axis + 1:])
    return jax.lax.slice_in_dim(out, 0, n, axis=axis)


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

"""What a fit is made of: the stamp data, the noise model, and how the loops map over stars.

``chi2 = sum_pixels w (d - m)^2`` with ``w = usable / variance``.  Variance is
either given (``extra``) or, with ``model_variance``, recomputed from the
current model at every iteration (:func:`variance_model`).  Model-based
weights avoid the low flux bias of data-based weights.  The star model is the
PSF value's (:mod:`psfax.fitting.psf`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from psfax.fitting.flags import MAX_OFFSET
from psfax.fitting.psf import PSF
from psfax.fitting.settings import DEFAULT_SETTINGS, FitSettings
from psfax.fitting.spd import spd_inverse
from psfax.programs import persistent_jit


@dataclass(frozen=True)
class Setup:
    """Static description of a fit's loops (hashable: it keys the compiled programs); the PSF itself is a
    value (:mod:`psfax.fitting.psf`) passed beside it."""

    size: tuple[int, int]
    model_variance: bool
    settings: FitSettings = DEFAULT_SETTINGS
    chunk: int = 0  # independent stars are solved in chunks of this many (0: all at once)

    @property
    def max_iter(self) -> int:
        return self.settings.max_iter


class StampData(NamedTuple):
    """Arrays of a batch of stamps, pixels flattened: every field is (N, M) but gain and read noise."""

    data: jnp.ndarray
    usable: jnp.ndarray  # 1.0 where the pixel counts, 0.0 where masked
    extra_var: jnp.ndarray  # variance not coming from the model (ADU^2)
    gain: jnp.ndarray  # scalar, e-/ADU (ignored unless model_variance)
    read_noise: jnp.ndarray  # scalar, e-


class Solution(NamedTuple):
    """What every optimizer returns: per star the fitted vector ``v`` (N, P) of the PSF kind, its
    inverse-Fisher covariance (N, P, P), chi2, converged and iterations (N,); for a shared shape also
    ``shared = (coef (K,), covariance (K, K))`` of the shape coefficients (else None)."""

    v: jnp.ndarray
    covariance: jnp.ndarray
    chi2: jnp.ndarray
    converged: jnp.ndarray
    n_iter: jnp.ndarray
    shared: tuple | None


def pixel_grid(size, dtype):
    """Flattened pixel-centre coordinates (x, y) of a stamp of ``size = (ny, nx)``."""
    ny, nx = size
    yy, xx = jnp.meshgrid(jnp.arange(ny, dtype=dtype), jnp.arange(nx, dtype=dtype), indexing="ij")
    return xx.ravel(), yy.ravel()


def variance_model(counts, extra, gain, read_noise):
    """The noise model (ADU^2) of psfax: ``extra + max(c, 0) / gain + (read_noise / gain)^2`` for the
    expected counts ``c`` above the part ``extra`` (ADU; the model, or the data for data-based
    weights), gain in e-/ADU, read noise in e-.  numpy in, numpy out; JAX in, JAX out."""
    xp = jnp if isinstance(counts, jax.Array) else np
    return extra + xp.maximum(counts, 0.0) / gain + (read_noise / gain) ** 2


def weights(setup: Setup, star: StampData, model):
    """Inverse variance per pixel (0 where unusable) for the current model."""
    var = star.extra_var
    if setup.model_variance:
        floor = 1.0 / star.gain**2  # one electron of variance: keeps weights finite
        var = jnp.maximum(variance_model(model, var, star.gain, star.read_noise), floor)
    return jnp.where(star.usable > 0, 1.0 / jnp.where(var > 0, var, 1.0), 0.0)


def chi2(data, model, w):
    """``sum w (d - m)^2`` over the last axis."""
    r = data - model
    return jnp.sum(w * r * r, axis=-1)


STAR_AXES = StampData(0, 0, 0, None, None)
"""``vmap`` axes of :class:`StampData`: per-star arrays mapped, noise scalars shared."""


def per_star(stars: StampData) -> StampData:
    """The batch with gain and read noise repeated per star, so that every field maps over stars."""
    n = stars.data.shape[0]
    return stars._replace(gain=jnp.broadcast_to(stars.gain, (n,)), read_noise=jnp.broadcast_to(stars.read_noise, (n,)))


def star_rows(stars: StampData, index) -> StampData:
    """The stars at ``index`` (the noise scalars stay shared)."""
    return stars._replace(data=stars.data[index], usable=stars.usable[index], extra_var=stars.extra_var[index])


def bucket_size(n: int) -> int:
    """Pad a batch of n stars to one of a few sizes (16, 20, 24, 28, 32, 40, ...) to limit re-compilation."""
    if n <= 16:
        return 16
    p = 2 ** math.floor(math.log2(n))
    return next(p * f // 4 for f in (4, 5, 6, 7, 8) if p * f // 4 >= n)


def map_stars(setup: Setup, fn, *args):
    """``vmap(fn)`` over the leading (star) axis of every argument, ``setup.chunk`` stars at a time.

    On the CPU, chunks sized to the cache (``lax.map`` over them) beat one
    huge batch whose intermediates spill to memory, and a batched while loop
    in ``fn`` then waits only for the slowest star of its chunk.
    """
    n = jax.tree.leaves(args)[0].shape[0]
    c = setup.chunk
    if c == 0 or n <= c or n % c:
        return jax.vmap(fn)(*args)
    chunks = jax.tree.map(lambda a: a.reshape((n // c, c) + a.shape[1:]), args)
    out = jax.lax.map(lambda a: jax.vmap(fn)(*a), chunks)
    return jax.tree.map(lambda o: o.reshape((n,) + o.shape[2:]), out)


def each_star(setup: Setup, psf: PSF, fn, v, stars: StampData, active):
    """``fn(v_i, psf_i, star_i, active_i)`` for every star, ``psf_i`` holding the star's rows of the
    PSF's per-star fields (:func:`map_stars`)."""
    return map_stars(setup, lambda vi, part, star, act: fn(vi, psf.with_star(part), star, act),
                     v, psf.star_part(), per_star(stars), active)


def star_problem(setup: Setup, psf: PSF, star: StampData):
    """Model, weights and Gauss-Newton diagonal functions of one star, for the first-order optimizers."""
    def model_fn(x):
        return psf.evaluate(x, setup.size)

    def weights_fn(m):
        return weights(setup, star, m)

    def diag_fn(x, w):
        return jnp.sum(jax.jacfwd(model_fn)(x) ** 2 * w[:, None], axis=0)

    return model_fn, weights_fn, diag_fn


def normal_equations(setup: Setup, star: StampData, m, jac):
    """Weights at ``m``, ``J^T W J``, ``J^T W (d - m)`` and chi2 of one star."""
    w = weights(setup, star, m)
    jw = jac * w[:, None]
    return w, jw.T @ jac, jw.T @ (star.data - m), chi2(star.data, m, w)


@persistent_jit(static_argnames=("setup",))
def fisher_covariance(setup: Setup, psf: PSF, v, stars: StampData):
    """Inverse-Fisher covariance (N, P, P) and chi2 (N,) at the solution ``v`` (N, P), for optimizers
    that do not end with the Fisher matrix at hand."""

    def one(vi, p, star, _):
        _, h, _, c = normal_equations(setup, star, *p.linearise(vi, setup.size))
        return h, c

    h, c = each_star(setup, psf, one, v, stars, jnp.ones(v.shape[0], bool))
    return spd_inverse(h), c


def off_centre(size, x, y):
    """True where the centre (x, y) is more than MAX_OFFSET px from the stamp centre (numpy or JAX)."""
    ny, nx = size
    xp = jnp if isinstance(x, jax.Array) else np
    return xp.maximum(xp.abs(x - (nx - 1) / 2), xp.abs(y - (ny - 1) / 2)) > MAX_OFFSET

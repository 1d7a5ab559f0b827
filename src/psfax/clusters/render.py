"""JAX renderer of multi-band fields: sheared exponential discs and point sources
seen through a Kolmogorov PSF, integrated over square pixels, plus noise.

Each source is drawn exactly in Fourier space on a ``2 * stamp`` grid (rad/pixel
frequencies k), then the central ``stamp x stamp`` pixels are added to the field::

    I_k = flux * E(A^T k) * K(|k|) * sinc(kx / 2pi) * sinc(ky / 2pi) * exp(-i k.x0)

* E(k) = (1 + k^2 r_s^2)^(-3/2): exponential disc of scale radius r_s
  (= half-light radius / 1.67835); r_s = 0 gives a point source (E = 1);
* A: the 2 x 2 distortion (det 1) of the source, a product of reduced-shear
  matrices S(g) = [[1 + g1, g2], [g2, 1 - g1]] / sqrt(1 - |g|^2) (field shear
  applied after the intrinsic ellipticity);
* K(k) = exp(-3.44195 (k lambda/r0 / 2pi)^(5/3)), the Kolmogorov transfer function,
  with lambda/r0 = FWHM / 0.975865;
* the sinc factors integrate over a 1 x 1 pixel (numpy's sinc, sin(pi u) / (pi u)).

Flux beyond the stamp is dropped, which the prior's size cap keeps small.
Noise (:func:`add_noise`) is Gaussian with variance sky_sigma^2 + signal / gain
(sky-subtracted image).  All lengths in pixels.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from psfax.clusters.prior import HLR_PER_SCALE_RADIUS, Catalog

KOLMOGOROV_FWHM_LAMBDA_R0 = 0.975865
"""FWHM of the Kolmogorov profile in units of lambda / r0."""
KOLMOGOROV_STRUCTURE = 6.8839 / 2.0
"""Half the phase structure-function constant: K(k) = exp(-3.44195 (k lambda / (2 pi r0))^(5/3))."""

CHUNK = 64
"""Sources rendered together (vectorised) per step of the scan over a field's sources."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Sources:
    """Sources ready to draw (padded rows have zero flux).

    x, y: (n,) pixel positions; flux: (n, bands) counts; scale_radius: (n,) pixels;
    jac: (n, 2, 2) distortion A.
    """

    x: jax.Array
    y: jax.Array
    flux: jax.Array
    scale_radius: jax.Array
    jac: jax.Array


def shear_matrix(g1, g2):
    """S(g) = [[1 + g1, g2], [g2, 1 - g1]] / sqrt(1 - g1^2 - g2^2), shape (..., 2, 2)."""
    g1, g2 = np.asarray(g1, float), np.asarray(g2, float)
    norm = 1.0 / np.sqrt(1.0 - g1**2 - g2**2)
    return norm[..., None, None] * np.stack([np.stack([1 + g1, g2], -1), np.stack([g2, 1 - g1], -1)], -2)


def sources_from_catalog(cat: Catalog, pixel_scale: float, dtype=np.float64) -> Sources:
    """Sources of a catalog, padded with zero-flux rows to a power of two >= CHUNK."""
    n = len(cat)
    n_pad = max(CHUNK, 1 << max(0, math.ceil(math.log2(max(n, 1)))))
    jac = shear_matrix(cat.truth.shear_g1, cat.truth.shear_g2) @ shear_matrix(cat.g1, cat.g2)

    def pad(a, fill=0.0):
        out = np.full((n_pad,) + a.shape[1:], fill, dtype=dtype)
        out[:n] = a
        return out

    eye = np.broadcast_to(np.eye(2), (n_pad, 2, 2)).copy()
    eye[:n] = jac
    return Sources(x=pad(cat.x), y=pad(cat.y), flux=pad(cat.flux),
                   scale_radius=pad(cat.hlr / pixel_scale / HLR_PER_SCALE_RADIUS), jac=eye.astype(dtype))


def kolmogorov_transfer(k, fwhm):
    """Kolmogorov optical transfer function at angular frequency k (rad/pixel), FWHM in pixels."""
    lam_over_r0 = fwhm / KOLMOGOROV_FWHM_LAMBDA_R0
    return jnp.exp(-KOLMOGOROV_STRUCTURE * (k * lam_over_r0 / (2 * jnp.pi)) ** (5.0 / 3.0))


def _frequency_grid(n: int, dtype):
    ky = 2 * jnp.pi * jnp.fft.fftfreq(n).astype(dtype)
    kx = 2 * jnp.pi * jnp.fft.rfftfreq(n).astype(dtype)
    return ky[:, None], kx[None, :]


def draw_stamps(src: Sources, psf_fwhm, stamp: int):
    """(n, bands, stamp, stamp) images; source j's pixel (stamp/2, stamp/2) is image pixel round(x_j), round(y_j)."""
    n_fft = 2 * stamp
    dtype = src.x.dtype
    ky, kx = _frequency_grid(n_fft, dtype)
    # A^T k for every source: (n, ny, nx)
    ax = src.jac[:, 0, 0, None, None] * kx + src.jac[:, 1, 0, None, None] * ky
    ay = src.jac[:, 0, 1, None, None] * kx + src.jac[:, 1, 1, None, None] * ky
    disc = (1.0 + (ax**2 + ay**2) * src.scale_radius[:, None, None] ** 2) ** -1.5
    kk = jnp.sqrt(kx**2 + ky**2)
    pixel = jnp.sinc(kx / (2 * jnp.pi)) * jnp.sinc(ky / (2 * jnp.pi))
    psf = jax.vmap(kolmogorov_transfer, in_axes=(None, 0))(kk, jnp.asarray(psf_fwhm, dtype))  # (bands, ny, nx)
    centre = n_fft // 2
    dx = src.x - jnp.round(src.x) + centre
    dy = src.y - jnp.round(src.y) + centre
    shift = jnp.exp(-1j * (kx * dx[:, None, None] + ky * dy[:, None, None]))
    spectrum = src.flux[:, :, None, None] * (disc * shift)[:, None] * (psf * pixel)[None]
    image = jnp.fft.irfft2(spectrum, s=(n_fft, n_fft))
    lo = centre - stamp // 2
    return image[..., lo:lo + stamp, lo:lo + stamp].astype(dtype)


def render_field(src: Sources, psf_fwhm, size: int, stamp: int, margin: int):
    """Noise-free (bands, size, size) image of the sources (pixel (0, 0) centred at x = y = 0)."""
    pad = margin + stamp // 2 + 1
    n_bands = src.flux.shape[1]
    canvas = jnp.zeros((n_bands, size + 2 * pad, size + 2 * pad), src.x.dtype)
    chunks = jax.tree_util.tree_map(lambda a: a.reshape((-1, CHUNK) + a.shape[1:]), src)
    offsets = jnp.arange(stamp) - stamp // 2

    def add_chunk(canvas, chunk):
        stamps = draw_stamps(chunk, psf_fwhm, stamp)
        rows = (jnp.round(chunk.y).astype(jnp.int32) + pad)[:, None] + offsets  # (n, stamp)
        cols = (jnp.round(chunk.x).astype(jnp.int32) + pad)[:, None] + offsets
        bands = jnp.arange(n_bands)
        canvas = canvas.at[bands[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]].add(stamps)
        return canvas, None

    canvas, _ = jax.lax.scan(add_chunk, canvas, chunks)
    return canvas[:, pad:pad + size, pad:pad + size]


render_field_jit = jax.jit(render_field, static_argnames=("size", "stamp", "margin"))


def add_noise(key, image, sky_sigma, gain: float):
    """Image plus Gaussian noise of variance sky_sigma_b^2 + max(image, 0) / gain per pixel."""
    sigma = jnp.asarray(sky_sigma, image.dtype)[:, None, None]
    variance = sigma**2 + jnp.maximum(image, 0.0) / gain
    return image + jnp.sqrt(variance) * jax.random.normal(key, image.shape, image.dtype)

"""Richardson-Lucy deconvolution of AIA images with the instrument PSF.

With ``K`` the PSF (peak moved to pixel (0, 0), periodic convolution by FFT),
``d`` the observed image and ``u_0 = d``, each iteration is

    u_{k+1} = u_k * K^T (*) ( d / (K (*) u_k) )

(``(*)`` circular convolution, ``K^T`` the PSF reflected, i.e. the conjugate
transform).  This is the update aiapy 0.12.1 applies, on the same periodic
grid, so the results agree to rounding.  Where ``K (*) u_k`` is exactly zero
the ratio is set to 0 instead of producing 0/0 = NaN (which an FFT would
spread over the whole image).

The PSF transform (real FFT of the shifted PSF) is cached per channel,
shape, dtype and device, so a stack or a series of images pays for it once.
"""

from __future__ import annotations

import copy
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from psfax.device import compute_context, resolve_device, resolve_dtype
from psfax.errors import InputError, InputTypeError
from psfax.solar.channels import validate_channel
from psfax.solar.header import add_history
from psfax.solar.psf import aia_psf

_transform_cache: dict[tuple, jax.Array] = {}


def deconvolve(image, *, psf=None, channel=None, iterations: int = 25, clip_negative: bool = True,
               dtype=None, device=None):
    """Richardson-Lucy deconvolution of one image (H, W), a stack (B, H, W) or a sunpy Map.

    Parameters
    ----------
    image : array (H, W) or (B, H, W), or a sunpy ``GenericMap`` (then a Map is returned,
        with a deep-copied header that records the deconvolution).
    psf : array (H, W) with its peak at [H//2, W//2]; default: :func:`aia_psf` of ``channel``
        (or of the Map's wavelength), which is 4096 x 4096.
    channel : EUV channel (Angstrom) used when ``psf`` is not given.
    iterations : number of Richardson-Lucy iterations (>= 0), default 25.
    clip_negative : set negative pixels to 0 before deconvolving (default True).
    dtype, device : precision and device (float64 on CPU, float32 on GPU by default).

    Returns an array of the input's shape in ``dtype`` (numpy), or a Map.
    """
    smap = image if _is_map(image) else None
    data = smap.data if smap is not None else image
    if smap is not None and psf is None and channel is None:
        channel = smap.wavelength
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    img = _validate_image(data)
    iterations = _validate_iterations(iterations)
    with compute_context(dt, dev):
        otf = psf_transform(img.shape[-2:], psf=psf, channel=channel, dtype=dt, device=dev)
        x = jnp.asarray(img, dtype=dt)
        if clip_negative:
            x = jnp.maximum(x, 0)
        out = np.asarray(richardson_lucy(x, otf, iterations=iterations))
    if smap is None:
        return out
    meta = copy.deepcopy(smap.meta)
    add_history(meta, f"deconvolve: Richardson-Lucy, {iterations} iterations, clip_negative={clip_negative}")
    return smap._new_instance(out, meta, plot_settings=copy.deepcopy(smap.plot_settings), mask=smap.mask)


def psf_transform(shape, *, psf=None, channel=None, dtype=None, device=None) -> jax.Array:
    """Real FFT of the PSF with its peak moved to (0, 0): shape (H, W//2 + 1), complex.

    Cached per channel, shape, dtype and device when computed from ``channel``.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if psf is None:
        if channel is None:
            raise InputError("deconvolve needs psf= or channel= (or a sunpy Map with a wavelength)")
        key = (validate_channel(channel), tuple(shape), dt.str, str(dev))
        if key not in _transform_cache:
            kernel = aia_psf(channel)
            _check_psf_shape(kernel, shape)
            with compute_context(dt, dev):
                _transform_cache[key] = _shifted_rfft2(jnp.asarray(kernel, dtype=dt))
        return _transform_cache[key]
    kernel = np.asarray(psf)
    _check_psf_shape(kernel, shape)
    if not np.all(np.isfinite(kernel)):
        raise InputError("psf contains NaN or infinite values")
    with compute_context(dt, dev):
        return _shifted_rfft2(jnp.asarray(kernel, dtype=dt))


@jax.jit
def _shifted_rfft2(kernel):
    return jnp.fft.rfft2(jnp.fft.fftshift(kernel))


def fft_convolve(x, transfer):
    """Periodic convolution of ``x`` (..., H, W) with the kernel whose real FFT is ``transfer``."""
    return jnp.fft.irfft2(jnp.fft.rfft2(x) * transfer, s=x.shape[-2:])


@partial(jax.jit, static_argnames=("iterations",))
def richardson_lucy(image, otf, *, iterations: int):
    """``iterations`` Richardson-Lucy updates of ``image`` (..., H, W) with transform ``otf``."""

    def update(_, estimate):
        blurred = fft_convolve(estimate, otf)
        ratio = jnp.where(blurred == 0, 0, image / jnp.where(blurred == 0, 1, blurred))
        return estimate * fft_convolve(ratio, jnp.conj(otf))

    return jax.lax.fori_loop(0, iterations, update, image)


def _is_map(obj) -> bool:
    try:
        from sunpy.map import GenericMap
    except ImportError:  # pragma: no cover - sunpy is a dependency
        return False
    return isinstance(obj, GenericMap)


def _validate_image(data) -> np.ndarray:
    if isinstance(data, (str, bytes)) or not hasattr(data, "shape"):
        raise InputTypeError(f"image must be an array or a sunpy Map, got {type(data).__name__}")
    arr = np.asarray(data)
    if arr.ndim not in (2, 3):
        raise InputError(f"image must have shape (H, W) or (B, H, W), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise InputTypeError(f"image must be numeric, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise InputError("image contains NaN or infinite values; replace them before deconvolving")
    return arr


def _validate_iterations(iterations) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
        raise InputError(f"iterations must be a non-negative integer, got {iterations!r}")
    return int(iterations)


def _check_psf_shape(kernel: np.ndarray, shape) -> None:
    if kernel.shape != tuple(shape):
        raise InputError(f"psf shape {kernel.shape} does not match the image shape {tuple(shape)}; "
                         f"the AIA PSF is 4096 x 4096, pass psf= for other sizes")

"""The AIA point spread function: filter-mesh diffraction (Grigis et al. 2012).

Each EUV telescope looks through two nickel meshes.  A mesh of pitch ``d``
and wire width ``a`` diffracts a point source into spikes of order ``m``
with intensity ``I_m = sinc^2(m a / d)`` (``m != 0``), at ``m * s`` pixels
from the centre along each mesh direction (spacing ``s``).  Every spike and
the central core are the same narrow Gaussian ``exp(-w r^2)``.  One filter's
PSF is

    P = 0.18 * S / sum(S) + 0.82 * C / sum(C),

``S`` the sum of the spikes over the orders (default -100..100) and the
directions (entrance filter: four arm angles; focal-plane filter: +-45 deg),
``C`` the core; 0.82 is the fraction of the beam the mesh lets through
(AIA instrument paper, Table 3).  The telescope PSF is the circular
convolution of the two filter PSFs on the 4096 x 4096 detector grid, with
its peak at pixel [2048, 2048] and unit sum.

Speed comes from two facts: a spike is separable, ``exp(-w dx^2) exp(-w dy^2)``,
and in float64 it underflows to exactly 0 a few pixels from its centre
(``w r^2 > 745``: 12.9 px for the in-flight ``w = 4.5``).  Each spike is
therefore a small outer product added into the grid (a scatter-add), not a
full-frame ``exp``; the two filters are combined with real FFTs.

PSFs are cached per channel and options in memory and on disk
(``psfax.device.cache_dir() / "aia_psf"``, ``.npz``).
"""

from __future__ import annotations

import hashlib
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from psfax.device import cache_dir, compute_context, resolve_device, resolve_dtype
from psfax.errors import InputError
from psfax.solar.channels import mesh_geometry

PSF_SIZE = 4096
MESH_TRANSMISSION = 0.82
FOCAL_PLANE_ANGLES_DEG = (45.0, -45.0)
DEFAULT_ORDERS = tuple(range(-100, 101))
_FLOAT64_UNDERFLOW = 745.2  # -log of the smallest positive float64 (denormal)

_memory_cache: dict[tuple, np.ndarray] = {}


def aia_psf(channel, *, use_preflightcore: bool = False, diffraction_orders=None,
            dtype=None, device=None, cache: bool = True) -> np.ndarray:
    """PSF of an AIA EUV channel, a 4096 x 4096 array with unit sum, peak at [2048, 2048].

    Parameters
    ----------
    channel : 94, 131, 171, 193, 211, 304 or 335 (Angstrom; int or Quantity).
    use_preflightcore : use the laboratory (pre-flight) Gaussian width instead of 4.5.
    diffraction_orders : integers ``m`` to sum (order 0 carries no spike);
        default -100..100.
    dtype, device : precision and JAX device of the computation (float64 on CPU,
        float32 on GPU by default).
    cache : read and write the memory and disk caches.

    Returns a read-only numpy array (it may be shared with the cache).
    """
    geometry = mesh_geometry(channel)
    orders = _validate_orders(diffraction_orders)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    key = (geometry.channel, bool(use_preflightcore), orders, dt.str)
    if cache and key in _memory_cache:
        return _memory_cache[key]
    path = _disk_path(key)
    if cache and path.is_file():
        psf = _read_cached(path)
    else:
        psf = compute_psf(geometry.channel, use_preflightcore=use_preflightcore,
                          diffraction_orders=orders, dtype=dt, device=dev)
        if cache:
            _write_cached(path, psf)
    psf.setflags(write=False)
    if cache:
        _memory_cache[key] = psf
    return psf


def compute_psf(channel, *, use_preflightcore: bool = False, diffraction_orders=None,
                dtype=None, device=None) -> np.ndarray:
    """Compute the PSF (no cache); see :func:`aia_psf`."""
    geometry = mesh_geometry(channel)
    orders = np.asarray(_validate_orders(diffraction_orders), dtype=np.float64)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    width = geometry.width(use_preflightcore)
    entrance = _spike_offsets(geometry.entrance_angles_deg, geometry.entrance_spacing_px, orders)
    focal = _spike_offsets(FOCAL_PLANE_ANGLES_DEG, geometry.focal_plane_spacing_px, orders)
    weights = np.sinc(orders / geometry.mesh_ratio) ** 2 * (orders != 0)
    with compute_context(dt, dev):
        args = [jnp.asarray(a, dtype=dt) for a in (*entrance, *focal)]
        psf = _composite_psf(*args, jnp.asarray(weights, dtype=dt), jnp.asarray(width, dtype=dt),
                             size=PSF_SIZE, window=_spike_window(width))
        return np.asarray(psf)


def _validate_orders(diffraction_orders) -> tuple[int, ...]:
    if diffraction_orders is None:
        return DEFAULT_ORDERS
    orders = np.atleast_1d(np.asarray(diffraction_orders))
    if orders.ndim != 1 or orders.size == 0 or not np.all(np.isfinite(orders)) \
            or not np.all(orders == np.round(orders)):
        raise InputError(f"diffraction_orders must be a non-empty 1-d sequence of integers, "
                         f"got {diffraction_orders!r}")
    return tuple(int(m) for m in orders)


def _spike_offsets(angles_deg, spacing_px: float, orders: np.ndarray):
    """Spike centres (dx, dy) in pixels from the array centre, shape (angles * orders,)."""
    angles = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    dx = (spacing_px * np.cos(angles))[:, None] * orders[None, :]
    dy = (spacing_px * np.sin(angles))[:, None] * orders[None, :]
    return dx.ravel(), dy.ravel()


def _spike_window(width: float) -> int:
    """Side of the square outside which ``exp(-w r^2)`` of a spike is exactly 0 in float64."""
    return 2 * math.ceil(math.sqrt(_FLOAT64_UNDERFLOW / width)) + 2


def _gaussian_rows(centres, width, size: int, window: int):
    """1-d Gaussians ``exp(-w (i - c)^2)`` on a window of pixels around each centre.

    Pixel ``i`` of the grid is at ``i + 0.5`` and the grid centre at
    ``size/2 + 0.5``.  Returns (indices (P, window) with out-of-grid pixels
    set to ``size``, values (P, window)).
    """
    centre = size / 2 + 0.5
    start = jnp.floor(centres).astype(jnp.int32) + size // 2 - window // 2 + 1
    index = start[:, None] + jnp.arange(window, dtype=jnp.int32)[None, :]
    values = jnp.exp(-width * ((index + 0.5) - (centre + centres[:, None])) ** 2)
    inside = (index >= 0) & (index < size)
    return jnp.where(inside, index, size), values


def _mesh_spikes(dx, dy, weights, width, size: int, window: int):
    """Sum over spikes of ``I_m exp(-w (x - x_m)^2) exp(-w (y - y_m)^2)`` on a size^2 grid [y, x]."""
    n_dir = dx.shape[0] // weights.shape[0]
    intensity = jnp.tile(weights, n_dir)
    ix, gx = _gaussian_rows(dx, width, size, window)
    iy, gy = _gaussian_rows(dy, width, size, window)
    patches = intensity[:, None, None] * (gy[:, :, None] * gx[:, None, :])
    grid = jnp.zeros((size, size), dtype=dx.dtype)
    return grid.at[iy[:, :, None], ix[:, None, :]].add(patches, mode="drop")


def _filter_psf(dx, dy, weights, width, size: int, window: int):
    """One filter: 0.18 * normalised spikes + 0.82 * normalised core."""
    spikes = _mesh_spikes(dx, dy, weights, width, size, window)
    zero = jnp.zeros((1,), dtype=dx.dtype)
    core = _mesh_spikes(zero, zero, jnp.ones((1,), dtype=dx.dtype), width, size, window)
    return ((1.0 - MESH_TRANSMISSION) * spikes / spikes.sum()
            + MESH_TRANSMISSION * core / core.sum())


@partial(jax.jit, static_argnames=("size", "window"))
def _composite_psf(dx_e, dy_e, dx_f, dy_f, weights, width, *, size: int, window: int):
    """Telescope PSF: entrance and focal-plane filters combined on the periodic grid.

    With ``q = P_e (*) P_f`` (circular convolution) the result is
    ``|q[(size/2 - n) mod size]|``: the convolution reflected through the
    grid centre, which is what ``|FFT(FFT(P_e) FFT(P_f))| / N`` followed by
    ``fftshift`` gives, computed here with three real FFTs.
    """
    entrance = _filter_psf(dx_e, dy_e, weights, width, size, window)
    focal = _filter_psf(dx_f, dy_f, weights, width, size, window)
    q = jnp.fft.irfft2(jnp.fft.rfft2(entrance) * jnp.fft.rfft2(focal), s=(size, size))
    # out[n] = q[(size/2 - n) mod size] == roll(flip(q), 1 - size/2), on both axes
    return jnp.abs(jnp.roll(jnp.flip(q), 1 - size // 2, axis=(0, 1)))


def _disk_path(key):
    channel, preflight, orders, dtype = key
    digest = hashlib.sha256(repr(orders).encode()).hexdigest()[:12]
    core = "preflight" if preflight else "flight"
    return cache_dir() / "aia_psf" / f"psf_{channel}_{core}_{digest}_{np.dtype(dtype).name}.npz"


def _read_cached(path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as npz:
        return np.array(npz["psf"])


def _write_cached(path, psf: np.ndarray) -> None:
    from psfax.io.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, psf=psf)


def clear_memory_cache() -> None:
    """Forget the PSFs held in memory (the disk cache is kept)."""
    _memory_cache.clear()

"""PSF profiles: Gaussian and Moffat, circular or elliptical, unit total flux.

Parameterisation (lengths in pixels, angles in radians):

* ``fwhm``: full width at half maximum.  For elliptical profiles it is the
  geometric mean ``sqrt(fwhm_major * fwhm_minor)`` (the shear keeps area).
* ``beta`` (Moffat only): power-law index, ``beta > 1`` so that the total flux
  is finite.
* ``g1, g2`` (elliptical only): reduced shear, ``|g| < 1``.  The profile is a
  circular one seen through the shear ``A(g)``, as in GalSim's ``shear``:
  ``r^2 = |A^-1 (dx, dy)|^2`` with
  ``A^-1 = [[1 - g1, -g2], [-g2, 1 + g1]] / sqrt(1 - |g|^2)`` (det 1).  Axis
  ratio ``q = (1 - |g|) / (1 + |g|)``, ``ellipticity = 1 - q``, position angle
  of the major axis ``theta = atan2(g2, g1) / 2`` counter-clockwise from +x.

Profiles (``r`` the sheared radius):

* Gaussian: ``I = exp(-r^2 / (2 s^2)) / (2 pi s^2)``, ``s = fwhm / (2 sqrt(2 ln 2))``.
* Moffat: ``I = (beta - 1) / (pi a^2) (1 + r^2 / a^2)^-beta``,
  ``a = fwhm / (2 sqrt(2^(1/beta) - 1))``.

A pixel value is either the profile at the pixel centre (``pixel_integrated=
False``) or its integral over the unit pixel: exact (erf) for the circular
Gaussian, Gauss-Legendre ``n x n`` quadrature otherwise (:class:`Accuracy`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf

from psfax.programs import persistent_jit

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class Accuracy:
    """Numerical settings of the pixel integration (immutable).

    ``quadrature_order``: Gauss-Legendre nodes per axis in the pixels within
    ``inner_half_width`` px of the star's centre pixel; ``outer_order`` in the
    others, where the profile is smooth on the pixel scale.  The defaults
    (6, 3, 2) keep the error of a pixel-integrated Moffat (beta >= 1.5) below
    1e-4 of the peak pixel for FWHM >= 0.8 px, Gaussian or Moffat (``tests/test_profiles.py``
    measures it against a 48 x 48 rule).
    ``table_oversampling``: samples per pixel of the tabulated PSF used when
    the shape is shared or fixed (:mod:`psfax.fitting.table`).
    """

    quadrature_order: int = 6
    outer_order: int = 3
    inner_half_width: int = 2
    table_oversampling: int = 16


DEFAULT_ACCURACY = Accuracy()


@dataclass(frozen=True)
class Profile:
    """A named profile: its shape parameters and its point value."""

    name: str
    shape_names: tuple[str, ...]
    elliptical: bool

    def value(self, dx, dy, shape: dict):
        """Unit-flux profile at offsets (dx, dy) from its centre, in px^-2."""
        r2 = sheared_r2(dx, dy, shape) if self.elliptical else dx * dx + dy * dy
        if self.name.endswith("gaussian"):
            s = shape["fwhm"] / FWHM_PER_SIGMA
            return jnp.exp(-0.5 * r2 / (s * s)) / (2.0 * jnp.pi * s * s)
        beta = shape["beta"]
        a2 = moffat_alpha(shape["fwhm"], beta) ** 2
        return (beta - 1.0) / (jnp.pi * a2) * jnp.exp(-beta * jnp.log1p(r2 / a2))


PROFILES = {
    "gaussian": Profile("gaussian", ("fwhm",), False),
    "moffat": Profile("moffat", ("fwhm", "beta"), False),
    "elliptical_gaussian": Profile("elliptical_gaussian", ("fwhm", "g1", "g2"), True),
    "elliptical_moffat": Profile("elliptical_moffat", ("fwhm", "beta", "g1", "g2"), True),
}


def get_profile(model: str) -> Profile:
    """The :class:`Profile` called ``model``; raises ``InputError`` for an unknown name."""
    from psfax.errors import InputError

    try:
        return PROFILES[model]
    except KeyError:
        raise InputError(f"model must be one of {sorted(PROFILES)}, got {model!r}") from None


def moffat_alpha(fwhm, beta):
    """Moffat core width ``a = fwhm / (2 sqrt(2^(1/beta) - 1))`` in px."""
    return fwhm / (2.0 * jnp.sqrt(jnp.expm1(jnp.log(2.0) / beta)))


def sheared_r2(dx, dy, shape: dict):
    """Squared radius after undoing the shear (g1, g2): ``|A^-1 (dx, dy)|^2``."""
    g1, g2 = shape["g1"], shape["g2"]
    u = (1.0 - g1) * dx - g2 * dy
    v = -g2 * dx + (1.0 + g1) * dy
    return (u * u + v * v) / (1.0 - g1 * g1 - g2 * g2)


def shear_to_ellipticity(g1, g2):
    """``(ellipticity, theta)`` of the reduced shear: ``e = 1 - q = 2|g| / (1 + |g|)``, ``theta`` in rad."""
    g = jnp.hypot(g1, g2)
    return 2.0 * g / (1.0 + g), 0.5 * jnp.arctan2(g2, g1)


def ellipticity_to_shear(ellipticity, theta):
    """Reduced shear ``(g1, g2)`` of ``ellipticity = 1 - q`` and position angle ``theta`` (rad):
    ``|g| = e / (2 - e)``, the inverse of :func:`shear_to_ellipticity`."""
    g = ellipticity / (2.0 - ellipticity)
    return g * np.cos(2.0 * theta), g * np.sin(2.0 * theta)


def _legendre_nodes(n: int):
    x, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * x, 0.5 * w  # on [-1/2, 1/2], weights summing to 1


def _node_grid(order: int, dtype):
    """Gauss-Legendre nodes of the unit pixel as columns (``order^2``, 1): x offsets, y offsets and
    weights (summing to 1), to broadcast against a row of pixels.  Nodes lead and pixels trail, so
    that a node sum is a reduction over contiguous rows that XLA fuses with the profile: ~5x faster
    than nodes innermost for values, but ~2x slower under ``jax.jacfwd`` (which :func:`_pixel_values`
    serves, so it keeps the nodes innermost)."""
    t, w = _legendre_nodes(order)
    return tuple(jnp.asarray(a, dtype=dtype)[:, None]
                 for a in (np.tile(t, order), np.repeat(t, order), np.outer(w, w).ravel()))


def pixel_values(profile: Profile, dx, dy, shape: dict, *, pixel_integrated: bool = True,
                 accuracy: Accuracy = DEFAULT_ACCURACY):
    """Unit-flux PSF in pixels whose centres lie at offsets (dx, dy) from the PSF centre.

    ``pixel_integrated``: integral of the profile over each unit pixel
    (flux fraction falling in it, ``quadrature_order`` nodes per axis);
    otherwise the profile value at the centre.
    """
    return _pixel_values(profile, dx, dy, shape, pixel_integrated, accuracy.quadrature_order)


def _pixel_values(profile: Profile, dx, dy, shape: dict, pixel_integrated: bool, order: int):
    if not pixel_integrated:
        return profile.value(dx, dy, shape)
    if profile.name == "gaussian":
        return _gaussian_pixel_integral(dx, dy, shape["fwhm"])
    t, w = _legendre_nodes(order)
    t = jnp.asarray(t, dtype=jnp.result_type(dx))
    w = jnp.asarray(w, dtype=jnp.result_type(dx))
    vals = profile.value(dx[..., None, None] + t[None, :], dy[..., None, None] + t[:, None], shape)
    return jnp.einsum("...ij,i,j->...", vals, w, w)


def moffat_pixel_terms(dx, dy, fwhm, beta, order: int):
    """Pixel integrals (``order x order`` Gauss-Legendre) of the unit-flux Moffat and of the terms of its
    derivatives, stacked on a leading axis of 5: ``[P, S_x, S_y, S_r, S_L]`` with, over the pixel,
    ``P = int I``, ``S_x = int s dx``, ``S_y = int s dy``, ``S_r = int s r^2``, ``S_L = int I ln q``,
    ``q = 1 + r^2 / a^2``, ``s = 2 beta I / (a^2 q)``.  Then (see :func:`moffat_derivatives`)
    ``dP/dx0 = S_x``, ``dP/dy0 = S_y``, ``dP/dln(fwhm) = S_r - 2 P`` and
    ``dP/dbeta = P / (beta - 1) - S_L + (S_r - 2 P) dln(a)/dbeta``."""
    pixels = jnp.shape(dx)
    tx, ty, w = _node_grid(order, jnp.result_type(dx))
    dx, dy = jnp.ravel(dx) + tx, jnp.ravel(dy) + ty  # (nodes, pixels): one long row per node vectorises
    a2 = moffat_alpha(fwhm, beta) ** 2
    r2 = dx * dx + dy * dy
    q = 1.0 + r2 / a2
    log_q = jnp.log(q)  # q >= 1: log1p gains nothing here and costs 3x
    value = jnp.exp(-beta * log_q)
    slope = value * (2.0 * beta / a2) / q
    norm = (beta - 1.0) / (jnp.pi * a2)
    terms = jnp.stack([jnp.sum(w * value, axis=0), jnp.sum(w * slope * dx, axis=0), jnp.sum(w * slope * dy, axis=0),
                       jnp.sum(w * slope * r2, axis=0), jnp.sum(w * value * log_q, axis=0)])
    return norm * terms.reshape((5,) + pixels)


def moffat_derivatives(terms, beta):
    """``(P, dP/dx0, dP/dy0, dP/dln(fwhm), dP/dbeta)`` from :func:`moffat_pixel_terms` (axis 0).

    ``a = fwhm / (2 sqrt(2^(1/beta) - 1))`` gives ``dln(a)/dbeta = ln 2 2^(1/beta) / (2 beta^2 (2^(1/beta) - 1))``;
    at fixed ``a``, ``ln P`` changes by ``1 / (beta - 1) - ln q`` per unit of beta."""
    p, s_x, s_y, s_r, s_l = terms
    d_log_fwhm = s_r - 2.0 * p
    two = 2.0 ** (1.0 / beta)
    d_log_a = math.log(2.0) * two / (2.0 * beta * beta * (two - 1.0))
    return p, s_x, s_y, d_log_fwhm, p / (beta - 1.0) - s_l + d_log_fwhm * d_log_a


def _gaussian_pixel_integral(dx, dy, fwhm):
    """Exact pixel integral of the circular Gaussian: product of erf differences."""
    c = 1.0 / (math.sqrt(2.0) * fwhm / FWHM_PER_SIGMA)

    def axis(d):
        return 0.5 * (erf((d + 0.5) * c) - erf((d - 0.5) * c))

    return axis(dx) * axis(dy)


def stamp_psf(profile: Profile, x0, y0, shape: dict, size: tuple[int, int], *, pixel_integrated: bool = True,
              accuracy: Accuracy = DEFAULT_ACCURACY):
    """Unit-flux PSF on a stamp of ``size = (ny, nx)`` for a star at (x0, y0).

    Pixel (0, 0) is centred at (x, y) = (0, 0); x is the column.  Integrated
    with ``outer_order`` nodes everywhere, then with ``quadrature_order`` in
    the (2 inner_half_width + 1)^2 pixels around the star's centre pixel.
    """
    if not pixel_integrated or profile.name == "gaussian":
        return _pixel_values(profile, *_offsets(x0, y0, size), shape, pixel_integrated, accuracy.quadrature_order)
    return two_tier(lambda dx, dy, order: _pixel_values(profile, dx, dy, shape, True, order), x0, y0, size, accuracy)


def _offsets(x0, y0, size: tuple[int, int]):
    """Offsets (dx, dy), each (ny, nx), of the pixel centres of a stamp of ``size`` from (x0, y0)."""
    ny, nx = size
    dtype = jnp.result_type(x0, float)
    yy, xx = jnp.meshgrid(jnp.arange(ny, dtype=dtype), jnp.arange(nx, dtype=dtype), indexing="ij")
    return xx - x0, yy - y0


def two_tier(integrate, x0, y0, size: tuple[int, int], accuracy: Accuracy = DEFAULT_ACCURACY):
    """Pixel integrals on a stamp of ``size = (ny, nx)`` for a star at (x0, y0), by :func:`stamp_psf`'s
    two-tier rule: ``integrate(dx, dy, order)`` (offsets (ny, nx) -> (..., ny, nx)) with ``outer_order``
    everywhere, then with ``quadrature_order`` in the (2 inner_half_width + 1)^2 pixels around the
    star's centre pixel (all of a stamp smaller than that)."""
    ny, nx = size
    out = integrate(*_offsets(x0, y0, size), accuracy.outer_order)
    h = accuracy.inner_half_width
    n_y, n_x = min(2 * h + 1, ny), min(2 * h + 1, nx)  # a stamp smaller than the window is all inner
    iy = jnp.clip(jnp.round(y0).astype(jnp.int32) - h, 0, ny - n_y)
    ix = jnp.clip(jnp.round(x0).astype(jnp.int32) - h, 0, nx - n_x)
    inner = integrate(*_offsets(x0 - ix, y0 - iy, (n_y, n_x)), accuracy.quadrature_order)
    lead = (jnp.zeros((), jnp.int32),) * (out.ndim - 2)
    return jax.lax.dynamic_update_slice(out, inner, lead + (iy, ix))


def render_stamp(profile: Profile, x0, y0, flux, bkg, shape: dict, size: tuple[int, int], *,
                 pixel_integrated: bool = True, accuracy: Accuracy = DEFAULT_ACCURACY):
    """One noise-free stamp ``flux * PSF(x - x0, y - y0) + bkg`` of ``size = (ny, nx)`` (see :func:`stamp_psf`)."""
    return flux * stamp_psf(profile, x0, y0, shape, size, pixel_integrated=pixel_integrated, accuracy=accuracy) + bkg


@persistent_jit(static_argnames=("profile", "size", "pixel_integrated", "accuracy"))
def render_stamps_batch(profile: Profile, x0, y0, flux, bkg, shape: dict, size: tuple[int, int], *,
                        pixel_integrated: bool = True, accuracy: Accuracy = DEFAULT_ACCURACY):
    """:func:`render_stamp` for N stars at once (every argument but ``size`` has a leading N axis)."""
    def one(*args):
        return render_stamp(profile, *args, size, pixel_integrated=pixel_integrated, accuracy=accuracy)

    return jax.vmap(one)(x0, y0, flux, bkg, shape)


def pixel_convolved_fwhm(model: str, shape: dict) -> float:
    """FWHM [px] of the unit-flux ``model`` profile of reported ``shape`` (fwhm, beta, ellipticity, theta)
    convolved with a 1 x 1 px box: the pixel-integrated value at offsets d along x (and y) from the centre,
    on a 1/200 px grid, its half-maximum crossing interpolated linearly; the mean of the x and y widths."""
    step = 1.0 / 200
    d = np.arange(0.0, 3.0 * shape["fwhm"] + 2.0, step)
    widths = []
    with jax.enable_x64(True):
        given = {k: np.asarray(v, float) for k, v in shape.items()}
        if "g1" not in given and "ellipticity" in given:
            given["g1"], given["g2"] = ellipticity_to_shear(given["ellipticity"], given.get("theta", 0.0))
        params = {k: jnp.asarray(v) for k, v in given.items() if k in ("fwhm", "beta", "g1", "g2")}
        for dx, dy in ((d, 0.0 * d), (0.0 * d, d)):
            cut = np.asarray(pixel_values(get_profile(model), jnp.asarray(dx), jnp.asarray(dy), params))
            i = int(np.argmax(cut < cut[0] / 2))  # first sample below half the peak
            half = d[i - 1] + step * (cut[i - 1] - cut[0] / 2) / (cut[i - 1] - cut[i])
            widths.append(2 * half)
    return float(np.mean(widths))

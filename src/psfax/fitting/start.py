"""Where a fit starts: moments of each stamp, an earlier result, and the aperture correction of a
known PSF's starting flux."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from psfax.errors import InputError, InputTypeError
from psfax.fitting.params import N_STAR, START_BETA, fwhm_of_core_sigma, initial_star_params, physical_names, shape_to_u
from psfax.fitting.problem import Setup, StampData, map_stars, pixel_grid
from psfax.fitting.psf import PSF
from psfax.fitting.result import FitResult
from psfax.profiles import Profile
from psfax.programs import persistent_jit


@persistent_jit(static_argnames=("setup", "profile"))
def initial(setup: Setup, profile: Profile | None, stars: StampData, known):
    """Starting [x0, y0, flux, bkg] (N, 4) from the stamps and, for a free ``profile``, a starting
    unconstrained shape per star (N, k): the FWHM of its core width at beta = START_BETA (within
    ``settings.start_fwhm_range``), round; the finite entries of ``known`` (N, 4 + k) take precedence."""
    ny, nx = setup.size
    gx, gy = pixel_grid(setup.size, stars.data.dtype)
    gx, gy = gx.reshape(ny, nx), gy.reshape(ny, nx)
    u4, sigma = map_stars(setup, lambda d, u: initial_star_params(d, u, gx, gy),
                          stars.data.reshape(-1, ny, nx), stars.usable.reshape(-1, ny, nx))
    guess = u4
    if profile is not None:
        fwhm = jnp.clip(fwhm_of_core_sigma(profile, sigma, START_BETA), *setup.settings.start_fwhm_range)
        shape = {"fwhm": jnp.log(fwhm), "beta": jnp.full_like(fwhm, math.log(START_BETA - 1.0))}
        shape_u = jnp.stack([shape.get(name, jnp.zeros_like(fwhm)) for name in profile.shape_names], axis=-1)
        guess = jnp.concatenate([u4, shape_u], axis=1)
    v = jnp.where(jnp.isfinite(known), known, guess)
    return v[:, :N_STAR], v[:, N_STAR:]


@persistent_jit(static_argnames=("setup",))
def aperture_corrected(setup: Setup, psf: PSF, stars: StampData, u4, given):
    """Starting flux and background of a fit with a known PSF (but where ``given`` by ``start``) corrected
    for the PSF's light that the stamp misses or that its border adds to the background estimate.

    With ``P`` the star's PSF at the stamp centre (:meth:`PSF.centred`), the excess over the border
    median sums ``flux (sum_usable P - n_usable leak)``, ``leak`` being the mean of ``P`` over the usable
    border pixels (light the median took for background), and the background is high by ``flux leak``.
    Without it, the start of a FWHM 1.8 px Moffat is 2 % faint (~10 sigma for bright stars) and a
    third of the stars need a third LM iteration.
    """
    ny, nx = setup.size
    if psf.star_fields:
        centred = jax.vmap(lambda part: psf.with_star(part).centred(setup.size))(psf.star_part())
    else:
        centred = psf.centred(setup.size)[None]
    border = jnp.ones((ny, nx), bool).at[1:-1, 1:-1].set(False).ravel()
    on_border = stars.usable * border
    leak = jnp.sum(on_border * centred, axis=1) / jnp.maximum(jnp.sum(on_border, axis=1), 1.0)
    inside = jnp.sum(stars.usable * centred, axis=1) - jnp.sum(stars.usable, axis=1) * leak
    flux = u4[:, 2] / jnp.where(inside > 0, inside, 1.0)
    return jnp.where(given[:, None], u4, u4.at[:, 2].set(flux).at[:, 3].add(-flux * leak))


def from_result(start, model: str, profile: Profile | None, n: int, basis):
    """``(x, y, flux, bkg)`` and unconstrained shapes (N, 4 + k) of an earlier FitResult ``start`` (NaN where
    unknown), and its shared coefficients (or None)."""
    if not isinstance(start, FitResult):
        raise InputTypeError(f"start must be a FitResult, got {type(start).__name__}")
    if start.model != model or len(start.table) != n:
        raise InputError(f"start must be a {model!r} fit of the same {n} stamps, got a {start.model!r} fit of "
                         f"{len(start.table)}")
    u4 = np.column_stack([np.asarray(start.table[c], float) for c in ("x_fit", "y_fit", "flux_fit", "bkg_fit")])
    if profile is None:  # a PSF kind without shape parameters
        return u4, None
    shape = {name: np.asarray(start.table[name], float) for name in physical_names(profile)[N_STAR:]}
    known = np.all([np.isfinite(v) for v in shape.values()], axis=0)
    shape_u = np.full((n, len(profile.shape_names)), np.nan)
    shape_u[known] = shape_to_u(profile, {name: v[known] for name, v in shape.items()})
    coef = None
    if basis is not None and start.shared is not None:
        if start.shared.coef.shape[0] != basis.size:
            raise InputError(f"start has {start.shared.coef.shape[0]} spatial terms, this fit {basis.size}")
        coef = np.asarray(start.shared.coef, float).ravel()
    return np.concatenate([u4, shape_u], axis=1), coef

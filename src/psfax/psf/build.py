"""Build an :class:`~psfax.psf.empirical.EmpiricalPSF` from star stamps: one batched linear solve per round.

With the stars' positions, amplitudes ``a_n = flux_n / s_n`` and backgrounds held, every model pixel
``m = a_n (C + sum_k b_k(X_n, Y_n) G_k) + bkg_n`` is linear in the grid values ``G``, so the grid minimising
``chi2 = sum_n sum_pixels w (d - m)^2`` (``w = 1 / variance`` on usable pixels) solves the normal equations

    (A^T W A + R) G = A^T W (d - bkg - a C)

over all build stars at once.  ``A`` (the interpolation of :mod:`psfax.psf.empirical`, times ``a_n b_k``)
and its transpose are applied matrix-free, and the system is solved by conjugate gradients preconditioned with its exact diagonal, started
from the previous round's grid, to a relative residual of ``cg_tol``.  ``R`` is a ridge
``ridge * mean(diag(A^T W A))`` (the mean over the reached nodes) on the nodes no pixel reaches (offsets beyond (stamp - 1) / 2 + 1 px on
either axis, read only by stars fitted off their stamp centre): it pulls them to zero (no core) or to the core
alone; inside that box nothing is regularised.

Rounds alternate this solve with the per-star fit of (x, y, flux, bkg)
(:func:`psfax.psf.photometry.fit_psf_photometry`) and a chi2 clip (``reduced_chi2 > median + clip_sigma *
1.4826 MAD``, a flag or a non-finite fit: the star leaves the build) until the build stars' total chi2
changes by less than ``chi2_rtol`` (relative) with no new outlier, or ``max_rounds`` (no clipping after the
first round, whose model comes from the rough starting values).

**Reserve stars** (``reserve_fraction``, default 20 %, drawn with ``seed``) never enter the build; they are
fitted with the final model and their chi2 reported.  **Minimum sample**: each star samples one sub-pixel
phase of the ``K x K`` node phases, so ``2 K^2 terms`` build stars are required (fewer raise
:class:`TooFewStarsError`).  **Degree**: the spatial polynomial of degree d needs stars across the image:
each of d + 1 equal bands along x and along y must hold 5 % of the build stars, else the degree falls
back (with a :class:`DegreeFallbackWarning`, recorded in ``psf.meta``).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from astropy.table import Table

from psfax.device import compute_context, resolve_device, resolve_dtype
from psfax.errors import InputError
from psfax.fitting.spatial import PolynomialBasis
from psfax.fitting.table import TableGrid, _axis_taps
from psfax.psf.empirical import OVERSAMPLINGS, EmpiricalPSF, grid_stamps, psf_stamps
from psfax.psf.photometry import fit_psf_photometry
from psfax.stars.pipeline import chi2_outliers


class TooFewStarsError(InputError):
    """Fewer build stars than the grid and degree need."""


class DegreeFallbackWarning(UserWarning):
    """The stars do not cover the image enough for the asked spatial degree; a lower one is used."""


@dataclass(frozen=True)
class BuildOptions:
    """Settings of :func:`build_psf` (see the module docstring)."""

    oversampling: int = 4
    degree: int = 1
    core: tuple[float, float] | None = None
    norm_radius: float | None = None
    reserve_fraction: float = 0.2
    seed: int = 0
    clip_sigma: float = 4.0
    max_rounds: int = 8
    chi2_rtol: float = 1e-3
    ridge: float = 1e-3
    cg_tol: float = 1e-7
    cg_maxiter: int = 400
    saturation: float | None = None

    def __post_init__(self):
        if self.oversampling not in OVERSAMPLINGS:
            raise InputError(f"oversampling must be one of {OVERSAMPLINGS}, got {self.oversampling!r}")
        if self.degree not in (0, 1, 2):
            raise InputError(f"degree must be 0, 1 or 2, got {self.degree!r}")
        if not 0 <= self.reserve_fraction < 1:
            raise InputError(f"reserve_fraction must be in [0, 1), got {self.reserve_fraction}")
        if self.core is not None and (len(self.core) != 2 or self.core[0] <= 0 or self.core[1] <= 1):
            raise InputError(f"core must be (fwhm > 0, beta > 1) of a Moffat, got {self.core!r}")


@dataclass
class BuildResult:
    """The model, the fits of the build and reserve stars (rows in input order, ``role`` column
    ``build``, ``rejected`` or ``reserve``), and per-round statistics."""

    psf: EmpiricalPSF
    table: Table
    rounds: list[dict]
    seconds: float

    def summary(self) -> dict:
        """JSON-ready figures: stars per role and median reduced chi2 of the build and reserve stars."""
        role = np.asarray(self.table["role"])
        red = np.asarray(self.table["reduced_chi2"], float)

        def med(sel):
            v = red[sel & np.isfinite(red)]
            return float(np.median(v)) if len(v) else None

        return {"n_build": int((role == "build").sum()), "n_rejected": int((role == "rejected").sum()),
                "n_reserve": int((role == "reserve").sum()), "build_median_reduced_chi2": med(role == "build"),
                "reserve_median_reduced_chi2": med(role == "reserve"), "rounds": len(self.rounds),
                "seconds": self.seconds}


def min_build_stars(oversampling: int, degree: int) -> int:
    """``2 K^2 terms``: two stars per sub-pixel phase and spatial term."""
    return 2 * oversampling**2 * PolynomialBasis(degree).size


def usable_degree(x, y, degree: int, extent) -> int:
    """The highest degree <= ``degree`` whose d + 1 bands along x and along y over ``extent`` ((x_lo, x_hi),
    (y_lo, y_hi)) each hold >= 5 % of the stars."""
    for d in range(degree, 0, -1):
        ok = True
        for values, (lo, hi) in ((x, extent[0]), (y, extent[1])):
            band = np.clip(((np.asarray(values) - lo) / max(hi - lo, 1e-9) * (d + 1)).astype(int), 0, d)
            ok &= bool(np.all(np.bincount(band, minlength=d + 1) >= 0.05 * len(values)))
        if ok:
            return d
    return 0


def build_psf(data, variance, mask, x_init, y_init, x_corner, y_corner, *, options: BuildOptions = BuildOptions(),
              image_shape=None, dtype=None, device=None) -> BuildResult:
    """Build the empirical PSF from N stamps (N, S, S) [ADU] with ``variance`` [ADU^2] and ``mask`` (True =
    bad); ``x_init, y_init`` starting star positions in stamp pixels, ``x_corner, y_corner`` the image
    position of each stamp's pixel (0, 0); ``image_shape`` (ny, nx) sets the extent over which the spatial
    degree is checked (default: the stars' bounding box).  Non-finite pixels, variance <= 0 and pixels at
    or above ``options.saturation`` are masked."""
    start_time = time.perf_counter()
    data = np.asarray(data, float)
    if data.ndim != 3 or data.shape[1] != data.shape[2] or data.shape[1] % 2 == 0:
        raise InputError(f"stamps must have shape (N, S, S) with S odd, got {data.shape}")
    variance = np.broadcast_to(np.asarray(variance, float), data.shape)
    mask = np.broadcast_to(np.asarray(mask, bool), data.shape)
    bad = mask | ~np.isfinite(data) | ~np.isfinite(variance) | (variance <= 0)
    if options.saturation is not None:
        bad = bad | (np.nan_to_num(data) >= options.saturation)
    n, size = len(data), data.shape[1]
    x_img, y_img = np.asarray(x_corner) + np.asarray(x_init), np.asarray(y_corner) + np.asarray(y_init)
    reserve = _reserve_mask(n, options.reserve_fraction, options.seed)
    need = min_build_stars(options.oversampling, options.degree)
    if (~reserve).sum() < need:
        raise TooFewStarsError(
            f"too few stars for an empirical PSF: oversampling {options.oversampling} and degree {options.degree} "
            f"({PolynomialBasis(options.degree).size} spatial terms) need at least {need} build stars, got "
            f"{int((~reserve).sum())} ({n} given, {int(reserve.sum())} reserved)")
    extent = ((0, image_shape[1] - 1), (0, image_shape[0] - 1)) if image_shape is not None else \
        ((x_img.min(), x_img.max()), (y_img.min(), y_img.max()))
    degree = usable_degree(x_img[~reserve], y_img[~reserve], options.degree, extent)
    if degree < options.degree:
        warnings.warn(f"PSF stars cover too little of the image for spatial degree {options.degree}: "
                      f"using degree {degree}", DegreeFallbackWarning, stacklevel=2)
    basis = PolynomialBasis.fit_to(np.column_stack([x_img, y_img]), degree)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    w = np.where(bad, 0.0, 1.0 / np.where(bad, 1.0, variance))
    clean = np.where(bad, 0.0, data)
    template = _empty_psf(options, size, basis)
    fit = _start_fit(clean, w, x_init, y_init, template.norm_radius)
    active = ~reserve & np.isfinite(fit["flux_fit"]) & (fit["flux_fit"] > 0)
    rounds, psf, previous = [], None, None
    with compute_context(dt, dev):
        for number in range(options.max_rounds):
            psf, cg_iter = _solve_grid(template, clean, w, fit, x_img, y_img, active, psf, options, dt)
            fit = fit_psf_photometry(psf, clean, np.where(bad, 1.0, variance), bad, fit["x_fit"], fit["y_fit"],
                                     x_corner, y_corner, dtype=dt, device=dev)
            red = np.asarray(fit["reduced_chi2"], float)
            outliers = np.zeros(n, bool)
            if number > 0:  # the first round's model comes from the rough starting values: rank stars after it
                outliers[active] = (chi2_outliers(red[active], options.clip_sigma)
                                    | (np.asarray(fit["flags"])[active] != 0))
            total = float(np.nansum(np.asarray(fit["chi2"], float)[active & ~outliers]))
            rounds.append({"round": number + 1, "n_build": int(active.sum()), "n_outliers": int(outliers.sum()),
                           "chi2": total, "median_reduced_chi2": float(np.nanmedian(red[active])),
                           "cg_iterations": int(cg_iter)})
            settled = previous is not None and abs(previous - total) <= options.chi2_rtol * total
            if settled and not outliers.any():
                break
            active &= ~outliers
            previous = total
            if active.sum() < need:
                raise TooFewStarsError(f"only {int(active.sum())} build stars left after chi2 clipping; oversampling "
                                       f"{options.oversampling} and degree {degree} need {need}")
    role = np.where(reserve, "reserve", np.where(active, "build", "rejected"))
    fit["role"] = role
    fit["x"], fit["y"] = np.asarray(x_corner) + fit["x_fit"], np.asarray(y_corner) + fit["y_fit"]
    meta = {"degree_asked": options.degree, "degree_used": degree, "oversampling": options.oversampling,
            "n_stars": n, "reserve_fraction": options.reserve_fraction, "seed": options.seed}
    psf = EmpiricalPSF(psf.grid, psf.oversampling, size, basis, psf.core, psf.norm_radius, 1.0, meta)
    result = BuildResult(psf, fit, rounds, time.perf_counter() - start_time)
    psf.meta.update({k: v for k, v in result.summary().items()})
    return result


def _reserve_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    reserve = np.zeros(n, bool)
    reserve[np.random.default_rng(seed).permutation(n)[:int(round(fraction * n))]] = True
    return reserve


def _empty_psf(options: BuildOptions, size: int, basis: PolynomialBasis) -> EmpiricalPSF:
    length = TableGrid((size, size), options.oversampling).length
    return EmpiricalPSF(np.zeros((basis.size, length, length)), options.oversampling, size, basis, options.core,
                        options.norm_radius)


def _start_fit(data, w, x_init, y_init, radius) -> Table:
    """Starting values: the given positions, background the median of the stamp's border, flux the sum
    above it within ``radius`` of the centre."""
    n, size = data.shape[:2]
    border = np.ones((size, size), bool)
    border[1:-1, 1:-1] = False
    used = w > 0
    bkg = np.array([np.median(d[b]) if b.any() else 0.0 for d, b in zip(data, used & border)])
    yy, xx = np.mgrid[:size, :size]
    inside = np.hypot(xx[None] - np.asarray(x_init)[:, None, None], yy[None] - np.asarray(y_init)[:, None, None]) <= radius
    flux = np.sum(np.where(inside & used, data - bkg[:, None, None], 0.0), axis=(1, 2))
    return Table({"x_fit": np.asarray(x_init, float), "y_fit": np.asarray(y_init, float), "flux_fit": flux,
                  "bkg_fit": bkg})


def _solve_grid(template: EmpiricalPSF, data, w, fit, x_img, y_img, active, previous, options, dt):
    """One normal-equation solve of the grid for the ``active`` stars, from the ``previous`` model (or
    None); returns the model and the CG iterations."""
    idx = np.flatnonzero(active)
    basis = template.basis
    b = basis(x_img[idx], y_img[idx])
    if previous is None:
        scale = np.ones(len(idx))  # no model yet: amplitude = flux
    else:
        s_c, s_k = previous.norm_sums()
        scale = s_c + b @ s_k
    amp = np.asarray(fit["flux_fit"], float)[idx] / scale
    core_w = np.ones(len(idx))
    grid = template.table_grid
    core_stamps = 0.0
    if template.core is not None:
        arrays = template.arrays(dt)
        zero = jnp.zeros((len(idx), basis.size), dt)
        core_stamps = np.asarray(psf_stamps(arrays, zero, jnp.asarray(core_w, dt),
                                            *(jnp.asarray(np.asarray(fit[c], float)[idx], dt) for c in ("x_fit", "y_fit")))[0])
    target = data[idx] - np.asarray(fit["bkg_fit"], float)[idx, None, None] - amp[:, None, None] * core_stamps
    start = np.zeros_like(template.grid) if previous is None else previous.grid
    ridge_nodes = _unreached_nodes(template)
    solution, n_iter = _cg_solve(grid, *(jnp.asarray(a, dt) for a in (
        target, w[idx], b * amp[:, None], np.asarray(fit["x_fit"], float)[idx], np.asarray(fit["y_fit"], float)[idx],
        start, ridge_nodes)), ridge=options.ridge, tol=options.cg_tol, maxiter=options.cg_maxiter)
    psf = EmpiricalPSF(np.asarray(solution, float), template.oversampling, template.stamp_size, basis, template.core,
                       template.norm_radius)
    return psf, int(n_iter)


def _unreached_nodes(template: EmpiricalPSF) -> np.ndarray:
    """1.0 at the nodes beyond (stamp - 1) / 2 + 1 px from the centre on either axis, for every term."""
    grid = template.table_grid
    offsets = (np.arange(grid.length) - (grid.length - 1) / 2) / grid.oversampling
    far = np.abs(offsets) > (template.stamp_size - 1) / 2 + 1
    return np.broadcast_to((far[:, None] | far[None, :]).astype(float), template.grid.shape)


def normal_diagonal(grid: TableGrid, w, coef, x0, y0):
    """Exact diagonal (terms, L, L) of ``A^T W A``: ``sum_n sum_pixels w coef_nk^2 (wy_a wx_b)^2`` scattered to the
    node each tap reads (the tap indices and Keys weights of :func:`psfax.fitting.table.interpolate`)."""
    size = grid.size[0]
    step = grid.oversampling * jnp.arange(size)

    def one(w, x0, y0):
        jy, wy, _ = _axis_taps(grid, y0, size)
        jx, wx, _ = _axis_taps(grid, x0, size)
        rows = (jy + step)[:, None] + jnp.arange(6)[None, :]  # (S, 6)
        cols = (jx + step)[:, None] + jnp.arange(6)[None, :]
        values = w.reshape(size, 1, size, 1) * (wy**2)[None, :, None, None] * (wx**2)[None, None, None, :]
        return rows[:, :, None, None], cols[None, None, :, :], values

    rows, cols, values = jax.vmap(one)(w, x0, y0)  # values (N, S, 6, S, 6)
    rows, cols = jnp.broadcast_to(rows, values.shape), jnp.broadcast_to(cols, values.shape)
    base = jnp.zeros((grid.length, grid.length), values.dtype)
    per_term = jax.vmap(lambda c2: base.at[rows, cols].add(c2[:, None, None, None, None] * values), in_axes=1)
    return per_term(coef**2)


@partial(jax.jit, static_argnames=("grid", "ridge", "tol", "maxiter"))
def _cg_solve(grid, target, w, coef, x0, y0, start, ridge_nodes, *, ridge, tol, maxiter):
    """Jacobi-preconditioned conjugate gradients on ``(A^T W A + R) G = A^T W target`` (see the module
    docstring)."""
    forward = partial(grid_stamps, grid, coef=coef, x0=x0, y0=y0)
    transpose = jax.linear_transpose(forward, start)
    diag = normal_diagonal(grid, w, coef, x0, y0)
    reached = 1.0 - ridge_nodes
    mean_diag = jnp.sum(diag * reached) / jnp.maximum(jnp.sum(reached), 1.0)
    r_diag = ridge * mean_diag * ridge_nodes
    inv_m = 1.0 / jnp.maximum(diag + r_diag, 1e-12 * mean_diag)

    def op(g):
        return transpose(w * forward(g))[0] + r_diag * g

    rhs = transpose(w * target)[0]
    r = rhs - op(start)
    z = inv_m * r
    bound = (tol * jnp.linalg.norm(rhs)) ** 2

    def cond(state):
        _, r, _, _, k = state
        return (jnp.sum(r * r) > bound) & (k < maxiter)

    def body(state):
        g, r, p, rz, k = state
        q = op(p)
        alpha = rz / jnp.sum(p * q)
        g, r = g + alpha * p, r - alpha * q
        z = inv_m * r
        rz_new = jnp.sum(r * z)
        return g, r, z + (rz_new / rz) * p, rz_new, k + 1

    g, _, _, _, k = jax.lax.while_loop(cond, body, (start, r, z, jnp.sum(r * z), 0))
    return g, k

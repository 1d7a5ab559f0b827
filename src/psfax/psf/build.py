"""Build an :class:`~psfax.psf.empirical.EmpiricalPSF` from star stamps: one batched linear solve per round.

With the stars' positions, amplitudes ``a_n = flux_n / s_n`` and backgrounds held, every model pixel
``m = a_n (C + sum_k b_k(X_n, Y_n) G_k) + bkg_n`` is linear in the grid values ``G``, so the grid minimising
``chi2 = sum_n sum_pixels w (d - m)^2`` solves the normal equations

    (A^T W A + R) G = A^T W (d - bkg - a C)

over all build stars at once, with ``w = 1 / (variance + (profile_error * max(d - sky, 0))^2)`` on usable pixels
(``sky`` the given one, or the starting background when it is fitted): the CCD variance plus a **profile
error**, a fraction of each pixel's light (DAOPHOT's PROFILE ERROR, 5 % by default, as here), so that no model is
asked to fit the brightest stars' cores to their photon noise.  Without it the grid follows the bright stars,
whose shape it cannot follow exactly, and fits the faint majority worse (real ZTF quadrant: reserve median
reduced chi2 1.085, against 1.063 with it).  The rounds' per-star fits and chi2 clip use the same weights (one
least-squares problem, so the alternation settles: 4 rounds on the real quadrant); the stars are then fitted
once more under the CCD variance alone, as the catalog's photometry is, for the table and every chi2 reported.
Assembled as a banded matrix in one contraction over the stars and solved by
a block-tridiagonal Cholesky factorisation (:mod:`psfax.psf.normal`, which also states the ridge ``R``: only
on the nodes no pixel constrains), with BLAS and LAPACK on one thread for the solve (``threadpoolctl``, the
caller's setting restored after): its many small LAPACK calls in sequence ran faster so (real ZTF quadrant,
2 cores: build 1.86 s against 2.13 s idle; 8-27 s against 3.0-3.5 s with another job on one core, whose
spinning OpenBLAS workers then took turns with the caller).

**Phase constraints** (``phase_constraints``, on by default; :func:`psfax.psf.normal.phase_constraints`): a star
at one sub-pixel phase reads one class of the grid's nodes, and star fluxes and positions can trade against a
scale and a shift of each class that the pixels barely see; left free, the starting values' errors stay in the
grid (on GalSim stars 0.05 px start offsets came back as reserve position pulls of std 3, and an aperture start's
phase-dependent flux as 0.36 % flux errors with the phase; on the real ZTF quadrant the flux model error
``phi`` of :mod:`psfax.stars.empirical` was 0.91 %, against 0.0 ± 0.07 % with the constraints).  Every solve
holds each class to the same windowed light and the whole grid's windowed centroid at the star (so ``x_fit,
y_fit`` are the PSF's light centroid under the window); ``centre_phases`` (default None: when the first
round's model has a pixel-convolved FWHM of at least :data:`WELL_SAMPLED_FWHM`) also centres each class, which
holds for well-sampled PSFs only.

**Background**: with ``sky`` given (``psfax stars fit`` passes sep's background map) it is subtracted and
held; the build then fits x, y and flux per star.  A fitted background is degenerate with a constant added to
the grid (the stamp holds no pixel free of the PSF's wings): on GalSim stars with a halo it made the fluxes
3.5 % low (``benchmarks/bench_epsf_galsim.py --fit-sky``).

Rounds alternate this solve with the per-star fit of (x, y, flux[, bkg])
(:func:`psfax.psf.photometry.fit_psf_photometry`, under the build's weights) and a chi2 clip (``reduced_chi2 >
median + clip_sigma * 1.4826 MAD``, a flag or a non-finite fit: the star leaves the build) until the total chi2 of
the build stars that stay changed by less than ``chi2_rtol`` (relative) since the round before and the clip would
remove at most ``clip_settle`` of the build stars (0.5 %: the tail of the chi2 distribution; they then stay), or
``max_rounds`` (no clipping after the first round, whose model comes from the rough starting values).

**Reserve stars** (``reserve_fraction``, default 20 %, drawn with ``seed``) never enter the build; they are
fitted with the final model and their chi2 reported.  **Minimum sample**: each star samples one sub-pixel
phase of the ``K x K`` node phases, so ``2 K^2 terms`` build stars are required (fewer raise
:class:`TooFewStarsError`).  **Degree**: the spatial polynomial of degree d needs stars across the image:
each of d + 1 equal bands along x and along y must hold 5 % of the build stars, else the degree falls
back (with a :class:`DegreeFallbackWarning`, recorded in ``psf.meta``).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
import jax.numpy as jnp
import numpy as np
from astropy.table import Table
from threadpoolctl import threadpool_limits

from psfax.device import compute_context, resolve_device, resolve_dtype
from psfax.errors import InputError
from psfax.fitting.spatial import PolynomialBasis
from psfax.fitting.outliers import chi2_outliers
from psfax.fitting.table import TableGrid
from psfax.psf.empirical import OVERSAMPLINGS, EmpiricalPSF, psf_stamps
from psfax.psf.normal import phase_constraints, solve_box, solve_grid
from psfax.psf.photometry import fit_psf_photometry


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
    chi2_rtol: float = 2e-3
    clip_settle: float = 0.005
    ridge: float = 1e-3
    saturation: float | None = None
    profile_error: float = 0.05
    phase_constraints: bool = True
    centre_phases: bool | None = None

    def __post_init__(self):
        if self.oversampling not in OVERSAMPLINGS:
            raise InputError(f"oversampling must be one of {OVERSAMPLINGS}, got {self.oversampling!r}")
        if self.degree not in (0, 1, 2):
            raise InputError(f"degree must be 0, 1 or 2, got {self.degree!r}")
        if not 0 <= self.profile_error < 1:
            raise InputError(f"profile_error must be in [0, 1), got {self.profile_error}")
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
              sky=None, image_shape=None, dtype=None, device=None) -> BuildResult:
    """Build the empirical PSF from N stamps (N, S, S) [ADU] with ``variance`` [ADU^2] and ``mask`` (True =
    bad); ``x_init, y_init`` starting star positions in stamp pixels, ``x_corner, y_corner`` the image
    position of each stamp's pixel (0, 0); ``sky`` [ADU] (broadcast to the stamps), when given, is the known
    background: it is subtracted and held (the build then fits x, y and flux only; a fitted background is
    degenerate with a constant added to the grid); ``image_shape`` (ny, nx) sets the extent over which the
    spatial degree is checked (default: the stars' bounding box).  Non-finite pixels, variance <= 0 and
    pixels at or above ``options.saturation`` are masked."""
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
    fit_bkg = sky is None
    clean = np.where(bad, 0.0, data if fit_bkg else data - np.broadcast_to(np.asarray(sky, float), data.shape))
    radius = (size - 1) / 2 if options.norm_radius is None else options.norm_radius
    fit = _start_fit(clean, ~bad, x_init, y_init, radius, fit_bkg)
    light = np.maximum(clean - np.asarray(fit["bkg_fit"], float)[:, None, None], 0.0)
    ccd = np.where(bad, 1.0, variance)
    build_variance = ccd + (options.profile_error * light) ** 2
    w = np.where(bad, 0.0, 1.0 / build_variance)
    active = ~reserve & np.isfinite(fit["flux_fit"]) & (fit["flux_fit"] > 0)
    template = _empty_psf(options, size, basis)
    rounds, psf, previous = [], None, None  # previous: the stars' chi2 in the round before
    centre_phases = options.centre_phases
    rows = _phase_rows(template, options, bool(centre_phases))  # the same every round (but the auto switch)
    with compute_context(dt, dev):
        for number in range(options.max_rounds):
            psf = _solve_grid(template, clean, w, fit, x_img, y_img, active, psf, options, dt, rows)
            if centre_phases is None and options.phase_constraints:  # auto: decided on the first round's model
                centre_phases = model_fwhm(psf, basis.x_mid, basis.y_mid) >= WELL_SAMPLED_FWHM
                if centre_phases:
                    rows = _phase_rows(template, options, True)
                    psf = _solve_grid(template, clean, w, fit, x_img, y_img, active, None, options, dt, rows)
            fit = fit_psf_photometry(psf, clean, build_variance, bad, fit["x_fit"], fit["y_fit"], x_corner, y_corner,
                                     fit_bkg=fit_bkg, dtype=dt, device=dev)
            red = np.asarray(fit["reduced_chi2"], float)
            outliers = np.zeros(n, bool)
            if number > 0:  # the first round's model comes from the rough starting values: rank stars after it
                outliers[active] = (chi2_outliers(red[active], options.clip_sigma)
                                    | (np.asarray(fit["flags"])[active] != 0))
            chi2 = np.asarray(fit["chi2"], float)
            stay = active & ~outliers
            total = float(np.nansum(chi2[stay]))
            rounds.append({"round": number + 1, "n_build": int(active.sum()), "n_outliers": int(outliers.sum()),
                           "chi2": total, "median_reduced_chi2": float(np.nanmedian(red[active]))})
            settled = (previous is not None
                       and abs(float(np.nansum(previous[stay])) - total) <= options.chi2_rtol * total)
            if settled and outliers.sum() <= options.clip_settle * active.sum():
                break
            active = stay
            previous = chi2
            if active.sum() < need:
                raise TooFewStarsError(f"only {int(active.sum())} build stars left after chi2 clipping; oversampling "
                                       f"{options.oversampling} and degree {degree} need {need}")
        fit = fit_psf_photometry(psf, clean, ccd, bad, fit["x_fit"], fit["y_fit"], x_corner, y_corner,
                                 fit_bkg=fit_bkg, dtype=dt, device=dev)  # under the CCD variance, as the catalog
    role = np.where(reserve, "reserve", np.where(active, "build", "rejected"))
    fit["role"] = role
    fit["x"], fit["y"] = np.asarray(x_corner) + fit["x_fit"], np.asarray(y_corner) + fit["y_fit"]
    meta = {"degree_asked": options.degree, "degree_used": degree, "oversampling": options.oversampling,
            "phase_constraints": options.phase_constraints,
            "centre_phases": bool(centre_phases) and options.phase_constraints,
            "fwhm_px": model_fwhm(psf, basis.x_mid, basis.y_mid),
            "n_stars": n, "sky": "fitted" if fit_bkg else "given", "reserve_fraction": options.reserve_fraction,
            "seed": options.seed}
    psf = dataclasses.replace(psf, meta=meta)
    result = BuildResult(psf, fit, rounds, time.perf_counter() - start_time)
    psf.meta.update({k: v for k, v in result.summary().items()})
    return result


WELL_SAMPLED_FWHM = 1.8
"""Pixel-convolved FWHM [px] from which ``centre_phases`` is on by default (a PSF's power at 1 cycle/px, which
moves its centroid with the sub-pixel phase, is then ~5e-5 of the total for a Gaussian)."""


def model_fwhm(psf: EmpiricalPSF, x_image: float, y_image: float) -> float:
    """Pixel-convolved FWHM [px] of the model at an image position: the diameter of the circle whose area is
    that of the nodes at or above half the peak (``2 sqrt(n / (pi K^2))``)."""
    values = psf.image_at(x_image, y_image)
    n = np.count_nonzero(values >= 0.5 * values.max())
    return float(2.0 * np.sqrt(n / np.pi) / psf.oversampling)


def _reserve_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    reserve = np.zeros(n, bool)
    reserve[np.random.default_rng(seed).permutation(n)[:int(round(fraction * n))]] = True
    return reserve


def _empty_psf(options: BuildOptions, size: int, basis: PolynomialBasis) -> EmpiricalPSF:
    length = TableGrid((size, size), options.oversampling).length
    return EmpiricalPSF(np.zeros((basis.size, length, length)), options.oversampling, size, basis, options.core,
                        options.norm_radius)


def _start_fit(data, used, x_init, y_init, radius, fit_bkg=True) -> Table:
    """Starting values: the given positions, background the median of the stamp's ``used`` border pixels (0 when
    not ``fit_bkg``), flux the sum above it within ``radius`` of the centre."""
    n, size = data.shape[:2]
    border = np.ones((size, size), bool)
    border[1:-1, 1:-1] = False
    bkg = np.array([np.median(d[b]) if b.any() and fit_bkg else 0.0 for d, b in zip(data, used & border)])
    yy, xx = np.mgrid[:size, :size]
    inside = np.hypot(xx[None] - np.asarray(x_init)[:, None, None], yy[None] - np.asarray(y_init)[:, None, None]) <= radius
    flux = np.sum(np.where(inside & used, data - bkg[:, None, None], 0.0), axis=(1, 2))
    return Table({"x_fit": np.asarray(x_init, float), "y_fit": np.asarray(y_init, float), "flux_fit": flux,
                  "bkg_fit": bkg})


def _phase_rows(template: EmpiricalPSF, options: BuildOptions, centre_phases: bool):
    """The grid's :func:`phase_constraints` (with the core's share), or None without
    ``options.phase_constraints``."""
    if not options.phase_constraints:
        return None
    first, nodes = solve_box(template.table_grid)
    core_nodes = None if template.core is None else template.core_at_nodes()[first:first + nodes, first:first + nodes]
    return phase_constraints(template.table_grid, template.basis.size, core_nodes, centre_phases)


def _solve_grid(template: EmpiricalPSF, data, w, fit, x_img, y_img, active, previous, options, dt, constraints):
    """One normal-equation solve of the grid for the ``active`` stars, amplitudes from the ``previous``
    model's normalisation (or the fluxes, with no model yet), under ``constraints`` (:func:`_phase_rows`)."""
    idx = np.flatnonzero(active)
    flux = np.asarray(fit["flux_fit"], float)[idx]
    b = template.basis(x_img[idx], y_img[idx])
    if previous is None:
        scale = np.ones(len(idx))  # no model yet: amplitude = flux
    else:
        s_c, s_k = previous.norm_sums()
        scale = s_c + b @ s_k
    amp = flux / scale
    x_fit, y_fit = (np.asarray(fit[c], float)[idx] for c in ("x_fit", "y_fit"))
    core_stamps = 0.0
    if template.core is not None:
        arrays = template.arrays(dt)
        zero = jnp.zeros((len(idx), template.basis.size), dt)
        core_stamps = np.asarray(psf_stamps(arrays, zero, jnp.ones(len(idx), dt), jnp.asarray(x_fit, dt),
                                            jnp.asarray(y_fit, dt), derivatives=False)[0])
    target = data[idx] - np.asarray(fit["bkg_fit"], float)[idx, None, None] - amp[:, None, None] * core_stamps
    with threadpool_limits(limits=1, user_api="blas"):  # see the module docstring
        grid = np.asarray(solve_grid(template.table_grid, *(jnp.asarray(a, dt) for a in (
            w[idx], b * amp[:, None], target, x_fit, y_fit)), ridge=options.ridge, constraints=constraints))
    return dataclasses.replace(template, grid=grid)

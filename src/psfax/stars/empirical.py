"""The empirical PSF in the stars pipeline: built on the PSF stars, chosen against the analytic fit.

:func:`choose_psf` (``FitOptions.psf`` = ``empirical`` or ``auto``):

1. builds an :class:`~psfax.psf.EmpiricalPSF` (:func:`psfax.psf.build_psf`) from the stamps of every star
   the selection cuts passed (not only those the analytic fit's chi2 clipping kept: that clip removes the
   bright stars a Moffat cannot describe, and with them the PSF bright sources need), the sky held at sep's
   background map, 20 % of the stars reserved (never in the build);
   (with ``auto``, too few PSF stars for the grid and degree or a singular grid leave the analytic fit as the
   photometry's PSF, with an :class:`EmpiricalNotBuiltWarning` and the reason in ``psf.json``; with
   ``empirical`` they are an error);
2. compares the median reduced chi2 of the **reserve** stars that the analytic fit kept, under the empirical
   model and under the analytic fit (the analytic fit saw them: its figure is, if anything, optimistic);
   ``auto`` takes the empirical model unless the analytic fit's figure is lower or equal (with no such star to
   compare on, the empirical model), ``empirical`` always; the empirical model's figure over every reserve star
   is reported beside them;
3. measures on the image the **aperture correction** (median over the brighter half of the unflagged build
   stars of the sky-subtracted light within ``APERTURE_RADIUS`` px, sep's ``sum_circle``, over the fitted flux,
   the light within the normalisation radius) and the **model-error floor** ``f``: the smallest fraction such
   that the bright reserve stars (brighter half) reach a median reduced chi2 of 1 with the variance
   ``var + (f m)^2`` (m the fitted star model; 0 when they already do); the photometry reports its chi2
   under that variance (:func:`apply_floor`);
4. measures on the image the **flux model error** ``phi``: the fraction of a star's flux by which the model's
   mismatch to the star moves its PSF flux.  A star's own residuals cannot show it (the fit makes them
   orthogonal to the model), so it is measured against light no model shaped: the ratio of the PSF flux to
   the light within ``FLUX_ERROR_APERTURE`` of the bright stars (brighter half of the unflagged selected
   stars, reserved, built on or clipped: one star's pull on the grid moves its own flux by ~1/N, and the
   clipped ones are stars of the image too) scatters by ``sqrt(n_i^2 + phi^2)``, with ``n_i`` the ratio's
   statistical error (sep's aperture error under sep's noise map and Poisson noise, the PSF flux's
   inverse-Fisher error); ``phi`` is where the robust spread (1.4826 MAD) of the ratios in units of that
   scatter is 1 (0 when it already is), its standard error from 100 bootstrap resamplings of the stars.  What
   else moves an aperture (faint neighbours, the sky's error) enters ``phi`` too: it is an upper bound.
   Every ``flux_err`` is ``sqrt(flux_err_stat^2 + (phi flux)^2 + b)`` (:func:`apply_flux_model_error`), ``b``
   what the other members of its group bring (:func:`blend_variance`, from the floor ``f``: an asymmetric
   mismatch leaves a single star's flux alone, its fitted centre absorbs it, but moves a blended
   neighbour's).
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from psfax.psf import BuildOptions, BuildResult, EmpiricalPSF, TooFewStarsError, build_psf
from psfax.psf.normal import SingularGridError
from psfax.stars.stamps import Stamps

APERTURE_RADIUS = 14.0
"""Radius [px] of the aperture the empirical fluxes are corrected to (twice the default normalisation radius
of 15-px stamps; PSF stars have no other detection within ``isolation``, 20 arcsec ~ 20 px on ZTF)."""

FLUX_ERROR_APERTURE = 5.0
"""Radius [px] of the aperture the flux model error is measured against: the catalog's ``mag_aper`` aperture
(:func:`psfax.stars.detect.detect_sources`' default).  Larger apertures gather more of the sky's error and of
faint neighbours, which the ratio's noise does not hold: on the ZTF quadrant's reserve stars ``phi`` was 0.9 %
at 5 px, 1.2 % at 10 px and 2.1 % at 14 px."""


ANALYTIC_FLUX = "flux_fit is the total flux of the unit-flux analytic profile"
"""``psf.json``'s flux convention when the analytic fit is the photometry's PSF."""


class EmpiricalNotBuiltWarning(UserWarning):
    """``psf="auto"``: the empirical PSF could not be built on this image (too few PSF stars for its grid and
    degree, or a singular grid); the analytic fit is the photometry's PSF, the reason in ``psf.json``."""


@dataclasses.dataclass
class PSFChoice:
    """The outcome of :func:`choose_psf`: the model (None when the analytic one is used), the build (its
    stamps ``stamps``, rows of ``build.table``), and the figures written to ``psf.json`` (:meth:`summary`)."""

    chosen: str
    asked: str
    psf: EmpiricalPSF | None
    build: BuildResult | None
    reserve_chi2: dict
    model_error_floor: float
    aperture_correction: float
    aperture_stars: int
    flux_model_error: float = 0.0
    flux_model_error_se: float = 0.0
    flux_model_error_stars: int = 0
    not_built: str | None = None
    stamps: Stamps | None = None
    reserve_stars: dict = dataclasses.field(default_factory=dict)

    def summary(self) -> dict:
        if self.build is None:
            return {"asked": self.asked, "chosen": self.chosen, "not_built": self.not_built,
                    "reserve_median_reduced_chi2": {},
                    "flux_convention": ANALYTIC_FLUX}
        build = self.build.psf
        return {"asked": self.asked, "chosen": self.chosen,
                "reserve_median_reduced_chi2": self.reserve_chi2,
                "reserve_stars": self.reserve_stars,
                "reserve_note": ("median over the reserve stars the analytic fit kept (reserve_stars.compared of "
                                 "reserve_stars.reserve), under each model: the analytic fit included them, the "
                                 "empirical build did not; reserve_stars.empirical_every_reserve_star: the "
                                 "empirical model's median over every reserve star"),
                "flux_convention": ("flux_fit is the light within norm_radius_px of the PSF centre (empirical) "
                                    if self.chosen == "empirical" else
                                    ANALYTIC_FLUX),
                "norm_radius_px": build.norm_radius, "aperture_radius_px": APERTURE_RADIUS,
                "aperture_correction": self.aperture_correction, "aperture_correction_stars": self.aperture_stars,
                "model_error_floor": self.model_error_floor,
                "model_error_floor_about": ("chi2 and reduced_chi2 of every source under the variance + "
                                            "(floor * star model)^2 at the fit's solution (the fit keeps the CCD "
                                            "variance)"),
                "flux_model_error": self.flux_model_error, "flux_model_error_se": self.flux_model_error_se,
                "flux_model_error_stars": self.flux_model_error_stars,
                "flux_model_error_about": ("fraction of the flux: flux_err = sqrt(flux_err_stat^2 + (phi flux)^2 + "
                                           "the blend variance from the other members of a group), "
                                           "phi measured on the bright selected stars against their light within "
                                           f"{FLUX_ERROR_APERTURE:g} px (an upper bound; se: bootstrap)"),
                "empirical": build.meta, "rounds": self.build.rounds,
                "rounds_note": ("each round's chi2 is under the build's weights (the CCD variance plus the profile "
                                "error, psfax.psf.build); the reserve figures above under the CCD variance")}


def stamp_sky(background, stamps) -> np.ndarray:
    """sep's background map at the stamps' pixels (N, S, S) [ADU]."""
    size = stamps.size
    rows = stamps.y0[:, None, None] + np.arange(size)[None, :, None]
    cols = stamps.x0[:, None, None] + np.arange(size)[None, None, :]
    return background.level[rows, cols].astype(float)


def choose_psf(exposure, background, stamps, analytic_chi2, options) -> PSFChoice:
    """Build the empirical PSF on ``stamps`` (the selected stars, rows of ``analytic_chi2``: their reduced
    chi2 under the analytic fit, NaN for the stars its clipping removed) and choose (the module docstring);
    ``options`` a :class:`~psfax.stars.pipeline.FitOptions`."""
    sky = stamp_sky(background, stamps)
    build_options = BuildOptions(oversampling=options.psf_oversampling, degree=options.spatial_degree,
                                 saturation=exposure.saturate)
    try:
        built = build_psf(stamps.data, stamps.variance, stamps.mask, stamps.x_init, stamps.y_init, stamps.x0,
                          stamps.y0, options=build_options, sky=sky, image_shape=exposure.shape, dtype=options.dtype,
                          device=options.device)
    except (TooFewStarsError, SingularGridError) as exc:
        if options.psf == "empirical":
            raise
        warnings.warn(f"{exposure.name}: no empirical PSF ({exc}); the photometry uses the analytic "
                      f"{options.model}", EmpiricalNotBuiltWarning, stacklevel=3)
        return PSFChoice(options.model, options.psf, None, None, {}, 0.0, 1.0, 0, not_built=str(exc))
    table = built.table
    role = np.asarray(table["role"])
    reserve = role == "reserve"
    empirical_chi2 = np.asarray(table["reduced_chi2"], float)
    analytic_chi2 = np.asarray(analytic_chi2, float)
    both = reserve & np.isfinite(analytic_chi2) & np.isfinite(empirical_chi2)
    empirical, analytic = (float(np.median(c[both])) if both.any() else float("nan")
                           for c in (empirical_chi2, analytic_chi2))
    # with no reserve star that the analytic fit kept there is nothing to compare: the empirical model stands
    chosen = options.model if options.psf == "auto" and analytic <= empirical else "empirical"
    floor = model_error_floor(built, stamps, sky, reserve)
    apcorr, n_ap = aperture_correction(exposure, background, built, stamps)
    phi, phi_se, n_phi = flux_model_error(exposure, background, built, stamps)
    psf = built.psf
    psf = dataclasses.replace(psf, aperture_correction=apcorr,
                              meta={**psf.meta, "model_error_floor": floor, "flux_model_error": phi,
                                    "aperture_radius": APERTURE_RADIUS})
    built.psf = psf
    every = float(np.nanmedian(empirical_chi2[reserve]))
    stars = {"compared": int(both.sum()), "reserve": int(reserve.sum()), "empirical_every_reserve_star": every}
    return PSFChoice(chosen, options.psf, psf if chosen == "empirical" else None, built,
                     {"empirical": empirical, options.model: analytic}, floor, apcorr, n_ap, phi, phi_se, n_phi,
                     stamps=stamps, reserve_stars=stars)


def _bright_half(flux, keep):
    """``keep`` restricted to the stars at or above the median flux of ``keep``."""
    return keep & (flux >= np.median(flux[keep]))


def model_error_floor(built: BuildResult, stamps, sky, reserve) -> float:
    """The floor ``f`` of the module docstring (:func:`fraction_reaching_one` on [0, 0.5])."""
    table = built.table
    flux = np.asarray(table["flux_fit"], float)
    good = reserve & (np.asarray(table["flags"]) == 0) & np.isfinite(flux)
    bright = np.flatnonzero(_bright_half(flux, good))
    if len(bright) < 5:
        return 0.0
    x, y = np.asarray(table["x_fit"], float)[bright], np.asarray(table["y_fit"], float)[bright]
    model = built.psf.render(x, y, stamps.x0[bright] + x, stamps.y0[bright] + y) * flux[bright, None, None]
    data = stamps.data[bright] - sky[bright]
    use = ~stamps.mask[bright]
    resid2 = np.where(use, (data - model) ** 2, 0.0)
    dof = np.asarray(table["dof"])[bright]

    def median_chi2(f):
        var = stamps.variance[bright] + (f * model) ** 2
        return np.median(np.sum(resid2 / var, axis=(1, 2)) / dof)

    return fraction_reaching_one(median_chi2, 0.5)


def fraction_reaching_one(statistic, upper: float) -> float:
    """The fraction ``f`` in [0, ``upper``] where ``statistic(f)``, decreasing in ``f``, falls to 1 (bisection to
    1e-4, the upper end of the last bracket); 0 when ``statistic(0) <= 1``."""
    if statistic(0.0) <= 1.0:
        return 0.0
    lo, hi = 0.0, upper
    while hi - lo > 1e-4:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if statistic(mid) > 1.0 else (lo, mid)
    return hi


def aperture_ratios(exposure, background, built: BuildResult, stamps, roles: tuple[str, ...], radius: float):
    """Light within ``radius`` px over the fitted flux of the brighter half of the unflagged stars of the
    ``roles`` (``build``, ``reserve``, ``rejected``), and that ratio's statistical error (sep's aperture error,
    under sep's noise map plus Poisson noise, and ``flux_err``, in quadrature); stars with a clean aperture only."""
    import sep

    table = built.table
    flux, flux_err = (np.asarray(table[c], float) for c in ("flux_fit", "flux_err"))
    good = (np.isin(np.asarray(table["role"]), roles) & (np.asarray(table["flags"]) == 0) & np.isfinite(flux)
            & (flux > 0))
    use = np.flatnonzero(_bright_half(flux, good)) if good.any() else np.zeros(0, int)
    x = stamps.x0[use] + np.asarray(table["x_fit"], float)[use]
    y = stamps.y0[use] + np.asarray(table["y_fit"], float)[use]
    inside = (x >= radius) & (y >= radius) & (x < exposure.shape[1] - 1 - radius) & (y < exposure.shape[0] - 1 - radius)
    use, x, y = use[inside], x[inside], y[inside]
    if not len(use):
        return np.zeros(0), np.zeros(0)
    image = np.ascontiguousarray(exposure.data - background.level, dtype=np.float64)
    noise = np.ascontiguousarray(background.rms_map, dtype=np.float64)
    total, total_err, sep_flag = sep.sum_circle(image, x, y, radius, err=noise, gain=exposure.gain,
                                                mask=exposure.bad, subpix=5)
    ok = (sep_flag == 0) & (total > 0)
    ratio = total[ok] / flux[use][ok]
    return ratio, ratio * np.hypot(total_err[ok] / total[ok], flux_err[use][ok] / flux[use][ok])


def aperture_correction(exposure, background, built: BuildResult, stamps) -> tuple[float, int]:
    """(median light within :data:`APERTURE_RADIUS` / fitted flux, stars used): bright unflagged build stars."""
    ratio, _ = aperture_ratios(exposure, background, built, stamps, ("build",), APERTURE_RADIUS)
    return (float(np.median(ratio)), len(ratio)) if len(ratio) >= 5 else (1.0, 0)


def flux_model_error(exposure, background, built: BuildResult, stamps) -> tuple[float, float, int]:
    """(``phi`` of the module docstring, its bootstrap standard error, stars used): the bright unflagged
    selected stars' ratios to :data:`FLUX_ERROR_APERTURE` apertures (:func:`excess_fraction`); (0, 0, n) with
    fewer than 10 stars."""
    ratio, noise = aperture_ratios(exposure, background, built, stamps, ("build", "reserve", "rejected"),
                                   FLUX_ERROR_APERTURE)
    if len(ratio) < 10:
        return 0.0, 0.0, len(ratio)
    rng = np.random.default_rng(0)
    draws = [excess_fraction(ratio[i], noise[i]) for i in rng.integers(0, len(ratio), (100, len(ratio)))]
    return excess_fraction(ratio, noise), float(np.std(draws)), len(ratio)


def excess_fraction(values, noise) -> float:
    """The fraction ``phi`` (:func:`fraction_reaching_one` on [0, 0.2]) such that ``values`` (positive, one
    quantity per star) about their median ``m`` have a robust spread (1.4826 MAD) of 1 in units of ``sqrt(noise^2 +
    (phi m)^2)``: the scatter beyond ``noise`` as a fraction of ``m``; 0 when ``noise`` already covers it."""
    m = np.median(values)
    offset = values - m

    def spread(phi):
        z = offset / np.sqrt(noise**2 + (phi * m) ** 2)
        return 1.4826 * np.median(np.abs(z - np.median(z)))

    return fraction_reaching_one(spread, 0.2)


def apply_floor(table, corners, residual, variance, psf: EmpiricalPSF, floor: float) -> None:
    """Put the model-error floor into the chi2 of a photometry ``table`` (stamp pixels of the stamps with first
    pixels ``corners.x0, corners.y0``; in place) at its solution.  ``residual`` (N, S, S): each stamp's data
    minus every source's model and its background [ADU], NaN on bad pixels; ``variance`` (N, S, S) [ADU^2].
    ``chi2 = sum residual^2 / (var + (floor flux P)^2)``, ``reduced_chi2`` likewise.  The fit itself keeps the
    CCD variance: weights that change with the star's brightness made fluxes depend on it (copies of real
    stars at k = 0.3 came back 1 % low with the floor in the weights, linear to 0.1 % without)."""
    if floor <= 0 or not len(table):
        return
    size = residual.shape[-1]
    x, y = (np.nan_to_num(np.asarray(table[c], float), nan=(size - 1) / 2) for c in ("x_fit", "y_fit"))
    flux = np.nan_to_num(np.asarray(table["flux_fit"], float))
    unit = psf.render(x, y, corners.x0 + x, corners.y0 + y)
    use = np.isfinite(residual)
    var2 = variance + (floor * flux[:, None, None] * unit) ** 2
    found = np.isfinite(np.asarray(table["chi2"], float))
    chi2 = np.where(found, np.sum(np.where(use, residual**2 / var2, 0.0), axis=(1, 2)), np.nan)
    table["chi2"] = chi2
    with np.errstate(divide="ignore", invalid="ignore"):
        table["reduced_chi2"] = np.where(np.asarray(table["dof"]) > 0, chi2 / np.asarray(table["dof"]), np.nan)


def apply_flux_model_error(table, phi: float, blend_variance=None) -> None:
    """``flux_err = sqrt(flux_err^2 + (phi flux_fit)^2 + blend_variance)`` in ``table`` (in place; ``phi`` of the
    module docstring, a fraction; ``blend_variance`` [ADU^2] per source, :func:`blend_variance`, 0 when not
    given)."""
    flux = np.nan_to_num(np.asarray(table["flux_fit"], float))
    extra = 0.0 if blend_variance is None else blend_variance
    table["flux_err"] = np.sqrt(np.asarray(table["flux_err"], float) ** 2 + (phi * flux) ** 2 + extra)


def blend_variance(psf: EmpiricalPSF, x, y, flux, group_id, sky_var, bad, gain: float, size: int,
                   floor: float) -> np.ndarray:
    """Per source [ADU^2], the variance its fitted flux takes from the other members' model errors: each
    member j's mismatch taken as independent per pixel, ``floor flux_j P_j`` (the model-error floor's form),
    through the group's estimator ``G = W J (J^T W J)^-1`` of every member's x, y, flux and a common sky
    (``J`` the derivatives of the group model, :meth:`~psfax.psf.EmpiricalPSF.render_with_derivatives`;
    ``W`` the inverse of sep's sky variance plus the models' Poisson noise, ``gain`` [e-/ADU]) on the members'
    ``size``-px stamps: ``sum_{j != i} sum G_i^2 (floor flux_j P_j)^2``.  A single star's own mismatch is in
    ``phi``; a neighbour's reaches it through the positions too (an asymmetric mismatch moves a fitted centre,
    and with it the neighbour's light under a member), which ``phi``, measured on single stars, does not see.
    ``x, y`` image positions [px], ``flux`` [ADU] (NaN: no model); 0 for sources alone in their group."""
    out = np.zeros(len(flux))
    flux = np.nan_to_num(np.asarray(flux, float))
    ok = np.isfinite(x) & np.isfinite(y)
    group_id = np.asarray(group_id)
    ids, counts = np.unique(group_id[ok], return_counts=True)
    members = np.flatnonzero(ok & np.isin(group_id, ids[counts > 1]))
    if not len(members) or floor <= 0:
        return out
    half = size // 2
    xm, ym = x[members], y[members]
    x0, y0 = np.rint(xm).astype(int) - half, np.rint(ym).astype(int) - half
    fields = np.stack(psf.render_with_derivatives(xm - x0, ym - y0, xm, ym), axis=1)  # P, dP/dx, dP/dy (M, 3, S, S)
    ny, nx = sky_var.shape
    for g in np.unique(group_id[members]):
        k = np.flatnonzero(group_id[members] == g)
        lo_x, lo_y = x0[k].min(), y0[k].min()
        side_x, side_y = x0[k].max() - lo_x + size, y0[k].max() - lo_y + size
        canvas = np.zeros((len(k), 3, side_y, side_x))
        for m, i in enumerate(k):  # each member's stamp placed on the group's canvas
            canvas[m, :, y0[i] - lo_y:y0[i] - lo_y + size, x0[i] - lo_x:x0[i] - lo_x + size] = fields[i]
        rows, cols = np.arange(lo_y, lo_y + side_y), np.arange(lo_x, lo_x + side_x)
        inside = ((rows >= 0) & (rows < ny))[:, None] & ((cols >= 0) & (cols < nx))[None, :]
        r, c = np.clip(rows, 0, ny - 1), np.clip(cols, 0, nx - 1)
        f = flux[members[k]]
        light = np.tensordot(f, canvas[:, 0], axes=1)
        use = inside & ~bad[np.ix_(r, c)] & (canvas[:, 0].sum(axis=0) > 0)
        w = np.where(use, 1.0 / (sky_var[np.ix_(r, c)] + np.maximum(light, 0.0) / gain), 0.0).ravel()
        columns = [canvas[m, 0].ravel() for m in range(len(k))]  # fluxes first, then x, y (times flux), sky
        columns += [f[m] * canvas[m, a].ravel() for m in range(len(k)) for a in (1, 2)]
        design = np.column_stack(columns + [np.ones(side_y * side_x)])
        estimator = (w[:, None] * design) @ np.linalg.pinv(design.T @ (w[:, None] * design))
        spread = (floor * f[:, None] * canvas[:, 0].reshape(len(k), -1)) ** 2  # (members, pixels)
        share = (estimator[:, :len(k)] ** 2).T @ spread.T  # share[i, j]
        np.fill_diagonal(share, 0.0)
        out[members[k]] = share.sum(axis=1)
    return out

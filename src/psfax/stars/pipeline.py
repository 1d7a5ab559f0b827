"""The stars pipeline: exposure -> sources -> PSF stars -> PSF model -> PSF photometry.

:func:`fit_image` reads a science image (and mask) and runs :func:`fit_exposure`:

1. ``background``: sep sky map;
2. ``detection``: sep sources (or a reference catalog matched to them);
3. ``selection``: the counted cuts of :mod:`psfax.stars.select`;
4. ``stamps``: cut-outs with the CCD variance;
5. ``fit``: :func:`psfax.fit_stamps` on the PSF stars, shared shape varying as a
   polynomial in (x, y), refitted after dropping chi2 outliers
   (``reduced_chi2 > median + clip_sigma * 1.4826 MAD``, or a non-zero fit flag)
   until none is left or ``clip_iterations`` refits were done;
6. ``photometry``: every detected source whose stamp fits in the image is
   fitted for (x, y, flux, sky) with the PSF shape held at its local value, its neighbours within
   ``group_radius`` FWHM fitted together and the other sources' models subtracted, in
   ``passes`` passes, each after the first adding the sources found in the residual image
   (:mod:`psfax.stars.groups`); a source whose fit fails gets its flux fitted at the detection position
   (source flag ``fixed_position``).

Every stage is timed (``ImageFit.timings``, seconds of wall time; JAX's compilation apart, as
``<stage>_compile``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from psfax.errors import InputError
from psfax.fitting import Fixed, Free, fit_stamps
from psfax.fitting.outliers import chi2_outliers
from psfax.fitting.params import shape_to_u
from psfax.profiles import get_profile, pixel_convolved_fwhm
from psfax.stars.catalog import match_catalog, read_reference_catalog
from psfax.stars.detect import SEP_BLENDED, Background, detect_sources, measure_background
from psfax.stars.exposure import Exposure, check_values, read_exposure
from psfax.stars.groups import grouped_photometry
from psfax.stars.select import (DEFAULT_EDGE, SelectionOptions, bad_pixels_near, neighbour_count,
                                select_psf_stars)
from psfax.stars.stamps import Stamps, cut_stamps, stamp_fits

MODELS = ("moffat", "gaussian", "elliptical_moffat", "elliptical_gaussian")
PSF_CHOICES = ("analytic", "empirical", "auto")

#: Bits of the ``source_flags`` column of the photometry catalog (the fit's own
#: bits are in ``flags``, see :mod:`psfax.fitting.flags`).
SOURCE_FLAGS = {
    "blended": 1,      # deblended by sep, or another detection within half a stamp
    "saturated": 2,    # raw peak >= saturation_margin x SATURATE
    "masked": 4,       # a bad pixel within mask_radius px of the centre
    "extended": 8,     # failed the shape cut (galaxy, trail, cosmic ray)
    "fixed_position": 16,  # the free fit failed (see its flags): flux fitted at the detection position
    "residual": 32,    # found in the residual image (a later pass of the photometry)
}


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """Everything :func:`fit_exposure` can be told; ``selection`` holds the cut thresholds.

    ``dtype`` is the precision of the PSF fit (default float64 on the CPU), ``photometry_dtype`` that
    of the photometry of every source (float32 by default: the image's own precision; see docs/stars.md).
    ``psf``: the photometry's PSF: ``auto`` (the default: the empirical one when its reserve stars' chi2 beats
    the analytic fit's, the analytic one when it cannot be built; :mod:`psfax.stars.empirical`), ``empirical``
    or ``analytic`` (``model``; a model's name sets ``model``), its grid sampled ``psf_oversampling`` times per
    pixel, its spatial degree ``spatial_degree``.
    ``group_radius``: sources closer than this many FWHM (pixel-convolved, at the image centre) are fitted
    together; ``passes``: photometry passes, each after the first adding the sources found in the residual.
    """

    model: str = "moffat"
    optimizer: str = "lm"
    shared_shape: bool = True
    spatial_degree: int = 1
    stamp_size: int = 15
    pixel_integrated: bool = True
    clip_sigma: float = 4.0
    clip_iterations: int = 3
    photometry: bool = True
    detect_threshold: float = 5.0
    background_box: int = 64
    catalog: str | None = None
    match_radius: float = 2.0
    device: str | None = None
    dtype: str | None = None
    photometry_dtype: str | None = "float32"
    psf: str = "auto"
    psf_oversampling: int = 2
    group_radius: float = 3.0
    passes: int = 2
    selection: SelectionOptions = SelectionOptions()

    def __post_init__(self):
        if self.model not in MODELS:
            raise InputError(f"model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if self.psf in MODELS:  # an analytic model's name: that model, no empirical build
            object.__setattr__(self, "model", self.psf)
            object.__setattr__(self, "psf", "analytic")
        if self.psf not in PSF_CHOICES:
            raise InputError(f"psf must be one of {', '.join(PSF_CHOICES)} or a model name ({', '.join(MODELS)}), "
                             f"got {self.psf!r}")
        if self.psf_oversampling not in (2, 3, 4):
            raise InputError(f"psf_oversampling must be 2, 3 or 4, got {self.psf_oversampling!r}")
        if self.spatial_degree not in (0, 1, 2):
            raise InputError(f"spatial_degree must be 0, 1 or 2, got {self.spatial_degree}")
        if not self.clip_sigma > 0 or self.clip_iterations < 0:
            raise InputError(f"clip_sigma must be > 0 and clip_iterations >= 0, got "
                             f"{self.clip_sigma}, {self.clip_iterations}")
        if not self.group_radius > 0:
            raise InputError(f"group_radius must be > 0 (in FWHM), got {self.group_radius}")
        if not (isinstance(self.passes, int) and self.passes >= 1):
            raise InputError(f"passes must be an integer >= 1, got {self.passes!r}")
        if self.stamp_size < 5 or self.stamp_size % 2 == 0:
            raise InputError(f"stamp_size must be an odd number >= 5, got {self.stamp_size}")
        half = self.stamp_size // 2
        if self.selection.edge is None:  # the default edge cut follows the stamp: every stamp fits
            object.__setattr__(self, "selection", dataclasses.replace(self.selection, edge=max(DEFAULT_EDGE, half)))
        elif self.selection.edge < half:
            raise InputError(f"edge must be at least half the stamp ({half} px for stamp_size "
                             f"{self.stamp_size}), got {self.selection.edge}")

    @classmethod
    def from_kwargs(cls, **options) -> FitOptions:
        """Build from flat keywords: selection thresholds (``edge``, ``mag_min`` ...) may be
        given at top level.  Unknown names raise :class:`~psfax.errors.InputError`."""
        selection_names = {f.name for f in dataclasses.fields(SelectionOptions)}
        own_names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(options) - selection_names - own_names
        if unknown:
            raise InputError(f"unknown fit option(s): {', '.join(sorted(unknown))}")
        selection = {k: options.pop(k) for k in list(options) if k in selection_names}
        if selection:
            base = options.pop("selection", SelectionOptions())
            options["selection"] = dataclasses.replace(base, **selection)
        return cls(**options)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class ImageFit:
    """The result of the stars pipeline on one exposure.

    ``psf_result``: the :class:`psfax.FitResult` of the final PSF-star fit (its
    table has a row per selected star, the rejected ones masked and flagged);
    ``psf_stars``: its table in image coordinates (``x_fit, y_fit``; ``x_stamp, y_stamp`` and the
    corners ``x0, y0``);
    ``catalog``: PSF photometry of every usable source (``stars.parquet``);
    ``counts``: sources left after each selection cut; ``clipping``: PSF stars
    per refit; ``timings``: seconds per stage.
    """

    exposure: Exposure
    options: FitOptions
    background: Background
    psf_stamps: Stamps
    psf_result: object
    psf_stars: Table
    catalog: Table | None
    counts: dict[str, int]
    clipping: list[int]
    converged_fraction: float
    timings: dict[str, float]
    psf_choice: object = None  # psfax.stars.empirical.PSFChoice, when options.psf is not "analytic"
    photometry_passes: object = None  # psfax.stars.groups.GroupedPhotometry (residual image, sources per pass)

    def psf_at(self, x, y) -> dict[str, np.ndarray]:
        """PSF shape parameters at image positions (x, y) [px]."""
        return psf_shape_at(self.psf_result, np.atleast_1d(x), np.atleast_1d(y))

    def psf_err_at(self, x, y) -> dict[str, np.ndarray] | None:
        """Standard errors of :meth:`psf_at` (from the spatial coefficients' covariance);
        None in per-star mode."""
        if self.psf_result.shared is None:
            return None
        return self.psf_result.shared.shape_at(np.atleast_1d(x), np.atleast_1d(y))[1]

    def summary(self) -> dict:
        """JSON-ready description of the PSF model (the content of ``psf.json``)."""
        from psfax.stars.report import psf_summary

        return psf_summary(self)

    def write(self, out_dir, *, plots: bool = True, residual: bool = False) -> list[Path]:
        """Write ``stars.parquet``, ``psf_stars.parquet``, ``psf.json``, (``plots``) the figures and
        (``residual``) ``residual.fits`` into ``out_dir`` as one set: all into a staging folder there, then
        moved in, none when any cannot be (:func:`psfax.outputs.commit_files`); return the paths."""
        from psfax.outputs import commit_files, staging_folder
        from psfax.stars.report import write_outputs

        with staging_folder(out_dir) as staging:
            write_outputs(self, staging, plots=plots)
            if residual:
                from psfax.stars.groups import write_residual

                write_residual(self, staging / "residual.fits")
            return commit_files(staging, Path(out_dir))


def fit_image(science, mask=None, *, header=None, progress: Callable[[str], None] | None = None,
              **options) -> ImageFit:
    """Read ``science`` (path, or 2-D array with ``header``) and ``mask``, and run the pipeline.

    ``options`` are those of :class:`FitOptions` (selection thresholds included)
    plus the header overrides of :func:`~psfax.stars.exposure.read_exposure`
    (``gain``, ``read_noise``, ``saturate``, ``zero_point``, ``seeing``,
    ``pixscale``, ``bad_bits``).
    """
    read_names = ("gain", "read_noise", "saturate", "zero_point", "seeing", "pixscale", "bad_bits")
    read_options = {k: options.pop(k) for k in read_names if k in options}
    check_values(read_options)  # validate before the slow read
    fit_options = FitOptions.from_kwargs(**options)
    check_catalog(fit_options)
    start = time.perf_counter()
    exposure = read_exposure(science, mask, header=header, **read_options)
    read_time = time.perf_counter() - start
    result = fit_exposure(exposure, progress=progress, options=fit_options)
    result.timings = {"read": read_time, **result.timings}
    return result


def check_catalog(options: FitOptions) -> None:
    """Read the reference catalog of ``options`` (if any) once before the image, so that a missing or
    malformed one is found before the slow read (catalogs are small; the detection stage reads it again)."""
    if options.catalog is not None:
        read_reference_catalog(options.catalog)


def fit_exposure(exposure: Exposure, *, progress: Callable[[str], None] | None = None,
                 options: FitOptions | None = None, **kwargs) -> ImageFit:
    """Run background, detection, selection, stamps, PSF fit and photometry on ``exposure``.

    Give either ``options`` (a :class:`FitOptions`) or its fields as keywords.
    ``progress(stage)`` is called as each stage starts.
    """
    options = options if options is not None else FitOptions.from_kwargs(**kwargs)
    timer = _StageTimer(progress)
    with timer("background"):
        background = measure_background(exposure, box=options.background_box)
    with timer("detection"):
        detections = detect_sources(exposure, background, threshold=options.detect_threshold)
        sources = detections
        if options.catalog is not None:
            reference = read_reference_catalog(options.catalog)
            sources = match_catalog(exposure, detections, reference, radius=options.match_radius)
    with timer("selection"):
        selection = select_psf_stars(sources, exposure, options.selection, detections=detections)
        chosen = sources[selection.index]
    with timer("stamps"):
        stamps = cut_stamps(exposure, background, chosen["x"], chosen["y"], options.stamp_size)
    with timer("fit"):
        result, kept, clipping, converged = fit_psf_stars(stamps, exposure, options, progress=timer.progress)
    psf_stamps = _take(stamps, kept)
    psf_stars = _image_table(result.table[kept], psf_stamps, exposure)
    psf_stars["a_moment"], psf_stars["b_moment"] = chosen["a"][kept], chosen["b"][kept]
    psf_stars["mag_select"] = (chosen["mag"] if "mag" in chosen.colnames else chosen["mag_aper"])[kept]
    choice = None
    if options.psf != "analytic":
        from psfax.stars.empirical import choose_psf

        with timer("empirical"):
            analytic_chi2 = np.full(len(stamps.data), np.nan)  # NaN for the stars the analytic fit's clip removed
            analytic_chi2[kept] = np.asarray(result.table["reduced_chi2"], float)[kept]
            choice = choose_psf(exposure, background, stamps, analytic_chi2, options)
    catalog = grouped = None
    if options.photometry:
        with timer("photometry"):
            catalog, grouped = psf_photometry(exposure, background, detections, result, options, timer.progress,
                                              choice)
            catalog["psf_star"] = _is_psf_star(catalog, psf_stars)
    return ImageFit(exposure=exposure, options=options, background=background,
                    psf_stamps=psf_stamps, psf_result=result, psf_stars=psf_stars,
                    catalog=catalog, counts=selection.counts, clipping=clipping,
                    converged_fraction=converged, timings=timer.timings,
                    photometry_passes=grouped, psf_choice=choice)


def fit_psf_stars(stamps: Stamps, exposure: Exposure, options: FitOptions,
                  progress: Callable[[str], None] | None = None):
    """Fit the PSF model to the stars, refitting after chi2-outlier rejection.

    The clipping fits only rank the stars by chi2: they stop once the predicted chi2 decrease is below
    :data:`CLIP_CHI2_TOLERANCE` per star; the fit after the last clipping converges in full (when the
    outliers run out first, one more fit from where the last one stopped does).
    A rejected star stays in the batch with every pixel masked (the engine then
    leaves it out and flags it), so each refit has the same array shapes,
    reuses the compiled program and starts from the previous solution.  Returns ``(FitResult, kept indices into
    stamps, stars per fit, converged fraction of the first fit)``; ``progress`` hears of each fit.
    """
    kept = np.ones(len(stamps), bool)
    clipping = []
    converged = None
    result = None
    for refit in range(options.clip_iterations + 1):
        last = refit == options.clip_iterations
        if progress is not None:
            progress(f"fit {refit + 1} of at most {options.clip_iterations + 1}: {kept.sum()} PSF stars")
        masked = dataclasses.replace(stamps, mask=stamps.mask | ~kept[:, None, None])
        result = _fit(masked, exposure, options, start=result,
                      chi2_tolerance=None if last else CLIP_CHI2_TOLERANCE * kept.sum())
        table = result.table
        clipping.append(int(kept.sum()))
        if converged is None:
            converged = float(np.mean(np.asarray(table["converged"], bool)))
        outliers = np.zeros_like(kept)
        outliers[kept] = chi2_outliers(np.asarray(table["reduced_chi2"], float)[kept], options.clip_sigma)
        outliers[kept] |= np.asarray(table["flags"])[kept] != 0
        if last:
            break
        if not outliers.any() or outliers[kept].all():
            result = _fit(masked, exposure, options, start=result)  # converged in full on these stars
            break
        kept &= ~outliers
    return result, np.flatnonzero(kept), clipping, converged


CLIP_CHI2_TOLERANCE = 1.0
"""Predicted chi2 decrease per PSF star below which a clipping fit stops: small beside the spread of
the stars' chi2 that the clipping looks at (its MAD is ~0.3 in reduced chi2, ~70 in chi2 for 15 x 15)."""


def _fit(stamps: Stamps, exposure: Exposure, options: FitOptions, psf=None, start=None, chi2_tolerance=None):
    """One call of :func:`psfax.fitting.fit_stamps` on ``stamps``: the PSF fit (``psf`` None: the profile
    of ``options``, shared when ``options.shared_shape``), or photometry with the known ``psf`` (in
    ``options.photometry_dtype``); a refit starts from the previous ``start``."""
    positions = np.column_stack([stamps.x0 + stamps.x_init, stamps.y0 + stamps.y_init])
    shared = psf is None and options.shared_shape
    return fit_stamps(
        stamps.data, variance=stamps.variance, mask=stamps.mask,
        psf=Free(get_profile(options.model), options.pixel_integrated) if psf is None else psf,
        shared_shape=shared, optimizer=options.optimizer,
        dtype=options.dtype if psf is None else options.photometry_dtype, device=options.device,
        positions=positions if shared else None,
        spatial_degree=options.spatial_degree if shared else 0, start=start, chi2_tolerance=chi2_tolerance)


def psf_shape_at(result, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Shape parameters of the PSF model at image positions (x, y).

    Shared mode (``result.shared``): the fitted spatial polynomial.  Per-star mode: the median of
    the stars' shapes (fits flagged bad excluded), the same everywhere.
    """
    if result.shared is not None:
        return {k: np.asarray(v, float) for k, v in result.psf_at(x, y).items()}
    table = result.table
    good = np.asarray(table["flags"]) == 0
    names = [n for n in ("fwhm", "beta", "ellipticity", "theta") if n in table.colnames]
    return {n: np.full(len(x), np.median(np.asarray(table[n], float)[good])) for n in names}


def psf_model_at(result, x: np.ndarray, y: np.ndarray) -> Fixed:
    """The fitted PSF at image positions (x, y) as a PSF value (:class:`psfax.fitting.Fixed`: one
    known shape per position), for photometry."""
    profile = get_profile(result.model)
    if result.shared is not None:
        shape_u = result.shared.shape_u_at(x, y)
    else:
        shape_u = shape_to_u(profile, psf_shape_at(result, x, y))
    return Fixed(profile, result.pixel_integrated, shape_u=shape_u)


def photometry_psf_at(result, choice, dtype) -> Callable:
    """``psf_at(x, y)``, the photometry's PSF value at image positions: the empirical PSF of ``choice`` when it
    was chosen (tables in ``dtype``), else the analytic fit ``result`` (:func:`psf_model_at`)."""
    if choice is not None and choice.psf is not None:
        from psfax.psf.kind import empirical_kind

        return lambda x, y: empirical_kind(choice.psf, x, y, dtype)
    return lambda x, y: psf_model_at(result, x, y)


def grouping_fwhm(result, image_shape) -> float:
    """The pixel-convolved FWHM [px] of the fitted PSF at the image centre ``(nx / 2, ny / 2)``: the unit of
    the photometry's grouping radius and of the residual pass's minimum separation."""
    ny, nx = image_shape
    shape = psf_shape_at(result, np.array([nx / 2]), np.array([ny / 2]))
    return pixel_convolved_fwhm(result.model, {k: v[0] for k, v in shape.items()})


def psf_photometry(exposure: Exposure, background: Background, detections: Table, result,
                   options: FitOptions, progress: Callable[[str], None] | None = None, choice=None):
    """Fit (x, y, flux, sky) of every detection whose stamp fits, the PSF held fixed (the empirical PSF of
    ``choice`` when it was chosen, its model-error floor then put into ``chi2`` and its flux model error and
    the blends' share into ``flux_err``: :mod:`psfax.stars.empirical`; else the analytic fit ``result``), in
    groups over
    ``options.passes`` passes from the detections' positions and aperture fluxes
    (:func:`psfax.stars.groups.grouped_photometry`).

    Returns the catalog and the :class:`~psfax.stars.groups.GroupedPhotometry`.  The catalog has image
    ``x_fit, y_fit``, ``ra, dec`` (deg, from the WCS), the fit columns with ``flux_err_stat`` (``flux_err``
    without the flux model error), ``mag, mag_err`` (through MAGZP; from ``flux_err``, no zero-point error),
    ``source_flags`` (:data:`SOURCE_FLAGS`) and ``group_id, group_size``.
    """
    x, y = np.asarray(detections["x"], float), np.asarray(detections["y"], float)
    usable = np.flatnonzero(stamp_fits(x, y, exposure.shape, options.stamp_size))
    empirical = choice is not None and choice.psf is not None
    psf_at = photometry_psf_at(result, choice, np.dtype(options.photometry_dtype or "float64"))
    shape_at = None if empirical else (lambda xs, ys: psf_shape_at(result, xs, ys))
    fwhm = grouping_fwhm(result, exposure.shape)
    start = {"x": x[usable], "y": y[usable], "flux": np.asarray(detections["aper_flux"], float)[usable]}
    grouped = grouped_photometry(exposure, background, detections[usable], start, psf_at, fwhm, options, progress)
    sources = grouped.sources
    fit_table, corners = grouped.stamp_table(background, options.stamp_size, shape_at)
    fit_table.add_column(np.asarray(fit_table["flux_err"], float), name="flux_err_stat",
                         index=fit_table.colnames.index("flux_err") + 1)
    if empirical:
        from psfax.stars.empirical import apply_floor, apply_flux_model_error, blend_variance

        variance = cut_stamps(exposure, background, sources["x"], sources["y"], options.stamp_size).variance
        apply_floor(fit_table, corners, grouped.residual_stamps(corners, options.stamp_size), variance, choice.psf,
                    choice.model_error_floor)
        blends = blend_variance(choice.psf, corners.x0 + np.asarray(fit_table["x_fit"], float),
                                corners.y0 + np.asarray(fit_table["y_fit"], float),
                                np.asarray(fit_table["flux_fit"], float), grouped.group_id, grouped.image.sky_var,
                                ~grouped.image.usable, grouped.image.gain, options.stamp_size,
                                choice.model_error_floor)
        apply_flux_model_error(fit_table, choice.flux_model_error, blends)
    table = _image_table(fit_table, corners, exposure)
    found_later = np.arange(len(sources)) >= len(usable)
    table["source_flags"] = (_source_flags(sources, sources, exposure, options)
                             + SOURCE_FLAGS["fixed_position"] * grouped.fit["fixed_position"]
                             + SOURCE_FLAGS["residual"] * found_later).astype(np.int32)
    table["mag_aper"] = sources["mag_aper"]
    table["group_id"], table["group_size"] = grouped.group_id, grouped.group_size
    return table, grouped


def _source_flags(sources: Table, detections: Table, exposure: Exposure,
                  options: FitOptions) -> np.ndarray:
    sel = options.selection
    x, y = np.asarray(sources["x"], float), np.asarray(sources["y"], float)
    near = neighbour_count(x, y, options.stamp_size / 2, np.asarray(detections["x"], float),
                           np.asarray(detections["y"], float))
    blended = ((np.asarray(sources["sep_flag"]) & SEP_BLENDED) != 0) | (near > 0)
    saturated = np.asarray(sources["raw_peak"]) >= sel.saturation_margin * exposure.saturate
    masked = bad_pixels_near(exposure, x, y, sel.mask_radius) > 0
    a, b = np.asarray(sources["a"], float), np.asarray(sources["b"], float)
    extended = a >= sel.max_elongation * b
    return (SOURCE_FLAGS["blended"] * blended + SOURCE_FLAGS["saturated"] * saturated
            + SOURCE_FLAGS["masked"] * masked + SOURCE_FLAGS["extended"] * extended).astype(np.int32)


def _image_table(fit_table: Table, stamps: Stamps, exposure: Exposure) -> Table:
    """The fit table in image coordinates, as photutils has them: ``x_fit, y_fit`` image pixels (the
    stamp-local ones as ``x_stamp, y_stamp``), RA/Dec and magnitudes added, the stamp corners last."""
    table = fit_table.copy(copy_data=False)
    table.rename_columns(["x_fit", "y_fit"], ["x_stamp", "y_stamp"])
    x = stamps.x0 + np.asarray(table["x_stamp"], float)
    y = stamps.y0 + np.asarray(table["y_stamp"], float)
    front = {"x_fit": x, "y_fit": y}
    if exposure.wcs is not None:
        ra, dec = exposure.wcs.pixel_to_world_values(x, y)
        front.update(ra=np.asarray(ra), dec=np.asarray(dec))
    flux = np.asarray(table["flux_fit"], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        front["mag"] = np.where(flux > 0, exposure.zero_point - 2.5 * np.log10(flux), np.nan)
        front["mag_err"] = np.where(flux > 0, 2.5 / np.log(10) * np.asarray(table["flux_err"]) / flux,
                                    np.nan)
    for i, (name, values) in enumerate(front.items()):
        table.add_column(values, name=name, index=i)
    table["x0"], table["y0"] = stamps.x0, stamps.y0
    return table


def _is_psf_star(catalog: Table, psf_stars: Table) -> np.ndarray:
    """True for catalog rows within 1 px of a PSF star (False for a row without a position: a source
    whose fit had too few usable pixels has NaN x, y)."""
    stars = np.column_stack([psf_stars["x_fit"], psf_stars["y_fit"]]).astype(float)
    rows = np.column_stack([catalog["x_fit"], catalog["y_fit"]]).astype(float)
    found = np.isfinite(rows).all(axis=1)
    dist = np.full(len(rows), np.inf)
    if found.any():
        dist[found], _ = cKDTree(stars[np.isfinite(stars).all(axis=1)]).query(rows[found])
    return dist < 1.0


def _take(stamps: Stamps, index: np.ndarray) -> Stamps:
    return Stamps(**{f.name: getattr(stamps, f.name)[index] for f in dataclasses.fields(Stamps)})


class _StageTimer:
    """``with timer("name"):`` records the stage's seconds of compute in ``timer.timings["name"]`` and
    those of JAX compilation, when any, in ``timings["name_compile"]``; ``progress`` hears of both."""

    def __init__(self, progress: Callable[[str], None] | None):
        self.progress = progress or (lambda stage: None)
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        from psfax.timing import compile_watch

        self.progress(name)
        start = time.perf_counter()
        with compile_watch(lambda: self.progress(f"{name}: compiling (first run only; cached afterwards)"),
                           lambda: self.progress(name)) as compiled:
            yield
        self.timings[name] = time.perf_counter() - start - compiled.seconds
        if compiled.seconds:
            self.timings[f"{name}_compile"] = compiled.seconds

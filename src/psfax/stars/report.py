"""Outputs of a stars fit: ``stars.parquet``, ``psf_stars.parquet``, ``psf.json``, figures and ``report.html``.

Every file is written through :func:`psfax.io.atomic.atomic_path`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from psfax.io.atomic import atomic_path
from psfax.profiles import pixel_convolved_fwhm
from psfax.stars import plots
from psfax.stars.catalog import write_catalog
from psfax.version import psfax_version

GRID_POINTS = 24  # per axis, for the FWHM/ellipticity maps and the FWHM range


def _jsonable(value):
    """Convert numpy scalars/arrays and non-finite floats for ``json.dumps``."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def image_grid(shape: tuple[int, int], n: int = GRID_POINTS):
    """``n`` x ``n`` grid of pixel positions spanning the image: (xs, ys, X, Y)."""
    ny, nx = shape
    xs, ys = np.linspace(0, nx - 1, n), np.linspace(0, ny - 1, n)
    gx, gy = np.meshgrid(xs, ys)
    return xs, ys, gx, gy


def psf_summary(fit) -> dict:
    """The content of ``psf.json`` for an :class:`~psfax.stars.pipeline.ImageFit`."""
    exp = fit.exposure
    ny, nx = exp.shape
    mid = ((nx - 1) / 2, (ny - 1) / 2)
    centre = {k: float(v[0]) for k, v in fit.psf_at(*mid).items()}
    centre_err = fit.psf_err_at(*mid)
    centre_err = None if centre_err is None else {k: float(v[0]) for k, v in centre_err.items()}
    _, _, gx, gy = image_grid(exp.shape)
    fwhm_grid = fit.psf_at(gx.ravel(), gy.ravel())["fwhm"]
    table = fit.psf_stars
    engine = fit.psf_result.to_dict()
    for name in ("n_stars", "n_converged", "median_reduced_chi2"):  # renamed below: of which stars
        engine.pop(name)
    for name in ("gain", "read_noise", "model_variance"):  # not used: the pipeline passes a variance array
        engine["options"].pop(name, None)
    engine["options"]["variance"] = "array (see noise_model)"
    pixel_fwhm = pixel_convolved_fwhm(fit.options.model, centre)
    return _jsonable({
        "psfax_version": psfax_version(),
        "image": exp.name,
        "image_shape": [ny, nx],
        "model": fit.options.model,
        "pixel_integrated": fit.options.pixel_integrated,
        "shared_shape": fit.options.shared_shape,
        "spatial_degree": fit.options.spatial_degree if fit.options.shared_shape else 0,
        "psf_at_centre": centre,
        "psf_at_centre_err": centre_err,
        "fwhm": {
            "intrinsic_px": centre["fwhm"],
            "intrinsic_px_err": None if centre_err is None else centre_err["fwhm"],
            "intrinsic_arcsec": centre["fwhm"] * exp.pixscale,
            "pixel_convolved_px": pixel_fwhm,
            "pixel_convolved_arcsec": pixel_fwhm * exp.pixscale,
            "header_seeing_px": exp.seeing,
            "intrinsic_range_px": [float(np.min(fwhm_grid)), float(np.max(fwhm_grid))],
            "about": FWHM_ABOUT},
        "noise_model": noise_model(fit),
        "counts": star_counts(fit),
        "median_reduced_chi2_kept_psf_stars": float(np.median(table["reduced_chi2"])),
        "selection_counts": fit.counts,
        "psf_stars_per_refit": fit.clipping,
        "fit": engine,
        "header": {"gain": exp.gain, "read_noise": exp.read_noise, "saturate": exp.saturate,
                   "zero_point": exp.zero_point, "zero_point_err": exp.zero_point_err,
                   "seeing_px": exp.seeing, "pixscale_arcsec": exp.pixscale,
                   "bad_mask_bits": exp.bad_bits},
        "options": fit.options.to_dict(),
        "psf_choice": None if fit.psf_choice is None else fit.psf_choice.summary(),
        "timings_s": fit.timings,
        "photometry_passes": None if fit.photometry_passes is None else fit.photometry_passes.summary(),
    })


FWHM_ABOUT = ("intrinsic: FWHM of the fitted profile before pixel integration (the model's fwhm parameter); "
              "pixel_convolved: FWHM of that profile integrated over 1 x 1 px pixels (mean of the x and y cuts), "
              "the quantity a measurement on the image, such as the header's SEEING, gives")


def noise_model(fit) -> dict:
    """The weights the PSF fit and the photometry used (see :mod:`psfax.stars.stamps`)."""
    exp, bg = fit.exposure, fit.background
    predicted = float(np.sqrt(max(np.median(bg.level), 0) / exp.gain + (exp.read_noise / exp.gain) ** 2))
    return {
        "variance": "max(data - sky, 0) / gain + sky_rms^2 per pixel [ADU^2], passed to the fit as an array",
        "source_term_from": "data (not recomputed from the model)",
        "gain_e_per_adu": exp.gain,
        "sky_rms": "sep's background rms map: measured, holds the sky's Poisson noise and the read noise",
        "read_noise_e": exp.read_noise,
        "read_noise_enters": "through the measured sky_rms only",
        "sky_rms_adu": {"measured_median": bg.rms, "predicted_from_gain_and_read_noise": predicted},
    }


def star_counts(fit) -> dict:
    """Each count of the PSF fit named for what it is."""
    first = fit.clipping[0] if fit.clipping else 0
    table = fit.psf_stars
    return {
        "psf_stars_selected": len(fit.psf_result.table),
        "psf_stars_in_first_fit": first,
        "psf_stars_converged_in_first_fit": int(round(fit.converged_fraction * len(fit.psf_result.table))),
        "converged_fraction_first_fit": fit.converged_fraction,
        "psf_stars_kept_after_clipping": len(table),
        "kept_psf_stars_converged_in_final_fit": int(np.sum(np.asarray(table["converged"], bool))),
        "photometry_sources": None if fit.catalog is None else len(fit.catalog),
    }


def summary_rows(info: dict) -> list[tuple[str, str]]:
    """(label, text) rows summarising a ``psf.json`` (the CLI's table and the report page's)."""
    fwhm, counts, noise = info["fwhm"], info["counts"], info["noise_model"]
    centre = ", ".join(f"{k}={v:.3f}" for k, v in info["psf_at_centre"].items())
    rows = [("PSF at centre", f"{info['model']}: {centre}"),
            ("FWHM, intrinsic", f"{fwhm['intrinsic_px']:.3f} px = {fwhm['intrinsic_arcsec']:.3f} arcsec (range "
                                f"{fwhm['intrinsic_range_px'][0]:.3f}-{fwhm['intrinsic_range_px'][1]:.3f} px)"),
            ("FWHM, pixel-convolved", f"{fwhm['pixel_convolved_px']:.3f} px = {fwhm['pixel_convolved_arcsec']:.3f} "
                                      f"arcsec (header SEEING {fwhm['header_seeing_px']:.3f} px)"),
            ("weights", f"{noise['variance']}; gain {noise['gain_e_per_adu']:g} e-/ADU"),
            ("sources per cut", " -> ".join(f"{k} {v}" for k, v in info["selection_counts"].items())),
            ("PSF stars per refit", " -> ".join(str(n) for n in info["psf_stars_per_refit"])),
            ("PSF stars", f"{counts['psf_stars_selected']} selected, {counts['psf_stars_converged_in_first_fit']} "
                          f"converged in the first fit, {counts['psf_stars_kept_after_clipping']} kept after "
                          f"clipping ({counts['kept_psf_stars_converged_in_final_fit']} of them converged)"),
            ("median reduced chi2", f"{info['median_reduced_chi2_kept_psf_stars']:.3f} (kept PSF stars)")]
    choice = info.get("psf_choice")
    if choice is not None and choice.get("not_built"):
        rows.append(("photometry PSF", f"{choice['chosen']} (asked: {choice['asked']}; no empirical PSF: "
                                       f"{choice['not_built']})"))
    elif choice is not None:
        figures = ", ".join(f"{k} {v:.3f}" for k, v in choice["reserve_median_reduced_chi2"].items())
        rows.append(("photometry PSF", f"{choice['chosen']} (asked: {choice['asked']}; reserve-star median reduced "
                                       f"chi2: {figures}; aperture correction to {choice['aperture_radius_px']:g} px "
                                       f"{choice['aperture_correction']:.4f}; model-error floor "
                                       f"{choice['model_error_floor']:.4f}; flux model error "
                                       f"{100 * choice['flux_model_error']:.2f} ± "
                                       f"{100 * choice['flux_model_error_se']:.2f} %)"))
    if counts["photometry_sources"] is not None:
        rows.append(("PSF photometry", f"{counts['photometry_sources']} sources"))
        passes = info.get("photometry_passes")
        if passes:
            rows.append(("sources per pass", " + ".join(str(n) for n in passes["sources_per_pass"])
                         + f"; largest group {passes['largest_group']}"))
    rows.append(("time [s]", ", ".join(f"{k.replace('_compile', ' (compiling)')} {v:.2f}"
                                       for k, v in info["timings_s"].items())))
    return rows


def model_stamps(fit, table, size: int) -> np.ndarray:
    """Noise-free model stamps of the rows of a catalog ``table`` (in its stamps' pixels)."""
    import psfax

    params = {"x": table["x_stamp"], "y": table["y_stamp"], "flux": table["flux_fit"], "bkg": table["bkg_fit"]}
    params.update({n: table[n] for n in ("fwhm", "beta", "ellipticity", "theta") if n in table.colnames})
    params = {k: np.asarray(v, float) for k, v in params.items()}
    return np.asarray(psfax.render_stamps(params, (size, size), model=fit.options.model,
                                          pixel_integrated=fit.options.pixel_integrated))


def write_figures(fit, out_dir: Path) -> list[Path]:
    """Residual mosaic, radial profile, FWHM map and ellipticity whiskers of ``fit`` (PNG, 150 dpi)."""
    stamps, table = fit.psf_stamps, fit.psf_stars
    size = stamps.size
    model = model_stamps(fit, table, size)
    pick = plots.sample_indices(np.asarray(table["flux_fit"]), 24)
    paths = [plots.plot_residuals(stamps.data[pick], model[pick], stamps.variance[pick],
                                  stamps.mask[pick], pick, out_dir / "residuals.png")]

    flux = np.asarray(table["flux_fit"])[:, None, None]
    bkg = np.asarray(table["bkg_fit"])[:, None, None]
    grid = np.arange(size, dtype=float)
    x, y = np.asarray(table["x_stamp"], float), np.asarray(table["y_stamp"], float)
    dx = grid[None, None, :] - x[:, None, None]
    dy = grid[None, :, None] - y[:, None, None]
    good = ~stamps.mask
    ny, nx = fit.exposure.shape
    centre = {k: float(v[0]) for k, v in fit.psf_at((nx - 1) / 2, (ny - 1) / 2).items()}
    paths.append(plots.plot_radial_profile(np.hypot(dx, dy)[good], ((stamps.data - bkg) / flux)[good],
                                           ((model - bkg) / flux)[good], out_dir / "radial_profile.png",
                                           centre["fwhm"], pixel_convolved_fwhm(fit.options.model, centre)))

    sx, sy = np.asarray(table["x_fit"], float), np.asarray(table["y_fit"], float)
    local = fit.psf_at(sx, sy)
    sigma_w = max(2.0, float(np.median(local["fwhm"])))
    data_size, data_e, data_theta = plots.stamp_moments(stamps.data - bkg, x, y, stamps.mask, sigma_w)
    model_size, model_e, model_theta = plots.stamp_moments(model - bkg, x, y, stamps.mask, sigma_w)
    xs, ys, gx, gy = image_grid(fit.exposure.shape)
    shape_grid = fit.psf_at(gx.ravel(), gy.ravel())
    paths.append(plots.plot_fwhm_map(xs, ys, shape_grid["fwhm"].reshape(gx.shape), sx, sy,
                                     local["fwhm"] * data_size / model_size, out_dir / "fwhm_map.png"))
    paths.append(plots.plot_whiskers(sx, sy, (data_e, data_theta), (model_e, model_theta),
                                     out_dir / "ellipticity_map.png", fit.exposure.shape))
    return paths


def write_outputs(fit, out_dir: Path, *, plots: bool = True) -> list[Path]:
    """All output files of ``fit`` in ``out_dir`` (``report.html`` last); returns their paths."""
    import time

    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if fit.catalog is not None:
        paths.append(write_catalog(fit.catalog, out_dir / "stars.parquet"))
    paths.append(write_catalog(fit.psf_stars, out_dir / "psf_stars.parquet"))
    if fit.psf_choice is not None and fit.psf_choice.build is not None:
        from psfax.psf.io import write_psf_fits

        paths.append(write_psf_fits(fit.psf_choice.build.psf, out_dir / "psf.fits"))
    figures = []
    if plots:
        figure_start = time.perf_counter()
        figures = write_figures(fit, out_dir)
        paths += figures
        fit.timings["plots"] = time.perf_counter() - figure_start
    fit.timings["write"] = time.perf_counter() - start - fit.timings.get("plots", 0.0)
    info = fit.summary()
    with atomic_path(out_dir / "psf.json") as tmp:
        tmp.write_text(json.dumps(info, indent=2) + "\n")
    paths.append(out_dir / "psf.json")
    paths.append(write_report_page(info, out_dir, figures, paths))
    return paths


def write_report_page(info: dict, out_dir: Path, figures: list[Path], files: list[Path]) -> Path:
    """``report.html`` of a stars fit: the summary, the cuts, the stage times, the figures, the files."""
    from psfax.io.report_page import write_report

    times = info["timings_s"]
    stages = [(k, f"{v:.2f}", f"{times.get(k + '_compile', 0.0):.2f}") for k, v in times.items()
              if not k.endswith("_compile")]
    tables = {"Selection cuts": (("cut", "sources left"), list(info["selection_counts"].items())),
              "Chi2 clipping": (("fit", "PSF stars"), list(enumerate(info["psf_stars_per_refit"], 1))),
              "Stage times": (("stage", "compute [s]", "JAX compilation [s]"), stages)}
    return write_report(out_dir, f"psfax stars fit: {Path(info['image']).name}", summary_rows(info),
                        tables=tables, figures=figures, files=files)

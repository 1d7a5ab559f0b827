"""Outputs of a stars fit: ``stars.parquet``, ``psf_stars.parquet``, ``psf.json`` and figures.

Every file is written through :func:`psfax.io.atomic.atomic_path`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from psfax.io.atomic import atomic_path
from psfax.stars import plots
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
        "fwhm_px": centre["fwhm"],
        "fwhm_px_err": None if centre_err is None else centre_err["fwhm"],
        "fwhm_arcsec": centre["fwhm"] * exp.pixscale,
        "fwhm_range_px": [float(np.min(fwhm_grid)), float(np.max(fwhm_grid))],
        "fit": fit.psf_result.to_dict(),
        "n_psf_stars": len(table),
        "converged_fraction_first_fit": fit.converged_fraction,
        "median_reduced_chi2": float(np.median(table["reduced_chi2"])),
        "selection_counts": fit.counts,
        "stars_per_refit": fit.clipping,
        "n_photometry": None if fit.catalog is None else len(fit.catalog),
        "header": {"gain": exp.gain, "read_noise": exp.read_noise, "saturate": exp.saturate,
                   "zero_point": exp.zero_point, "zero_point_err": exp.zero_point_err,
                   "seeing_px": exp.seeing, "pixscale_arcsec": exp.pixscale,
                   "bad_mask_bits": exp.bad_bits},
        "sky_rms_adu": {"measured": fit.background.rms,
                        "poisson_and_read_noise": float(np.sqrt(max(np.median(fit.background.level), 0) / exp.gain
                                                     + (exp.read_noise / exp.gain) ** 2))},
        "options": fit.options.to_dict(),
        "timings_s": fit.timings,
    })


def model_stamps(fit, table, size: int) -> np.ndarray:
    """Noise-free model stamps of the rows of a fit ``table`` (stamp coordinates)."""
    import psfax

    params = {"x": table["x_fit"], "y": table["y_fit"], "flux": table["flux_fit"], "bkg": table["bkg_fit"]}
    params.update({n: table[n] for n in ("fwhm", "beta", "ellipticity", "theta") if n in table.colnames})
    params = {k: np.asarray(v, float) for k, v in params.items()}
    return np.asarray(psfax.render_stamps(params, (size, size), model=fit.options.model,
                                          pixel_integrated=fit.options.pixel_integrated))


def write_figures(fit, out_dir: Path) -> list[Path]:
    """Residual mosaic, radial profile, FWHM and ellipticity maps of ``fit``."""
    stamps, table = fit.psf_stamps, fit.psf_stars
    size = stamps.size
    model = model_stamps(fit, table, size)
    pick = plots.sample_indices(np.asarray(table["flux_fit"]), 24)
    paths = [plots.plot_residuals(stamps.data[pick], model[pick], stamps.variance[pick],
                                  stamps.mask[pick], out_dir / "residuals.png")]

    flux = np.asarray(table["flux_fit"])[:, None, None]
    bkg = np.asarray(table["bkg_fit"])[:, None, None]
    grid = np.arange(size, dtype=float)
    dx = grid[None, None, :] - np.asarray(table["x_fit"])[:, None, None]
    dy = grid[None, :, None] - np.asarray(table["y_fit"])[:, None, None]
    good = ~stamps.mask
    radius = np.hypot(dx, dy)[good]
    ny, nx = fit.exposure.shape
    centre_fwhm = float(fit.psf_at((nx - 1) / 2, (ny - 1) / 2)["fwhm"][0])
    paths.append(plots.plot_radial_profile(radius, ((stamps.data - bkg) / flux)[good],
                                           ((model - bkg) / flux)[good],
                                           out_dir / "radial_profile.png", centre_fwhm))

    xs, ys, gx, gy = image_grid(fit.exposure.shape)
    shape_grid = fit.psf_at(gx.ravel(), gy.ravel())
    sx, sy = np.asarray(table["x"]), np.asarray(table["y"])
    paths.append(plots.plot_map(xs, ys, shape_grid["fwhm"].reshape(gx.shape), sx, sy,
                                out_dir / "fwhm_map.png", "PSF FWHM [px]"))
    if "g1" in shape_grid:
        from psfax.profiles import shear_to_ellipticity

        ell, _ = shear_to_ellipticity(shape_grid["g1"], shape_grid["g2"])
        paths.append(plots.plot_map(xs, ys, np.asarray(ell).reshape(gx.shape), sx, sy,
                                    out_dir / "ellipticity_map.png", "PSF ellipticity 1 - b/a (model)"))
    else:
        ell = 1.0 - np.asarray(table["b_moment"]) / np.asarray(table["a_moment"])
        paths.append(plots.plot_map(xs, ys, None, sx, sy, out_dir / "ellipticity_map.png",
                                    "ellipticity 1 - b/a (sep moments)", star_values=ell))
    return paths


def write_table(table, path: Path) -> Path:
    with atomic_path(path) as tmp:
        table.write(tmp, format="parquet", overwrite=True)
    return path


def write_outputs(fit, out_dir: Path, *, plots: bool = True) -> list[Path]:
    """All output files of ``fit`` in ``out_dir``; returns their paths."""
    import time

    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    if fit.catalog is not None:
        paths.append(write_table(fit.catalog, out_dir / "stars.parquet"))
    paths.append(write_table(fit.psf_stars, out_dir / "psf_stars.parquet"))
    if plots:
        figure_start = time.perf_counter()
        paths += write_figures(fit, out_dir)
        fit.timings["plots"] = time.perf_counter() - figure_start
    fit.timings["write"] = time.perf_counter() - start - fit.timings.get("plots", 0.0)
    with atomic_path(out_dir / "psf.json") as tmp:
        tmp.write_text(json.dumps(fit.summary(), indent=2) + "\n")
    paths.append(out_dir / "psf.json")
    return paths

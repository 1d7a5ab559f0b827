"""Figures of a stars fit, one PNG each at :data:`DPI`, drawn with few artists (Agg backend).

* :func:`plot_residuals`: data, model (asinh stretch) and normalised residual (data - model) / sigma
  of a sample of PSF stars, each labelled with its row in ``psf_stars.parquet``;
* :func:`plot_radial_profile`: sky-subtracted, flux-normalised pixel values of all
  PSF stars against the distance to their fitted centre, data and model;
* :func:`plot_fwhm_map`: the model's FWHM surface with the stars' own values on top (same colours);
* :func:`plot_whiskers`: ellipticity whiskers, length proportional to 1 - b/a along the major axis,
  mean per cell of the stars' pixels and of the model stamps measured the same way.

:func:`stamp_moments` measures the stars' own size and shape from their pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from psfax.io.atomic import atomic_path

DPI = 150


def preload_matplotlib() -> None:
    """Import matplotlib's figure and Agg modules (0.3-0.7 s of a new process), e.g. in a thread while the fit
    computes (JAX releases the GIL while it runs), so that the first figure starts at once."""
    from matplotlib.backends import backend_agg  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401


def _figure(ncols: int = 1, width: float = 5.0, height: float = 4.2):
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg by default

    fig = Figure(figsize=(width * ncols, height))
    # fixed margins: a constrained layout would cost a second draw of every figure
    fig.subplots_adjust(left=0.17 / ncols, right=1 - 0.1 / ncols, bottom=0.12, top=0.9, wspace=0.3)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def mosaic(stamps: np.ndarray, ncols: int) -> np.ndarray:
    """Tile (N, S, S) stamps into one image, ``ncols`` per row, NaN-padded and separated; the first
    row of stamps is the top one when shown with ``origin="lower"`` (see :func:`mosaic_corner`)."""
    n, s, _ = stamps.shape
    nrows = -(-n // ncols)
    out = np.full((nrows * (s + 1), ncols * (s + 1)), np.nan)
    for i in range(n):  # a few dozen stamps for a figure, not a hot path
        x0, y0 = mosaic_corner(i, n, ncols, s)
        out[y0: y0 + s, x0: x0 + s] = stamps[i]
    return out


def mosaic_corner(i: int, n: int, ncols: int, s: int) -> tuple[int, int]:
    """(column, row) of the mosaic pixel where stamp ``i`` of ``n`` starts."""
    r, c = divmod(i, ncols)
    return c * (s + 1), (-(-n // ncols) - 1 - r) * (s + 1)


def sample_indices(flux: np.ndarray, n: int) -> np.ndarray:
    """``n`` indices spread evenly in rank of ``flux`` (faint to bright)."""
    order = np.argsort(flux)
    return order[np.unique(np.linspace(0, len(order) - 1, min(n, len(order))).astype(int))]


def stamp_moments(images: np.ndarray, x: np.ndarray, y: np.ndarray, mask: np.ndarray,
                  sigma_w: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian-weighted second moments of sky-subtracted (N, S, S) ``images`` about stamp positions
    (x, y), weight ``exp(-r^2 / (2 sigma_w^2))``, bad pixels (``mask``) left out.

    Returns ``(size, ellipticity, theta)``: ``size = sqrt((Ixx + Iyy) / 2)`` [px], ``ellipticity =
    1 - sqrt(l2 / l1)`` of the moment matrix's eigenvalues, ``theta = atan2(2 Ixy, Ixx - Iyy) / 2``
    [rad, from +x].  The weight rounds and shrinks the moments; compare data with the model measured
    the same way, never with the profile's parameters directly.
    """
    s = images.shape[-1]
    grid = np.arange(s, dtype=float)
    dx = grid[None, None, :] - x[:, None, None]
    dy = grid[None, :, None] - y[:, None, None]
    w = np.exp(-(dx ** 2 + dy ** 2) / (2 * sigma_w ** 2)) * ~mask * images
    norm = w.sum(axis=(1, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        ixx, iyy, ixy = ((w * m).sum(axis=(1, 2)) / norm for m in (dx * dx, dy * dy, dx * dy))
        half_trace, root = (ixx + iyy) / 2, np.sqrt(((ixx - iyy) / 2) ** 2 + ixy ** 2)
        ellipticity = 1 - np.sqrt(np.clip(half_trace - root, 0, None) / (half_trace + root))
    return np.sqrt(half_trace), ellipticity, 0.5 * np.arctan2(2 * ixy, ixx - iyy)


def plot_residuals(data, model, variance, mask, labels, path: Path, ncols: int = 6) -> Path:
    """Mosaics of data and model (asinh stretch over the sky) and (data - model)/sigma (bad pixels
    blank) of the given stamps, each stamp labelled with ``labels[i]`` (its catalog row)."""
    from matplotlib.colors import AsinhNorm

    resid = np.where(mask, np.nan, (data - model) / np.sqrt(variance))
    fig, axes = _figure(3, 4.2, 3.6)
    sky = np.nanmedian(model[:, 0, :])
    noise = np.sqrt(np.nanmedian(variance[:, 0, :]))
    # linear within 1 sigma of the sky, logarithmic above: the wings show as well as the cores
    stretch = AsinhNorm(linear_width=noise, vmin=sky - 2 * noise, vmax=np.nanpercentile(data, 99.8))
    s = data.shape[-1]
    for ax, image, title, kw in (
            (axes[0], mosaic(data, ncols), "data [ADU], asinh", dict(norm=stretch, cmap="magma")),
            (axes[1], mosaic(model, ncols), "model [ADU], asinh", dict(norm=stretch, cmap="magma")),
            (axes[2], mosaic(resid, ncols), "(data - model) / sigma", dict(vmin=-5, vmax=5, cmap="RdBu_r"))):
        im = ax.imshow(image, origin="lower", interpolation="nearest", **kw)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        for i, label in enumerate(labels):
            x0, y0 = mosaic_corner(i, len(labels), ncols, s)
            ax.text(x0 + 0.3, y0 + s - 1.3, str(label), color="w" if ax is not axes[2] else "k", fontsize=6, va="top")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle("PSF stars, faint (top left) to bright; labels: row in psf_stars.parquet", fontsize=10)
    return _save(fig, path)


def plot_radial_profile(radius, data_norm, model_norm, path: Path, fwhm: float, pixel_fwhm: float) -> Path:
    """Flux-normalised pixel values against radius [px]: data points, binned data and model."""
    fig, (ax,) = _figure()
    ax.plot(radius, data_norm, ",", color="0.6", rasterized=True, label="data pixels")
    edges = np.arange(0.0, radius.max() + 0.5, 0.5)
    which = np.digitize(radius, edges)
    centres, data_med, model_med = [], [], []
    for b in np.unique(which):  # ~15 radial bins
        sel = which == b
        centres.append(radius[sel].mean())
        data_med.append(np.median(data_norm[sel]))
        model_med.append(np.median(model_norm[sel]))
    ax.plot(centres, data_med, "o", color="k", ms=4, label="data, binned median")
    ax.plot(centres, model_med, "-", color="C3", label="model, binned median")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xlabel("distance to fitted centre [px]")
    ax.set_ylabel("(pixel - sky) / flux")
    ax.set_title(f"radial profile at image centre: FWHM {fwhm:.3f} px intrinsic,\n"
                 f"{pixel_fwhm:.3f} px pixel-convolved", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_fwhm_map(grid_x, grid_y, model_fwhm, star_x, star_y, star_fwhm, path: Path) -> Path:
    """The model's FWHM surface (grid (ny, nx)) and the stars' own FWHM on the same colour scale."""
    fig, (ax,) = _figure(width=5.8)
    lo, hi = np.nanpercentile(np.concatenate([model_fwhm.ravel(), star_fwhm]), [2, 98])
    extent = (grid_x[0], grid_x[-1], grid_y[0], grid_y[-1])
    im = ax.imshow(model_fwhm, origin="lower", extent=extent, aspect="auto", vmin=lo, vmax=hi, cmap="viridis")
    ax.scatter(star_x, star_y, c=star_fwhm, s=10, vmin=lo, vmax=hi, cmap="viridis", edgecolors="k",
               linewidths=0.3)
    fig.colorbar(im, ax=ax, label="intrinsic FWHM [px]")
    ax.set_xlabel("x [px]")
    ax.set_ylabel("y [px]")
    ax.set_title("FWHM: model surface; dots: the PSF stars' own\n"
                 "(local model FWHM x data / model moment size)", fontsize=10)
    return _save(fig, path)


def binned_ellipticity(x, y, e, theta, shape, n: int = 6):
    """Mean of the stars' (e cos 2 theta, e sin 2 theta) in ``n`` x ``n`` cells over the image:
    (cell centre x, y, |mean| as an ellipticity, its angle) of the cells holding >= 3 stars."""
    ny, nx = shape
    cell = (np.clip((y * n / ny).astype(int), 0, n - 1) * n + np.clip((x * n / nx).astype(int), 0, n - 1))
    count = np.bincount(cell, minlength=n * n)
    ok = np.isfinite(e) & np.isfinite(theta)
    e1 = np.bincount(cell[ok], (e * np.cos(2 * theta))[ok], minlength=n * n) / np.maximum(count, 1)
    e2 = np.bincount(cell[ok], (e * np.sin(2 * theta))[ok], minlength=n * n) / np.maximum(count, 1)
    keep = count >= 3
    cx, cy = (np.arange(n * n) % n + 0.5) * nx / n, (np.arange(n * n) // n + 0.5) * ny / n
    return cx[keep], cy[keep], np.hypot(e1, e2)[keep], 0.5 * np.arctan2(e2, e1)[keep]


def plot_whiskers(x, y, data_shape, model_shape, path: Path, shape) -> Path:
    """Ellipticity whiskers: per cell of 6 x 6 over the image, the mean ellipticity of the PSF stars'
    pixels (``data_shape`` = (e, theta) per star) and of the model's stamps at the same positions
    measured the same way (``model_shape``), a segment along the major axis of length ``e`` times
    :data:`WHISKER_SCALE` of the image width.  Averaging over cells beats down the noise and the
    sub-pixel phase that weighted moments of undersampled stars carry; the model's whiskers show what
    that phase and the model leave."""
    from matplotlib.collections import LineCollection

    fig, (ax,) = _figure(width=5.4)
    ny, nx = shape
    scale = WHISKER_SCALE * nx
    for (e, t), colour, width, label in ((data_shape, "k", 2.0, "PSF stars' pixels"),
                                         (model_shape, "C3", 1.0, "model stamps")):
        cx, cy, ce, ct = binned_ellipticity(x, y, e, t, shape)
        u, v = ce * np.cos(ct) * scale / 2, ce * np.sin(ct) * scale / 2
        segments = np.stack([np.column_stack([cx - u, cy - v]), np.column_stack([cx + u, cy + v])], axis=1)
        ax.add_collection(LineCollection(segments, colors=colour, linewidths=width, label=label))
    ax.plot(x, y, ".", color="0.75", ms=1.5, zorder=0)
    ax.plot([0.05 * nx, 0.05 * nx + 0.05 * scale], [0.04 * ny] * 2, "-", color="C0", lw=2)
    ax.text(0.05 * nx + 0.05 * scale, 0.04 * ny, "  1 - b/a = 0.05", va="center", fontsize=7)
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)
    ax.set_aspect("equal")
    ax.set_xlabel("x [px]")
    ax.set_ylabel("y [px]")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title("PSF ellipticity 1 - b/a and major axis, mean per cell\n"
                 "(Gaussian-weighted second moments)", fontsize=10)
    return _save(fig, path)


WHISKER_SCALE = 2.0
"""Whisker length for ellipticity 1, as a fraction of the image width (cell means are ~0.01-0.05)."""

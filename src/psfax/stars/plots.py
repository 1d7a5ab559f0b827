"""Figures of a stars fit, one PNG each, drawn with few artists (Agg backend).

* :func:`plot_residuals`: data, model and normalised residual (data - model) / sigma
  of a sample of PSF stars, each row of panels one mosaic image;
* :func:`plot_radial_profile`: sky-subtracted, flux-normalised pixel values of all
  PSF stars against the distance to their fitted centre, data and model;
* :func:`plot_fwhm_map`, :func:`plot_ellipticity_map`: the PSF across the image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from psfax.io.atomic import atomic_path


def _figure(ncols: int = 1, width: float = 5.0, height: float = 4.2):
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg by default

    fig = Figure(figsize=(width * ncols, height))
    # fixed margins: a constrained layout would cost a second draw of every figure
    fig.subplots_adjust(left=0.17 / ncols, right=1 - 0.1 / ncols, bottom=0.12, top=0.92, wspace=0.3)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return path


def mosaic(stamps: np.ndarray, ncols: int) -> np.ndarray:
    """Tile (N, S, S) stamps into one image, ``ncols`` per row, NaN-padded and separated."""
    n, s, _ = stamps.shape
    nrows = -(-n // ncols)
    out = np.full((nrows * (s + 1), ncols * (s + 1)), np.nan)
    for i in range(n):  # a few dozen stamps for a figure, not a hot path
        r, c = divmod(i, ncols)
        out[r * (s + 1): r * (s + 1) + s, c * (s + 1): c * (s + 1) + s] = stamps[i]
    return out


def sample_indices(flux: np.ndarray, n: int) -> np.ndarray:
    """``n`` indices spread evenly in rank of ``flux`` (faint to bright)."""
    order = np.argsort(flux)
    return order[np.unique(np.linspace(0, len(order) - 1, min(n, len(order))).astype(int))]


def plot_residuals(data, model, variance, mask, path: Path, ncols: int = 6) -> Path:
    """Mosaics of data, model and (data - model)/sigma (bad pixels blank) for the given stamps."""
    resid = np.where(mask, np.nan, (data - model) / np.sqrt(variance))
    fig, axes = _figure(3, 4.0, 4.2)
    lo, hi = np.nanpercentile(data, [1, 99.5])
    for ax, image, title, kw in (
            (axes[0], mosaic(data, ncols), "data [ADU]", dict(vmin=lo, vmax=hi)),
            (axes[1], mosaic(model, ncols), "model [ADU]", dict(vmin=lo, vmax=hi)),
            (axes[2], mosaic(resid, ncols), "(data - model) / sigma", dict(vmin=-5, vmax=5, cmap="RdBu_r"))):
        im = ax.imshow(image, origin="lower", interpolation="nearest", **kw)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.8)
    return _save(fig, path)


def plot_radial_profile(radius, data_norm, model_norm, path: Path, fwhm: float) -> Path:
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
    ax.set_title(f"radial profile, FWHM {fwhm:.3f} px at image centre")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_map(grid_x, grid_y, values, star_x, star_y, path: Path, title: str,
             star_values=None) -> Path:
    """A quantity on a grid over the image (``values`` (ny, nx) or None), PSF stars on top,
    coloured by ``star_values`` when given."""
    fig, (ax,) = _figure(width=5.5)
    if values is not None:
        extent = (grid_x[0], grid_x[-1], grid_y[0], grid_y[-1])
        im = ax.imshow(values, origin="lower", extent=extent, aspect="auto")
        fig.colorbar(im, ax=ax, label=title)
        ax.plot(star_x, star_y, ".", color="w", ms=2)
    else:
        sc = ax.scatter(star_x, star_y, c=star_values, s=6)
        fig.colorbar(sc, ax=ax, label=title)
    ax.set_xlabel("x [px]")
    ax.set_ylabel("y [px]")
    ax.set_title(title)
    return _save(fig, path)

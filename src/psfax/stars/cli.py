"""``psfax stars fit``: PSF model and PSF photometry of one CCD image."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from psfax.stars import forced_cli

app = typer.Typer(no_args_is_help=True, help="Stars: PSF model and PSF photometry of CCD images.")
forced_cli.register(app)  # psfax stars forced, psfax stars lightcurves


@app.command()
def fit(science: Path = typer.Argument(..., help="science image (FITS, may be gzipped)"),
        out: Path = typer.Option(..., "--out", help="output folder"),
        mask: Path = typer.Option(None, "--mask", help="mask image of bit flags (FITS)"),
        model: str = typer.Option("moffat", help="moffat, gaussian, elliptical_moffat, elliptical_gaussian"),
        optimizer: str = typer.Option("lm", help="optimizer of the fit engine"),
        degree: int = typer.Option(1, "--degree", help="degree 0-2 of the PSF shape polynomial in (x, y)"),
        per_star: bool = typer.Option(False, "--per-star", help="fit each star's shape independently"),
        catalog: Path = typer.Option(None, "--catalog",
                                     help="reference catalog (Parquet/CSV/FITS: ra, dec, mag) for PSF stars"),
        mag_min: float = typer.Option(14.0, help="brightest magnitude of a PSF star"),
        mag_max: float = typer.Option(18.0, help="faintest magnitude of a PSF star"),
        isolation: float = typer.Option(20.0, help="no other detection within this many arcsec"),
        stamp_size: int = typer.Option(15, help="stamp side [px], odd"),
        device: str = typer.Option(None, help="cpu or gpu (default: JAX's default backend)"),
        dtype: str = typer.Option(None, help="float32 or float64 for the PSF fit and the photometry "
                                  "(default: PSF fit in float64 on CPU, float32 on GPU; photometry in float32)"),
        plots: bool = typer.Option(True, "--plots/--no-plots", help="write the figures")):
    """Fit the PSF of SCIENCE and write stars.parquet, psf_stars.parquet, psf.json and figures to OUT."""
    from rich.console import Console

    from psfax.stars.pipeline import fit_image

    console = Console(stderr=True)
    start = time.perf_counter()
    with console.status("read") as status:
        result = fit_image(science, mask, progress=lambda stage: status.update(f"[bold]{stage}"),
                           model=model, optimizer=optimizer, spatial_degree=degree,
                           shared_shape=not per_star, catalog=None if catalog is None else str(catalog),
                           mag_min=mag_min, mag_max=mag_max, isolation=isolation,
                           stamp_size=stamp_size, device=device, dtype=dtype,
                           **({} if dtype is None else {"photometry_dtype": dtype}))
        status.update("[bold]write")
        paths = result.write(out, plots=plots)
    total = time.perf_counter() - start
    console.print(summary_table(result, total))
    for path in paths:
        typer.echo(str(path))


def summary_table(result, total: float):
    """A rich table: PSF, stars per cut, fit quality and time per stage."""
    from rich.table import Table

    info = result.summary()
    table = Table(title=f"psfax stars fit: {Path(result.exposure.name).name}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    centre = ", ".join(f"{k}={v:.3f}" for k, v in info["psf_at_centre"].items())
    table.add_row("PSF at centre", f"{info['model']}: {centre}")
    table.add_row("FWHM", f"{info['fwhm_px']:.3f} px = {info['fwhm_arcsec']:.3f} arcsec "
                          f"(range {info['fwhm_range_px'][0]:.3f}-{info['fwhm_range_px'][1]:.3f} px)")
    table.add_row("stars per cut", " -> ".join(f"{k} {v}" for k, v in info["selection_counts"].items()))
    table.add_row("PSF stars per refit", " -> ".join(str(n) for n in info["stars_per_refit"]))
    table.add_row("converged (first fit)", f"{100 * info['converged_fraction_first_fit']:.1f} %")
    table.add_row("median reduced chi2", f"{info['median_reduced_chi2']:.3f}")
    if info["n_photometry"] is not None:
        table.add_row("PSF photometry", f"{info['n_photometry']} sources")
    times = ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items())
    table.add_row("time (s)", f"{times}; total {total:.2f}")
    return table

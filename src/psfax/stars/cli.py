"""``psfax stars fit``: PSF model and PSF photometry of one CCD image."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import typer

from psfax.stars import forced_cli

app = typer.Typer(no_args_is_help=True, help="Stars: PSF model and PSF photometry of CCD images.")
forced_cli.register(app)  # psfax stars forced, psfax stars lightcurves


@app.command()
def fit(science: Path = typer.Argument(..., metavar="SCIENCE", help="science image (FITS, may be gzipped)"),
        out: Path = typer.Option(..., "--out", help="output folder"),
        mask: Path = typer.Option(None, "--mask", help="mask image of bit flags (FITS)"),
        model: str = typer.Option("moffat", help="moffat, gaussian, elliptical_moffat, elliptical_gaussian: the "
                                  "analytic PSF fitted to the PSF stars"),
        psf: str = typer.Option("auto", "--psf", help="PSF of the photometry: auto (an empirical PSF built on "
                                "the PSF stars when its reserve stars' chi2 beats the analytic fit's, else the "
                                "fitted --model), empirical, analytic (the fitted --model, no build) or an "
                                "analytic model name (sets --model)"),
        psf_oversampling: int = typer.Option(2, "--psf-oversampling", help="empirical PSF grid samples per "
                                             "pixel: 2, 3 or 4"),
        optimizer: str = typer.Option("lm", help="optimizer of the fit engine"),
        spatial_degree: int = typer.Option(1, "--spatial-degree", "--degree",
                                           help="degree 0-2 of the PSF shape polynomial in (x, y)"),
        shared_shape: bool = typer.Option(True, "--shared-shape/--per-star",
                                          help="one shape varying over the image, or each star's own"),
        catalog: Path = typer.Option(None, "--catalog",
                                     help="reference catalog (Parquet/CSV/FITS: ra, dec, mag) for PSF stars"),
        mag_min: float = typer.Option(14.0, help="brightest magnitude of a PSF star"),
        mag_max: float = typer.Option(18.0, help="faintest magnitude of a PSF star"),
        isolation: float = typer.Option(20.0, help="no other detection within this many arcsec"),
        edge: float = typer.Option(None, help="PSF stars at least this many px from the border "
                                   "(default: 15 or half the stamp, whichever is more)"),
        stamp_size: int = typer.Option(15, help="stamp side in px, odd"),
        gain: float = typer.Option(None, help="e-/ADU (default: header GAIN; required without it)"),
        read_noise: float = typer.Option(None, help="read noise in e- (default: header READNOI; "
                                         "required without it)"),
        saturate: float = typer.Option(None, help="saturation level in ADU (default: header SATURATE)"),
        zero_point: float = typer.Option(None, help="magnitude zero point (default: header MAGZP)"),
        device: str = typer.Option(None, help="cpu or gpu (default: JAX's default backend)"),
        dtype: str = typer.Option(None, help="float32 or float64 for the PSF fit "
                                  "(default: float64 on CPU, float32 on GPU)"),
        photometry_dtype: str = typer.Option("float32", help="float32 or float64 for the photometry"),
        group_radius: float = typer.Option(3.0, help="sources closer than this many FWHM are fitted together"),
        passes: int = typer.Option(2, help="photometry passes; each after the first adds the sources found "
                                   "in the residual image"),
        residual: bool = typer.Option(False, "--residual/--no-residual",
                                      help="also write residual.fits: image - sky - every source's model"),
        plots: bool = typer.Option(True, "--plots/--no-plots", help="write the figures")):
    """Fit the PSF of SCIENCE and write stars.parquet, psf_stars.parquet, psf.json (psf.fits with an empirical
    PSF) and figures to OUT.

    The options are those of `psfax run stars-fit` and of `psfax.stars.fit_image`, by the same names.
    """
    from rich.console import Console

    from psfax.outputs import check_output_dir
    from psfax.stars.pipeline import fit_image

    check_output_dir(out, files=("stars.parquet", "psf_stars.parquet", "psf.json", "psf.fits"))
    if plots:
        from psfax.stars.plots import preload_matplotlib

        threading.Thread(target=preload_matplotlib, daemon=True).start()
    console = Console(stderr=True)
    start = time.perf_counter()
    options = dict(model=model, psf=psf, psf_oversampling=psf_oversampling, optimizer=optimizer,
                   spatial_degree=spatial_degree, shared_shape=shared_shape,
                   catalog=None if catalog is None else str(catalog), mag_min=mag_min, mag_max=mag_max,
                   isolation=isolation, stamp_size=stamp_size, device=device, dtype=dtype,
                   photometry_dtype=photometry_dtype, group_radius=group_radius, passes=passes, gain=gain, read_noise=read_noise, saturate=saturate,
                   zero_point=zero_point, **({} if edge is None else {"edge": edge}))
    with console.status("read") as status:
        result = fit_image(science, mask, progress=lambda stage: status.update(f"[bold]{stage}"), **options)
        status.update("[bold]write")
        paths = result.write(out, plots=plots, residual=residual)
    total = time.perf_counter() - start
    console.print(summary_table(result, total))
    for path in paths:
        typer.echo(str(path))


def summary_table(result, total: float):
    """A rich table of :func:`psfax.stars.report.summary_rows` and the total time."""
    from rich.markup import escape
    from rich.table import Table

    from psfax.stars.report import summary_rows

    table = Table(title=f"psfax stars fit: {Path(result.exposure.name).name}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for label, text in summary_rows(result.summary()):
        table.add_row(escape(label), escape(text))
    table.add_row(escape("total time [s]"), f"{total:.2f}")
    return table

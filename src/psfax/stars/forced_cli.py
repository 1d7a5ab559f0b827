"""``psfax stars forced IMAGE... --targets TABLE --out DIR`` and ``psfax stars lightcurves``."""

from __future__ import annotations

from pathlib import Path

import typer


def forced(images: list[Path] = typer.Argument(..., help="science images (FITS; a ZTF mask beside one is used)"),
           targets: Path = typer.Option(..., "--targets", help="table of targets with ra, dec [deg] "
                                        "(Parquet, CSV, ECSV, FITS; optional id/name column)"),
           out: Path = typer.Option(..., "--out", help="output folder"),
           recentre: float = typer.Option(0.0, help="radius [px] within which the position may move "
                                          "(0: held at the WCS position)"),
           stamp_size: int = typer.Option(15, help="stamp side [px], odd"),
           curves: bool = typer.Option(True, "--curves/--no-curves", help="write one light curve per target"),
           device: str = typer.Option(None, help="cpu or gpu (default: JAX's default backend)")):
    """Forced PSF photometry of TARGETS on every IMAGE (each image's PSF fitted on it): writes epochs.parquet,
    stack.parquet and lightcurves/<target_id>.parquet to OUT."""
    from rich.console import Console

    from psfax.stars.forced import forced_photometry, stack_epochs, write_forced

    console = Console(stderr=True)
    with console.status("forced photometry") as status:
        table = forced_photometry([str(p) for p in images], str(targets), recentre=recentre, stamp_size=stamp_size,
                                  device=device, progress=lambda image: status.update(f"[bold]{Path(image).name}"))
        write_forced(table, out, curves=curves)
    _summary(console, table, stack_epochs(table))
    typer.echo(str(out / "stack.parquet"))


def lightcurves(tables: list[Path] = typer.Argument(..., help="forced.parquet files of a `psfax run stars-forced`"),
                out: Path = typer.Option(..., "--out", help="output folder"),
                curves: bool = typer.Option(True, "--curves/--no-curves", help="write one light curve per target")):
    """Gather per-image forced photometry tables (from `psfax run stars-forced`) into epochs.parquet,
    stack.parquet and lightcurves/ in OUT."""
    from astropy.table import Table, vstack
    from rich.console import Console

    from psfax.errors import BadFileError
    from psfax.stars.forced import stack_epochs, write_forced

    parts = []
    for path in tables:
        try:
            parts.append(Table.read(path, format="parquet"))
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise BadFileError(f"{path}: not a readable Parquet table ({exc})") from None
    table = vstack(parts, metadata_conflicts="silent")
    write_forced(table, out, curves=curves)
    _summary(Console(stderr=True), table, stack_epochs(table))
    typer.echo(str(out / "stack.parquet"))


def _summary(console, table, stack) -> None:
    import numpy as np

    from psfax.stars.forced import good_epochs

    n_images = len(set(np.asarray(table["image"]).astype(str)))
    console.print(f"{len(stack)} targets x {n_images} images: {int(good_epochs(table).sum())} good epochs, "
                  f"{int(np.sum(stack['n_epochs'] == 0))} targets on no image, "
                  f"{int(np.sum(stack['snr'] >= 3))} detected in the stack (S/N >= 3)")


def register(app: typer.Typer) -> None:
    """Add ``forced`` and ``lightcurves`` to the ``psfax stars`` app."""
    app.command()(forced)
    app.command()(lightcurves)

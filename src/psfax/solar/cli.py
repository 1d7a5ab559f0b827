"""``psfax aia``: AIA PSF and the level 1 -> 1.6 pipeline."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="SDO/AIA: PSF, deconvolution, registration.")


@app.command()
def prep(files: list[Path] = typer.Argument(..., metavar="FILES", help="AIA level-1 FITS files"),
         out: Path = typer.Option(..., "--out", help="output folder"),
         deconvolve: bool = typer.Option(False, "--deconvolve", help="Richardson-Lucy deconvolution with the PSF"),
         register: bool = typer.Option(False, "--register", help="register to level 1.5 (north up, 0.6\"/px)"),
         pointing: Path = typer.Option(None, "--pointing", help="master pointing table (ECSV/CSV/FITS)"),
         iterations: int = typer.Option(25, help="Richardson-Lucy iterations"),
         order: int = typer.Option(3, help="spline order of the registration, 1 or 3"),
         dtype: str = typer.Option(None, help="float32 or float64 (default: float64 on CPU, float32 on GPU)")):
    """Process FILES to OUT: (pointing) -> (deconvolve) -> (register); one FITS per input, and report.html.

    The next file is read while the current one computes.  A file that cannot
    be read or processed is reported and skipped; if any failed, the command
    ends with a one-line error and a non-zero exit code (2).  Two inputs of the same channel
    and T_OBS would write the same file: the second is reported as failed, not written.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from psfax.errors import PsfaxError
    from psfax.io.report_page import write_files_report
    from psfax.outputs import check_output_dir
    from psfax.solar.pointing import read_pointing_table
    from psfax.solar.prep import check_prep_options

    check_output_dir(out)
    check_prep_options(pointing=pointing, iterations=iterations, order=order, dtype=dtype)
    console = Console(stderr=True)
    table = read_pointing_table(pointing) if pointing is not None else None
    options = dict(deconvolve=deconvolve, register=register, pointing=table,
                   iterations=iterations, order=order, dtype=dtype)
    start = time.perf_counter()
    columns = (TextColumn("[bold]aia prep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}"))
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("", total=len(files))
        failures, outcomes = [], []
        for path, outcome in process_files(files, out, **options):
            outcomes.append((str(path), str(outcome)))
            if isinstance(outcome, Exception):
                failures.append(path)
                progress.console.print(f"[red]skipped[/red] {path}: {outcome}")
            else:
                typer.echo(str(outcome))
            progress.update(task, advance=1, description=Path(path).name)
    done = len(files) - len(failures)
    if done:  # nothing written: the output folder stays as it was
        write_files_report(out, "psfax aia prep", outcomes, {**options, "pointing": pointing}, time.perf_counter() - start)
    console.print(f"aia prep: {done} written, {len(failures)} failed, "
                  f"{time.perf_counter() - start:.1f} s, output in {out}")
    if failures:
        raise PsfaxError(f"aia prep: {len(failures)} of {len(files)} files failed: "
                         + ", ".join(str(p) for p in failures))


def process_files(files, out_dir, **options):
    """Yield ``(path, written_path or exception)`` per file; reads file i+1 while computing file i.

    A file whose output name (channel and T_OBS) an earlier file of this call took is an error,
    so that no result overwrites another."""
    from psfax.errors import PsfaxError
    from psfax.solar.prep import level16_path, prep_map, read_level1, write_level16

    def read(path):
        try:
            return read_level1(path)
        except PsfaxError as exc:
            return exc

    taken = {}
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(read, files[0]) if files else None
        for index, path in enumerate(files):
            smap = pending.result()
            pending = reader.submit(read, files[index + 1]) if index + 1 < len(files) else None
            if isinstance(smap, Exception):
                yield path, smap
                continue
            try:
                prepped = prep_map(smap, **options)
                target = level16_path(prepped, out_dir)
                if target in taken:
                    raise PsfaxError(f"same output {target.name} as {taken[target]} (same channel and "
                                     "T_OBS); not written")
                written = write_level16(prepped, out_dir)
                taken[target] = path
                yield path, written
            except PsfaxError as exc:
                yield path, exc


@app.command()
def psf(channel: int = typer.Argument(..., metavar="CHANNEL",
                                     help="EUV channel in Angstrom: 94 131 171 193 211 304 335"),
        out: Path = typer.Option(..., "--out", help="output FITS file"),
        preflight: bool = typer.Option(False, "--preflight", help="use the pre-flight core width")):
    """Compute the 4096 x 4096 PSF of CHANNEL (cached) and write it to OUT as FITS."""
    import numpy as np
    from astropy.io import fits

    from psfax.io.atomic import atomic_path
    from psfax.outputs import check_output_file
    from psfax.solar.channels import validate_channel
    from psfax.solar.psf import aia_psf
    from psfax.version import psfax_version

    check_output_file(out)
    validate_channel(channel)
    kernel = aia_psf(channel, use_preflightcore=preflight)
    header = fits.Header({"WAVELNTH": channel, "PSFAXVER": psfax_version(), "PREFLT": preflight})
    header.add_history("psfax aia psf: filter-mesh diffraction model (Grigis et al. 2012), peak at [2048, 2048]")
    with atomic_path(out) as tmp:
        fits.PrimaryHDU(np.asarray(kernel), header).writeto(tmp, overwrite=True)
    typer.echo(str(out))

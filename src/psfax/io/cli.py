"""``psfax data``: fetch the sample data into the user cache and print where it is."""

from __future__ import annotations

import typer

from psfax.io.samples import SAMPLES, fetch_sample, sample_path

app = typer.Typer(no_args_is_help=True, help="Sample data: fetch and locate.")

NAMES = ", ".join(SAMPLES)


@app.command()
def fetch(names: list[str] = typer.Argument(..., help=f"sample names: {NAMES}"),
          no_shared: bool = typer.Option(False, "--no-shared",
                                         help="ignore local shared-data folders; use the package index")):
    """Put samples in the cache (package files checked by sha256) and print their files."""
    for name in names:
        for role, path in fetch_sample(name, use_shared=not no_shared).items():
            typer.echo(f"{name} {role}: {path}")


@app.command()
def path(name: str = typer.Argument(..., help=f"sample name: {NAMES}"),
         role: str = typer.Argument(..., help="which file: science, mask (ztf-sample); level1, cutout "
                                    "(aia-sample); cube (clusters-sample)")):
    """Print the path of one sample file (a shared-data folder's copy, else the cache's)."""
    typer.echo(str(sample_path(name, role)))

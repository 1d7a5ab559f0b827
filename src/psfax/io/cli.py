"""``psfax data``: fetch the sample data into the user cache and print where it is."""

from __future__ import annotations

import typer

from psfax.io.samples import fetch_sample, sample_path

app = typer.Typer(no_args_is_help=True, help="Sample data: fetch and locate.")


@app.command()
def fetch(name: str = typer.Argument(..., help="sample name, e.g. ztf-sample"),
          no_shared: bool = typer.Option(False, "--no-shared",
                                         help="ignore local shared-data folders; use the package index")):
    """Put a sample in the user cache (checked by sha256) and print its files."""
    for role, path in fetch_sample(name, use_shared=not no_shared).items():
        typer.echo(f"{role}: {path}")


@app.command()
def path(name: str = typer.Argument(..., help="sample name, e.g. ztf-sample"),
         role: str = typer.Argument(..., help="which file, e.g. science or mask")):
    """Print the path of one fetched sample file."""
    typer.echo(str(sample_path(name, role)))

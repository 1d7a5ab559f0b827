"""The ``psfax`` command line: one sub-app per instrument.

Errors that are the user's (a :class:`psfax.errors.PsfaxError`) become one
line on stderr and exit code 2; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from psfax.errors import PsfaxError

app = typer.Typer(help="psfax: fast, statistically exact PSF work on survey images.",
                  no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)


def _print_version(value: bool) -> None:
    if value:
        from psfax import __version__

        typer.echo(f"psfax {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                       help="Print the psfax version and exit.")) -> None:
    """psfax: fast, statistically exact PSF work on survey images."""


def _add_subapps() -> None:
    from psfax.clusters.cli import app as clusters_app
    from psfax.io.cli import app as data_app
    from psfax.runner.cli import CONTEXT_SETTINGS
    from psfax.runner.cli import run as run_command
    from psfax.solar.cli import app as aia_app
    from psfax.stars.cli import app as stars_app

    app.add_typer(stars_app, name="stars", help="Stars: PSF model and PSF photometry of CCD images.")
    app.add_typer(aia_app, name="aia", help="SDO/AIA: PSF, deconvolution, registration.")
    app.add_typer(clusters_app, name="clusters", help="Galaxy-cluster fields: simulate, train, infer, evaluate.")
    app.add_typer(data_app, name="data", help="Sample data: fetch and locate.")
    app.command("run", context_settings=CONTEXT_SETTINGS, no_args_is_help=True,
                help="Run a job over many files, locally or on Dask.")(run_command)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of the message of ``exc`` (the CLI's errors are one line)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``psfax`` script."""
    _add_subapps()
    try:
        rc = app(args=argv, standalone_mode=False)
    except PsfaxError as exc:
        print(f"psfax: error: {first_line(exc)}", file=sys.stderr)
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("psfax: aborted", file=sys.stderr)
        return 130
    except Exception as exc:
        # usage errors (missing argument, bad option) are click exceptions; typer may ship its own
        # copy of click, so they are recognised by their interface rather than their class
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            return exc.exit_code
        raise
    return rc if isinstance(rc, int) else 0


def script() -> None:
    """The ``psfax`` console script: :func:`main`, then the process ends at once (``os._exit``) with its exit
    code, once the logs and standard streams are flushed.  Every command has written and closed its files and
    shut its Dask cluster before it returns; what the interpreter would still do is free JAX's loaded programs
    and the arrays, about 1 s after a ``psfax stars fit`` of a ZTF quadrant (2 cores) that nobody waits for.
    The process's memory settings are :func:`psfax.process.tune_memory`'s, its BLAS threads
    :func:`psfax.process.single_thread_blas`'s."""
    from psfax.process import single_thread_blas, tune_memory

    tune_memory()
    single_thread_blas()
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    script()

"""``psfax run JOB INPUTS... --out DIR``: one job over many files, locally or on Dask.

The job's own options follow the inputs (or come between them) as
``--name value``, ``--name=value``, or for a yes/no option ``--name`` /
``--no-name``; names are the job function's keyword parameters with ``_``
written ``-``; an unknown name is an error that lists the job's options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml

from psfax.errors import InputError
from psfax.outputs import check_output_dir
from psfax.runner.driver import run_jobs
from psfax.runner.jobs import JOBS, Job, get_job

CONTEXT_SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True,
                    "allow_interspersed_args": True, "help_option_names": []}

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None)


def convert_value(name: str, text: str, default: Any) -> Any:
    """``text`` as the type of the option's default (YAML scalar when the default is None)."""
    try:
        if isinstance(default, bool):
            value = yaml.safe_load(text)
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if isinstance(default, (int, float)):
            return type(default)(text)
        if isinstance(default, str):
            return text
        if isinstance(default, tuple):
            return tuple(yaml.safe_load(text))
        return yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise InputError(f"--{name.replace('_', '-')}: cannot use {text!r} ({exc})") from None


def split_job_arguments(job: Job, tokens: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Separate the inputs from the job options in the words after JOB."""
    defaults = {o.name: o.default for o in job.options}
    inputs: list[str] = []
    options: dict[str, Any] = {}
    words = iter(tokens)
    for word in words:
        if not word.startswith("--"):
            inputs.append(word)
            continue
        key, has_value, text = word[2:].partition("=")
        name = key.replace("-", "_")
        negated = name.startswith("no_") and isinstance(defaults.get(name[3:]), bool)
        if negated and not has_value:
            options[name[3:]] = False
        elif name not in defaults:
            known = ", ".join("--" + n.replace("_", "-") for n in defaults) or "none"
            raise InputError(f"job {job.name!r} has no option {word.split('=')[0]} (its options: {known})")
        elif has_value:
            options[name] = convert_value(name, text, defaults[name])
        elif isinstance(defaults[name], bool):
            options[name] = True
        else:
            text = next(words, None)
            if text is None:
                raise InputError(f"--{key}: a value is missing")
            options[name] = convert_value(name, text, defaults[name])
    return inputs, options


def job_help(job: Job) -> str:
    """The options of ``job`` as help text: name, the stage it goes to, default."""
    factory = JOBS.get(job.name)
    doc = (factory.__doc__ or "").strip().splitlines()[0] if factory is not None else ""
    flags = ["--" + o.name.replace("_", "-") + (" / --no-" + o.name.replace("_", "-")
                                                 if isinstance(o.default, bool) else "") for o in job.options]
    width = max(map(len, flags), default=0)
    lines = [f"Usage: psfax run {job.name} INPUTS... --out DIR [JOB OPTIONS]", "",
             "  " + doc.replace("``", ""), "",
             f"Options of {job.name} (after or between the inputs: --name value or --name=value):"]
    lines += [f"  {flag:<{width}}  {o.stage:<7}  default: {o.default!r}" for flag, o in zip(flags, job.options)]
    lines += ["", "Run options (--out, --executor, --resume ...): psfax run --help"]
    return "\n".join(lines)


@app.command(context_settings=CONTEXT_SETTINGS)
def run(
    ctx: typer.Context,
    job: str = typer.Argument(None, metavar="JOB", help=f"The job: {', '.join(JOBS)}.", show_default=False),
    inputs: list[str] = typer.Argument(None, metavar="INPUTS", help="Input paths, globs, or .txt/.lst files of paths; "
                                                  "then the job's options (--name value).", show_default=False),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder: one sub-folder per input, and the "
                                                       "manifest.", show_default=False),
    executor: str = typer.Option("local", help="local (reads ahead in a thread) or dask."),
    scheduler: str = typer.Option(None, help="Address of an existing Dask scheduler (tcp://host:port)."),
    workers: int = typer.Option(None, help="Worker processes of the Dask LocalCluster (default: one per core)."),
    resume: bool = typer.Option(False, "--resume", help="Skip inputs already done whose outputs exist."),
    profile: Path = typer.Option(None, "--profile", help="Write a JAX profiler trace (Perfetto) of a local run here."),
    show_help: bool = typer.Option(False, "--help", "-h", help="Show this message and exit; after JOB, the "
                                                               "job's own options."),
) -> None:
    """Run JOB over INPUTS; exit code 1 when any input failed.

    `psfax run JOB --help` lists the options of JOB.
    """
    if show_help or job is None:
        typer.echo(job_help(get_job(job)) if job is not None else ctx.get_help())
        raise typer.Exit(0)
    the_job = get_job(job)
    paths, options = split_job_arguments(the_job, inputs or [])
    if out is None:
        raise InputError("--out: the output folder is missing")
    if not paths:
        raise InputError("inputs: no input given")
    check_output_dir(out)
    summary = run_jobs(the_job, paths, out_dir=out, executor=executor, scheduler=scheduler, workers=workers,
                       resume=resume, profile_dir=profile, **options)
    if not summary.ok:
        raise typer.Exit(1)

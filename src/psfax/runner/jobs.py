"""Per-file jobs: read -> compute -> write, and running one input through them.

A :class:`Job` names three callables and the keyword options each stage takes:

* ``read(path, **read_options) -> data``  (I/O: the local executor runs it in a
  thread for the next input while the current one computes),
* ``compute(data, **compute_options) -> result``  (the JAX work),
* ``write(result, out_dir, **write_options) -> list[Path]``  (the output files).

A job whose compute stage streams its own input and writes its own files
(``clusters-infer``) sets ``compute_writes=True``: ``compute`` is then called
as ``compute(data, out_dir=..., **compute_options)`` and returns the paths.

:func:`run_one` runs one input: it writes into a staging folder
``<out>/.staging/<name>/`` and, only when every stage succeeded, moves each
file into ``<out>/<name>/`` with an atomic rename, so a crash leaves either a
complete output file or none, never a half-written one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import jax

from psfax.errors import InputError, MissingFileError

STAGES = ("read", "compute", "write")


@dataclasses.dataclass(frozen=True)
class JobOption:
    """One keyword option of a job: its name, the stage it goes to, its default."""

    name: str
    stage: str
    default: Any = None


@dataclasses.dataclass(frozen=True)
class Job:
    """A per-file job as three stages plus the options each stage accepts.

    ``check(options)`` (``{"read": {...}, "compute": {...}, "write": {...}}``) raises InputError for an
    option value the job cannot use; the run calls it once, before the first input.
    """

    name: str
    read: Callable[..., Any]
    compute: Callable[..., Any]
    write: Callable[..., list] | None
    options: tuple[JobOption, ...] = ()
    compute_writes: bool = False
    check: Callable[[Mapping[str, Mapping[str, Any]]], None] | None = None


@dataclasses.dataclass(frozen=True)
class Timings:
    """Wall seconds spent in each stage of one input."""

    read: float = 0.0
    compute: float = 0.0
    write: float = 0.0


@dataclasses.dataclass(frozen=True)
class Task:
    """One input to process: its path, output folder name and attempt number."""

    input: str
    name: str
    attempt: int = 1


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What happened to one task: ``status`` is ``"done"`` or ``"failed"``."""

    input: str
    status: str
    outputs: tuple[str, ...]
    timings: Timings
    error: str
    worker: str
    attempt: int


def options_from_signature(fn: Callable, stage: str, skip: tuple[str, ...] = ()) -> tuple[JobOption, ...]:
    """The keyword parameters of ``fn`` with a default (minus ``skip``) as options of ``stage``."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    return tuple(JobOption(p.name, stage, p.default) for p in params
                 if p.default is not inspect.Parameter.empty and p.name not in skip
                 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def options_from_dataclass(cls: type, stage: str, skip: tuple[str, ...] = ()) -> tuple[JobOption, ...]:
    """The fields of a dataclass of settings (with their defaults) as options of ``stage``."""
    return tuple(JobOption(f.name, stage, f.default) for f in dataclasses.fields(cls) if f.name not in skip)


def split_options(job: Job, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Sort ``options`` into ``{"read": {...}, "compute": {...}, "write": {...}}``; unknown names raise InputError."""
    by_name = {o.name: o.stage for o in job.options}
    unknown = sorted(set(options) - set(by_name))
    if unknown:
        known = ", ".join(sorted(by_name)) or "none"
        raise InputError(f"job {job.name!r} has no option {', '.join(unknown)} (its options: {known})")
    split: dict[str, dict[str, Any]] = {stage: {} for stage in STAGES}
    for key, value in options.items():
        split[by_name[key]][key] = value
    return split


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``"ErrorType: first line of the message"``, at most ``limit`` characters."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def local_worker_name() -> str:
    """``host:pid`` of this process, recorded in the manifest."""
    return f"{socket.gethostname()}:{os.getpid()}"


@contextlib.contextmanager
def timed(times: dict[str, float], stage: str, task: Task):
    """Add the wall seconds of the block to ``times[stage]`` (also when it raises); a named trace range."""
    t0 = time.perf_counter()
    try:
        with jax.profiler.TraceAnnotation(f"{stage} {task.name}"):
            yield
    finally:
        times[stage] += time.perf_counter() - t0


def read_input(job: Job, task: Task, read_options: Mapping[str, Any]) -> tuple[Any, float]:
    """Run the read stage; return ``(data, seconds)``. A missing input raises MissingFileError."""
    if not Path(task.input).exists():
        raise MissingFileError(f"{task.input}: no such input file")
    times = {"read": 0.0}
    with timed(times, "read", task):
        data = job.read(task.input, **read_options)
    return data, times["read"]


def compute_and_write(job: Job, data: Any, task: Task, out_dir: Path,
                      options: Mapping[str, Mapping[str, Any]], times: dict[str, float]) -> list[Path]:
    """Compute and write into the staging folder, then commit; stage seconds go to ``times``."""
    staging = staging_dir(out_dir, task.name)
    try:
        if job.compute_writes:
            with timed(times, "compute", task):
                written = job.compute(data, out_dir=staging, **options["compute"])
        else:
            with timed(times, "compute", task):
                result = jax.block_until_ready(job.compute(data, **options["compute"]))
            with timed(times, "write", task):
                written = job.write(result, staging, **options["write"])
        with timed(times, "write", task):
            return commit(staging, out_dir / task.name, [Path(p) for p in written])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def staging_dir(out_dir: Path, name: str) -> Path:
    """A fresh, empty ``<out>/.staging/<name>/`` (leftovers of a killed attempt are removed)."""
    path = out_dir / ".staging" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def commit(staging: Path, final: Path, written: list[Path]) -> list[Path]:
    """Make ``staging`` the folder ``final``, replacing the outputs of any earlier attempt as a set;
    return the final paths of its files.

    The old ``final`` is renamed aside, ``staging`` renamed to ``final``, then the old one removed:
    a crash between the renames leaves no ``final`` (the input is not done), never a mix of two runs'
    files.  ``written`` (the paths the job returned) must lie in ``staging``: a job that writes
    elsewhere would escape the all-or-nothing guarantee.
    """
    root = staging.resolve()
    outside = [p for p in written if not p.resolve().is_relative_to(root)]
    if outside:
        raise RuntimeError(f"the job wrote {outside[0]} outside its output folder {staging}")
    files = sorted(p.relative_to(staging) for p in staging.rglob("*") if p.is_file())
    old = staging.with_name(staging.name + ".replaced")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)
    return [final / p for p in files]


def outcome_of(task: Task, worker: str, outputs=(), timings=Timings(), error: BaseException | None = None) -> Outcome:
    """The :class:`Outcome` of a task that produced ``outputs`` or raised ``error``."""
    return Outcome(input=task.input, status="failed" if error is not None else "done",
                   outputs=tuple(str(p) for p in outputs), timings=timings,
                   error=one_line(error) if error is not None else "", worker=worker, attempt=task.attempt)


def run_one(job: Job, task: Task, out_dir: Path, options: Mapping[str, Mapping[str, Any]],
            worker: str | None = None, prefetched: Future | None = None) -> Outcome:
    """Read (or take the ``prefetched`` read), compute and write one input.

    Any exception becomes a ``failed`` outcome with a one-line reason, so one
    bad input never stops the run.  Each stage is a named range in a JAX
    profiler trace.
    """
    worker = worker or local_worker_name()
    times = {"read": 0.0, "compute": 0.0, "write": 0.0}
    try:
        reading = prefetched.result() if prefetched is not None else read_input(job, task, options["read"])
        data, times["read"] = reading
        outputs = compute_and_write(job, data, task, Path(out_dir), options, times)
    except Exception as exc:  # recorded in the manifest, never raised
        return outcome_of(task, worker, timings=Timings(**times), error=exc)
    return outcome_of(task, worker, outputs, Timings(**times))


# --- the registered jobs -------------------------------------------------------------------

def ztf_mask_path(science: str | os.PathLike) -> Path | None:
    """The ZTF mask beside a science image (``X_sciimg.fits[.gz]`` -> ``X_mskimg.fits[.gz]``), if present."""
    science = Path(science)
    if "_sciimg.fits" not in science.name:
        return None
    mask = science.with_name(science.name.replace("_sciimg.fits", "_mskimg.fits"))
    return mask if mask.exists() else None


def read_ztf_exposure(science: str, **read_options):
    """Read a ZTF science image with its mask when the mask file is beside it."""
    from psfax.stars.pipeline import read_exposure

    return read_exposure(science, mask=ztf_mask_path(science), **read_options)


def write_image_fit(fit, out_dir: Path, plots: bool = True, residual: bool = False) -> list[Path]:
    """Write an ``ImageFit`` (stars tables, ``psf.json``, with ``plots`` the figures, with ``residual`` the
    residual image) into ``out_dir``."""
    return fit.write(out_dir, plots=plots, residual=residual)


def pass_path(path: str) -> str:
    """Read stage of a job that reads its input lazily itself: the path."""
    return path


def stars_fit_job() -> Job:
    """``stars-fit``: the stars pipeline on one science image (mask found beside it).

    Options: the header overrides of ``read_exposure`` (read), the fields of
    ``FitOptions`` and its selection thresholds (compute), ``plots`` and ``residual`` (write).
    """
    from psfax.stars.pipeline import FitOptions, SelectionOptions, fit_exposure, read_exposure

    options = (options_from_signature(read_exposure, "read", skip=("mask", "header"))
               + options_from_dataclass(FitOptions, "compute", skip=("selection",))
               + options_from_dataclass(SelectionOptions, "compute")
               + options_from_signature(write_image_fit, "write"))
    return Job("stars-fit", read_ztf_exposure, fit_exposure, write_image_fit, options, check=check_stars_fit)


def check_stars_fit(options: Mapping[str, Mapping[str, Any]]) -> None:
    """The header overrides in range, a valid ``FitOptions`` (model, degree, stamp ...) and catalog."""
    from psfax.stars.exposure import check_values
    from psfax.stars.pipeline import FitOptions, check_catalog

    check_values(dict(options["read"]))
    check_catalog(FitOptions.from_kwargs(**options["compute"]))


def write_level16_list(smap, out_dir) -> list[Path]:
    """``psfax.solar.prep.write_level16`` returning its one file as a list, as every job's write does."""
    from psfax.solar.prep import write_level16

    return [write_level16(smap, out_dir)]


def aia_prep_job() -> Job:
    """``aia-prep``: AIA level 1 -> level 1.6 (optional deconvolution, registration)."""
    from psfax.solar.prep import prep_map, read_level1

    return Job("aia-prep", read_level1, prep_map, write_level16_list, options_from_signature(prep_map, "compute"),
               check=check_aia_prep)


def check_aia_prep(options: Mapping[str, Mapping[str, Any]]) -> None:
    """``iterations``, ``order``, ``dtype`` in range and a ``pointing`` path that exists."""
    from psfax.solar.prep import check_prep_options

    check_prep_options(**options["compute"])


def clusters_infer_job() -> Job:
    """``clusters-infer``: streamed tile inference over one survey image (reads and writes itself)."""
    from psfax.clusters.infer import infer_file

    options = options_from_signature(infer_file, "compute", skip=("out_dir",))
    return Job("clusters-infer", pass_path, infer_file, None, options, compute_writes=True)


def stars_forced_job() -> Job:
    """``stars-forced``: forced photometry of ``--targets TABLE`` on one science image (:mod:`psfax.stars.forced`)."""
    from psfax.stars.forced import forced_job

    return forced_job()


JOBS: dict[str, Callable[[], Job]] = {
    "stars-fit": stars_fit_job,
    "stars-forced": stars_forced_job,
    "aia-prep": aia_prep_job,
    "clusters-infer": clusters_infer_job,
}


def get_job(job: str | Job) -> Job:
    """The :class:`Job` of a registered name (``stars-fit``, ``stars-forced``, ``aia-prep``, ``clusters-infer``) or
    ``job`` itself."""
    if isinstance(job, Job):
        return job
    if job not in JOBS:
        raise InputError(f"job must be one of {', '.join(JOBS)}, got {job!r}")
    try:
        return JOBS[job]()
    except ImportError as exc:
        raise InputError(f"job {job!r} is not available in this installation ({one_line(exc)})") from None

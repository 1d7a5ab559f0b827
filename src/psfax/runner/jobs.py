"""Per-file jobs: read -> compute -> write, and running one input through them.

A :class:`Job` names three callables and the keyword options each stage takes:

* ``read(path, **read_options) -> data``  (I/O: the local executor runs it in a
  thread for the next input while the current one computes),
* ``compute(data, **compute_options) -> result``  (the JAX work),
* ``write(result, out_dir) -> list[Path]``  (the output files).

A job whose compute stage streams its own input and writes its own files
(``clusters-infer``) sets ``compute_writes=True``: ``compute`` is then called
as ``compute(data, out_dir=..., **compute_options)`` and returns the paths.

:func:`run_one` runs one input: it writes into a staging folder
``<out>/.staging/<name>/`` and, only when every stage succeeded, moves each
file into ``<out>/<name>/`` with an atomic rename, so a crash leaves either a
complete output file or none, never a half-written one.
"""

from __future__ import annotations

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

STAGES = ("read", "compute")


@dataclasses.dataclass(frozen=True)
class JobOption:
    """One keyword option of a job: its name, the stage it goes to, its default."""

    name: str
    stage: str
    default: Any = None


@dataclasses.dataclass(frozen=True)
class Job:
    """A per-file job as three stages plus the options each stage accepts."""

    name: str
    read: Callable[..., Any]
    compute: Callable[..., Any]
    write: Callable[..., list] | None
    options: tuple[JobOption, ...] = ()
    compute_writes: bool = False

    def option_names(self, stage: str) -> tuple[str, ...]:
        return tuple(o.name for o in self.options if o.stage == stage)


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


def split_options(job: Job, options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Sort ``options`` into ``{"read": {...}, "compute": {...}}``; unknown names raise InputError."""
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


def read_input(job: Job, task: Task, read_options: Mapping[str, Any]) -> tuple[Any, float]:
    """Run the read stage; return ``(data, seconds)``. A missing input raises MissingFileError."""
    t0 = time.perf_counter()
    if not Path(task.input).exists():
        raise MissingFileError(f"{task.input}: no such input file")
    with jax.profiler.TraceAnnotation(f"read {task.name}"):
        data = job.read(task.input, **read_options)
    return data, time.perf_counter() - t0


def compute_and_write(job: Job, data: Any, task: Task, out_dir: Path,
                      compute_options: Mapping[str, Any]) -> tuple[list[Path], float, float]:
    """Compute and write into the staging folder, then commit; return ``(outputs, t_compute, t_write)``."""
    staging = staging_dir(out_dir, task.name)
    t0 = time.perf_counter()
    if job.compute_writes:
        with jax.profiler.TraceAnnotation(f"compute {task.name}"):
            written = job.compute(data, out_dir=staging, **compute_options)
        t1 = time.perf_counter()
    else:
        with jax.profiler.TraceAnnotation(f"compute {task.name}"):
            result = jax.block_until_ready(job.compute(data, **compute_options))
        t1 = time.perf_counter()
        with jax.profiler.TraceAnnotation(f"write {task.name}"):
            written = job.write(result, staging)
    outputs = commit(staging, out_dir / task.name, [Path(p) for p in written])
    return outputs, t1 - t0, time.perf_counter() - t1


def staging_dir(out_dir: Path, name: str) -> Path:
    """A fresh, empty ``<out>/.staging/<name>/`` (leftovers of a killed attempt are removed)."""
    path = out_dir / ".staging" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def commit(staging: Path, final: Path, written: list[Path]) -> list[Path]:
    """Move each written file from ``staging`` into ``final`` by atomic rename; return the final paths.

    A path the job wrote outside ``staging`` is kept where it is.
    """
    outputs = []
    for path in written:
        try:
            rel = path.resolve().relative_to(staging.resolve())
        except ValueError:
            outputs.append(path)
            continue
        target = final / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
        outputs.append(target)
    shutil.rmtree(staging, ignore_errors=True)
    return outputs


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
    t_read = 0.0
    try:
        if prefetched is not None:
            data, t_read = prefetched.result()
        else:
            data, t_read = read_input(job, task, options["read"])
        outputs, t_compute, t_write = compute_and_write(job, data, task, Path(out_dir), options["compute"])
    except Exception as exc:  # recorded in the manifest, never raised
        return outcome_of(task, worker, timings=Timings(read=t_read), error=exc)
    return outcome_of(task, worker, outputs, Timings(t_read, t_compute, t_write))


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


def write_image_fit(fit, out_dir: Path) -> list[Path]:
    """Write an ``ImageFit`` (stars table, PSF model, figures) into ``out_dir``."""
    return fit.write(out_dir)


def pass_path(path: str) -> str:
    """Read stage of a job that reads its input lazily itself: the path."""
    return path


def stars_fit_job() -> Job:
    """``stars-fit``: the stars pipeline on one science image (mask found beside it)."""
    from psfax.stars.pipeline import fit_exposure, read_exposure

    options = (options_from_signature(read_exposure, "read", skip=("mask",))
               + options_from_signature(fit_exposure, "compute"))
    return Job("stars-fit", read_ztf_exposure, fit_exposure, write_image_fit, options)


def aia_prep_job() -> Job:
    """``aia-prep``: AIA level 1 -> level 1.6 (optional deconvolution, registration)."""
    from psfax.solar.prep import prep_map, read_level1, write_level16

    return Job("aia-prep", read_level1, prep_map, write_level16, options_from_signature(prep_map, "compute"))


def clusters_infer_job() -> Job:
    """``clusters-infer``: streamed tile inference over one survey image (reads and writes itself)."""
    from psfax.clusters.infer import infer_file

    options = options_from_signature(infer_file, "compute", skip=("out_dir",))
    return Job("clusters-infer", pass_path, infer_file, None, options, compute_writes=True)


JOBS: dict[str, Callable[[], Job]] = {
    "stars-fit": stars_fit_job,
    "aia-prep": aia_prep_job,
    "clusters-infer": clusters_infer_job,
}


def get_job(job: str | Job) -> Job:
    """The :class:`Job` of a registered name (``stars-fit``, ``aia-prep``, ``clusters-infer``) or ``job`` itself."""
    if isinstance(job, Job):
        return job
    if job not in JOBS:
        raise InputError(f"job must be one of {', '.join(JOBS)}, got {job!r}")
    try:
        return JOBS[job]()
    except ImportError as exc:
        raise InputError(f"job {job!r} is not available in this installation ({one_line(exc)})") from None

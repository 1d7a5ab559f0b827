"""``run_jobs``: a job over many inputs, with a manifest, resume, progress and a summary."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from psfax.errors import InputError
from psfax.outputs import check_output_dir
from psfax.runner.dask_executor import run_dask
from psfax.runner.inputs import output_names, resolve_inputs
from psfax.runner.jobs import Job, Outcome, Task, Timings, get_job, split_options
from psfax.runner.local import run_local
from psfax.runner.manifest import Manifest, is_done

EXECUTORS = ("local", "dask")


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What a run did.  ``failures`` holds ``(input, one-line reason)`` pairs."""

    job: str
    out_dir: Path
    manifest: Path
    n_inputs: int
    n_done: int
    n_failed: int
    n_skipped: int
    failures: tuple[tuple[str, str], ...]
    wall_s: float
    stage_s: Timings
    profile_trace: Path | None = None

    @property
    def ok(self) -> bool:
        """True when no input failed."""
        return self.n_failed == 0

    @property
    def images_per_min(self) -> float:
        """Inputs processed (done or failed) per minute of wall time."""
        processed = self.n_done + self.n_failed
        return 60.0 * processed / self.wall_s if self.wall_s > 0 else 0.0

    def stage_shares(self) -> dict[str, float]:
        """Share of the summed stage time spent reading, computing and writing (sums to 1)."""
        times = dataclasses.asdict(self.stage_s)
        total = sum(times.values())
        return {k: (v / total if total > 0 else 0.0) for k, v in times.items()}


def plan_tasks(paths: Sequence[str], manifest: Manifest, resume: bool) -> tuple[list[Task], int]:
    """Tasks to run and the number skipped (with ``resume``, inputs already done with their outputs)."""
    records = manifest.records()
    attempts = {}
    for record in records:
        attempts[record["input"]] = attempts.get(record["input"], 0) + 1
    last = {r["input"]: r for r in records}
    tasks, skipped = [], 0
    for path, name in zip(paths, output_names(list(paths))):
        if resume and is_done(last.get(path)):
            skipped += 1
        else:
            tasks.append(Task(path, name, attempts.get(path, 0) + 1))
    return tasks, skipped


def check_run_arguments(executor: str, scheduler, workers, profile_dir) -> None:
    """Raise InputError for an unknown executor or options that do not go with it."""
    if executor not in EXECUTORS:
        raise InputError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "local" and (scheduler is not None or workers is not None):
        raise InputError("scheduler and workers are options of executor='dask', not 'local'")
    if profile_dir is not None and executor != "local":
        raise InputError("profile_dir works with executor='local' only (a trace of one process)")


@contextlib.contextmanager
def profiled(profile_dir: str | os.PathLike | None):
    """A JAX profiler trace of the block into ``profile_dir`` (Perfetto ``*.trace.json.gz``), if given."""
    if profile_dir is None:
        yield
        return
    import jax

    Path(profile_dir).mkdir(parents=True, exist_ok=True)
    with jax.profiler.trace(str(profile_dir), create_perfetto_trace=True):
        yield


def run_jobs(job: str | Job, inputs: str | os.PathLike | Iterable[str | os.PathLike], *,
             out_dir: str | os.PathLike, executor: str = "local", scheduler: str | None = None,
             workers: int | None = None, resume: bool = False, profile_dir: str | os.PathLike | None = None,
             show_progress: bool = True, **options: Any) -> RunSummary:
    """Run ``job`` over ``inputs``; outputs in ``out_dir/<input name>/``, one manifest line per attempt.

    ``job`` is ``"stars-fit"``, ``"aia-prep"``, ``"clusters-infer"`` or a :class:`Job`;
    ``inputs`` are paths, globs or text files of paths; ``options`` go to the
    job's stages by name, checked (with ``out_dir``) before the first input is
    read.  ``executor="local"`` reads ahead in a thread;
    ``"dask"`` runs on a LocalCluster of ``workers`` processes or on the
    cluster at ``scheduler``.  With ``resume=True`` inputs whose last record
    is ``done`` and whose outputs all exist are skipped.  ``profile_dir``
    writes a JAX profiler trace of a local run.  A failed input never stops the
    run: it is recorded and listed in the returned :class:`RunSummary`.
    """
    check_run_arguments(executor, scheduler, workers, profile_dir)
    job = get_job(job)
    stage_options = split_options(job, options)
    if job.check is not None:
        job.check(stage_options)  # once, before any input is read
    check_output_dir(out_dir, "out_dir")
    paths = resolve_inputs(inputs)
    out_dir = Path(out_dir).absolute()  # Dask workers may run in another folder
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out_dir)
    tasks, skipped = plan_tasks(paths, manifest, resume)

    if executor == "local":
        outcomes = run_local(job, tasks, out_dir, stage_options)
    else:
        outcomes = run_dask(job, tasks, out_dir, stage_options, scheduler=scheduler, workers=workers)

    t0 = time.perf_counter()
    finished: list[Outcome] = []
    try:
        with profiled(profile_dir), progress_bar(job.name, len(tasks), show_progress) as advance:
            for outcome in outcomes if tasks else ():
                manifest.append(outcome)
                finished.append(outcome)
                advance(outcome)
    finally:
        outcomes.close()
        with contextlib.suppress(OSError):  # staging folders left by killed attempts keep it
            (out_dir / ".staging").rmdir()
        summary = summarize(job.name, out_dir, manifest.path, len(paths), skipped, finished,
                            time.perf_counter() - t0, perfetto_trace(profile_dir))
        if manifest.path.exists():
            manifest.write_parquet()
        if show_progress:
            print_summary(summary)
    return summary


def perfetto_trace(profile_dir: str | os.PathLike | None) -> Path | None:
    """The newest ``perfetto_trace.json.gz`` under ``profile_dir`` (open it at https://ui.perfetto.dev)."""
    if profile_dir is None:
        return None
    traces = sorted(Path(profile_dir).rglob("perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    return traces[-1] if traces else None


def summarize(job: str, out_dir: Path, manifest: Path, n_inputs: int, skipped: int,
              finished: Sequence[Outcome], wall_s: float, profile_trace: Path | None = None) -> RunSummary:
    failed = [o for o in finished if o.status == "failed"]
    stage_s = Timings(*(sum(getattr(o.timings, s) for o in finished) for s in ("read", "compute", "write")))
    return RunSummary(job=job, out_dir=out_dir, manifest=manifest, n_inputs=n_inputs,
                      n_done=len(finished) - len(failed), n_failed=len(failed), n_skipped=skipped,
                      failures=tuple((o.input, o.error) for o in failed), wall_s=wall_s, stage_s=stage_s,
                      profile_trace=profile_trace)


@contextlib.contextmanager
def progress_bar(label: str, total: int, show: bool):
    """A rich progress bar with images/min; yields ``advance(outcome)``."""
    if not show:
        yield lambda outcome: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    start = time.perf_counter()
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:.1f} images/min"), TextColumn("[red]{task.fields[failed]} failed"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        bar = progress.add_task(label, total=total, rate=0.0, failed=0)
        counts = {"n": 0, "failed": 0}

        def advance(outcome: Outcome) -> None:
            counts["n"] += 1
            counts["failed"] += outcome.status == "failed"
            rate = 60.0 * counts["n"] / max(time.perf_counter() - start, 1e-9)
            progress.update(bar, advance=1, rate=rate, failed=counts["failed"])

        yield advance


def print_summary(summary: RunSummary) -> None:
    """The end-of-run table: counts, throughput, stage shares, and each failure with its reason."""
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    shares = summary.stage_shares()
    table = Table(title=f"psfax run {summary.job}: {summary.out_dir}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("inputs", f"{summary.n_inputs} ({summary.n_done} done, {summary.n_failed} failed, "
                            f"{summary.n_skipped} skipped as already done)")
    table.add_row("wall time", f"{summary.wall_s:.1f} s, {summary.images_per_min:.1f} images/min")
    table.add_row("time share", ", ".join(f"{k} {100 * v:.0f}%" for k, v in shares.items())
                  + f" (of {sum(dataclasses.asdict(summary.stage_s).values()):.1f} s in stages)")
    table.add_row("manifest", str(summary.manifest))
    if summary.profile_trace is not None:
        table.add_row("profile", f"{summary.profile_trace} (open at https://ui.perfetto.dev)")
    console.print(table)
    if summary.failures:
        failures = Table(title=f"{summary.n_failed} failed", show_lines=False)
        failures.add_column("input (full path in the manifest)", overflow="fold")
        failures.add_column("reason", style="red", overflow="fold")
        for path, reason in summary.failures:
            failures.add_row(Path(path).name, reason)
        console.print(failures)

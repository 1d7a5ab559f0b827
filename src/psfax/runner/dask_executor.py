"""The Dask executor: one task per input on a ``dask.distributed`` cluster, gathered as they finish.

By default a ``LocalCluster`` of ``workers`` processes with one thread each
(JAX uses the cores of its process; one task per process keeps them from
fighting).  With ``scheduler="tcp://host:port"`` the tasks go to an existing
cluster.  Each worker process keeps the jobs' jitted functions in its module
caches, so it compiles once for all the inputs it receives; the persistent
compilation cache directory is shared by the processes of one machine.

When a worker dies in the middle of a task (killed, out of memory), the
scheduler runs the task again on another worker, up to
``distributed.scheduler.allowed-failures`` times (Dask's default 3); past
that the input is recorded as failed with the ``KilledWorker`` reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from psfax.errors import InputError
from psfax.runner.jobs import Job, Outcome, Task, outcome_of, run_one


def default_workers() -> int:
    """One worker per core this process may use."""
    return len(os.sched_getaffinity(0))


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int | None):
    """A ``Client`` of the cluster at ``scheduler``, or of a new LocalCluster of ``workers`` processes."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        if workers is not None:
            raise InputError("workers is for the LocalCluster; leave it out with scheduler=")
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise InputError(f"scheduler={scheduler!r}: cannot connect ({exc})") from None
        with client:
            yield client
        return
    n = default_workers() if workers is None else workers
    if n < 1:
        raise InputError(f"workers must be at least 1, got {n}")
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def run_on_worker(job: Job, task: Task, out_dir: Path, options: Mapping[str, Mapping[str, Any]]) -> Outcome:
    """Body of one Dask task: :func:`run_one` named after the worker that runs it."""
    from distributed import get_worker

    return run_one(job, task, out_dir, options, worker=get_worker().address)


def run_dask(job: Job, tasks: Sequence[Task], out_dir: Path, options: Mapping[str, Mapping[str, Any]],
             scheduler: str | None = None, workers: int | None = None) -> Iterator[Outcome]:
    """Submit every task and yield outcomes in the order they finish."""
    from distributed import as_completed

    run_id = uuid.uuid4().hex[:8]
    with dask_client(scheduler, workers) as client:
        futures = {client.submit(run_on_worker, job, task, out_dir, options,
                                 key=f"psfax-{job.name}-{run_id}-{i}", pure=False): task
                   for i, task in enumerate(tasks)}
        for future in as_completed(futures):
            task = futures.pop(future)
            try:
                outcome = future.result()
            except Exception as exc:  # the task itself never raises: this is a lost worker (KilledWorker)
                outcome = outcome_of(task, worker="dask", error=exc)
            future.release()
            yield outcome

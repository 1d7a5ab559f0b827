"""The local executor: one process, the next input read in a thread while the current one computes.

JAX programs are jitted at module level in the jobs, so the first input
compiles them and every later input of the same shape reuses the compiled
program (and the persistent compilation cache spares even the first
compilation on a second run).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from psfax.runner.jobs import Job, Outcome, Task, local_worker_name, read_input, run_one


def run_local(job: Job, tasks: Sequence[Task], out_dir: Path,
              options: Mapping[str, Mapping[str, Any]]) -> Iterator[Outcome]:
    """Yield the outcome of each task in order, prefetching the read of the next one.

    At most one input is read ahead, so memory holds two inputs at a time.
    """
    worker = local_worker_name()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="psfax-read") as reader:
        def prefetch(i: int):
            return reader.submit(read_input, job, tasks[i], options["read"]) if i < len(tasks) else None

        upcoming = prefetch(0)
        for i, task in enumerate(tasks):
            current, upcoming = upcoming, prefetch(i + 1)
            yield run_one(job, task, out_dir, options, worker=worker, prefetched=current)

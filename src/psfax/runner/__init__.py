"""Running one per-file job over many inputs, locally or on Dask, with nothing lost.

Public: :func:`run_jobs` (re-exported as ``psfax.run``), :class:`RunSummary`,
:class:`Job`, :class:`JobOption`, ``JOBS`` (the registered job names).
"""

from psfax.runner.driver import RunSummary, run_jobs
from psfax.runner.jobs import JOBS, Job, JobOption

__all__ = ["JOBS", "Job", "JobOption", "RunSummary", "run_jobs"]

"""Memory settings of a ``psfax`` command's process (the console script only; importing psfax changes nothing).

A ``psfax stars fit`` of a ZTF quadrant allocates and frees image-sized arrays (37 MB in float32, 75 MB in
float64) a few hundred times.  Three process-wide defaults make each of those cost kernel time:

* NumPy asks the kernel for transparent huge pages on every large array (``madvise(MADV_HUGEPAGE)``).  Where
  the kernel's THP ``defrag`` setting is ``madvise`` (the default of many distributions), each such fault may
  compact memory synchronously to find 2 MB pages;
* glibc's ``malloc`` serves blocks above 32 MB with fresh ``mmap`` calls and gives them back on ``free``, so
  every new image-sized array faults all its pages in again;
* each thread that allocates (XLA's worker threads do) gets a ``malloc`` arena of its own, whose heaps glibc
  shrinks, and returns to the kernel, as blocks are freed.

:func:`tune_memory` turns the first off, keeps freed memory in the process for reuse and gives every thread the
one arena of the main heap, and exports the same settings as environment variables
(``NUMPY_MADVISE_HUGEPAGE=0``, ``MALLOC_MMAP_MAX_=0``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_ARENA_MAX=1``), so
that the processes it starts (the workers of ``psfax run --executor dask``'s LocalCluster) start with them.  Each
is left as it is when the user has set it (``NUMPY_MADVISE_HUGEPAGE``; any of ``MALLOC_MMAP_MAX_``,
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``; ``MALLOC_ARENA_MAX``), and
``PSFAX_KEEP_MEMORY_SETTINGS=1`` leaves all of them.  On the Intel VM of docs/benchmarks.md (THP ``defrag =
madvise``) a ``psfax stars fit`` of the ZTF quadrant took 13.5-14.0 s with them against 17.4-17.9 s without
(its peak memory 2.2 GB against 1.9 GB).
"""

from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
"""glibc ``mallopt`` parameters (``malloc.h``)."""
KEEP_FREED = 1 << 30
"""Bytes of freed memory at the top of the heap that ``malloc`` keeps instead of returning it to the kernel."""
MALLOC_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def tune_memory() -> dict[str, bool]:
    """Apply the settings of the module docstring; returns which of them were applied."""
    applied = {"numpy_hugepage_off": False, "malloc_keeps_memory": False, "malloc_one_arena": False}
    if os.environ.get("PSFAX_KEEP_MEMORY_SETTINGS") == "1":
        return applied
    if "NUMPY_MADVISE_HUGEPAGE" not in os.environ:
        numpy_multiarray()._set_madvise_hugepage(False)
        os.environ["NUMPY_MADVISE_HUGEPAGE"] = "0"
        applied["numpy_hugepage_off"] = True
    if not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"):
        return applied
    libc = ctypes.CDLL(None)
    if not any(name in os.environ for name in MALLOC_VARIABLES):
        applied["malloc_keeps_memory"] = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED))
        os.environ.update({"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(KEEP_FREED)})
    if "MALLOC_ARENA_MAX" not in os.environ:
        applied["malloc_one_arena"] = bool(libc.mallopt(M_ARENA_MAX, 1))
        os.environ["MALLOC_ARENA_MAX"] = "1"
    return applied


BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def single_thread_blas() -> bool:
    """One thread for the BLAS and LAPACK libraries the process has loaded (NumPy's OpenBLAS and SciPy's, which
    JAX's CPU linear algebra calls), through ``threadpoolctl``, and ``OPENBLAS_NUM_THREADS=1`` exported for the
    processes it starts; nothing when the user has set any of :data:`BLAS_VARIABLES`.  Returns whether it was
    applied.

    OpenBLAS's worker threads spin while they wait for work.  The empirical PSF build calls LAPACK on small
    blocks many times in sequence, so with another process busy on one of two cores the spinning workers and
    the caller took turns: the build of a ``psfax stars fit`` of the ZTF quadrant took 8-27 s, against 3.0-3.5 s
    with one thread (2-core VM, the same hour; on an idle machine one thread changes nothing measurable)."""
    if any(name in os.environ for name in BLAS_VARIABLES):
        return False
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    return True


def numpy_multiarray():
    """NumPy's ``multiarray`` module (``numpy._core`` from NumPy 2, ``numpy.core`` before)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1.26
        from numpy.core import multiarray
    return multiarray

"""``psfax.process.tune_memory``: applied in a fresh interpreter (it changes process-wide settings), and left
alone where the user has chosen."""

import json
import os
import platform
import subprocess
import sys

PROGRAM = """
import json, os
from psfax.process import numpy_multiarray, tune_memory
applied = tune_memory()
hugepage_was = numpy_multiarray()._set_madvise_hugepage(True)  # returns the setting it replaces
print(json.dumps({"applied": applied, "hugepage_was": hugepage_was,
                  "env": {k: os.environ.get(k) for k in ("NUMPY_MADVISE_HUGEPAGE", "MALLOC_MMAP_MAX_",
                                                           "MALLOC_ARENA_MAX")}}))
"""


def _run(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("NUMPY_MADVISE_HUGEPAGE", "MALLOC_MMAP_MAX_",
                                                             "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                                                             "MALLOC_ARENA_MAX", "PSFAX_KEEP_MEMORY_SETTINGS")}
    done = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=120,
                          env={**base, **env}, check=True)
    return json.loads(done.stdout)


def test_settings_applied_and_exported_for_child_processes():
    out = _run()
    assert out["applied"]["numpy_hugepage_off"] and out["hugepage_was"] is False
    assert out["env"]["NUMPY_MADVISE_HUGEPAGE"] == "0"
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert out["applied"]["malloc_keeps_memory"] is glibc
    assert out["env"]["MALLOC_MMAP_MAX_"] == ("0" if glibc else None)
    assert out["applied"]["malloc_one_arena"] is glibc
    assert out["env"]["MALLOC_ARENA_MAX"] == ("1" if glibc else None)


def test_user_choices_are_kept():
    out = _run(NUMPY_MADVISE_HUGEPAGE="1", MALLOC_MMAP_THRESHOLD_="1048576", MALLOC_ARENA_MAX="4")
    assert out["applied"] == {"numpy_hugepage_off": False, "malloc_keeps_memory": False, "malloc_one_arena": False}
    assert out["hugepage_was"] is True and out["env"]["MALLOC_MMAP_MAX_"] is None
    assert out["env"]["MALLOC_ARENA_MAX"] == "4"
    assert not any(_run(PSFAX_KEEP_MEMORY_SETTINGS="1")["applied"].values())


BLAS_PROGRAM = """
import json, os
import jax.numpy, scipy.linalg  # both OpenBLAS libraries loaded first, as in the psfax script
from threadpoolctl import threadpool_info
from psfax.process import single_thread_blas
applied = single_thread_blas()
print(json.dumps({"applied": applied, "env": os.environ.get("OPENBLAS_NUM_THREADS"),
                  "threads": [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]}))
"""


def _run_blas(**env):
    base = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                                             "MKL_NUM_THREADS", "BLIS_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", BLAS_PROGRAM], capture_output=True, text=True, timeout=120,
                          env={**base, **env}, check=True)
    return json.loads(done.stdout)


def test_blas_libraries_already_loaded_get_one_thread():
    """NumPy's and SciPy's OpenBLAS, loaded before the call, run one thread after it (threadpoolctl reads
    each library's own count), and child processes are told the same."""
    out = _run_blas()
    assert out["applied"] and out["env"] == "1"
    assert len(out["threads"]) >= 1 and set(out["threads"]) == {1}


def test_a_users_blas_threads_are_kept():
    out = _run_blas(OPENBLAS_NUM_THREADS="2")
    assert not out["applied"] and out["env"] == "2"

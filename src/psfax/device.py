"""Where and in which precision psfax computes.

* ``resolve_device("cpu" | "gpu" | None)`` gives a ``jax.Device``; ``None`` is
  the default backend (the GPU when JAX sees one).
* ``resolve_dtype(dtype, device)`` gives float64 on the CPU and float32 on a
  GPU unless told otherwise.
* ``compute_context(dtype)`` switches JAX's 64-bit mode on for the duration of
  a call when float64 is asked for; importing psfax never changes JAX's
  global configuration.
* ``enable_compilation_cache()`` turns on JAX's persistent compilation cache in
  the user cache directory (``$PSFAX_CACHE_DIR`` or the platform default), so
  a second run does not re-compile (and, with :mod:`psfax.programs`, does not
  re-trace).  psfax calls it lazily on its first computation; set
  ``PSFAX_NO_COMPILATION_CACHE=1`` to opt out.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import jax
import numpy as np

from psfax.errors import InputError

_DEVICE_NAMES = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu"}


def cache_dir() -> Path:
    """The psfax user cache directory (PSFs, samples, compiled programs)."""
    import platformdirs

    path = Path(os.environ.get("PSFAX_CACHE_DIR") or platformdirs.user_cache_dir("psfax"))
    path.mkdir(parents=True, exist_ok=True)
    return path


_program_folder: Path | None = None  # set once the cache is on


def enable_compilation_cache() -> None:
    """Turn on JAX's persistent compilation cache under ``cache_dir()/jax`` and the lowered programs of
    :mod:`psfax.programs` under ``cache_dir()/programs`` (both fixed from then on)."""
    global _program_folder
    if _program_folder is not None or os.environ.get("PSFAX_NO_COMPILATION_CACHE"):
        return
    folder = cache_dir()
    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", str(folder / "jax"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    (folder / "programs").mkdir(exist_ok=True)
    _program_folder = folder / "programs"


def program_cache_dir() -> Path | None:
    """Folder of the lowered programs of :mod:`psfax.programs`, or None when the compilation cache is off
    (not yet enabled, or ``PSFAX_NO_COMPILATION_CACHE`` set)."""
    return _program_folder


def resolve_device(device: str | jax.Device | None) -> jax.Device:
    """Return the JAX device for ``"cpu"``, ``"gpu"``, a device, or ``None`` (default)."""
    if device is None or isinstance(device, jax.Device):
        return device if device is not None else jax.devices()[0]
    name = _DEVICE_NAMES.get(str(device).lower())
    if name is None:
        raise InputError(f"device must be 'cpu' or 'gpu', got {device!r}")
    try:
        return jax.devices(name)[0]
    except RuntimeError as exc:
        raise InputError(f"device={device!r} asked for, but JAX sees no {name} ({exc})") from None


def resolve_dtype(dtype, device: jax.Device) -> np.dtype:
    """float64 on the CPU, float32 elsewhere, unless ``dtype`` says otherwise."""
    if dtype is None:
        return np.dtype(np.float64 if device.platform == "cpu" else np.float32)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise InputError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


@contextlib.contextmanager
def compute_context(dtype, device: jax.Device):
    """Scope in which psfax computes: x64 on for float64, default device set."""
    enable_compilation_cache()
    x64 = np.dtype(dtype) == np.float64
    with jax.enable_x64(x64), jax.default_device(device):
        yield

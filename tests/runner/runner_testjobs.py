"""A small real job for the runner tests: read a FITS image, smooth it with JAX, write a FITS.

It also knows how to fail on purpose: ``kill_marker`` makes the process exit
hard (``os._exit``, as a crash or an OOM kill would) the first time it sees
the marker file, which it deletes first so that the retry completes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from astropy.io import fits

from psfax.device import compute_context, resolve_device
from psfax.io.atomic import atomic_path
from psfax.runner.jobs import Job, JobOption


@jax.jit
def box_smooth(image: jax.Array, scale: float) -> jax.Array:
    """``scale`` times the 3x3 box mean of ``image`` (edges padded by reflection)."""
    padded = jnp.pad(image, 1, mode="reflect")
    ny, nx = image.shape
    total = sum(padded[dy:dy + ny, dx:dx + nx] for dy in range(3) for dx in range(3))
    return scale * total / 9.0


def read_image(path: str, hdu: int = 0) -> np.ndarray:
    with fits.open(path) as hdul:
        return np.asarray(hdul[hdu].data, dtype=np.float64)


def smooth(image: np.ndarray, scale: float = 1.0, kill_marker: str | None = None, sleep: float = 0.0):
    if kill_marker is not None and Path(kill_marker).exists():
        Path(kill_marker).unlink()
        os._exit(17)
    time.sleep(sleep)
    with compute_context(np.float64, resolve_device("cpu")):
        return np.asarray(box_smooth(jnp.asarray(image), scale))


def write_smoothed(image: np.ndarray, out_dir: Path) -> list[Path]:
    final = Path(out_dir) / "smooth.fits"
    with atomic_path(final) as tmp:
        fits.PrimaryHDU(image).writeto(tmp)
    return [final]


SMOOTH_JOB = Job("smooth", read_image, smooth, write_smoothed,
                 (JobOption("hdu", "read", 0), JobOption("scale", "compute", 1.0),
                  JobOption("kill_marker", "compute", None), JobOption("sleep", "compute", 0.0)))


def make_images(folder: Path, n: int, shape=(32, 32), seed: int = 0) -> list[Path]:
    """``n`` random FITS images ``img0.fits``... in ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.fits"
        fits.PrimaryHDU(rng.normal(size=shape)).writeto(path)
        paths.append(path)
    return paths


def expected_smooth(path: Path, scale: float = 1.0) -> np.ndarray:
    """The same smoothing by scipy, as an independent reference."""
    from scipy.ndimage import uniform_filter

    return scale * uniform_filter(fits.getdata(path).astype(np.float64), size=3, mode="mirror")

"""Choosing the PSF stars: a sequence of cuts, each one counted.

The cuts, in order (each keeps a source only if it passed the previous ones):

``edge``        the centre is at least ``edge`` px from every image border (default: 15 px
                or half the stamp, whichever is more, so that every stamp fits);
``mask``        no bad pixel (mask bits, NaN, saturated) within ``mask_radius`` px
                (a square box) of the centre;
``saturation``  the raw 3x3 peak is below ``saturation_margin`` x SATURATE
                (the detector turns non-linear before it saturates);
``isolation``   no other detection within ``isolation`` arcsec;
``magnitude``   ``mag_min < mag < mag_max`` (aperture magnitude through MAGZP,
                or the reference catalog's magnitude);
``shape``       not deblended by sep, elongation a/b below ``max_elongation``
                (blends, galaxies, trails) and second-moment size sqrt(a b) within
                ``size_range`` x the median size of the stars left (cosmic rays are
                smaller than the PSF, galaxies larger).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from psfax.errors import InputError, NoStarsError
from psfax.stars.detect import SEP_BLENDED
from psfax.stars.exposure import Exposure


DEFAULT_EDGE = 15.0


@dataclasses.dataclass(frozen=True)
class SelectionOptions:
    """Thresholds of the PSF-star cuts (see the module docstring); ``edge=None`` is the default edge
    (``FitOptions`` makes it half its stamp when that is more than :data:`DEFAULT_EDGE`)."""

    edge: float | None = None
    mask_radius: int = 3
    saturation_margin: float = 0.8
    isolation: float = 20.0
    mag_min: float = 14.0
    mag_max: float = 18.0
    max_elongation: float = 1.5
    size_range: tuple[float, float] = (0.7, 1.4)

    def __post_init__(self):
        if (self.edge is not None and not self.edge >= 0) or self.mask_radius < 0 or not self.isolation >= 0:
            raise InputError("edge, mask_radius and isolation must be >= 0, got "
                             f"{self.edge}, {self.mask_radius}, {self.isolation}")
        if not 0 < self.saturation_margin <= 1:
            raise InputError(f"saturation_margin must be in (0, 1], got {self.saturation_margin}")
        if not self.mag_min < self.mag_max:
            raise InputError(f"mag_min must be < mag_max, got {self.mag_min} >= {self.mag_max}")
        if not self.max_elongation >= 1 or not 0 < self.size_range[0] < 1 < self.size_range[1]:
            raise InputError(f"max_elongation must be >= 1 and size_range (lo < 1 < hi), got "
                             f"{self.max_elongation}, {self.size_range}")


@dataclasses.dataclass(frozen=True)
class Selection:
    """Indices of the selected sources and the count left after each cut (in order)."""

    index: np.ndarray
    counts: dict[str, int]


def distance_to_edge(x: np.ndarray, y: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Distance [px] from (x, y) to the nearest image border (pixel centres 0..n-1)."""
    ny, nx = shape
    return np.minimum.reduce([x, y, nx - 1 - x, ny - 1 - y])


def bad_pixels_near(exposure: Exposure, x: np.ndarray, y: np.ndarray, radius: int) -> np.ndarray:
    """Number of bad pixels in the (2 radius + 1)^2 box around each rounded centre."""
    ny, nx = exposure.shape
    offsets = np.arange(-radius, radius + 1)
    rows = np.clip(np.rint(y).astype(int)[:, None] + offsets, 0, ny - 1)
    cols = np.clip(np.rint(x).astype(int)[:, None] + offsets, 0, nx - 1)
    return exposure.bad[rows[:, :, None], cols[:, None, :]].sum(axis=(1, 2))


def neighbour_count(x: np.ndarray, y: np.ndarray, radius: float,
                    all_x: np.ndarray, all_y: np.ndarray) -> np.ndarray:
    """How many of the points (all_x, all_y) lie within ``radius`` px of each (x, y),
    not counting a point at the very position of (x, y) (the source itself)."""
    tree = cKDTree(np.column_stack([all_x, all_y]))
    points = np.column_stack([x, y])
    hits = np.asarray(tree.query_ball_point(points, r=radius, return_length=True))
    nearest, _ = tree.query(points)
    return hits - (nearest < 1e-6)


def select_psf_stars(sources: Table, exposure: Exposure, options: SelectionOptions = SelectionOptions(),
                     detections: Table | None = None) -> Selection:
    """Apply the cuts in order; return the survivors and the count after each cut.

    ``detections`` (default ``sources``) are the objects a PSF star must be
    isolated from.  Raises :class:`~psfax.errors.NoStarsError` when no source is
    left, naming the cut that removed the last ones.
    """
    detections = sources if detections is None else detections
    x, y = np.asarray(sources["x"], float), np.asarray(sources["y"], float)
    counts = {"detected": len(sources)}
    keep = np.ones(len(sources), bool)

    def cut(name: str, passed: np.ndarray) -> None:
        keep[:] &= passed
        counts[name] = int(keep.sum())
        if counts[name] == 0:
            raise NoStarsError(f"{exposure.name}: no star passes the selection cuts "
                               f"(counts {counts}; the '{name}' cut removed the last ones)")

    if len(sources) == 0:
        raise NoStarsError(f"{exposure.name}: no source detected")
    edge = DEFAULT_EDGE if options.edge is None else options.edge
    cut("edge", distance_to_edge(x, y, exposure.shape) >= edge)
    cut("mask", bad_pixels_near(exposure, x, y, options.mask_radius) == 0)
    cut("saturation", np.asarray(sources["raw_peak"]) < options.saturation_margin * exposure.saturate)
    isolation_px = options.isolation / exposure.pixscale
    neighbours = neighbour_count(x, y, isolation_px, np.asarray(detections["x"], float),
                                 np.asarray(detections["y"], float))
    cut("isolation", neighbours == 0)
    mag = np.asarray(sources["mag"] if "mag" in sources.colnames else sources["mag_aper"], float)
    cut("magnitude", (mag > options.mag_min) & (mag < options.mag_max))
    cut("shape", _point_like(sources, keep, options))
    return Selection(index=np.flatnonzero(keep), counts=counts)


def _point_like(sources: Table, keep: np.ndarray, options: SelectionOptions) -> np.ndarray:
    """Not deblended, round enough, and of the median size of the ``keep`` sources."""
    a, b = np.asarray(sources["a"], float), np.asarray(sources["b"], float)
    size = np.sqrt(a * b)
    typical = np.median(size[keep])
    lo, hi = options.size_range
    return (((np.asarray(sources["sep_flag"]) & SEP_BLENDED) == 0)
            & (a < options.max_elongation * b) & (size > lo * typical) & (size < hi * typical))

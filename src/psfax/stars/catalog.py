"""Reference catalogs (e.g. a Gaia extract) matched to detections through the WCS.

A reference catalog is a Parquet, CSV or FITS table with right ascension,
declination [deg] and a magnitude.  Its stars are projected to pixels with the
exposure's WCS and matched to the nearest sep detection; the matched
detections keep the catalog's magnitude for the magnitude cut, as the ZTF
pipeline selects its PSF stars from a reference catalog.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from psfax.errors import BadFileError, InputError, MissingFileError
from psfax.stars.exposure import Exposure

RA_NAMES = ("ra", "ra_deg", "raj2000", "alpha")
DEC_NAMES = ("dec", "dec_deg", "dej2000", "decj2000", "delta")
MAG_NAMES = ("mag", "phot_g_mean_mag", "gmag", "rmag", "r_mag", "g_mag", "magnitude")


def _find_column(table: Table, given: str | None, candidates: tuple[str, ...], what: str,
                 path: Path) -> str:
    lower = {name.lower(): name for name in table.colnames}
    for name in ((given,) if given else candidates):
        if name.lower() in lower:
            return lower[name.lower()]
    wanted = repr(given) if given else " or ".join(candidates)
    raise InputError(f"reference catalog {path}: no {what} column ({wanted}); "
                     f"columns are {table.colnames}")


def read_reference_catalog(path, *, ra: str | None = None, dec: str | None = None,
                           mag: str | None = None) -> Table:
    """Read a Parquet/CSV/FITS catalog; return columns ``ra, dec, mag`` (float64).

    Column names are found case-insensitively among common spellings unless
    given explicitly.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"reference catalog {path} does not exist")
    suffix = "".join(path.suffixes).lower()
    fmt = ("parquet" if suffix.endswith(".parquet") else "ascii.csv" if ".csv" in suffix
           else "fits" if any(s in suffix for s in (".fits", ".fit", ".fts")) else None)
    if fmt is None:
        raise InputError(f"reference catalog {path}: unknown format (use .parquet, .csv or .fits)")
    try:
        table = Table.read(path, format=fmt)
    except Exception as exc:  # readers raise many types for a broken file
        raise BadFileError(f"reference catalog {path} cannot be read as {fmt} ({exc})") from None
    names = [_find_column(table, given, cands, what, path) for given, cands, what in
             ((ra, RA_NAMES, "right ascension"), (dec, DEC_NAMES, "declination"),
              (mag, MAG_NAMES, "magnitude"))]
    return Table([np.asarray(table[n], dtype=float) for n in names], names=("ra", "dec", "mag"))


def match_catalog(exposure: Exposure, detections: Table, catalog: Table,
                  radius: float = 2.0) -> Table:
    """Detections that have a catalog star within ``radius`` px, with its ``ra_ref, dec_ref, mag``.

    Each catalog star inside the image is matched to its nearest detection;
    a detection claimed by several catalog stars is dropped (an unresolved pair).
    """
    if exposure.wcs is None:
        raise InputError(f"{exposure.name}: a reference catalog needs a celestial WCS in the header")
    x, y = exposure.wcs.world_to_pixel_values(catalog["ra"], catalog["dec"])
    ny, nx = exposure.shape
    inside = np.isfinite(x) & np.isfinite(y) & (x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5)
    if len(detections) == 0 or not inside.any():
        return detections[:0]
    tree = cKDTree(np.column_stack([detections["x"], detections["y"]]))
    dist, index = tree.query(np.column_stack([x[inside], y[inside]]), distance_upper_bound=radius)
    found = np.isfinite(dist)
    index = index[found]
    claimed = np.bincount(index, minlength=len(detections))
    unique = claimed[index] == 1
    matched = detections[index[unique]]
    ref = catalog[np.flatnonzero(inside)[found][unique]]
    matched["ra_ref"], matched["dec_ref"], matched["mag"] = ref["ra"], ref["dec"], ref["mag"]
    return matched

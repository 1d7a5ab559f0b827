"""Reference catalogs (e.g. a Gaia extract) matched to detections through the WCS; the output
catalogs' column units and descriptions (:data:`COLUMNS`, :func:`write_catalog`).

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


#: Unit and one-line description of every column of ``stars.parquet`` and ``psf_stars.parquet``,
#: written into the Parquet schema (astropy units: ``pix``, ``adu``, ``deg``, ``mag``, ``rad``; "" is
#: dimensionless).  Positions are image pixels, (0, 0) the centre of the first pixel.
COLUMNS = {
    "x_fit": ("pix", "fitted x of the PSF centre in the image (column)"),
    "y_fit": ("pix", "fitted y of the PSF centre in the image (row)"),
    "x_err": ("pix", "standard error of x_fit (inverse Fisher matrix)"),
    "y_err": ("pix", "standard error of y_fit (inverse Fisher matrix)"),
    "flux_fit": ("adu", "fitted flux of the PSF model: the total flux of an analytic PSF, the light within "
                        "the normalisation radius of an empirical one (psf.json psf_choice)"),
    "flux_err": ("adu", "standard error of flux_fit: flux_err_stat with, for an empirical PSF, the flux model "
                        "error psf.json psf_choice.flux_model_error x flux_fit and, in a group, what the other "
                        "members' model errors bring, added in quadrature"),
    "flux_err_stat": ("adu", "statistical error of flux_fit under the CCD variance (inverse Fisher matrix; "
                             "equal to flux_err with an analytic PSF)"),
    "bkg_fit": ("adu", "fitted sky level per pixel under the star"),
    "bkg_err": ("adu", "standard error of bkg_fit"),
    "fwhm": ("pix", "FWHM of the PSF profile before pixel integration (intrinsic)"),
    "fwhm_err": ("pix", "standard error of fwhm"),
    "beta": ("", "Moffat beta of the PSF profile"),
    "beta_err": ("", "standard error of beta"),
    "ellipticity": ("", "PSF ellipticity 1 - b/a"),
    "ellipticity_err": ("", "standard error of ellipticity"),
    "theta": ("rad", "position angle of the PSF major axis, counter-clockwise from +x"),
    "theta_err": ("rad", "standard error of theta"),
    "chi2": ("", "chi2 of the fit over the stamp's usable pixels"),
    "dof": ("", "degrees of freedom: usable pixels - free parameters"),
    "reduced_chi2": ("", "chi2 / dof"),
    "converged": ("", "the optimizer converged"),
    "n_iter": ("", "optimizer iterations"),
    "flags": ("", "fit flag bits (psfax.fitting.flags; 0 = good)"),
    "x_stamp": ("pix", "x_fit in stamp pixels: x_fit - x0"),
    "y_stamp": ("pix", "y_fit in stamp pixels: y_fit - y0"),
    "x0": ("pix", "image column of the stamp's pixel (0, 0)"),
    "y0": ("pix", "image row of the stamp's pixel (0, 0)"),
    "ra": ("deg", "right ascension of (x_fit, y_fit) through the image WCS"),
    "dec": ("deg", "declination of (x_fit, y_fit) through the image WCS"),
    "mag": ("mag", "PSF magnitude MAGZP - 2.5 log10(flux_fit); flux_fit is the total flux of the analytic "
                   "PSF, or with the empirical PSF the light within psf.json's psf_choice.norm_radius_px "
                   "(psf_choice.aperture_correction converts it to aperture_radius_px)"),
    "mag_err": ("mag", "statistical error of mag (zero-point error not included)"),
    "mag_aper": ("mag", "sep aperture magnitude through MAGZP"),
    "source_flags": ("", "detection bits (psfax.stars.pipeline.SOURCE_FLAGS): 1 blended, 2 saturated, "
                         "4 masked pixel near, 8 extended, 16 fixed position, 32 found in the residual"),
    "psf_star": ("", "within 1 px of a PSF star of the model"),
    "group_id": ("", "group of sources fitted together (friends of friends within group_radius; from 1)"),
    "group_size": ("", "sources in the group (1: fitted alone, the others' models subtracted)"),
    "a_moment": ("pix", "sep second-moment semi-major axis"),
    "b_moment": ("pix", "sep second-moment semi-minor axis"),
    "mag_select": ("mag", "magnitude the selection cut used (reference catalog, else mag_aper)"),
}


def write_catalog(table: Table, path: Path) -> Path:
    """Write ``table`` to Parquet at ``path`` atomically, every float column as float64 (one type per
    quantity whatever the fit's precision), each column's unit and description (:data:`COLUMNS`)
    both in astropy's table metadata (``Table.read`` restores them) and in the Parquet field
    metadata (``unit``, ``description``: pyarrow, pandas and other readers see them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from psfax.io.atomic import atomic_path

    out = Table(table, copy=False)
    for name in out.colnames:
        column = out[name]
        if column.dtype.kind == "f":
            out[name] = column.astype(np.float64)  # a masked column stays masked
        unit, description = COLUMNS.get(name, (None, None))
        if description is not None:
            out[name].unit = unit or None
            out[name].description = description
    with atomic_path(path) as tmp:
        out.write(tmp, format="parquet", overwrite=True)
        arrow = pq.read_table(tmp)
        fields = [field.with_metadata({"unit": COLUMNS[field.name][0], "description": COLUMNS[field.name][1]})
                  if field.name in COLUMNS else field for field in arrow.schema]
        pq.write_table(arrow.cast(pa.schema(fields, metadata=arrow.schema.metadata)), tmp)
    return path

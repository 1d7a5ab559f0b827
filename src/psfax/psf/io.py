"""``psf.fits``: an :class:`~psfax.psf.empirical.EmpiricalPSF` as a FITS file (no pickle).

Layout (pixel conventions only, no WCS):

* HDU 0 (primary, no data): provenance and the model's scalars: ``PSFKIND = 'EMPIRICAL'``, ``PSFAXVER``,
  ``DATE``, ``OVERSAMP`` (K, grid nodes per pixel), ``STAMPSZ``, ``DEGREE``, ``NTERMS``, ``XMID, XHALF,
  YMID, YHALF`` (the polynomial's scaling: ``X = (x - XMID) / XHALF``, x in 0-based image pixels, (0, 0) the
  centre of the first pixel), ``NORMRAD`` (px: the PSF sums to one within it), ``APCORR`` (total flux /
  flux within NORMRAD), ``CORE`` ('NONE' or 'MOFFAT') with ``COREFWHM``, ``COREBETA`` (px), and ``BUILD``,
  the build's options and statistics as JSON text.
* HDU 1 ``GRID``: float64 (NTERMS, L, L).  Plane k is the grid of the monomial ``TERMk`` (e.g. ``x^1 y^0``);
  ``[k, i, j]`` is the value per unit flux of a pixel whose centre lies at ``dx = (j - CENTRE) / OVERSAMP``,
  ``dy = (i - CENTRE) / OVERSAMP`` px from the star (already pixel-integrated), before the normalisation
  by ``s(x, y)`` described in :mod:`psfax.psf.empirical`.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
from astropy.io import fits

from psfax.errors import BadFileError, MissingFileError
from psfax.fitting.spatial import PolynomialBasis
from psfax.psf.empirical import EmpiricalPSF


def write_psf_fits(psf: EmpiricalPSF, path) -> Path:
    """Write ``psf`` to ``path`` (overwritten) in the layout of the module docstring."""
    from psfax import __version__
    from psfax.io.atomic import atomic_path

    path = Path(path)
    head = fits.Header()
    head["PSFKIND"] = ("EMPIRICAL", "psfax empirical PSF (grid + polynomial in x, y)")
    head["PSFAXVER"] = (__version__, "psfax version that wrote this file")
    head["DATE"] = (datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "UTC")
    head["OVERSAMP"] = (psf.oversampling, "grid nodes per pixel")
    head["STAMPSZ"] = (psf.stamp_size, "stamp side the grid serves [px]")
    b = psf.basis
    head["DEGREE"] = (b.degree, "degree of the polynomial in (x, y)")
    head["NTERMS"] = (b.size, "polynomial terms (planes of GRID)")
    for key, value in (("XMID", b.x_mid), ("XHALF", b.x_half), ("YMID", b.y_mid), ("YHALF", b.y_half)):
        head[key] = (value, "X = (x - XMID) / XHALF, 0-based pixels")
    head["NORMRAD"] = (psf.norm_radius, "PSF sums to 1 within this radius [px]")
    head["APCORR"] = (psf.aperture_correction, "total flux / flux within NORMRAD")
    head["CORE"] = ("NONE" if psf.core is None else "MOFFAT", "analytic core under the grid")
    if psf.core is not None:
        head["COREFWHM"], head["COREBETA"] = (psf.core[0], "core FWHM [px]"), (psf.core[1], "core Moffat beta")
    head["BUILD"] = (json.dumps(psf.meta, default=_json_default), "build options and statistics (JSON)")
    grid = fits.ImageHDU(np.asarray(psf.grid, np.float64), name="GRID")
    grid.header["CENTRE"] = ((psf.grid.shape[-1] - 1) // 2, "0-based index of offset 0 on both axes")
    grid.header["STEP"] = (1.0 / psf.oversampling, "node spacing [px]")
    for k, name in enumerate(b.names()):
        grid.header[f"TERM{k}"] = (name, f"monomial of plane {k}")
    with atomic_path(path) as tmp:
        fits.HDUList([fits.PrimaryHDU(header=head), grid]).writeto(tmp, overwrite=True)
    return path


def read_psf_fits(path) -> EmpiricalPSF:
    """Read a file written by :func:`write_psf_fits`."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path}: no such PSF file")
    try:
        with fits.open(path) as hdus:
            head = hdus[0].header
            if head.get("PSFKIND") != "EMPIRICAL":
                raise BadFileError(f"{path}: not a psfax empirical PSF (PSFKIND={head.get('PSFKIND')!r})")
            grid = np.array(hdus["GRID"].data, dtype=float)
            basis = PolynomialBasis(int(head["DEGREE"]), float(head["XMID"]), float(head["XHALF"]),
                                    float(head["YMID"]), float(head["YHALF"]))
            core = None if head["CORE"] == "NONE" else (float(head["COREFWHM"]), float(head["COREBETA"]))
            return EmpiricalPSF(grid, int(head["OVERSAMP"]), int(head["STAMPSZ"]), basis, core,
                                float(head["NORMRAD"]), float(head["APCORR"]), json.loads(head.get("BUILD", "{}")))
    except (OSError, KeyError, ValueError) as exc:
        if isinstance(exc, BadFileError):
            raise
        raise BadFileError(f"{path}: cannot read a psfax PSF ({exc})") from None


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")

"""Update the pointing keywords of an AIA map from a master pointing table (no network).

The AIA master pointing table (JSOC series ``aia.master_pointing3h``) gives,
per 3-hour interval ``[T_START, T_STOP)`` and channel ``ccc``, the Sun's
centre on the CCD (``A_ccc_X0``, ``A_ccc_Y0``, 0-based pixels), the plate
scale (``A_ccc_IMSCALE``, arcsec/px) and the instrument roll
(``A_ccc_INSTROT``, degrees).  For the row that contains the map's ``T_OBS``:

* ``CRPIX`` moves by the change of ``X0_MP`` / ``Y0_MP`` (so cut-outs work),
* ``CDELT1 = CDELT2 = IMSCALE``,
* ``CROTA2 = INSTROT + SAT_ROT``,
* ``X0_MP``, ``Y0_MP`` take the table values,

and the ``PCi_j`` keywords are dropped so that the roll is read from
``CROTA2``.  A missing (NaN) table value leaves its keyword unchanged, with a
warning.  The user supplies the table (an astropy Table or a file astropy can
read: ECSV keeps the units; plain CSV columns are taken as pixels, arcsec/px
and degrees).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np

from psfax.errors import BadFileError, InputError, InputTypeError, MissingFileError
from psfax.solar.channels import validate_channel
from psfax.solar.header import add_history

_UNITS = {"X0": "pix", "Y0": "pix", "IMSCALE": "arcsec / pix", "INSTROT": "deg"}


def update_pointing(smap, pointing_table):
    """A copy of ``smap`` with CRPIX, CDELT, CROTA2, X0_MP, Y0_MP from ``pointing_table``."""
    from astropy.time import Time

    table = read_pointing_table(pointing_table) if isinstance(pointing_table, (str, Path)) else pointing_table
    if not hasattr(table, "colnames"):
        raise InputTypeError(f"pointing_table must be an astropy Table or a file path, "
                             f"got {type(pointing_table).__name__}")
    channel = validate_channel(smap.wavelength)
    prefix = f"A_{channel:03d}_"
    needed = ["T_START", "T_STOP"] + [prefix + key for key in _UNITS]
    absent = [name for name in needed if name not in table.colnames]
    if absent:
        raise InputError(f"pointing table lacks columns {absent}")
    t_obs = smap.reference_date
    start, stop = Time(table["T_START"]), Time(table["T_STOP"])
    rows = np.flatnonzero((start <= t_obs) & (t_obs < stop))
    if rows.size == 0:
        raise InputError(f"pointing table has no interval containing T_OBS={t_obs.isot} "
                         f"(it covers {start.min().isot} to {stop.max().isot})")
    row = table[int(rows[0])]
    value = {key: _value(row[prefix + key], unit) for key, unit in _UNITS.items()}
    meta = copy.deepcopy(smap.meta)
    crpix1 = smap.reference_pixel.x.to_value("pix") + 1
    crpix2 = smap.reference_pixel.y.to_value("pix") + 1
    x0_old, y0_old = meta.get("x0_mp"), meta.get("y0_mp")
    if x0_old is not None and y0_old is not None:
        crpix1 += value["X0"] - x0_old
        crpix2 += value["Y0"] - y0_old
    else:
        warnings.warn("X0_MP/Y0_MP absent from the header: reference pixel not updated", stacklevel=2)
    updates = {"crpix1": crpix1, "crpix2": crpix2, "cdelt1": value["IMSCALE"], "cdelt2": value["IMSCALE"],
               "crota2": value["INSTROT"] + float(meta.get("sat_rot", 0.0)),
               "x0_mp": value["X0"], "y0_mp": value["Y0"]}
    for key, new in updates.items():
        if np.isnan(new):
            warnings.warn(f"pointing table value for {key.upper()} is missing; keyword kept", stacklevel=2)
        else:
            meta[key] = float(new)
    for key in ("PC1_1", "PC1_2", "PC2_1", "PC2_2"):
        meta.pop(key, None)
    add_history(meta, f"update_pointing: table row T_START={start[int(rows[0])].isot}")
    return smap._new_instance(smap.data, meta, plot_settings=smap.plot_settings, mask=smap.mask)


def read_pointing_table(path):
    """Read a pointing table file (ECSV, CSV, FITS, anything ``astropy.table`` reads)."""
    from astropy.table import QTable

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"pointing table {path} does not exist")
    try:
        return QTable.read(path, format="ascii.ecsv" if path.suffix == ".ecsv" else None)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
        reason = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise BadFileError(f"pointing table {path} cannot be read: {reason.strip()}") from None


def _value(cell, unit: str) -> float:
    if hasattr(cell, "to_value"):
        return float(cell.to_value(unit))
    return float(np.ma.filled(np.ma.asarray(cell, dtype=float), np.nan))

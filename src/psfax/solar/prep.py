"""Per-file stages of the AIA pipeline: level 1 -> [pointing] -> deconvolved -> registered.

``read_level1`` -> ``prep_map`` -> ``write_level16``; the runner and
``psfax aia prep`` call these three per file.  A map that is both
deconvolved and registered is "level 1.6" (``LVL_NUM = 1.6``); the header
records what was done (``HISTORY``, ``PSFAXVER``, ``PSFDECON``, ``PSFITER``,
``PSFORDER``).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np

from psfax.errors import BadFileError, InputError, MissingFileError, PsfaxError
from psfax.io.atomic import atomic_path
from psfax.version import psfax_version


def read_level1(path):
    """Read an AIA level-1 FITS file (plain or tile-compressed) into a sunpy ``AIAMap``.

    Raises MissingFileError if absent, BadFileError naming the file if it is
    not FITS, is truncated, has no image, or is not an AIA image.
    """
    from astropy.io import fits

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*'BLANK' keyword.*")
            warnings.filterwarnings("error", message=".*truncated.*")
            with fits.open(path, memmap=False) as hdul:
                hdu = next((h for h in hdul if h.is_image and h.data is not None and h.data.ndim == 2), None)
                if hdu is None:
                    raise BadFileError(f"{path}: no 2-d image in the FITS file")
                data = np.array(hdu.data)
                header = hdu.header.copy()
    except PsfaxError:
        raise
    except Exception as exc:  # noqa: BLE001 - astropy raises many kinds for broken files
        raise BadFileError(f"{path}: not a readable FITS file ({type(exc).__name__}: {exc})") from None
    return _aia_map(data, header, path)


def _aia_map(data, header, path):
    import sunpy.map
    from sunpy.map.sources.sdo import AIAMap

    instrument = str(header.get("INSTRUME", "")) + str(header.get("TELESCOP", ""))
    if "AIA" not in instrument.upper():
        raise BadFileError(f"{path}: not an AIA image (INSTRUME={header.get('INSTRUME')!r}, "
                           f"TELESCOP={header.get('TELESCOP')!r})")
    try:
        smap = sunpy.map.Map(data, header)
    except Exception as exc:  # noqa: BLE001 - sunpy header errors vary
        raise BadFileError(f"{path}: header is not a valid AIA map ({exc})") from None
    if not isinstance(smap, AIAMap):
        raise BadFileError(f"{path}: sunpy does not recognise an AIA map in this file")
    wavelength = header.get("WAVELNTH")
    if not isinstance(wavelength, (int, float)) or wavelength not in AIA_CHANNELS:
        raise BadFileError(f"{path}: WAVELNTH={wavelength!r} is not an AIA channel "
                           f"({', '.join(map(str, AIA_CHANNELS))} Angstrom)")
    return smap


#: Wavelengths [Angstrom] of AIA's channels: the seven EUV ones, then the UV and visible ones.
AIA_CHANNELS = (94, 131, 171, 193, 211, 304, 335, 1600, 1700, 4500)


def check_prep_options(*, pointing=None, iterations: int = 25, order: int = 3, dtype=None, **flags) -> None:
    """Raise InputError (MissingFileError for an absent ``pointing`` path) for a :func:`prep_map`
    option out of range, before any file is read; ``flags`` (``deconvolve``, ``register``) are yes/no."""
    if isinstance(pointing, (str, Path)) and not Path(pointing).is_file():
        raise MissingFileError(f"pointing table {pointing} does not exist")
    if isinstance(iterations, bool) or not isinstance(iterations, (int, np.integer)) or iterations < 0:
        raise InputError(f"iterations must be a non-negative integer, got {iterations!r}")
    if order not in (1, 3):
        raise InputError(f"order must be 1 or 3, got {order!r}")
    try:
        float_dtype = dtype is None or np.dtype(dtype) in (np.float32, np.float64)
    except TypeError:
        float_dtype = False
    if not float_dtype:
        raise InputError(f"dtype must be float32 or float64, got {dtype!r}")


def prep_map(smap, *, deconvolve: bool = False, register: bool = False, pointing=None,
             iterations: int = 25, order: int = 3, dtype=None):
    """Apply, in this order, ``update_pointing`` (if ``pointing`` is a table or path),
    Richardson-Lucy ``deconvolve`` (``iterations``) and ``register`` (spline ``order``).

    Returns a new Map whose header records each step.
    """
    from psfax.solar.deconvolve import deconvolve as rl_deconvolve
    from psfax.solar.pointing import update_pointing
    from psfax.solar.register import register as register_map

    check_prep_options(iterations=iterations, order=order, dtype=dtype)
    out = smap
    if pointing is not None:
        out = update_pointing(out, pointing)
    if deconvolve:
        out = rl_deconvolve(out, iterations=iterations, dtype=dtype)
    if register:
        out = register_map(out, order=order, dtype=dtype)
    if out is smap:  # nothing applied: still never touch the caller's header
        out = smap._new_instance(smap.data, copy.deepcopy(smap.meta), plot_settings=smap.plot_settings,
                                 mask=smap.mask)
    meta = out.meta
    meta["psfaxver"] = psfax_version()
    meta["psfdecon"] = bool(deconvolve)
    meta["psfiter"] = int(iterations) if deconvolve else 0
    meta["psforder"] = int(order) if register else 0
    if deconvolve and register:
        meta["lvl_num"] = 1.6
    return out


def write_level16(smap, out_dir) -> Path:
    """Write ``smap`` as FITS into ``out_dir`` (atomically) and return the path.

    The name is ``aia_lev<level>_<channel>a_<T_OBS>.fits``, e.g.
    ``aia_lev1.6_0171a_2011-02-15T00-00-01.340.fits``.
    """
    from astropy.io import fits

    path = level16_path(smap, out_dir)
    header = smap.fits_header
    for key in ("BLANK", "BSCALE", "BZERO"):  # integer-storage keywords do not apply to float data
        header.remove(key, ignore_missing=True, remove_all=True)
    hdu = fits.PrimaryHDU(np.asarray(smap.data), header)
    with atomic_path(path) as tmp:
        hdu.writeto(tmp, overwrite=True, output_verify="silentfix")
    return path


def level16_path(smap, out_dir) -> Path:
    """``out_dir / aia_lev<level>_<channel>a_<T_OBS>.fits``, the name :func:`write_level16` writes."""
    level = smap.meta.get("lvl_num", 1)
    channel = int(round(smap.wavelength.to_value("angstrom")))
    stamp = smap.reference_date.isot.replace(":", "-")
    return Path(out_dir) / f"aia_lev{level}_{channel:04d}a_{stamp}.fits"

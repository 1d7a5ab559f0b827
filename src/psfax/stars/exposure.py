"""Reading a CCD exposure: science pixels, mask bits, noise model, WCS, zero point.

An :class:`Exposure` is what every later stage of the stars pipeline reads.
Header keywords follow the ZTF science-image convention:

=========  =======================================  ===================
keyword    meaning                                  default if missing
=========  =======================================  ===================
GAIN       electrons per ADU                        none: an error
READNOI    read noise [e-]                          none: an error
SATURATE   saturation level [ADU]                   +inf (no cut)
MAGZP      zero point: m = MAGZP - 2.5 log10(ADU)   25.0
MAGZPUNC   zero-point uncertainty [mag]             0.0
SEEING     seeing FWHM [px]                         2.0
PIXSCALE   pixel scale [arcsec/px]                  1.0 (or the WCS's)
=========  =======================================  ===================

Each default is used with a :class:`HeaderDefaultWarning`; an explicit
keyword argument of :func:`read_exposure` overrides the header.  GAIN and
READNOI have no default (they set every pixel's weight): without them in the
header or as ``gain=`` / ``read_noise=`` the read is an :class:`InputError`.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from psfax.errors import BadFileError, InputError, InputTypeError, MissingFileError

#: header keyword -> (Exposure field, default, unit for messages)
HEADER_KEYWORDS = {
    "GAIN": ("gain", None, "e-/ADU"),
    "READNOI": ("read_noise", None, "e-"),
    "SATURATE": ("saturate", np.inf, "ADU"),
    "MAGZP": ("zero_point", 25.0, "mag"),
    "MAGZPUNC": ("zero_point_err", 0.0, "mag"),
    "SEEING": ("seeing", 2.0, "px"),
    "PIXSCALE": ("pixscale", 1.0, "arcsec/px"),
}

#: Words in a mask bit's header description that make the pixel unusable for a fit.
#: Bits describing detections (``SEXTRACTOR DETECTION``, ``PSF-EXTRACTED``) are
#: informational; bits like ``GHOST``/``HALO`` flag real but contaminated light.
BAD_MASK_WORDS = ("AIRCRAFT", "SATELLITE", "LOW RESPONSIVITY", "HIGH RESPONSIVITY", "NOISY",
                  "GHOST", "SPIKE", "RAD HIT", "SATURATED", "DEAD", "NAN", "HALO")


ALL_BITS = 0x7FFFFFFF


class HeaderDefaultWarning(UserWarning):
    """A header keyword was missing and its documented default was used."""


@dataclasses.dataclass(frozen=True)
class Exposure:
    """One CCD image ready for star work.

    ``data`` is the science image in ADU (native float32, not sky-subtracted),
    ``bad`` a boolean image, True where the pixel must not be fitted (mask bits
    in :attr:`bad_bits`, non-finite values, or at/above saturation).
    """

    data: np.ndarray
    bad: np.ndarray
    mask_bits: np.ndarray | None
    bad_bits: int
    header: fits.Header
    wcs: WCS | None
    gain: float
    read_noise: float
    saturate: float
    zero_point: float
    zero_point_err: float
    seeing: float
    pixscale: float
    name: str = "array"

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape


def bad_mask_bits(mask_header: fits.Header) -> dict[int, str]:
    """Bits of a ZTF-style mask (``BITnn`` keywords) whose description marks a bad pixel.

    Returns ``{bit: description}``; a header without ``BITnn`` keywords gives ``{}``.
    """
    bits = {}
    for bit in range(32):
        key = f"BIT{bit:02d}"
        if key not in mask_header:
            continue
        text = str(mask_header.comments[key] or mask_header[key]).upper()
        if any(word in text for word in BAD_MASK_WORDS):
            bits[bit] = text
    return bits


def _read_fits_image(path: Path, what: str) -> tuple[np.ndarray, fits.Header]:
    """First HDU with image data of ``path``; errors name the file and the problem."""
    if not path.exists():
        raise MissingFileError(f"{what} file {path} does not exist")
    try:
        with fits.open(path, memmap=False) as hdul:
            for hdu in hdul:
                if hdu.is_image and hdu.data is not None and hdu.data.ndim == 2:
                    return np.array(hdu.data), hdu.header.copy()
    except (OSError, EOFError, ValueError, TypeError, IndexError) as exc:
        raise BadFileError(f"{what} file {path} is not a readable FITS image ({exc})") from None
    raise BadFileError(f"{what} file {path} has no 2-D image HDU")


def _header_value(header: fits.Header, key: str, override, name: str):
    field, default, unit = HEADER_KEYWORDS[key]
    if override is not None:
        try:
            return float(override)
        except (TypeError, ValueError):
            raise InputError(f"{field} must be a number, got {override!r}") from None
    value = header.get(key)
    try:
        value = float(value)
    except (TypeError, ValueError):
        value = None
    if (value is None or not np.isfinite(value)) and default is None:
        raise InputError(f"{name}: header keyword {key} missing or not a number, and no {field} given "
                         f"(--{field.replace('_', '-')} [{unit}]): it sets the weight of every pixel")
    if value is None or not np.isfinite(value):
        warnings.warn(f"{name}: header keyword {key} missing or not a number; using {field}="
                      f"{default} {unit}", HeaderDefaultWarning, stacklevel=3)
        return float(default)
    return value


def check_values(values: dict, name: str = "options") -> None:
    """Raise InputError for a noise-model or calibration value (``gain``, ``read_noise``, ``saturate``,
    ``zero_point``, ``zero_point_err``, ``seeing``, ``pixscale``; None = not given) out of its range."""
    for field, value in values.items():
        if value is None or field not in VALUE_RANGES:
            continue
        low, strict = VALUE_RANGES[field]
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{name}: {field} must be a number, got {value!r}") from None
        ok = number > low if strict else number >= low
        if not ok or (field != "saturate" and not np.isfinite(number)):
            bound = "finite" if low == -np.inf else f"finite and {'>' if strict else '>='} {low:g}"
            raise InputError(f"{name}: {field} must be {bound}, got {value}")


#: field -> (lower bound, strict): ``saturate`` may be +inf (no cut), the others must be finite
VALUE_RANGES = {"gain": (0.0, True), "read_noise": (0.0, False), "saturate": (0.0, True),
                "zero_point": (-np.inf, True), "zero_point_err": (0.0, False), "seeing": (0.0, True),
                "pixscale": (0.0, True)}


def _read_wcs(header: fits.Header, name: str) -> WCS | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2)
        except Exception as exc:  # astropy raises many types for a broken WCS
            warnings.warn(f"{name}: unusable WCS ({exc}); RA/Dec will not be computed",
                          HeaderDefaultWarning, stacklevel=3)
            return None
    return wcs if wcs.has_celestial else None


def read_exposure(science, mask=None, *, header: fits.Header | None = None,
                  gain: float | None = None, read_noise: float | None = None,
                  saturate: float | None = None, zero_point: float | None = None,
                  seeing: float | None = None, pixscale: float | None = None,
                  bad_bits: int | None = None) -> Exposure:
    """Read a science image (path, or 2-D array plus ``header``) and its optional mask.

    ``mask`` is a path or an integer array of bit flags of the same shape; the
    bits rejected by default are those :func:`bad_mask_bits` finds in the mask
    header (``bad_bits`` overrides them as an integer bit mask).  Keyword
    overrides replace header values (see the module table).

    Raises :class:`~psfax.errors.MissingFileError`, :class:`~psfax.errors.BadFileError`
    (not FITS, truncated, all-NaN) or :class:`~psfax.errors.InputError` (shapes).
    """
    if isinstance(science, (str, Path)):
        path = Path(science)
        name = str(path)
        data, file_header = _read_fits_image(path, "science")
        header = file_header if header is None else header
    elif isinstance(science, np.ndarray):
        name, data = "science array", science
        header = fits.Header() if header is None else header
    else:
        raise InputTypeError(f"science must be a FITS path or a 2-D numpy array, got "
                             f"{type(science).__name__}")
    if data.ndim != 2:
        raise InputError(f"{name}: science image must be 2-D, got shape {data.shape}")
    data = np.ascontiguousarray(data, dtype=np.float32)
    finite = np.isfinite(data)
    if not finite.any():
        raise BadFileError(f"{name}: science image has no finite pixel (all NaN/inf)")

    mask_bits, default_bits = _read_mask(mask, data.shape)
    bad_bits = default_bits if bad_bits is None else int(bad_bits)
    values = {HEADER_KEYWORDS[k][0]: _header_value(header, k, v, name) for k, v in {
        "GAIN": gain, "READNOI": read_noise, "SATURATE": saturate, "MAGZP": zero_point,
        "MAGZPUNC": None, "SEEING": seeing, "PIXSCALE": pixscale}.items()}
    check_values(values, name)
    bad = ~finite | (data >= values["saturate"])
    if mask_bits is not None:
        bad |= (mask_bits & bad_bits) != 0
    return Exposure(data=data, bad=bad, mask_bits=mask_bits, bad_bits=int(bad_bits),
                    header=header, wcs=_read_wcs(header, name), name=name, **values)


def _read_mask(mask, shape) -> tuple[np.ndarray | None, int]:
    """Mask bits as int32 (or None) and the bits rejected by default.

    A FITS mask with ``BITnn`` descriptions rejects the bits :func:`bad_mask_bits`
    picks; any other mask (an array, or a header without descriptions) rejects
    every non-zero value.
    """
    if mask is None:
        return None, 0
    if isinstance(mask, (str, Path)):
        bits, mask_header = _read_fits_image(Path(mask), "mask")
        name = str(mask)
    elif isinstance(mask, np.ndarray):
        bits, mask_header, name = mask, fits.Header(), "mask array"
    else:
        raise InputTypeError(f"mask must be a FITS path or an integer array, got {type(mask).__name__}")
    if bits.shape != shape:
        raise InputError(f"{name}: mask shape {bits.shape} differs from the science image's {shape}")
    if bits.dtype.kind not in "biu":
        raise InputError(f"{name}: mask must hold integer bit flags, got dtype {bits.dtype}")
    described = any(key.startswith("BIT") for key in mask_header)
    default_bits = sum(1 << b for b in bad_mask_bits(mask_header)) if described else ALL_BITS
    return np.ascontiguousarray(bits, dtype=np.int32), default_bits

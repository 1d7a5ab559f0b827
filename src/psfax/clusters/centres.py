"""Candidate centres on the peak of the red-sequence member density (redMaPPer-like centring).

The tile probabilities say *where cluster members are*, but a cluster at the CI size is larger
than the field, so the probability-weighted centroid of its tiles is pulled towards the field's
interior.  Here a candidate is centred on the peak of the density of galaxies whose colours fit
the red sequence, within its tiles:

* **sources**: the i-band peaks of :func:`psfax.clusters.metrics.source_peaks` (> 5 sigma);
  fluxes f_b = the sum of an ``APERTURE`` x ``APERTURE`` box in each band b (g, r, i, z), with
  variance v_b = APERTURE^2 sigma_b^2 + max(f_b, 0) / gain + (COLOUR_FLOOR f_b)^2, sigma_b the
  band's robust pixel noise (1.4826 MAD of the cut-out); the floor absorbs the red sequence's
  0.05-mag scatter and the bands' different PSFs;
* **red-sequence fit** at redshift z: the prior's colours give the flux ratios
  t_b(z) = 10^(-0.4 (m_b - m_i)); the best amplitude A = sum_b f_b t_b / v_b / sum_b t_b^2 / v_b and
  chi2(z) = sum_b (f_b - A t_b)^2 / v_b; a source is a member at z when chi2(z) < ``CHI2_MAX`` and
  its magnitude zp - 2.5 log10 A lies within the prior's member luminosities (lum_min..lum_max L*
  about m*_i(z)) widened by ``MAG_MARGIN``;
* **member density** at z and smoothing length s: D_s,z(x) = sum_j exp(-|x - x_j|^2 / (2 s^2)) over
  the members at z (unit: members, each counting 1 at its own position); D_s(x) is its maximum over a
  grid of z spaced ``Z_STEP`` over the prior's redshift range;
* **scale**: a cluster's member radius is 150-650 px at the CI size (its angular radius, larger at
  low z), so no single s suits all.  Over a uniform background of b members per pixel^2, D_s has mean
  2 pi s^2 b and variance pi s^2 b, so a cluster's excess stands (D_s - 2 pi s^2 b) / (s sqrt(pi b))
  standard deviations above it, ~ D_s / (s sqrt(pi b)) where the background is small (on the shipped
  model's val fields without a cluster, b = 1-7 x 10^-6 per pixel^2 at each z: 0.006-0.04 members
  under a 30-px kernel).  The score map compares the ``SMOOTHING_SCALES_PX`` by that significance, b
  taken as common to all of them, in units of the one at ``REFERENCE_SCALE_PX``:
  M(x) = max_s D_s(x) REFERENCE_SCALE_PX / s (unit: members; at the reference scale it is D_s itself,
  so a compact group scores its member count);
* **edge**: near the image's edge part of each kernel lies outside the image, where no member can be
  seen.  With W_s(x) the fraction of the s-Gaussian about x inside the image (:func:`window_fraction`),
  the background's D_s has mean 2 pi s^2 b W_s and variance ~ pi s^2 b W_s, so the significance is
  ~ D_s / (s sqrt(pi b W_s)) and the score map is M(x) = max_s D_s(x) / sqrt(W_s(x)) REFERENCE_SCALE_PX / s
  (W_s = 1 in the interior, 1/2 on a straight edge, 1/4 in a corner);
* **centre**: the peak of M within the candidate's tiles dilated by one tile; its value (``members``)
  is the candidate's score, the s that gives it its ``smoothing_px``, and candidates under
  ``MIN_MEMBERS`` are dropped, as are those whose centre is not a local maximum of M (some value within
  ``PEAK_HALF_WIDTH_PX`` is higher: the peak lies outside the candidate's tiles, on a neighbour's member
  excess, :func:`is_local_peak`).

The red sequence, m*_i(z) and the luminosity range are the prior's population model (what the
detector is built for, taken from the training config), never any field's truth.
``SMOOTHING_SCALES_PX``, ``MIN_MEMBERS``, the edge term and the local-maximum rule were chosen on
development seeds (19010-19043, docs/clusters.md), not on the scored seeds.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage
from scipy.special import erf

from psfax.clusters.config import ClusterFieldConfig
from psfax.clusters.metrics import source_peaks
from psfax.clusters.prior import mstar_i, red_sequence_colours
from psfax.errors import InputError

APERTURE = 5
"""Side (pixels) of the box whose sum is a source's flux in each band."""
COLOUR_FLOOR = 0.08
"""Fractional flux error added in quadrature in every band (colour scatter, PSF differences)."""
CHI2_MAX = 9.0
"""Largest red-sequence chi^2 (3 degrees of freedom: 4 bands, 1 amplitude) of a member."""
MAG_MARGIN = 0.25
"""Magnitudes by which the member window extends beyond the prior's luminosity range."""
Z_STEP = 0.025
"""Spacing of the redshift grid of the red-sequence fit."""
REFERENCE_SCALE_PX = 30.0
"""Smoothing length (pixels) whose member density the score equals; the others' are scaled by it / s."""
SMOOTHING_SCALES_PX = (30.0, 60.0, 90.0)
"""Gaussian sigmas (pixels) of the member density among which each position takes the most significant;
chosen on development seeds (docs/clusters.md)."""
MIN_MEMBERS = 2.5
"""Smallest member-density peak of a candidate (members); chosen on development seeds."""
PEAK_HALF_WIDTH_PX = 3
"""A candidate's centre must be >= the score map everywhere within this many pixels (a (2w+1)^2 box)."""


@dataclasses.dataclass(frozen=True)
class RedSequence:
    """The red-sequence model on a redshift grid: z (nz,), flux ratios to i (nz, 4) in g, r, i, z,
    the member i-magnitude window (nz, 2), the zero point and the gain (counts per electron^-1)."""

    z: np.ndarray
    flux_ratio: np.ndarray
    mag_window: np.ndarray
    zero_point: float
    gain: float

    @classmethod
    def from_config(cls, cfg: ClusterFieldConfig) -> "RedSequence":
        """The model of a prior: its red-sequence table, m*_i(z) and member luminosities."""
        if list(cfg.field.bands) != ["g", "r", "i", "z"]:
            raise InputError(f"config '{cfg.name}': member centring needs bands g, r, i, z, not {cfg.field.bands}")
        cc = cfg.clusters
        z = np.arange(cc.redshift.min, cc.redshift.max + Z_STEP / 2, Z_STEP)
        colours = np.array([red_sequence_colours(zz, cfg) for zz in z])  # g-r, r-i, i-z
        gr, ri, iz = colours.T
        ratio = 10.0 ** (-0.4 * np.stack([gr + ri, ri, np.zeros_like(z), -iz], axis=1))
        bright = mstar_i(z) - 2.5 * math.log10(cc.lum_max) - MAG_MARGIN
        faint = mstar_i(z) - 2.5 * math.log10(cc.lum_min) + MAG_MARGIN
        return cls(z, ratio, np.stack([bright, faint], axis=1), cfg.field.zero_point, cfg.noise.gain)


def box_photometry(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, gain: float):
    """(n, 4) box fluxes f_b (counts) of the sources at (rows, cols) of a (4, H, W) image and their
    (n, 4) variances (see the module docstring)."""
    med = np.median(image, axis=(1, 2), keepdims=True)
    sigma = 1.4826 * np.median(np.abs(image - med), axis=(1, 2))
    flux = np.stack([ndimage.uniform_filter(band, APERTURE, mode="constant")[rows, cols] for band in image], 1)
    flux = flux * APERTURE**2
    positive = np.maximum(flux, 0.0)
    return flux, (APERTURE * sigma) ** 2 + positive / gain + (COLOUR_FLOOR * positive) ** 2


def member_flags(flux: np.ndarray, var: np.ndarray, rs: RedSequence) -> np.ndarray:
    """(n, nz) True where source n fits the red sequence at z (chi^2 and magnitude window)."""
    w = 1.0 / var[:, None, :]
    t = rs.flux_ratio[None]
    amp = np.sum(flux[:, None, :] * t * w, -1) / np.sum(t**2 * w, -1)
    chi2 = np.sum((flux[:, None, :] - amp[..., None] * t) ** 2 * w, -1)
    mag = rs.zero_point - 2.5 * np.log10(np.maximum(amp, 1e-30))
    return (chi2 < CHI2_MAX) & (mag >= rs.mag_window[:, 0]) & (mag <= rs.mag_window[:, 1])


def gaussian_count(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], smoothing: float) -> np.ndarray:
    """(H, W) sum_j exp(-((y - rows_j)^2 + (x - cols_j)^2) / (2 smoothing^2)) over the points j (pixels):
    the exact Gaussian sum, as one (H, n) @ (n, W) product of its separable factors."""
    ey = np.exp(-((np.arange(shape[0])[:, None] - rows[None, :]) ** 2) / (2.0 * smoothing**2))
    ex = np.exp(-((cols[:, None] - np.arange(shape[1])[None, :]) ** 2) / (2.0 * smoothing**2))
    return ey @ ex


def _members(image: np.ndarray, rs: RedSequence):
    """Rows, columns and (n, nz) red-sequence flags of the sources of a (4, H, W) image."""
    rows, cols = np.nonzero(source_peaks(image[None])[0])
    flux, var = box_photometry(image, rows, cols, rs.gain)
    return rows, cols, member_flags(flux, var, rs)


def _density(rows, cols, flags, shape, smoothing: float) -> np.ndarray:
    """D_s: the maximum over the redshifts (columns of ``flags``) of :func:`gaussian_count` of the members."""
    best = np.zeros(shape)
    for k in range(flags.shape[1]):
        at_z = flags[:, k]
        if at_z.any():
            np.maximum(best, gaussian_count(rows[at_z], cols[at_z], shape, smoothing), out=best)
    return best


def member_density(image: np.ndarray, rs: RedSequence, smoothing: float = REFERENCE_SCALE_PX) -> np.ndarray:
    """(H, W) red-sequence member density D_s of a (4, H, W) image: the maximum over z of the
    Gaussian-weighted member count at smoothing length s (members; see the module docstring).  One
    redshift at a time, so memory stays a few (H, W) maps however large the image."""
    image = np.asarray(image, float)
    return _density(*_members(image, rs), image.shape[1:], smoothing)


def window_fraction(start: int, stop: int, size: int, smoothing: float) -> np.ndarray:
    """(stop - start,) fraction of a 1-D Gaussian of sigma ``smoothing`` centred on pixel p = start..stop-1
    that lies inside an axis of ``size`` pixels, [-0.5, size - 0.5):
    w(p) = [erf((size - 0.5 - p) / (sqrt(2) s)) - erf((-0.5 - p) / (sqrt(2) s))] / 2
    (1/2 on the axis's first and last pixels when s >> 1, 1 far inside).  The 2-D fraction W_s(y, x) of an
    image is the product of its two axes' w."""
    p = np.arange(start, stop, dtype=float)
    k = math.sqrt(2.0) * smoothing
    return 0.5 * (erf((size - 0.5 - p) / k) - erf((-0.5 - p) / k))


def member_score(image: np.ndarray, rs: RedSequence, scales: tuple[float, ...] = SMOOTHING_SCALES_PX, *,
                 origin: tuple[int, int] = (0, 0), full_shape: tuple[int, int] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) score map M = max_s D_s / sqrt(W_s) REFERENCE_SCALE_PX / s of a (4, H, W) image (members) and
    the (H, W) smoothing length s (pixels) that gives it (see the module docstring).  ``image`` may be a
    cut-out whose pixel (0, 0) is pixel ``origin`` (row, col) of an image of ``full_shape`` (ny, nx): W_s is
    the fraction of the kernel inside that whole image (default: the cut-out is the image)."""
    image = np.asarray(image, float)
    h, w = image.shape[1:]
    ny, nx = (h, w) if full_shape is None else full_shape
    members = _members(image, rs)
    score, scale = np.full((h, w), -np.inf), np.zeros((h, w))
    for s in scales:
        inside = np.outer(window_fraction(origin[0], origin[0] + h, ny, s),
                          window_fraction(origin[1], origin[1] + w, nx, s))
        d = _density(*members, (h, w), s) / np.sqrt(inside) * (REFERENCE_SCALE_PX / s)
        scale[d > score] = s
        np.maximum(score, d, out=score)
    return score, scale


def is_local_peak(score: np.ndarray, row: int, col: int, half_width: int = PEAK_HALF_WIDTH_PX) -> bool:
    """Whether score[row, col] >= every value of ``score`` within ``half_width`` pixels (a box clipped to the
    map): the centre of a candidate is its own member excess, not the flank of one outside its tiles."""
    box = score[max(row - half_width, 0):row + half_width + 1, max(col - half_width, 0):col + half_width + 1]
    return bool(score[row, col] >= box.max())


def centre_on_members(image, region: np.ndarray, tile: int,
                      rs: RedSequence) -> tuple[float, float, float, float, bool]:
    """(x, y, members, smoothing_px, peak): the peak of the score map (image pixels) within the tiles
    ``region`` (a boolean tile map of the image), its value, its smoothing length and whether it is a local
    maximum of the map (:func:`is_local_peak`).  ``image``: (4, ny, nx), anything sliced as
    ``image[:, y0:y1, x0:x1]`` (a numpy array, a FITS ``section``); only a cut-out around ``region``, 3 of
    the largest smoothing lengths wider, is read."""
    ty, tx = np.nonzero(region)
    pad = int(math.ceil(3 * max(SMOOTHING_SCALES_PX)))
    ny, nx = image.shape[1:]
    y0, x0 = max(ty.min() * tile - pad, 0), max(tx.min() * tile - pad, 0)
    y1, x1 = min((ty.max() + 1) * tile + pad, ny), min((tx.max() + 1) * tile + pad, nx)
    score, scale = member_score(np.asarray(image[:, y0:y1, x0:x1], float), rs, origin=(y0, x0), full_shape=(ny, nx))
    rows, cols = np.arange(y0, y1) // tile, np.arange(x0, x1) // tile
    inside = region[rows[:, None], cols[None, :]]
    j = np.argmax(np.where(inside, score, -np.inf))
    r, c = divmod(int(j), x1 - x0)
    return float(c + x0), float(r + y0), float(score[r, c]), float(scale[r, c]), is_local_peak(score, r, c)

"""Forced photometry: the flux of given sky positions on many images, the position held fixed.

For each image, every target (ra, dec) is mapped to pixels through the WCS, a stamp of
``stamp_size`` px is cut around it (pixels off the image left out), and the model

    m = flux * P(x - x_t, y - y_t) + bkg

is fitted with ``P`` the image's unit-flux PSF, evaluated through its PSF value
(:func:`psfax.fitting.psf.unit_stamps`: any kind, e.g. the pixel-integrated analytic profile fitted by the
stars pipeline, :class:`psfax.fitting.Fixed`), at the target's sub-pixel position ``(x_t, y_t)``, and
``bkg`` one constant sky per stamp.  At a fixed position the model is linear in ``(flux, bkg)``: for
given weights ``w = 1 / var`` the fit is the 2 x 2 weighted linear least-squares solve

    [[sum w P^2, sum w P], [sum w P, sum w]] [flux, bkg] = [sum w P d, sum w d],

and the inverse of that matrix is the covariance of ``(flux, bkg)`` (``flux_err`` its first diagonal
element's root).  The variance is the noise model of the model, not of the data,

    var = sky_rms^2 + max(flux P, 0) / gain       [ADU^2]

(``sky_rms`` from sep's background map, which holds read noise and sky noise), started at ``flux = 0`` and
recomputed from the fitted flux :data:`VARIANCE_PASSES` - 1 times: weights computed from the data would
bias faint fluxes low.  All targets of an image are one batch, padded to a few bucket sizes
(:func:`psfax.fitting.problem.bucket_size`), so images of the same shape and target-count bucket reuse the
compiled program.

With ``recentre=r > 0`` the position is first fitted too (Gauss-Newton steps on ``x, y, flux, bkg``, each
position held within ``r`` px of the WCS position), and the flux fitted at fixed position there.  Recentring
fits noise peaks at low S/N (fluxes biased high): use it only when the WCS is worse than the PSF width.

Outputs per (target, image): ``flux, flux_err`` [ADU], ``snr = flux / flux_err``, AB ``mag, mag_err``
through the image's zero point where ``snr >= DETECTION_SNR`` (3), else ``mag_lim``, the
:data:`UPPER_LIMIT_SIGMA` (5) sigma upper limit ``zp - 2.5 log10(5 flux_err)``; ``flux_ujy`` for comparing
images (``3631e6 10^(-0.4 zp) flux`` uJy, the zero point being AB); ``flags`` (:data:`FORCED_FLAGS`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from astropy.table import Table

from psfax.errors import BadFileError, InputError, MissingFileError
from psfax.fitting.problem import bucket_size
from psfax.fitting.psf import unit_stamps
from psfax.profiles import get_profile
from psfax.programs import persistent_jit
from psfax.stars.catalog import DEC_NAMES, RA_NAMES
from psfax.stars.detect import Background, measure_background
from psfax.stars.exposure import Exposure

#: Bits of the ``flags`` column of a forced-photometry table.
FORCED_FLAGS = {
    "off_image": 1,       # the target is not on the image: not fitted, flux NaN
    "edge": 2,            # part of its stamp is off the image (those pixels are left out of the fit)
    "masked": 4,          # masked, saturated or NaN pixels hold > PSF_SHARE of its PSF (left out of the fit)
    "saturated": 8,       # a pixel at or above SATURATE holds > PSF_SHARE of its PSF
    "bad_psf": 16,        # the image's PSF is not usable here (non-finite shape, or too few PSF stars)
    "no_fit": 32,         # fewer than 3 usable pixels or a singular solve: flux NaN
    "recentre_limit": 64,  # recentring stopped at the radius (the source may be elsewhere)
}

PSF_SHARE = 1e-3
"""A group of pixels is "under the PSF" when it holds more than this fraction of the unit-flux PSF
(within the stamp): a corner pixel of a 15 x 15 stamp holds ~3e-5 of a Moffat of FWHM 2 px, beta 2.5, the
pixels next to the centre ~0.1."""
DETECTION_SNR = 3.0
"""S/N at and above which a magnitude is given; below it the upper limit is."""
UPPER_LIMIT_SIGMA = 5.0
"""The upper limit is this many flux errors."""
VARIANCE_PASSES = 3
"""Linear solves per target: the first with the sky variance only, each next with the variance of the
previous solve's model.  Three are enough: on 150 GalSim stars of r = 14-22 the flux differs from that of
six passes by < 2e-4 of its error and the error by < 1e-4 (two passes: 1e-2 and 3e-3)."""
MIN_PSF_STARS = 10
"""A fitted PSF with fewer stars than this is flagged ``bad_psf`` (its spatial polynomial is not pinned)."""
RECENTRE_STEPS = 8
"""Gauss-Newton steps of the recentring fit."""
AB_ZERO_UJY = 3631e6
"""The AB magnitude zero point in microjansky."""


# --- the batched kernel ----------------------------------------------------------------------

def _solve_flux(psf, data, w):
    """Weighted linear least squares of ``data ~ flux psf + bkg`` per row (pixels on the last axis):
    ``(flux, bkg, var_flux, var_bkg, det)``; rows with a singular matrix give NaN."""
    s1, sp, spp = (jnp.sum(w * psf ** k, axis=-1) for k in (0, 1, 2))
    sd, spd = jnp.sum(w * data, axis=-1), jnp.sum(w * psf * data, axis=-1)
    det = spp * s1 - sp * sp
    ok = det > 1e-12 * spp * s1
    inv = jnp.where(ok, 1.0 / jnp.where(ok, det, 1.0), jnp.nan)
    return (s1 * spd - sp * sd) * inv, (spp * sd - sp * spd) * inv, s1 * inv, spp * inv


def _recentre(psf, data, usable, sky_var, x, y, gain, radius):
    """Positions after :data:`RECENTRE_STEPS` Gauss-Newton steps on (x, y, flux, bkg) (the PSF value's own
    model and Jacobian, :meth:`psfax.fitting.psf.PSF.linearise`), each projected back onto the disc of
    ``radius`` px around the start; the weights are those of the model at each step."""
    n, ny, nx = data.shape
    size = (ny, nx)
    d, u, v0 = (a.reshape(n, -1) for a in (data, usable, sky_var))

    def step(p, part, d1, u1, v1, g, x_start, y_start):
        m, jac = psf.with_star(part).linearise(p, size)
        w = u1 / (v1 + jnp.maximum(m - p[3], 0.0) / g)
        q = p + jnp.linalg.solve(jac.T @ (w[:, None] * jac), jac.T @ (w * (d1 - m)))
        dx, dy = q[0] - x_start, q[1] - y_start
        r = jnp.hypot(dx, dy)
        scale = jnp.where(r > radius, radius / jnp.maximum(r, 1e-30), 1.0)
        q = q.at[0].set(x_start + dx * scale).at[1].set(y_start + dy * scale)
        return jnp.where(jnp.all(jnp.isfinite(q)), q, p)

    flux, bkg, _, _ = _solve_flux(unit_stamps(psf, x, y, size).reshape(n, -1), d, u / v0)
    p = jnp.stack([x, y, jnp.nan_to_num(flux), jnp.nan_to_num(bkg)], axis=1)
    p = jax.lax.fori_loop(0, RECENTRE_STEPS, lambda _, q: jax.vmap(step)(q, psf.star_part(), d, u, v0, gain, x, y), p)
    return p[:, 0], p[:, 1]


@persistent_jit(static_argnames=("recentre",))
def fixed_position_fit(psf, data, usable, sky_var, lost, x, y, gain, *, recentre: float = 0.0):
    """Flux and sky of N stamps with the PSF centred at stamp positions (x, y) (see the module docstring).

    ``psf``: a PSF value (:mod:`psfax.fitting.psf`) with one row per stamp (or none: the same for all);
    ``data, usable, sky_var``: (N, ny, nx) [ADU, 0/1, ADU^2]; ``lost``: (N, K, ny, nx) 0/1 masks of K kinds of
    pixel whose share of the PSF is wanted; ``x, y``: (N,) stamp pixels; ``gain``: (N,) e-/ADU.  Returns a
    dict of arrays: ``x, y`` (as given, or recentred within ``recentre`` px), ``flux, flux_err, bkg, bkg_err,
    chi2, n_pix`` (N,) and ``psf_share`` (N, K).
    """
    n, ny, nx = data.shape
    if recentre > 0:
        x, y = _recentre(psf, data, usable, sky_var, x, y, gain, recentre)
    unit = unit_stamps(psf, x, y, (ny, nx)).reshape(n, -1)
    d, u, v0 = (a.reshape(n, -1) for a in (data, usable, sky_var))
    flux = jnp.zeros(n, d.dtype)
    for _ in range(VARIANCE_PASSES):
        w = u / (v0 + jnp.maximum(jnp.nan_to_num(flux)[:, None] * unit, 0.0) / gain[:, None])
        flux, bkg, var_flux, var_bkg = _solve_flux(unit, d, w)
    resid = d - flux[:, None] * unit - bkg[:, None]
    share = jnp.einsum("nkm,nm->nk", lost.reshape(n, lost.shape[1], -1), unit) / jnp.sum(unit, axis=-1)[:, None]
    return {"x": x, "y": y, "flux": flux, "flux_err": jnp.sqrt(var_flux), "bkg": bkg, "bkg_err": jnp.sqrt(var_bkg),
            "chi2": jnp.sum(w * resid * resid, axis=-1), "n_pix": jnp.sum(u, axis=-1), "psf_share": share}


def fit_at_positions(stamp_data, usable, sky_var, x, y, psf, gain, *, lost=None, recentre: float = 0.0,
                     dtype=None, device=None) -> dict:
    """:func:`fixed_position_fit` on numpy inputs, padded to a bucket size; returns numpy arrays of N rows.

    ``psf``: a PSF value with one row per stamp (e.g. :class:`psfax.fitting.Fixed`) or without per-star
    fields; ``gain`` [e-/ADU]: one value, or one per row (stamps of several images); ``lost`` (N, K, ny, nx):
    masks whose PSF share is returned (default: the unusable pixels).
    """
    from psfax.device import compute_context, resolve_device, resolve_dtype

    n = len(x)
    if n == 0:
        k = 1 if lost is None else np.shape(lost)[1]
        return {**{name: np.zeros(0) for name in ("x", "y", "flux", "flux_err", "bkg", "bkg_err", "chi2", "n_pix")},
                "psf_share": np.zeros((0, k))}
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    pad = bucket_size(n) - n

    def padded(a, fill=0.0):
        a = np.asarray(a, dt)
        return np.concatenate([a, np.full((pad,) + a.shape[1:], fill, dt)]) if pad else a

    lost = (~np.asarray(usable, bool))[:, None] if lost is None else lost
    half = np.asarray(stamp_data).shape[-1] // 2
    rows = psf.rows(np.concatenate([np.arange(n), np.zeros(pad, int)]))  # padding repeats the first row
    rows = jax.tree.map(lambda a: np.asarray(a, dt) if np.issubdtype(np.asarray(a).dtype, np.floating) else a, rows)
    with compute_context(dt, dev):
        out = fixed_position_fit(rows, padded(stamp_data), padded(usable), padded(sky_var, 1.0), padded(lost),
                                 padded(x, half), padded(y, half),
                                 padded(np.broadcast_to(np.asarray(gain, float), (n,)), 1.0), recentre=float(recentre))
        return {k: np.asarray(v, float)[:n] for k, v in out.items()}


# --- the PSF of an image ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ImagePSF:
    """The PSF of one image as forced photometry uses it: ``value_at(x, y)`` gives a PSF value
    (:mod:`psfax.fitting.psf`) with one row per image position (or none, the same everywhere);
    ``fwhm_at(x, y)`` its FWHM [px] for the table (None: not known); ``ok`` False flags every target
    ``bad_psf``."""

    value_at: Callable
    fwhm_at: Callable | None = None
    ok: bool = True

    @classmethod
    def from_shape_at(cls, model: str, shape_at: Callable, pixel_integrated: bool = True) -> ImagePSF:
        """An analytic profile whose physical shape (``fwhm, beta, g1, g2`` ...) is ``shape_at(x, y)``."""
        from psfax.fitting import Fixed
        from psfax.fitting.params import shape_to_u

        profile = get_profile(model)
        return cls(lambda x, y: Fixed(profile, pixel_integrated, shape_u=shape_to_u(profile, shape_at(x, y))),
                   lambda x, y: np.asarray(shape_at(x, y)["fwhm"], float))

    @classmethod
    def constant(cls, model: str = "moffat", pixel_integrated: bool = True, **shape) -> ImagePSF:
        """The same analytic PSF everywhere, e.g. ``ImagePSF.constant("moffat", fwhm=2.1, beta=2.8)``."""
        names = get_profile(model).shape_names
        missing = set(names) - set(shape)
        if missing:
            raise InputError(f"psf: a {model} needs {', '.join(names)}; missing {sorted(missing)}")
        return cls.from_shape_at(model, lambda x, y: {k: np.full(len(x), float(shape[k])) for k in names},
                                 pixel_integrated)

    @classmethod
    def from_fit(cls, fit) -> ImagePSF:
        """The photometry PSF of :func:`psfax.fit_image`: the empirical PSF when the fit chose it (fluxes then
        the light within its normalisation radius, as in the fit's catalog), else the fitted analytic profile
        (its spatially varying shape; total fluxes); ``fwhm_at`` is the analytic fit's either way."""
        from psfax.stars.pipeline import photometry_psf_at, psf_shape_at

        result = fit.psf_result
        # an empirical PSF's tables in float32, the catalog photometry's precision (its values carry ~1e-3 error)
        return cls(photometry_psf_at(result, fit.psf_choice, np.float32),
                   lambda x, y: psf_shape_at(result, x, y)["fwhm"], ok=len(fit.psf_stars) >= MIN_PSF_STARS)

    @classmethod
    def of_value(cls, psf) -> ImagePSF:
        """A PSF value without per-star fields (e.g. an empirical PSF), the same at every position."""
        if psf.star_fields:
            raise InputError(f"psf: a {psf.name} PSF value has per-star fields {psf.star_fields}; give an "
                             "ImagePSF whose value_at(x, y) builds it for the targets")
        return cls(lambda x, y: psf)


def image_psf(psf, exposure: Exposure, background: Background | None = None, **fit_options):
    """``(ImagePSF, Background)`` from ``psf``: None (fit it on the image with :func:`psfax.fit_exposure`,
    photometry off; the analytic fit unless ``fit_options`` ask for ``psf="auto"`` or ``"empirical"``: an
    empirical build would add seconds to every epoch), an :class:`psfax.ImageFit` (its photometry PSF), an
    :class:`ImagePSF`, a PSF value (:class:`psfax.fitting.psf.PSF`), or a dict ``{"model": ..., **shape}``
    (:meth:`ImagePSF.constant`)."""
    from psfax.fitting.psf import PSF
    from psfax.stars.pipeline import ImageFit, fit_exposure

    if psf is None:
        fit = fit_exposure(exposure, photometry=False, **{"psf": "analytic", **fit_options})
        return ImagePSF.from_fit(fit), fit.background
    if isinstance(psf, ImageFit):
        return ImagePSF.from_fit(psf), background if background is not None else psf.background
    if isinstance(psf, dict):
        psf = ImagePSF.constant(**psf)
    elif isinstance(psf, PSF):
        psf = ImagePSF.of_value(psf)
    if not isinstance(psf, ImagePSF):
        raise InputError(f"psf must be None, an ImageFit, an ImagePSF, a PSF value or a dict, got "
                         f"{type(psf).__name__}")
    return psf, background if background is not None else measure_background(exposure)


# --- targets ---------------------------------------------------------------------------------

def read_targets(targets) -> Table:
    """Targets as a Table with ``target_id, ra, dec`` [deg] (float64), from a Table or a file astropy reads
    (Parquet, CSV, ECSV, FITS).  RA/Dec columns are found case-insensitively among common spellings
    (``ra``, ``ra_deg``, ``raj2000`` ...); ``target_id`` is the ``id``/``name``/``target_id`` column or the
    row number."""
    name = "targets table"
    if isinstance(targets, (str, Path)):
        path = Path(targets)
        name = f"targets table {path}"
        if not path.exists():
            raise MissingFileError(f"{name} does not exist")
        try:
            targets = Table.read(path)
        except Exception as exc:  # astropy's readers raise many types for a broken or unknown file
            raise BadFileError(f"{name} cannot be read ({exc})") from None
    if not isinstance(targets, Table):
        raise InputError(f"targets must be an astropy Table or a table file, got {type(targets).__name__}")
    lower = {c.lower(): c for c in targets.colnames}
    found = [next((lower[n] for n in names if n in lower), None) for names in (RA_NAMES, DEC_NAMES)]
    if None in found:
        raise InputError(f"{name}: needs ra and dec columns [deg]; its columns are {targets.colnames}")
    ra, dec = (np.asarray(targets[c], dtype=float) for c in found)
    id_column = next((lower[n] for n in ("target_id", "id", "name") if n in lower), None)
    ids = np.asarray(targets[id_column]).astype(str) if id_column else np.arange(len(ra)).astype(str)
    if len(set(ids)) != len(ids):
        raise InputError(f"{name}: target ids ({id_column}) are not unique")
    return Table({"target_id": ids, "ra": ra, "dec": dec})


# --- one image -------------------------------------------------------------------------------

def cut_target_stamps(exposure: Exposure, background: Background, x, y, size: int):
    """Stamps of ``size`` px around the rounded (x, y), pixels off the image unusable:
    ``(data, usable, sky_var, saturated, off_image, x0, y0)``, each image array (N, size, size)."""
    ny, nx = exposure.shape
    half = size // 2
    x0 = np.rint(x).astype(int) - half
    y0 = np.rint(y).astype(int) - half
    offsets = np.arange(size)
    rows = y0[:, None, None] + offsets[None, :, None]
    cols = x0[:, None, None] + offsets[None, None, :]
    inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    r, c = np.clip(rows, 0, ny - 1), np.clip(cols, 0, nx - 1)
    data = exposure.data[r, c]
    saturated = inside & (data >= exposure.saturate)
    usable = inside & ~exposure.bad[r, c]
    data = np.where(usable, data, 0.0)
    sky_var = np.where(usable, background.rms_map[r, c].astype(float) ** 2, 1.0)
    return data, usable, sky_var, saturated, ~inside, x0, y0


@dataclasses.dataclass(frozen=True)
class EpochStamps:
    """What forced photometry takes from one image before the fit: the targets' WCS pixel positions
    ``x, y`` (all targets), the rows on the image (``index``), their stamps (see :func:`cut_target_stamps`;
    ``lost`` stacks the masked, saturated and off-image pixels), corners ``x0, y0``, the PSF value at those
    rows (``psf``) and its FWHM there (NaN when not known)."""

    name: str
    mjd: float
    zero_point: float
    gain: float
    psf_ok: bool
    targets: Table
    x: np.ndarray
    y: np.ndarray
    index: np.ndarray
    data: np.ndarray
    usable: np.ndarray
    sky_var: np.ndarray
    lost: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    psf: object
    fwhm: np.ndarray


def cut_epoch(exposure: Exposure, targets: Table, *, psf=None, background: Background | None = None,
              stamp_size: int = 15, **fit_options) -> EpochStamps:
    """Project ``targets`` (a :func:`read_targets` table) on ``exposure`` and cut their stamps."""
    if exposure.wcs is None:
        raise InputError(f"{exposure.name}: forced photometry needs a celestial WCS in the header")
    if stamp_size < 5 or stamp_size % 2 == 0:
        raise InputError(f"stamp_size must be an odd number >= 5, got {stamp_size}")
    psf, background = image_psf(psf, exposure, background, **fit_options)
    x, y = (np.asarray(a, float) for a in exposure.wcs.world_to_pixel_values(targets["ra"], targets["dec"]))
    ny, nx = exposure.shape
    on = np.isfinite(x) & np.isfinite(y) & (x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5)
    index = np.flatnonzero(on)
    data, usable, sky_var, saturated, outside, x0, y0 = cut_target_stamps(exposure, background, x[index],
                                                                          y[index], stamp_size)
    fwhm = np.full(len(index), np.nan) if psf.fwhm_at is None else psf.fwhm_at(x[index], y[index])
    return EpochStamps(exposure.name, image_mjd(exposure), exposure.zero_point, exposure.gain, psf.ok, targets, x, y,
                       index, data, usable, sky_var, np.stack([~usable & ~outside, saturated, outside], axis=1),
                       x0, y0, psf.value_at(x[index], y[index]), np.asarray(fwhm, float))


def join_psfs(values: Sequence):
    """One PSF value holding the rows of ``values`` (same kind and settings, every array a per-star field),
    or None when they cannot be joined (a kind with arrays shared by all its stars, e.g. an empirical grid:
    each image is then fitted on its own)."""
    first = values[0]
    if len(values) == 1:
        return first
    same = all(jax.tree.structure(v) == jax.tree.structure(first) for v in values)
    if not same or len(jax.tree.leaves(first)) != len(jax.tree.leaves(first.star_part())):
        return None
    return first.with_star(jax.tree.map(lambda *rows: np.concatenate([np.asarray(r) for r in rows]),
                                        *[v.star_part() for v in values]))


def fit_epochs(epochs: Sequence[EpochStamps], *, recentre: float = 0.0, dtype=None, device=None) -> list[dict]:
    """One batched :func:`fit_at_positions` over the stamps of all ``epochs`` (when their PSF values and stamp
    sizes join, :func:`join_psfs`; else one per epoch), then the columns of each epoch (:func:`epoch_columns`)."""
    if not epochs:
        return []
    groups = [list(epochs)] if _joinable(epochs) else [[e] for e in epochs]
    fits = []
    for group in groups:
        def joined(get):
            return np.concatenate([get(e) for e in group])

        out = fit_at_positions(joined(lambda e: e.data), joined(lambda e: e.usable), joined(lambda e: e.sky_var),
                               joined(lambda e: e.x[e.index] - e.x0), joined(lambda e: e.y[e.index] - e.y0),
                               join_psfs([e.psf for e in group]), joined(lambda e: np.full(len(e.index), e.gain)),
                               lost=joined(lambda e: e.lost), recentre=recentre, dtype=dtype, device=device)
        bounds = np.cumsum([0] + [len(e.index) for e in group])
        fits += [{k: v[start:stop] for k, v in out.items()} for start, stop in zip(bounds[:-1], bounds[1:])]
    return [epoch_columns(epoch, fit, recentre) for epoch, fit in zip(epochs, fits)]


def _joinable(epochs: Sequence[EpochStamps]) -> bool:
    return (len({e.data.shape[1:] for e in epochs}) == 1
            and join_psfs([e.psf for e in epochs]) is not None)


def epoch_columns(epoch: EpochStamps, fit: dict, recentre: float = 0.0) -> dict[str, np.ndarray]:
    """The forced-photometry columns of one epoch (a row per target, :data:`COLUMNS`) from its kernel output."""
    index, x_start, y_start = epoch.index, epoch.x[epoch.index] - epoch.x0, epoch.y[epoch.index] - epoch.y0
    n = len(epoch.targets)
    columns = {name: np.asarray(epoch.targets[name]) for name in epoch.targets.colnames}
    columns["image"] = np.full(n, epoch.name)
    columns["mjd"] = np.full(n, epoch.mjd)
    columns["x"], columns["y"] = epoch.x.copy(), epoch.y.copy()  # the WCS position; the fitted one if recentred
    columns["x"][index], columns["y"][index] = fit["x"] + epoch.x0, fit["y"] + epoch.y0
    values = {**{k: fit[k] for k in ("flux", "flux_err", "bkg", "bkg_err", "chi2", "n_pix")},
              "psf_masked": fit["psf_share"][:, 0] + fit["psf_share"][:, 2], "fwhm": epoch.fwhm}
    for name, column in values.items():
        columns[name] = np.full(n, np.nan)
        columns[name][index] = column
    columns["n_pix"] = np.nan_to_num(columns["n_pix"]).astype(np.int32)
    columns["flags"] = np.full(n, FORCED_FLAGS["off_image"], np.int32)
    columns["flags"][index] = target_flags(fit, epoch.psf, epoch.psf_ok, recentre, x_start, y_start)
    columns["zero_point"] = np.full(n, epoch.zero_point)
    add_magnitudes(columns)
    return columns


def forced_table(epochs: Sequence[dict]) -> Table:
    """One Table of the columns of several epochs (:func:`epoch_columns`), descriptions in its metadata."""
    table = Table({name: np.concatenate([e[name] for e in epochs]) for name in epochs[0]})
    table.meta["columns"] = COLUMNS
    return table


def forced_exposure(exposure: Exposure, targets, *, psf=None, background: Background | None = None,
                    stamp_size: int = 15, recentre: float = 0.0, dtype=None, device=None,
                    **fit_options) -> Table:
    """Forced photometry of ``targets`` (see :func:`read_targets`) on one exposure: a row per target.

    ``psf``: see :func:`image_psf` (default: fitted on the image; ``fit_options`` go to that fit).
    ``recentre``: radius [px] within which the position may move (0: held at the WCS position).
    Targets off the image keep their row, flagged ``off_image``, with NaN fluxes.
    """
    _check_recentre(recentre)
    epoch = cut_epoch(exposure, read_targets(targets), psf=psf, background=background, stamp_size=stamp_size,
                      **fit_options)
    return forced_table(fit_epochs([epoch], recentre=recentre, dtype=dtype, device=device))


def _check_recentre(recentre: float) -> None:
    if not recentre >= 0:
        raise InputError(f"recentre must be >= 0 px, got {recentre}")


def target_flags(fit: dict, psf, psf_ok: bool, recentre: float, x_start, y_start) -> np.ndarray:
    """:data:`FORCED_FLAGS` of targets on the image from the kernel's output (``psf_share``: masked,
    saturated and off-image pixels) and their PSF value (``bad_psf`` where a per-star field is not finite)."""
    bit = FORCED_FLAGS
    masked, saturated, outside = (fit["psf_share"][:, k] > PSF_SHARE for k in range(3))
    n = len(fit["flux"])
    finite = [np.isfinite(np.asarray(a, float)).reshape(n, -1).all(axis=1) for a in jax.tree.leaves(psf.star_part())]
    psf_bad = (not psf_ok) | ~np.all(finite + [np.ones(n, bool)], axis=0)
    no_fit = ~(np.isfinite(fit["flux"]) & np.isfinite(fit["flux_err"])) | (fit["n_pix"] < 3)
    flags = (bit["edge"] * outside + bit["masked"] * masked
             + bit["saturated"] * saturated + bit["bad_psf"] * psf_bad + bit["no_fit"] * no_fit)
    if recentre > 0:
        moved = np.hypot(fit["x"] - x_start, fit["y"] - y_start)
        flags = flags + bit["recentre_limit"] * (moved >= recentre * (1 - 1e-6))
    return flags.astype(np.int32)


def add_magnitudes(table) -> None:
    """Add ``snr``, ``mag, mag_err`` (where ``snr >= DETECTION_SNR``), ``mag_lim`` (5-sigma upper limit
    where ``snr < DETECTION_SNR``) and ``flux_ujy, flux_ujy_err`` to a table (or dict of columns) of
    ``flux, flux_err`` [ADU] and ``zero_point`` [AB mag]."""
    flux, err = np.asarray(table["flux"], float), np.asarray(table["flux_err"], float)
    zero_point = np.asarray(table["zero_point"], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = flux / err
        detected = snr >= DETECTION_SNR
        table["snr"] = snr
        table["mag"] = np.where(detected, zero_point - 2.5 * np.log10(flux), np.nan)
        table["mag_err"] = np.where(detected, 2.5 / np.log(10) / snr, np.nan)
        table["mag_lim"] = np.where(np.isfinite(snr) & ~detected,
                                    zero_point - 2.5 * np.log10(UPPER_LIMIT_SIGMA * err), np.nan)
    scale = AB_ZERO_UJY * 10 ** (-0.4 * zero_point)
    table["flux_ujy"], table["flux_ujy_err"] = scale * flux, scale * err


COLUMNS = {
    "target_id": "target identifier (from the targets table, or its row number)",
    "ra": "deg", "dec": "deg",
    "image": "image the row was measured on", "mjd": "MJD of the exposure (OBSMJD / MJD-OBS; NaN if absent)",
    "x": "px, image column of the PSF centre (0 = centre of the first pixel)", "y": "px, image row",
    "flux": "ADU, PSF flux at the held position", "flux_err": "ADU, 1-sigma (inverse Fisher matrix)",
    "bkg": "ADU/px, local sky fitted with the flux", "bkg_err": "ADU/px",
    "chi2": "sum of squared normalised residuals over the stamp", "n_pix": "usable pixels in the stamp",
    "psf_masked": "share of the PSF on unusable pixels", "fwhm": "px, PSF FWHM at the target",
    "flags": "bits of psfax.stars.forced.FORCED_FLAGS", "zero_point": "AB mag of 1 ADU (MAGZP)",
    "snr": "flux / flux_err", "mag": "AB mag where snr >= 3", "mag_err": "mag, 1-sigma",
    "mag_lim": "AB mag, 5-sigma upper limit where snr < 3",
    "flux_ujy": "uJy, flux through the AB zero point", "flux_ujy_err": "uJy",
}
"""One-line descriptions (units first) of the forced-photometry columns, kept in the table metadata."""


def image_mjd(exposure: Exposure) -> float:
    """MJD of the exposure from its header (``OBSMJD``, ZTF; or ``MJD-OBS``); NaN when neither is there."""
    for key in ("OBSMJD", "MJD-OBS"):
        try:
            return float(exposure.header[key])
        except (KeyError, TypeError, ValueError):
            continue
    return float("nan")


# --- many images -----------------------------------------------------------------------------

READ_OPTIONS = ("gain", "read_noise", "saturate", "zero_point", "seeing", "pixscale", "bad_bits")
"""Options of :func:`forced_photometry` that go to :func:`~psfax.stars.exposure.read_exposure`."""

def forced_photometry(images: Sequence, targets, *, psf=None, recentre: float = 0.0, stamp_size: int = 15,
                      dtype=None, device=None, progress: Callable[[str], None] | None = None,
                      **options) -> Table:
    """Forced photometry of ``targets`` on every image: one row per (target, image), off-image rows flagged.

    The stamps of successive images are gathered and fitted together, up to :data:`BATCH_ROWS` target-epochs
    per batched fit (one compiled program per bucket size).

    ``images``: science paths (a ZTF mask beside one is used), or :class:`~psfax.stars.exposure.Exposure`
    objects; ``psf``: None (fit each image's PSF with psfax's stars pipeline), or one PSF for every image
    (see :func:`image_psf`); ``options``: the header overrides of ``read_exposure`` and the options of the PSF
    fit.  See :func:`light_curves` for one table per target and :func:`stack_epochs` for the stacks.
    """
    from psfax.runner.jobs import read_ztf_exposure

    read_options = {k: options.pop(k) for k in list(options) if k in READ_OPTIONS}
    _check_recentre(recentre)
    targets = read_targets(targets)
    tables: list[dict] = []
    pending: list[EpochStamps] = []
    for image in images:
        if progress is not None:
            progress(str(image))
        exposure = image if isinstance(image, Exposure) else read_ztf_exposure(str(image), **read_options)
        pending.append(cut_epoch(exposure, targets, psf=psf, stamp_size=stamp_size, **options))
        if sum(len(e.index) for e in pending) >= BATCH_ROWS:
            tables += fit_epochs(pending, recentre=recentre, dtype=dtype, device=device)
            pending = []
    tables += fit_epochs(pending, recentre=recentre, dtype=dtype, device=device)
    if not tables:
        raise InputError("images: no image given")
    return forced_table(tables)


BATCH_ROWS = 16384
"""Target-epochs fitted in one batch by :func:`forced_photometry` (the stamps of an epoch are kept until its
batch is fitted: ~4.5 kB each for 15 x 15 px)."""


# --- light curves and stacks -----------------------------------------------------------------

def good_epochs(table: Table) -> np.ndarray:
    """True for rows measured without any flag (the epochs a stack uses)."""
    return (np.asarray(table["flags"]) == 0) & np.isfinite(np.asarray(table["flux_ujy_err"], float))


def light_curves(table: Table) -> dict[str, Table]:
    """One table per target (keyed by ``target_id``): its rows on the images whose footprint holds it,
    by MJD.  A target on no image gets an empty table (its row in :func:`stack_epochs` says so)."""
    on = (np.asarray(table["flags"]) & FORCED_FLAGS["off_image"]) == 0
    ids = np.asarray(table["target_id"]).astype(str)
    curves = {}
    for target in dict.fromkeys(ids):
        rows = table[(ids == target) & on]
        rows.sort(["mjd", "image"])
        curves[target] = rows
    return curves


STACK_FLAGS = {
    "off_every_image": 1,  # the target is on no image
    "no_good_epoch": 2,    # on some image, but every epoch is flagged: no stack
}
"""Bits of the ``flags`` column of :func:`stack_epochs`."""


def stack_epochs(table: Table) -> Table:
    """Inverse-variance stack of each target's good epochs (:func:`good_epochs`), in uJy:

    ``flux = sum w f / sum w``, ``flux_err = 1 / sqrt(sum w)`` with ``w = 1 / flux_ujy_err^2``;
    ``chi2 = sum w (f - flux)^2`` tests constancy (``dof = n_good - 1``); ``snr``, AB ``mag, mag_err`` where
    ``snr >= 3`` (``mag = 23.9 - 2.5 log10 flux``) and the 5-sigma ``mag_lim`` below; ``flags``: :data:`STACK_FLAGS`.
    """
    ids = np.asarray(table["target_id"]).astype(str)
    names, first, group = np.unique(ids, return_index=True, return_inverse=True)
    by_row = np.argsort(first)  # targets in the order of their first row
    rank = np.empty_like(by_row)
    rank[by_row] = np.arange(len(by_row))
    group, first = rank[group], first[by_row]
    on = (np.asarray(table["flags"]) & FORCED_FLAGS["off_image"]) == 0
    good = good_epochs(table)
    flux, err = np.asarray(table["flux_ujy"], float), np.asarray(table["flux_ujy_err"], float)
    w = np.where(good, 1.0 / np.where(good, err, 1.0) ** 2, 0.0)
    f = np.where(good, flux, 0.0)
    m = len(first)
    n_on, n_good = np.bincount(group, on, m).astype(int), np.bincount(group, good, m).astype(int)
    sum_w = np.bincount(group, w, m)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n_good > 0, np.bincount(group, w * f, m) / sum_w, np.nan)
        out = {"flux": mean, "flux_err": np.where(n_good > 0, 1.0 / np.sqrt(sum_w), np.nan),
               "chi2": np.where(n_good > 0, np.bincount(group, w * (f - mean[group]) ** 2, m), np.nan)}
    stack = Table({"target_id": ids[first], "ra": np.asarray(table["ra"])[first],
                   "dec": np.asarray(table["dec"])[first], "n_epochs": n_on, "n_good": n_good,
                   "flux_ujy": out["flux"], "flux_ujy_err": out["flux_err"], "chi2": out["chi2"],
                   "dof": np.maximum(n_good - 1, 0)})
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = out["flux"] / out["flux_err"]
        detected = snr >= DETECTION_SNR
        stack["snr"] = snr
        stack["mag"] = np.where(detected, 23.9 - 2.5 * np.log10(out["flux"]), np.nan)
        stack["mag_err"] = np.where(detected, 2.5 / np.log(10) / snr, np.nan)
        stack["mag_lim"] = np.where(np.isfinite(snr) & ~detected,
                                    23.9 - 2.5 * np.log10(UPPER_LIMIT_SIGMA * out["flux_err"]), np.nan)
    stack["flags"] = (STACK_FLAGS["off_every_image"] * (n_on == 0)
                      + STACK_FLAGS["no_good_epoch"] * ((n_on > 0) & (n_good == 0))).astype(np.int32)
    return stack


def write_forced(table: Table, out_dir, *, curves: bool = True) -> list[Path]:
    """Write ``epochs.parquet`` (every row), ``stack.parquet`` (a row per target) and, with ``curves``,
    ``lightcurves/<target_id>.parquet`` (one per target) into ``out_dir``, each atomically; return the paths."""
    from psfax.stars.catalog import write_catalog as write_table

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [write_table(table, out_dir / "epochs.parquet"),
             write_table(stack_epochs(table), out_dir / "stack.parquet")]
    if curves:
        (out_dir / "lightcurves").mkdir(exist_ok=True)
        for target, curve in light_curves(table).items():
            paths.append(write_table(curve, out_dir / "lightcurves" / f"{_file_name(target)}.parquet"))
    return paths


def _file_name(target_id: str) -> str:
    """A file-name-safe form of a target id (letters, digits, ``-_.+``; anything else becomes ``_``)."""
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in target_id)


# --- the fallback of the stars pipeline's photometry ------------------------------------------

def refit_failed(table: Table, stamps, background: Background, psf, gain: float, options) -> np.ndarray:
    """Give the sources whose free (x, y, flux, sky) fit failed a flux fitted at the detection position.

    A row of the photometry fit ``table`` (stamp coordinates) failed when its fit flags hold
    ``NOT_CONVERGED``, ``OFF_STAMP`` or ``SINGULAR``, or its flux or error is not finite.  Those with at least
    3 usable pixels get :func:`fixed_position_fit` at ``(x_init, y_init)`` with their rows of the PSF value
    ``psf`` (one row per row of ``table``, as the photometry fit had): ``x_fit, y_fit`` become the detection position
    (``x_err, y_err`` NaN: not fitted), ``flux_fit, flux_err, bkg_fit, bkg_err, chi2, dof, reduced_chi2`` the
    fixed-position fit's; the fit flags stay (they say why).  Returns True for the rows re-fitted.
    """
    from psfax.fitting.flags import NOT_CONVERGED, OFF_STAMP, SINGULAR

    flags = np.asarray(table["flags"])
    flux, err = np.asarray(table["flux_fit"], float), np.asarray(table["flux_err"], float)
    usable = ~stamps.mask
    failed = (((flags & (NOT_CONVERGED | OFF_STAMP | SINGULAR)) != 0) | ~np.isfinite(flux) | ~np.isfinite(err))
    failed &= usable.sum(axis=(1, 2)) >= 3
    index = np.flatnonzero(failed)
    if not len(index):
        return failed
    size = stamps.size
    rows = stamps.y0[index, None, None] + np.arange(size)[None, :, None]
    cols = stamps.x0[index, None, None] + np.arange(size)[None, None, :]
    fit = fit_at_positions(stamps.data[index], usable[index], background.rms_map[rows, cols].astype(float) ** 2,
                           stamps.x_init[index], stamps.y_init[index], psf.rows(index), gain,
                           dtype=options.photometry_dtype, device=options.device)
    dof = fit["n_pix"] - 2
    new = {"x_fit": stamps.x_init[index], "y_fit": stamps.y_init[index], "x_err": np.nan, "y_err": np.nan,
           "flux_fit": fit["flux"], "flux_err": fit["flux_err"], "bkg_fit": fit["bkg"], "bkg_err": fit["bkg_err"],
           "chi2": fit["chi2"], "dof": dof, "reduced_chi2": fit["chi2"] / np.maximum(dof, 1)}
    for name, values in new.items():
        table[name][index] = values
    return failed


# --- the `psfax run stars-forced` job ---------------------------------------------------------

def forced_epoch(exposure: Exposure, targets: str | None = None, recentre: float = 0.0, stamp_size: int = 15,
                 dtype: str | None = None, device: str | None = None) -> Table:
    """Compute stage of ``stars-forced``: :func:`forced_exposure` with the PSF fitted on the image."""
    if targets is None:
        raise InputError("stars-forced needs --targets TABLE (ra, dec columns)")
    return forced_exposure(exposure, _cached_targets(str(targets), Path(targets).stat().st_mtime
                                                     if Path(targets).exists() else 0.0),
                           recentre=recentre, stamp_size=stamp_size, dtype=dtype, device=device)


@functools.lru_cache(maxsize=4)
def _cached_targets(path: str, mtime: float) -> Table:
    """The targets table of ``path`` read once per worker process (``mtime`` keys a changed file)."""
    return read_targets(path)


def write_epoch(table: Table, out_dir: Path) -> list[Path]:
    """Write stage of ``stars-forced``: ``forced.parquet`` (gather with ``psfax stars lightcurves``)."""
    from psfax.stars.catalog import write_catalog as write_table

    return [write_table(table, Path(out_dir) / "forced.parquet")]


def forced_job():
    """The ``stars-forced`` job of :mod:`psfax.runner.jobs`: read a ZTF image (mask beside it), forced
    photometry of ``--targets`` with its PSF fitted on it, ``forced.parquet`` per image."""
    from psfax.runner.jobs import Job, options_from_signature, read_ztf_exposure
    from psfax.stars.exposure import read_exposure

    options = (options_from_signature(read_exposure, "read", skip=("mask", "header"))
               + options_from_signature(forced_epoch, "compute"))
    return Job("stars-forced", read_ztf_exposure, forced_epoch, write_epoch, options)

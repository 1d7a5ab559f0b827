"""Blends fitted together: sources grouped by distance and each group fitted simultaneously.

**Grouping** (:func:`group_sources`, photutils' ``SourceGrouper`` convention): friends of friends, two
sources closer than ``radius`` px are in the same group, and groups are the connected sets.

**The group model** over a footprint (the groups' bounding box of member positions, widened by half a stamp
on each side) is

    m = bkg + sum_k flux_k P_k(x - x_k, y - y_k)

with ``P_k`` the image's unit-flux PSF at member ``k`` (any PSF value of :mod:`psfax.fitting.psf`, through
its ``linearise``), ``3 K + 1`` unknowns ``[x_1..x_K, y_1..y_K, flux_1..flux_K, bkg]``.  The data are the
image minus sep's sky map minus the current models of every source **not** in the group (their light in
the footprint is subtracted, DAOPHOT's way), and the variance is the noise model of the model,

    var = sky_rms^2 + max(m_psf + m_others, 0) / gain     [ADU^2]

(``m_psf`` the group's PSF part, ``m_others`` the subtracted sources: their Poisson noise stays in the
pixels).  Each group runs a damped Gauss-Newton (Levenberg-Marquardt) loop, the damping and stop test of
:mod:`psfax.fitting.damping`, steps limited to ``max_shift`` px per centre, and every centre held within
:data:`~psfax.fitting.flags.MAX_OFFSET` px of its detection (projected back onto that disc; a centre
ending there is flagged ``OFF_STAMP``).  The covariance is the inverse of ``J^T W J`` at the solution.

**Batched by size**: groups are padded to ``K`` = 1, 2, 4, 8 ... members (padding members have no flux and
no Jacobian) and their footprints to a common side per bucket; one JAX program per (K, side) runs
``vmap`` over the groups (:func:`fit_group_batch`), :data:`GROUP_CHUNK` groups per call on the CPU.

**Per source** the reported ``chi2`` is over its own ``stamp_size`` window of the footprint against the
whole model (every member, the subtracted neighbours and bkg), ``dof`` its usable pixels there minus 4.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from psfax.errors import InputError
from psfax.fitting import damping
from psfax.fitting.flags import MAX_OFFSET, NOT_CONVERGED, OFF_STAMP, SINGULAR, TOO_FEW_PIXELS
from psfax.fitting.problem import bucket_size, pixel_grid
from psfax.fitting.psf import unit_stamps
from psfax.fitting.settings import DEFAULT_SETTINGS
from psfax.fitting.spd import spd_inverse, spd_solve
from psfax.programs import persistent_jit

MAX_ITER = 50
"""LM iterations of a group at most (a group reaching it is flagged NOT_CONVERGED)."""
SPD_LIMIT = 10
"""Unknowns up to which the normal equations are solved by the unrolled Cholesky of
:mod:`psfax.fitting.spd` (fast for small matrices); larger groups use LAPACK's."""


def group_sources(x, y, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Friends-of-friends groups of the positions (x, y) [px] with linking length ``radius`` [px]:
    ``(group_id, group_size)`` per source, ids 1, 2, ... in the order of each group's first source."""
    if not radius > 0:
        raise InputError(f"group_radius must be > 0, got {radius}")
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = cKDTree(np.column_stack([x, y])).query_pairs(radius, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    _, first, inverse = np.unique(label, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    group_id = rank[inverse] + 1
    return group_id, np.bincount(group_id)[group_id]


def members_bucket(k: int) -> int:
    """Members a group of ``k`` is padded to: 1, 2, 4, 8, ..."""
    return 1 << max(0, math.ceil(math.log2(k)))


# --- the batched kernel ----------------------------------------------------------------------

def _group_model(psf, v, size, active, want_jacobian=True):
    """Model (M,) of one group's PSF part and its Jacobian (M, 3K + 1) wrt ``[x(K), y(K), flux(K), bkg]``."""
    k = active.shape[0]
    star_v = jnp.stack([v[:k], v[k:2 * k], v[2 * k:3 * k], jnp.zeros_like(v[:k])], axis=1)

    def one(vi, part):
        m, jac = psf.with_star(part).linearise(vi, size)
        return m, jac[:, :3]

    m, jac = jax.vmap(one)(star_v, psf.star_part())  # (K, M), (K, M, 3)
    on = active.astype(m.dtype)
    model = jnp.sum(on[:, None] * m, axis=0)
    cols = (on[:, None, None] * jac).transpose(2, 0, 1).reshape(3 * k, -1).T  # (M, 3K): x..., y..., flux...
    return model, jnp.concatenate([cols, jnp.ones_like(model)[:, None]], axis=1)


def _solve(a, b):
    return spd_solve(a, b) if a.shape[-1] <= SPD_LIMIT else jnp.linalg.solve(a, b)


def _fit_one(psf, data, model_all, usable, sky_var, v0, bound_x, bound_y, active, free, gain, size, max_shift,
             half):
    settings = DEFAULT_SETTINGS
    k = active.shape[0]
    p = 3 * k + 1
    own0, _ = _group_model(psf, v0, size, active)
    others = model_all - own0
    d = data - others
    held = ~active | ~free  # padding members, and positions held at the start
    fixed = jnp.concatenate([held, held, ~active, jnp.zeros(1, bool)])

    def weights(own):
        var = sky_var + jnp.maximum(own + others, 0.0) / gain
        return usable / jnp.maximum(var, 1.0 / gain ** 2)

    def linear(v):
        """Normal equations, weights, chi2 and model at ``v`` (weights of the model at ``v``)."""
        own, jac = _group_model(psf, v, size, active)
        m = own + v[-1]
        w = weights(own)
        h = jac.T @ (w[:, None] * jac)
        h = h + jnp.diag(jnp.where(fixed | (jnp.diag(h) <= 0), 1.0, 0.0))
        g = jnp.where(fixed, 0.0, jac.T @ (w * (d - m)))
        return h, g, w, jnp.sum(w * (d - m) ** 2), m

    def project(v):
        dx, dy = v[:k] - bound_x, v[k:2 * k] - bound_y
        r = jnp.hypot(dx, dy)
        scale = jnp.where(r > MAX_OFFSET, MAX_OFFSET / jnp.maximum(r, 1e-30), 1.0)
        return v.at[:k].set(bound_x + dx * scale).at[k:2 * k].set(bound_y + dy * scale)

    def body(state):
        v, h, g, w, c, m, lam, nu, _, _, it = state
        diag = jnp.diag(h)
        step = jnp.where(fixed, 0.0, _solve(h + lam * jnp.diag(diag), g))
        shift = jnp.max(jnp.where(active, jnp.hypot(step[:k], step[k:2 * k]), 0.0))
        trial = project(v + damping.limit_shift(step, shift, max_shift))
        step = trial - v
        h2, g2, w2, c2, m2 = linear(trial)  # kept when the step is accepted
        c_trial = jnp.sum(w * (d - m2) ** 2)  # judged under the current weights
        predicted = step @ (2.0 * g - h @ step)
        sigma = jnp.max(jnp.abs(step) * jnp.sqrt(diag))
        verdict = damping.judge(settings, settings.dchi2 * k, lam, nu, c, c_trial, predicted, sigma)
        keep = verdict.accept
        pick = lambda new, old: jnp.where(keep, new, old)  # noqa: E731
        done = verdict.converged | verdict.stuck | (it + 1 >= MAX_ITER)
        return (pick(trial, v), pick(h2, h), pick(g2, g), pick(w2, w), pick(c2, c), pick(m2, m), verdict.lam,
                verdict.nu, done, verdict.converged, it + 1)

    dt = data.dtype
    state = (v0, *linear(v0), jnp.asarray(settings.lam0, dt), jnp.asarray(2.0, dt), jnp.asarray(False),
             jnp.asarray(False), jnp.asarray(0))
    v, h, _, w, _, m, _, _, _, converged, n_iter = jax.lax.while_loop(lambda s: ~s[8], body, state)
    cov = spd_inverse(h) if p <= SPD_LIMIT else jnp.linalg.inv(h)
    r2 = w * (d - m) ** 2
    xx, yy = pixel_grid(size, dt)
    window = ((jnp.abs(xx[None, :] - jnp.round(v[:k, None])) <= half)
              & (jnp.abs(yy[None, :] - jnp.round(v[k:2 * k, None])) <= half))  # (K, M)
    window = window.astype(dt)
    return {"v": v, "err": jnp.sqrt(jnp.diag(cov)), "chi2": window @ r2, "n_pix": window @ usable,
            "converged": converged, "n_iter": n_iter}


@persistent_jit(static_argnames=("half",))
def fit_group_batch(psf, data, model_all, usable, sky_var, v0, bound_x, bound_y, active, free, gain, max_shift,
                    *, half: int):
    """LM fits of G groups of K members on footprints (G, S, S) (see the module docstring).

    ``psf``: a PSF value whose per-star fields have leading axes (G, K); ``data``: image minus sky [ADU];
    ``model_all``: the current model of every source [ADU] (the group's own members included: they are
    re-rendered at ``v0`` and put back); ``usable`` 0/1; ``sky_var`` [ADU^2]; ``v0`` (G, 3K + 1) the start
    ``[x(K), y(K), flux(K), bkg]`` in footprint pixels; ``bound_x, bound_y`` (G, K) the detection positions;
    ``active`` (G, K) real members; ``free`` (G, K) False: that member's position is held at
    ``v0``; ``half``: half the stamp (the per-source chi2 window).  Returns a dict: ``v, err`` (G, 3K + 1), ``chi2,
    n_pix`` (G, K), ``converged, n_iter`` (G,).
    """
    g, s, _ = data.shape
    size = (s, s)
    flat = lambda a: a.reshape(g, -1)  # noqa: E731

    def one(part, *args):
        return _fit_one(psf.with_star(part), *args, gain, size, max_shift, half)

    return jax.vmap(one)(psf.star_part(), flat(data), flat(model_all), flat(usable), flat(sky_var), v0, bound_x,
                         bound_y, active, free)


# --- numpy side ------------------------------------------------------------------------------

def _cut(images, x0, y0, side):
    """Square cut-outs (N, side, side) of each 2-D array of ``images`` at corners (x0, y0), and the mask of
    pixels on the image (those off it read as the nearest edge pixel)."""
    ny, nx = images[0].shape
    offsets = np.arange(side)
    rows = y0[:, None, None] + offsets[None, :, None]
    cols = x0[:, None, None] + offsets[None, None, :]
    inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    flat = np.clip(rows, 0, ny - 1) * nx + np.clip(cols, 0, nx - 1)  # flat indices: 3x faster than a[r, c]
    return [np.take(a, flat) for a in images], inside


@persistent_jit(static_argnames=("size",))
def _unit_windows_jit(psf, x, y, *, size: int):
    return unit_stamps(psf, x, y, (size, size))


def unit_windows(psf_value, index, x, y, size: int) -> np.ndarray:
    """Unit-flux PSF windows (N, size, size) of the sources ``index`` (rows of ``psf_value``) centred at window
    pixels ``(x, y)``; padded to :func:`~psfax.fitting.problem.bucket_size` rows so that calls share programs."""
    index = np.asarray(index, int)
    if not len(index):
        return np.zeros((0, size, size))
    pad = bucket_size(len(index)) - len(index)
    padded = np.concatenate([index, np.full(pad, index[0])])
    local_x = np.concatenate([np.asarray(x, float), np.full(pad, size / 2)])
    local_y = np.concatenate([np.asarray(y, float), np.full(pad, size / 2)])
    return np.asarray(_unit_windows_jit(psf_value.rows(padded), local_x, local_y, size=size), float)[:len(index)]


def render_model(psf_value, x, y, flux, shape, size: int) -> np.ndarray:
    """Image (``shape``) of the sources' PSF models ``flux P(x - x_i, y - y_i)`` [ADU], each drawn on a
    ``size`` x ``size`` window around its rounded centre (the Moffat wing beyond 15 px of a star holds
    < 1e-4 of its flux per pixel ring); ``psf_value`` has one row per source; NaN sources are skipped."""
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux)
    if not ok.any():
        return np.zeros(shape, np.float64)
    index = np.flatnonzero(ok)
    half = size // 2
    x0 = np.rint(x[index]).astype(int) - half
    y0 = np.rint(y[index]).astype(int) - half
    values = flux[index, None, None] * unit_windows(psf_value, index, x[index] - x0, y[index] - y0, size)
    ny, nx = shape
    offsets = np.arange(size)
    pixels = (y0 * nx + x0)[:, None, None] + (offsets[:, None] * nx + offsets[None, :])[None]  # flat indices
    across = (x0 < 0) | (y0 < 0) | (x0 + size > nx) | (y0 + size > ny)
    if across.any():  # windows over the edge: keep their pixels on the image only
        rows = y0[:, None, None] + offsets[None, :, None]
        cols = x0[:, None, None] + offsets[None, None, :]
        inside = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
        pixels, values = pixels[inside], values[inside]
    return np.bincount(pixels.ravel(), values.ravel(), minlength=ny * nx).reshape(shape)


def moved_model(model, psf_value, before, after, size: int) -> np.ndarray:
    """``model`` with the sources of ``psf_value``'s rows moved from ``before`` to ``after`` (each ``(x, y, flux)``
    arrays): ``model - render(before) + render(after)`` (:func:`render_model`) in one rendering."""
    both = [np.concatenate([a, b]) for a, b in zip(after, before)]
    both[2] = np.concatenate([after[2], -np.asarray(before[2], float)])
    n = len(after[0])
    twice = psf_value.rows(np.concatenate([np.arange(n), np.arange(n)]))
    return model + render_model(twice, *both, model.shape, size)


@dataclasses.dataclass(frozen=True)
class GroupImage:
    """The image arrays a group fit reads: ``sky_subtracted`` (image minus sep's sky map, 0 on bad pixels)
    [ADU], ``usable`` (bool), ``sky_var`` (sep's rms map squared) [ADU^2], ``gain`` [e-/ADU]."""

    sky_subtracted: np.ndarray
    usable: np.ndarray
    sky_var: np.ndarray
    gain: float

    @classmethod
    def of(cls, exposure, background) -> GroupImage:
        usable = ~exposure.bad
        return cls(np.where(usable, exposure.data - background.level, 0.0).astype(np.float32), usable,
                   (background.rms_map.astype(np.float32) ** 2), float(exposure.gain))


def footprint_side(k: int, radius: float, stamp_size: int) -> int:
    """Footprint side [px] of the groups of up to ``k`` members linked within ``radius`` px: their detections
    span less than ``(k - 1) radius`` in x and in y, each centre may move :data:`MAX_OFFSET` px, and half a
    stamp is kept around each; rounded up to 8 px so that images share compiled programs."""
    if k == 1:
        return stamp_size
    return stamp_size + 8 * math.ceil(((k - 1) * radius + 2 * MAX_OFFSET) / 8)


def fit_groups(image: GroupImage, model_all, psf_value, x, y, flux, x_det, y_det, group_id, free=None, *,
               radius: float, stamp_size: int, max_shift: float = DEFAULT_SETTINGS.max_shift, skip=None, dtype=None,
               device=None) -> dict:
    """Fit every group (:func:`fit_group_batch`, batched by member count and footprint side).

    ``model_all``: :func:`render_model` of the start; per source: ``psf_value`` rows, start ``x, y, flux``
    (NaN: the detection position, flux 0), detection ``x_det, y_det`` [image px], ``group_id`` and ``free``
    (False: position held at the start; default all free); ``radius``: the grouping's linking length [px]
    (sets the footprints, :func:`footprint_side`); ``skip``: sources not to fit (their rows stay NaN).  Returns
    per-source numpy arrays ``x_fit, y_fit, x_err, y_err, flux_fit, flux_err, bkg_fit, bkg_err, chi2, dof,
    reduced_chi2, converged, n_iter, flags`` (``bkg_fit``: the group's offset from the sky map).
    """
    from psfax.device import resolve_device, resolve_dtype

    n = len(x)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    out = {name: np.full(n, np.nan, dt) for name in ("x_fit", "y_fit", "x_err", "y_err", "flux_fit", "flux_err",
                                                      "bkg_fit", "bkg_err", "chi2", "dof", "reduced_chi2")}
    out.update(converged=np.zeros(n, bool), n_iter=np.zeros(n, np.int32), flags=np.zeros(n, np.int32))
    if n == 0:
        return out
    start = {"x": np.where(np.isfinite(x), x, x_det), "y": np.where(np.isfinite(y), y, y_det),
             "flux": np.where(np.isfinite(flux), flux, 0.0), "x_det": x_det, "y_det": y_det,
             "free": np.ones(n, bool) if free is None else np.asarray(free, bool)}
    order = np.argsort(group_id, kind="stable")
    if skip is not None:
        order = order[~np.asarray(skip, bool)[order]]
    _, starts, sizes = np.unique(group_id[order], return_index=True, return_counts=True)
    members = [order[s:s + c] for s, c in zip(starts, sizes)]
    buckets = np.array([members_bucket(s) for s in sizes])
    for k in np.unique(buckets):
        chosen = np.flatnonzero(buckets == k)
        fit = _fit_bucket([members[i] for i in chosen], int(k), footprint_side(int(k), radius, stamp_size), image,
                          model_all, psf_value, start, stamp_size // 2, max_shift, dt, dev)
        for name, values in fit.items():
            out[name][values[0]] = values[1]
    return out


GROUP_CHUNK = 8
"""Groups per call of :func:`fit_group_batch` on the CPU: a batched loop runs until its slowest group stops, and the
groups' iteration counts spread widely (pairs on the real ZTF quadrant: median 7, 90 % 14, max 33), so small
batches waste few iterations (8 halved the pairs' time against 32 there); and one program per (members,
footprint) serves any number of groups, which a new process loads once."""


def _batches(n_groups: int, dev) -> tuple[int, int]:
    """``(padded, batch)``: the groups padded to whole batches of :data:`GROUP_CHUNK` on the CPU; on an
    accelerator one batch of a :func:`~psfax.fitting.problem.bucket_size` (1 for a single group)."""
    if dev.platform == "cpu":
        return -(-n_groups // GROUP_CHUNK) * GROUP_CHUNK, GROUP_CHUNK
    padded = bucket_size(n_groups) if n_groups > 1 else 1
    return padded, padded


def _fit_bucket(groups, k, side, image: GroupImage, model_all, psf_value, start, half, max_shift, dt, dev):
    """:func:`fit_group_batch` on the groups of one (members ``k``, footprint ``side``) bucket: ``{column:
    (source rows, values)}``."""
    from psfax.device import compute_context

    n_groups = len(groups)
    padded, batch = _batches(n_groups, dev)
    index = np.zeros((padded, k), int)
    active = np.zeros((padded, k), bool)
    for i, m in enumerate(groups):
        index[i, :len(m)] = m
        index[i, len(m):] = m[0]
        active[i, :len(m)] = True
    x_det, y_det = start["x_det"], start["y_det"]
    centre_x = np.array([(x_det[m].min() + x_det[m].max()) / 2 for m in groups] + [0.0] * (padded - n_groups))
    centre_y = np.array([(y_det[m].min() + y_det[m].max()) / 2 for m in groups] + [0.0] * (padded - n_groups))
    fx0 = np.rint(centre_x).astype(int) - side // 2
    fy0 = np.rint(centre_y).astype(int) - side // 2
    (data, model, good, var), inside = _cut([image.sky_subtracted, model_all, image.usable, image.sky_var],
                                            fx0, fy0, side)
    good = good & inside
    good[n_groups:] = False

    def local(a, corner=None):
        return np.where(active, a[index] - (0 if corner is None else corner[:, None]), 0.0)

    v0 = np.concatenate([local(start["x"], fx0), local(start["y"], fy0), local(start["flux"]),
                         np.zeros((padded, 1))], axis=1)
    rows = psf_value.rows(index)
    rows = jax.tree.map(lambda a: np.asarray(a, dt) if np.issubdtype(np.asarray(a).dtype, np.floating) else a, rows)
    inputs = (rows.star_part(), np.asarray(np.where(good, data, 0.0), dt), np.asarray(model, dt), good.astype(dt),
              np.asarray(np.where(good, var, 1.0), dt), np.asarray(v0, dt), np.asarray(local(x_det, fx0), dt),
              np.asarray(local(y_det, fy0), dt), active, active & start["free"][index])
    parts = []
    with compute_context(dt, dev):
        for first in range(0, padded, batch):
            star, *arrays = jax.tree.map(lambda a: a[first:first + batch], inputs)
            out = fit_group_batch(rows.with_star(star), *arrays, np.asarray(image.gain, dt), np.asarray(max_shift, dt),
                                  half=int(half))
            parts.append({name: np.asarray(value, float) for name, value in out.items()})
    fit = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    g, j = np.nonzero(active[:n_groups])
    rows_out = index[g, j]
    v, err = fit["v"][g], fit["err"][g]
    pick = lambda a, offset: a[np.arange(len(g)), offset + j]  # noqa: E731
    xs, ys = pick(v, 0) + fx0[g], pick(v, k) + fy0[g]
    dof = fit["n_pix"][g, j] - 4
    moved = np.hypot(xs - x_det[rows_out], ys - y_det[rows_out]) >= MAX_OFFSET * (1 - 1e-4)
    finite = np.isfinite(pick(err, 2 * k)) & np.isfinite(err[:, -1])
    converged = fit["converged"][g] > 0
    flags = (NOT_CONVERGED * ~converged + OFF_STAMP * moved + SINGULAR * ~finite + TOO_FEW_PIXELS * (dof <= 0))
    free = start["free"][rows_out]
    values = {"x_fit": xs, "y_fit": ys, "x_err": np.where(free, pick(err, 0), np.nan),
              "y_err": np.where(free, pick(err, k), np.nan), "flux_fit": pick(v, 2 * k),
              "flux_err": pick(err, 2 * k), "bkg_fit": v[:, -1], "bkg_err": err[:, -1], "chi2": fit["chi2"][g, j],
              "dof": dof, "reduced_chi2": fit["chi2"][g, j] / np.maximum(dof, 1), "converged": converged,
              "n_iter": fit["n_iter"][g], "flags": flags}
    return {name: (rows_out, value) for name, value in values.items()}


# --- the passes of the stars pipeline's photometry ---------------------------------------------

RENDER_MARGIN = 8
"""px: each source's model is drawn on a window of ``stamp_size + RENDER_MARGIN`` px (23 for 15 px stamps) to
be subtracted from its neighbours' data.  On the real ZTF quadrant (Moffat FWHM 0.81 px before the pixel,
beta 1.64) the profile beyond 11 px from a star holds ~2e-5 of its flux per pixel: 2 ADU for a 14 mag star,
below the sky noise (~5 ADU)."""

FAILED = NOT_CONVERGED | OFF_STAMP | SINGULAR
"""Fit flags after which a member is refitted with its position held at its detection."""


@dataclasses.dataclass
class GroupedPhotometry:
    """What :func:`grouped_photometry` returns: ``sources`` (the detections, then those found in the residual,
    with the detection columns), ``fit`` (per-source columns of :func:`fit_groups`; ``fixed_position`` True
    where the position was held), ``group_id, group_size``, ``added`` (sources detected per pass: the first
    detection, then each residual pass), the :class:`GroupImage` fitted and ``model`` (every source's model
    [ADU]); :attr:`residual` is the image minus sky minus ``model``, formed when asked for."""

    sources: object
    fit: dict
    group_id: np.ndarray
    group_size: np.ndarray
    added: list[int]
    image: GroupImage
    model: np.ndarray

    @property
    def residual(self) -> np.ndarray:
        """Image minus sky minus every model [ADU], NaN on bad pixels (float32)."""
        return np.where(self.image.usable, self.image.sky_subtracted - self.model, np.nan).astype(np.float32)

    def summary(self) -> dict:
        """JSON-ready counts for ``psf.json``: sources per pass and groups per size."""
        sizes, counts = np.unique(self.group_size, return_counts=True)
        return {"sources_per_pass": [int(n) for n in self.added],
                "groups_by_size": {str(int(s)): int(c // s) for s, c in zip(sizes, counts)},
                "largest_group": int(sizes.max()) if len(sizes) else 0,
                "sources_fixed_position": int(np.sum(self.fit["fixed_position"]))}

    def stamp_table(self, background, stamp_size: int, shape_at=None):
        """The fit as a table in stamp coordinates (``x_fit - x0`` ...) of ``stamp_size`` stamps centred on each
        detection, and those corners (``.x0, .y0``); ``bkg_fit`` is the sky map at the detection plus the
        group's offset; ``shape_at(x, y)``: PSF shape columns (``fwhm, beta`` ...) to add."""
        from astropy.table import Table

        fit = self.fit
        x_det, y_det = np.asarray(self.sources["x"], float), np.asarray(self.sources["y"], float)
        col, row = np.rint(x_det).astype(int), np.rint(y_det).astype(int)
        corners = SimpleNamespace(x0=col - stamp_size // 2, y0=row - stamp_size // 2)
        dt = fit["flux_fit"].dtype
        columns = {"x_fit": (fit["x_fit"] - corners.x0).astype(dt), "x_err": fit["x_err"],
                   "y_fit": (fit["y_fit"] - corners.y0).astype(dt),
                   "y_err": fit["y_err"], "flux_fit": fit["flux_fit"], "flux_err": fit["flux_err"],
                   "bkg_fit": (fit["bkg_fit"] + background.level[row, col]).astype(dt), "bkg_err": fit["bkg_err"]}
        if shape_at is not None:
            columns.update(shape_at(x_det, y_det))
        columns.update({name: fit[name] for name in ("chi2", "dof", "reduced_chi2", "converged", "n_iter", "flags")})
        columns["dof"] = np.nan_to_num(columns["dof"]).astype(np.int64)
        return Table(columns), corners

    def residual_stamps(self, corners, size: int) -> np.ndarray:
        """Each source's ``size`` stamp at ``corners`` (``.x0, .y0``) of the residual image minus its group's
        background offset (N, size, size) [ADU]: its data minus every model; NaN on bad pixels and off the image."""
        (data, usable, model), inside = _cut([self.image.sky_subtracted, self.image.usable, self.model], corners.x0,
                                             corners.y0, size)
        residual = (data - model).astype(np.float32)  # as :attr:`residual`, on the stamps only
        return np.where(inside & usable, residual - np.nan_to_num(self.fit["bkg_fit"])[:, None, None], np.nan)


def grouped_photometry(exposure, background, detections, start, psf_at, fwhm: float, options,
                       progress=None) -> GroupedPhotometry:
    """PSF photometry of every source with blends fitted together, in ``options.passes`` passes.

    ``detections``: the sep table of the sources (``x, y`` ... as :func:`~psfax.stars.detect.detect_sources`);
    ``start``: their first estimates ``x, y, flux`` [image px, ADU] (e.g. the detections' and aperture fluxes);
    ``psf_at(x, y)``: the image's PSF value at positions; ``fwhm`` [px] scales ``options.group_radius``.
    Each pass groups the sources by their detections (:func:`group_sources`, linking length
    ``group_radius * fwhm``), fits
    every group with the others' models subtracted (:func:`fit_groups`), refits the members whose fit
    failed (:data:`FAILED`, or a non-finite flux) with their position held at the detection, and, before
    every pass but the first, detects sources in the residual image (:func:`residual_sources`, the separation from the
    known sources measured from their fits) and adds them.
    A later pass refits only the groups that hold a new source or whose neighbours' models changed in their
    stamps by more than :data:`REFIT_CHANGE` (:func:`neighbour_change`); the others keep their fit.
    """
    from astropy.table import vstack

    image = GroupImage.of(exposure, background)
    render_size = options.stamp_size + RENDER_MARGIN
    radius = options.group_radius * fwhm
    sources = detections
    x, y, flux = (np.asarray(start[k], float) for k in ("x", "y", "flux"))
    x_det, y_det = x, y
    psf = psf_at(x_det, y_det)
    group_id, group_size = group_sources(x_det, y_det, radius)
    model = render_model(psf, x, y, flux, exposure.shape, render_size)
    added = [len(detections)]
    fit, end_model = _fit_with_fallback(image, model, psf, x, y, flux, x_det, y_det, group_id, group_size, radius,
                                        render_size, options, everyone=True)
    drift = np.zeros(len(x))  # neighbour_change since each source's last fit, summed over the passes
    for number in range(1, options.passes):
        fitted = np.isfinite(fit["x_fit"]) & np.isfinite(fit["y_fit"])
        known = np.column_stack([np.where(fitted, fit["x_fit"], x_det), np.where(fitted, fit["y_fit"], y_det)])
        new = residual_sources(exposure, background, end_model, sources, fwhm, options, known, fit["reduced_chi2"])
        added.append(len(new))
        if progress is not None:
            progress(f"photometry pass {number + 1}: {len(new)} sources found in the residual")
        if not len(new):
            break
        sources = vstack([sources, new], metadata_conflicts="silent")
        new_x, new_y = np.asarray(new["x"], float), np.asarray(new["y"], float)
        new_flux = np.maximum(np.asarray(new["aper_flux"], float), 0.0)
        before = (x, y, flux)
        x, y = np.append(fit["x_fit"], new_x), np.append(fit["y_fit"], new_y)
        flux = np.append(fit["flux_fit"], new_flux)
        x_det, y_det = np.append(x_det, new_x), np.append(y_det, new_y)
        psf = psf_at(x_det, y_det)
        now = end_model + render_model(psf.rows(np.arange(len(fit["x_fit"]), len(x))), new_x, new_y, new_flux,
                                       exposure.shape, render_size)
        group_id, group_size = group_sources(x_det, y_det, radius)
        fit = {name: np.append(values, np.full(len(new), values.dtype.type(np.nan) if values.dtype.kind == "f"
                                                else 0, values.dtype)) for name, values in fit.items()}
        drift = np.append(drift + neighbour_change(image, model, now, psf, before, (x, y, flux), x_det, y_det,
                                                   group_id, options.stamp_size), np.full(len(new), np.inf))
        refit = np.isin(group_id, group_id[(drift > REFIT_CHANGE) | (fit["fixed_position"] & (group_size > 1))])
        drift[refit] = 0.0
        if progress is not None:
            progress(f"photometry pass {number + 1}: {refit.sum()} of {len(x)} sources refitted")
        index = np.flatnonzero(refit)
        again, end_model = _fit_with_fallback(image, now, psf.rows(index), x[index], y[index], flux[index],
                                              x_det[index], y_det[index], group_id[index], group_size[index],
                                              radius, render_size, options)
        for name, values in again.items():
            fit[name][index] = values
        model = now
    return GroupedPhotometry(sources, fit, group_id, group_size, added, image, end_model)


REFIT_CHANGE = 0.1
"""A later photometry pass refits a group when, on some member's stamp, the models of the sources outside the
group changed since its last fit by ``dm`` with ``sqrt(sum(dm^2 / var)) > REFIT_CHANGE`` (summed over the passes
it was kept, an upper bound by the triangle inequality): by Cauchy-Schwarz that bounds the first-order change of
every fitted parameter of the stamp's fit to ``REFIT_CHANGE`` times its error, so a group kept is within
0.1 sigma of what refitting it would give (beside the fit's own stop rule)."""


def neighbour_change(image: GroupImage, model_before, model_now, psf, before, now, x_det, y_det, group_id,
                     size: int) -> np.ndarray:
    """``sqrt(sum(dm^2 / var))`` over each of the first ``len(before[0])`` sources' ``size`` stamp, ``dm`` the change
    of the models of the sources outside its group from ``model_before`` (each source at ``before`` = ``(x, y,
    flux)``) to ``model_now`` (at ``now``, new sources last): the image difference minus the group's own
    ``sum_j flux_j P_j`` (now - before); ``var = sky_rms^2 + max(image - sky, 0) / gain`` as the stamps' fit."""
    n_old = len(before[0])
    half = size // 2
    x0, y0 = np.rint(x_det[:n_old]).astype(int) - half, np.rint(y_det[:n_old]).astype(int) - half
    (diff, data, good, sky_var), _ = _cut([model_now - model_before, image.sky_subtracted, image.usable,
                                           image.sky_var], x0, y0, size)
    order = np.argsort(group_id[:n_old], kind="stable")
    _, starts, counts = np.unique(group_id[:n_old][order], return_index=True, return_counts=True)
    groups = [order[s:s + c] for s, c in zip(starts, counts)]
    stamp = np.concatenate([np.repeat(m, len(m)) for m in groups])  # pairs (stamp, member) of each group
    member = np.concatenate([np.tile(m, len(m)) for m in groups])
    for values, sign in ((before, 1.0), (now, -1.0)):
        xs, ys, fs = (np.asarray(v[:n_old], float)[member] for v in values)
        ok = np.isfinite(xs) & np.isfinite(ys) & np.isfinite(fs)
        unit = unit_windows(psf, member[ok], xs[ok] - x0[stamp[ok]], ys[ok] - y0[stamp[ok]], size)
        np.add.at(diff, stamp[ok], sign * fs[ok, None, None] * unit)
    var = sky_var + np.maximum(data, 0.0) / image.gain
    return np.sqrt(np.sum(np.where(good, diff ** 2 / var, 0.0), axis=(1, 2)))


def _fit_with_fallback(image, model, psf, x, y, flux, x_det, y_det, group_id, group_size, radius, render_size,
                       options, everyone=False) -> tuple[dict, np.ndarray]:
    """These sources (whole groups) fitted from the start ``x, y, flux`` with the others' models subtracted
    (``model``: every source's, these at their start): isolated ones by
    the engine's per-star fit (:func:`fit_isolated`), groups by :func:`fit_groups`; then the members of a group
    whose fit failed refitted from there with their positions held at their detection
    (``fit["fixed_position"]``; isolated ones: :func:`psfax.stars.forced.refit_failed`).  Returns the fit and
    ``model`` with these sources moved to their fit (:func:`moved_model`; ``everyone``: these are all the
    sources of ``model``, so it is rendered afresh, half the work)."""
    kwargs = dict(radius=radius, stamp_size=options.stamp_size, dtype=options.photometry_dtype,
                  device=options.device)
    alone = group_size == 1
    fit = fit_groups(image, model, psf, x, y, flux, x_det, y_det, np.where(alone, 0, group_id), **kwargs,
                     skip=alone)
    fit["fixed_position"] = np.zeros(len(x), bool)
    index = np.flatnonzero(alone)
    if len(index):
        for name, values in fit_isolated(image, model, psf.rows(index), x[index], y[index], flux[index],
                                         x_det[index], y_det[index], render_size, options).items():
            fit[name][index] = values
    failed = ((fit["flags"] & FAILED) != 0) | ~np.isfinite(fit["flux_fit"]) | ~np.isfinite(fit["flux_err"])
    failed &= ~alone
    first = (np.where(failed, x_det, fit["x_fit"]), np.where(failed, y_det, fit["y_fit"]),
             np.where(np.isfinite(fit["flux_fit"]), fit["flux_fit"], 0.0))
    if everyone:
        model = render_model(psf, *first, model.shape, render_size)
    else:
        model = moved_model(model, psf, (x, y, flux), first, render_size)
    if failed.any():
        first_flags = fit["flags"].copy()
        index = np.flatnonzero(np.isin(group_id, group_id[failed]))
        held = failed[index]
        again = fit_groups(image, model, psf.rows(index), first[0][index], first[1][index], first[2][index],
                           x_det[index], y_det[index], group_id[index], ~held, **kwargs)
        for name, values in again.items():
            fit[name][index] = values
        fit["flags"][index] |= np.where(held, first_flags[index], 0)  # they say why the position is held
        fit["fixed_position"][index] = held
        model = moved_model(model, psf.rows(index), tuple(a[index] for a in first),
                            (fit["x_fit"][index], fit["y_fit"][index], fit["flux_fit"][index]), render_size)
    return fit, model


def fit_isolated(image: GroupImage, model_all, psf, x, y, flux, x_det, y_det, render_size, options) -> dict:
    """Sources alone in their group: the engine's per-star fit (:func:`psfax.fitting.fit_stamps`, its tabulated
    PSF) of ``stamp_size`` stamps around the detections, the others' models subtracted (their Poisson noise
    kept: the variance is ``sky_rms^2 + max(image - sky, 0) / gain`` of the data, as the pipeline's stamps);
    a failed fit gets its flux fitted at the detection (:func:`psfax.stars.forced.refit_failed`,
    ``fixed_position``).  Returns the columns of :func:`fit_groups` in image pixels."""
    from psfax.fitting import fit_stamps
    from psfax.stars.forced import refit_failed
    from psfax.stars.stamps import Stamps

    size = options.stamp_size
    half = size // 2
    x0, y0 = np.rint(x_det).astype(int) - half, np.rint(y_det).astype(int) - half
    (data, model, good, sky_var), _ = _cut([image.sky_subtracted, model_all, image.usable, image.sky_var], x0, y0, size)
    start = np.where(np.isfinite(flux), flux, 0.0)[:, None, None] * unit_windows(
        psf, np.arange(len(x)), np.where(np.isfinite(x), x, x_det) - x0, np.where(np.isfinite(y), y, y_det) - y0, size)
    data = np.where(good, data - (model - start), 0.0)
    variance = sky_var + np.maximum(np.where(good, data + (model - start), 0.0), 0.0) / image.gain
    stamps = Stamps(data=data, variance=variance, mask=~good, x0=x0, y0=y0, x_init=x_det - x0, y_init=y_det - y0)
    table = fit_stamps(data, variance=variance, mask=~good, psf=psf, dtype=options.photometry_dtype,
                       device=options.device).table
    sky = SimpleNamespace(rms_map=np.sqrt(image.sky_var))
    fixed = refit_failed(table, stamps, sky, psf, image.gain, options)
    out = {name: np.asarray(table[name]) for name in ("x_err", "y_err", "flux_fit", "flux_err", "bkg_fit", "bkg_err",
                                                     "chi2", "dof", "reduced_chi2", "converged", "n_iter", "flags")}
    out["x_fit"], out["y_fit"] = np.asarray(table["x_fit"], float) + x0, np.asarray(table["y_fit"], float) + y0
    out["fixed_position"] = fixed
    return out


MIN_NEW_SEPARATION = 1.0
"""FWHM: a source found in the residual closer than this to a known one is not added (two sources closer
than one FWHM are not resolved; such a residual is the known source's PSF mismatch)."""

POOR_FIT = 5.0
"""Reduced chi2 of a known source's fit above which an elongated residual detection next to it is kept: five
times what a fitted star of any flux leaves (the unflagged 13-15 mag sources of the real ZTF quadrant have a
median of 1.25, PSF mismatch included).  Where one source of an unresolved pair was fitted alone, its fit
spreads over both and the companion's residual merges with the fit's own into an elongated blob.  On the real
quadrant the rule adds 70 sources to the residual pass (444 against 374), and the 48 poor fits beside them fall
from a median reduced chi2 of 4.25 to 2.44; of injected pairs of real-star copies 1.5-3 FWHM apart, both
brighter than 19 mag, both members are found in 247 of 250 against 258 of 277 (``bench_injection.py``, seeds
2-5)."""


def residual_sources(exposure, background, model, sources, fwhm: float, options, known=None, known_chi2=None):
    """Sources detected in the residual image (``model`` subtracted, :func:`~psfax.stars.detect.detect_sources` with
    the first detection's threshold, the models' Poisson noise in the noise), kept where their stamp fits in the
    image, they pass the selection's elongation cut (a residual of a PSF mismatch is an arc; but see
    ``known_chi2``), no known source is within :data:`MIN_NEW_SEPARATION` FWHM, and no saturated known source (the
    selection's cut) within half a stamp: its model is not the star (masked core), so what is left around it is not
    a new source.  ``known``: the (N, 2) positions of the ``sources`` that the separation is measured from (default
    their detections; :func:`grouped_photometry` passes their fitted positions).  A pair merged into one detection
    has that detection between its members, within 1 FWHM of the companion for near-equal fluxes: measured from the
    detections, the residual pass added 6 of 30 such companions of equal pairs at 1.5 FWHM (synthetic field of
    ``tests/stars/test_groups.py``), from the host's fit all 30; of injected pairs of real-star copies with both
    members brighter than 19 mag at 1.5-3 FWHM, both were found in 162 of 175 against 192 of 194
    (``benchmarks/bench_injection.py``, seeds 1-3).

    ``known_chi2``: the reduced chi2 of their fits (NaN where none); an elongated detection is kept where the
    known source nearest to it, within the grouping radius (``options.group_radius`` FWHM), has a fit poorer than
    :data:`POOR_FIT` (the saturation rule above still applies).

    A known source that failed the elongation cut is not excluded that way: an unresolved pair 1.5-3 FWHM apart is
    detected as one elongated source, and its fainter member is found only here.  On the real ZTF quadrant, of the
    400 elongated sources 70 gain a companion (2-4 px away, 0.2-0.9 of the host's flux), and their median reduced
    chi2 falls from 8.8 to 1.5; injected pairs of real-star copies (15-19 mag) at 1.5-3 FWHM had both members
    found 23-76 % of the time with the exclusion, 95-100 % without (``benchmarks/bench_injection.py``)."""
    from psfax.stars.detect import detect_sources
    from psfax.stars.stamps import stamp_fits

    found = detect_sources(exposure, background, threshold=options.detect_threshold, model=model)
    x, y = np.asarray(found["x"], float), np.asarray(found["y"], float)
    sel = options.selection
    keep = stamp_fits(x, y, exposure.shape, options.stamp_size)
    point_like = np.asarray(found["a"], float) < sel.max_elongation * np.asarray(found["b"], float)
    if known is None:
        known = np.column_stack([np.asarray(sources["x"], float), np.asarray(sources["y"], float)])
    if len(known) and len(x):
        distance, nearest = cKDTree(known).query(np.column_stack([x, y]))
        keep &= distance >= MIN_NEW_SEPARATION * fwhm
        if known_chi2 is not None:
            poor = np.asarray(known_chi2, float)[nearest] > POOR_FIT  # NaN compares False
            point_like |= poor & (distance < options.group_radius * fwhm)
        saturated = np.asarray(sources["raw_peak"]) >= sel.saturation_margin * exposure.saturate
        if saturated.any():
            dist = cKDTree(known[saturated]).query(np.column_stack([x, y]))[0]
            keep &= dist > options.stamp_size / 2
    return found[keep & point_like]


def write_residual(fit, path) -> None:
    """Write the residual image of an :class:`~psfax.stars.pipeline.ImageFit` (image - sky - every source's
    model [ADU], NaN on bad pixels, float32) to FITS at ``path``, with the image's WCS."""
    from astropy.io import fits

    if fit.photometry_passes is None:
        raise InputError("residual: the photometry was not run (photometry=False), so there is no residual image")
    header = fit.exposure.wcs.to_header() if fit.exposure.wcs is not None else fits.Header()
    header["BUNIT"] = ("adu", "image - sky - PSF models of every source")
    header["PSFAXPAS"] = (len(fit.photometry_passes.added), "photometry passes run")
    fits.PrimaryHDU(fit.photometry_passes.residual, header=header).writeto(path)

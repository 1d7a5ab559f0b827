"""Streaming inference over images far larger than memory.

The image (a FITS cube (4, ny, nx), g, r, i, z) is read lazily, one strip of
``window`` rows at a time (``ImageHDU.section``, so only the strip is in
memory).  It is cut into square windows of ``window`` pixels whose *cores* (the
window minus ``margin`` tiles on each side, the whole window edge at the image
border) tile the image exactly once; the encoder runs on batches of windows and
each tile's probability is taken from the one window whose core holds it
(fold-back without double counting).  Images whose sides are not multiples of
the tile are zero-padded up to the next tile.

Outputs (written atomically): ``<stem>.clusterprob.fits``, the per-tile
probability map with the input's celestial WCS resampled to tiles, and
``<stem>.candidates.parquet``, one row per group of tiles with probability >=
threshold (groups less than ``link`` + 1 empty tiles apart are one candidate),
centred on the peak of the red-sequence member score within its tiles
(:mod:`psfax.clusters.centres`: the member density at the most significant of a few
smoothing lengths, divided by the square root of the kernel's fraction inside the image, read
from the image around each candidate), with that peak (``members``) as its score (kept from the
model's ``candidate_cut``, at least ``MIN_MEMBERS``, when it is a local maximum of the score), the
smoothing length that gives it (``smoothing_px``) and ``prob_sum`` (the expected number of
member tiles) beside it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from psfax.clusters.config import ClusterFieldConfig, config_from_dict, load_config
from psfax.clusters.centres import MIN_MEMBERS, RedSequence, centre_on_members
from psfax.clusters.encoder import EncoderSpec, TileEncoder, cast_model, default_model_stem, load_model
from psfax.device import compute_context, resolve_device, resolve_dtype
from psfax.errors import BadFileError, InputError, MissingFileError
from psfax.io.atomic import atomic_path


@dataclasses.dataclass(frozen=True)
class Window:
    """A window and its core, in tiles: the window starts at tile (row, col) and the
    core covers tiles [core_row0, core_row1) x [core_col0, core_col1) of the image."""

    row: int
    col: int
    core_row0: int
    core_row1: int
    core_col0: int
    core_col1: int


def _core_starts(n_tiles: int, window: int, margin: int) -> list[tuple[int, int, int]]:
    """(window start, core start, core end) along one axis, in tiles; the window stays inside the image."""
    if n_tiles <= window:
        return [(0, 0, n_tiles)]
    step = window - 2 * margin
    return [(min(max(core0 - margin, 0), n_tiles - window), core0, min(core0 + step, n_tiles))
            for core0 in range(0, n_tiles, step)]


def plan_windows(ny_tiles: int, nx_tiles: int, window_tiles: int, margin_tiles: int) -> list[Window]:
    """Windows (row-major) whose cores cover each of the ny_tiles x nx_tiles tiles exactly once."""
    if window_tiles - 2 * margin_tiles < 1:
        raise InputError(f"window of {window_tiles} tiles leaves no core with a margin of {margin_tiles} tiles")
    rows = _core_starts(ny_tiles, window_tiles, margin_tiles)
    cols = _core_starts(nx_tiles, window_tiles, margin_tiles)
    return [Window(r, c, r0, r1, c0, c1) for r, r0, r1 in rows for c, c0, c1 in cols]


@functools.lru_cache(maxsize=4)
def _load(stem: str) -> tuple[TileEncoder, EncoderSpec, dict]:
    return load_model(stem)


def _stem(model) -> str:
    """The path stem of ``None`` (the shipped default) or a model path (with or without its suffix)."""
    if model is None:
        return str(default_model_stem())
    return str(Path(model).with_suffix("") if Path(model).suffix in (".npz", ".json") else model)


def resolve_model(model) -> tuple[TileEncoder, EncoderSpec]:
    """``None`` (shipped default), a path stem, or an already loaded ``(model, spec)``."""
    if model is None or isinstance(model, (str, Path)):
        return _load(_stem(model))[:2]
    return model


def model_prior(model) -> ClusterFieldConfig:
    """The prior a model was trained under (its recorded training config) for ``None`` or a path stem;
    the shipped ``ci`` config for an in-memory ``(model, spec)`` or a model recording none."""
    record = _load(_stem(model))[2] if model is None or isinstance(model, (str, Path)) else {}
    return config_from_dict(record["config"], f"model {_stem(model)}") if "config" in record else load_config("ci")


@eqx.filter_jit
def _probabilities(model: TileEncoder, images):
    return jax.nn.sigmoid(jax.vmap(model)(images))


def predict_fields(model: TileEncoder, images: np.ndarray, *, batch_size: int = 16, dtype=np.float32,
                   device=None) -> np.ndarray:
    """(n, H/tile, W/tile) tile probabilities of (n, 4, H, W) whole fields (no windowing)."""
    dev = resolve_device(device)
    out = []
    with compute_context(dtype, dev):
        net = cast_model(model, dtype)
        for start in range(0, len(images), batch_size):
            idx = np.arange(start, start + batch_size) % len(images)
            probs = _probabilities(net, jnp.asarray(images[idx], dtype))
            out.append(np.asarray(probs)[:min(batch_size, len(images) - start)])
    return np.concatenate(out)


class _StripReader:
    """Reads (4, window, window) blocks of a FITS cube one strip of rows at a time, zero-padded."""

    def __init__(self, section, shape, window: int):
        self.section, self.shape, self.window = section, shape, window
        self.row0, self.strip = None, None

    def block(self, y0: int, x0: int) -> np.ndarray:
        nb, ny, nx = self.shape
        w = self.window
        if y0 != self.row0:
            self.strip = np.zeros((nb, w, nx), np.float32)
            rows = max(0, min(ny, y0 + w) - y0)
            if rows:
                self.strip[:, :rows] = self.section[:, y0:y0 + rows, :]
            self.row0 = y0
        out = np.zeros((nb, w, w), np.float32)
        cols = max(0, min(nx, x0 + w) - x0)
        out[:, :, :cols] = self.strip[:, :, x0:x0 + cols]
        return out


def _open_cube(path: Path, n_bands: int):
    """The open HDU list and the first 3-D image HDU of ``path`` with its (bands, ny, nx) shape."""
    from astropy.io import fits

    if not path.is_file():
        raise MissingFileError(f"{path}: no such file")
    try:
        hdul = fits.open(path, memmap=False, lazy_load_hdus=True)
        cube = next((h for h in hdul if h.is_image and h.header.get("NAXIS") == 3), None)
    except Exception as exc:  # astropy raises OSError, ValueError, TypeError, ... on corrupt files
        raise BadFileError(f"{path}: cannot read as FITS ({exc})") from None
    if cube is None:
        hdul.close()
        raise BadFileError(f"{path}: no 3-D image HDU (expected a (4, ny, nx) g, r, i, z cube)")
    shape = tuple(cube.header[f"NAXIS{i}"] for i in (3, 2, 1))
    if shape[0] != n_bands:
        hdul.close()
        raise BadFileError(f"{path}: image cube has {shape[0]} planes, the model needs {n_bands} (g, r, i, z)")
    return hdul, cube, shape


def predict_image(model: TileEncoder, spec: EncoderSpec, reader: _StripReader, shape, *, window: int, margin: int,
                  batch_size: int, dtype, progress: bool = False) -> np.ndarray:
    """(ny_tiles, nx_tiles) probabilities of a whole image, streamed window by window."""
    from rich.progress import track

    t = spec.tile
    ny_t, nx_t = math.ceil(shape[1] / t), math.ceil(shape[2] / t)
    wt = window // t
    plan = plan_windows(ny_t, nx_t, wt, margin // t)
    probs = np.full((ny_t, nx_t), np.nan, np.float32)
    batches = [plan[i:i + batch_size] for i in range(0, len(plan), batch_size)]

    def read(batch):
        blocks = [reader.block(w.row * t, w.col * t) for w in batch]
        blocks += [blocks[-1]] * (batch_size - len(blocks))  # static batch shape
        return jnp.asarray(np.stack(blocks), dtype)

    pending = read(batches[0])
    for k, batch in enumerate(track(batches, description="windows", disable=not progress)):
        result = _probabilities(model, pending)  # dispatched asynchronously
        if k + 1 < len(batches):
            pending = read(batches[k + 1])  # read the next batch while this one computes
        result = np.asarray(result)
        for w, p in zip(batch, result):
            probs[w.core_row0:w.core_row1, w.core_col0:w.core_col1] = \
                p[w.core_row0 - w.row:w.core_row1 - w.row, w.core_col0 - w.col:w.core_col1 - w.col]
    return probs


def _tile_wcs(header, tile: int):
    from astropy.wcs import WCS

    try:
        wcs = WCS(header).celestial
    except Exception:
        return None
    if not wcs.has_celestial:
        return None
    return wcs.slice((slice(None, None, tile), slice(None, None, tile)))


LINK_TILES = 1
"""Candidates: tiles >= threshold are grouped after a dilation by this many tiles (gaps of up to
2 * LINK_TILES empty tiles are bridged), so the fragments of one cluster make one candidate."""


def find_candidates(probs: np.ndarray, tile: int, threshold: float, wcs=None, *, link: int = LINK_TILES,
                    image=None, red_sequence=None, min_members: float = MIN_MEMBERS):
    """One row per group of tiles with probability >= threshold (pyarrow Table).

    A group is a 4-connected component of the selected tiles dilated by ``link`` tiles (3x3
    structuring element), restricted back to the selected tiles.
    Columns: candidate, x, y (image pixels), n_tiles, prob_sum, prob_max, prob_mean, and ra, dec
    (degrees) when a tile WCS is given.  Without ``image``, x, y is the probability-weighted centroid
    of the group's tiles and ``prob_sum`` the candidate's score.  With ``image`` (the (4, ny, nx)
    g, r, i, z pixels, an array or a FITS ``section``) and ``red_sequence``
    (:class:`psfax.clusters.centres.RedSequence`), x, y is the peak of the red-sequence member score
    within the group's tiles dilated by one tile (:func:`psfax.clusters.centres.centre_on_members`),
    the column ``members`` its value (the score), ``smoothing_px`` its smoothing length, and groups
    under ``min_members``, or whose centre is not a local maximum of the score, are dropped.
    """
    import pyarrow as pa
    from scipy import ndimage

    selected = probs >= threshold
    grown = ndimage.binary_dilation(selected, np.ones((3, 3), bool), iterations=link) if link else selected
    labels, n = ndimage.label(grown)
    labels = np.where(selected, labels, 0)
    ids = np.arange(1, n + 1)
    rows, cols = np.indices(probs.shape)

    def per_group(func, values):
        return np.asarray(func(values, labels, ids) if n else np.zeros(0), float)

    total = per_group(ndimage.sum, probs)
    data = {"candidate": ids.astype(np.int32),
            "x": per_group(ndimage.sum, probs * cols) / total * tile + (tile - 1) / 2,
            "y": per_group(ndimage.sum, probs * rows) / total * tile + (tile - 1) / 2,
            "n_tiles": per_group(ndimage.sum, np.ones_like(probs)).astype(np.int32), "prob_sum": total,
            "prob_max": per_group(ndimage.maximum, probs), "prob_mean": per_group(ndimage.mean, probs)}
    if image is not None:
        around = [ndimage.binary_dilation(labels == k, np.ones((3, 3), bool)) for k in ids]
        centres = np.array([centre_on_members(image, region, tile, red_sequence) for region in around]).reshape(-1, 5)
        data["x"], data["y"], data["members"], data["smoothing_px"], peak = centres.T
        keep = (data["members"] >= min_members) & (peak > 0)
        data = {k: v[keep] for k, v in data.items()}
    if wcs is not None:
        sky = wcs.pixel_to_world((data["x"] - (tile - 1) / 2) / tile, (data["y"] - (tile - 1) / 2) / tile)
        data["ra"], data["dec"] = np.asarray(sky.ra.deg, float), np.asarray(sky.dec.deg, float)
    return pa.table(data)


def infer_file(path, model=None, *, out_dir, batch_size: int = 8, window: int | None = None,
               margin: int | None = None, threshold: float | None = None, device=None, dtype=None,
               progress: bool = False, prior: ClusterFieldConfig | None = None) -> list[Path]:
    """Run the encoder over one FITS cube; write the probability map and candidates; return their paths.

    ``model``: ``None`` (the shipped default), a model path stem, or ``(model, spec)``.
    ``window``: window side in pixels (default: the training field size), a multiple of the tile;
    ``margin``: context kept around each core, pixels (default: one tile);
    ``threshold``: tile probability of the candidates (default: the model's calibrated threshold);
    ``prior``: the config whose red sequence centres the candidates (default: :func:`model_prior`).
    """
    import pyarrow.parquet as pq
    from astropy.io import fits

    from importlib.metadata import version

    path = Path(path)
    net, spec = resolve_model(model)
    t = spec.tile
    window = spec.field_size if window is None else int(window)
    margin = t if margin is None else int(margin)
    if window % t or window <= 0:
        raise InputError(f"window={window} must be a positive multiple of the tile size {t}")
    if margin % t or margin < 0:
        raise InputError(f"margin={margin} must be a non-negative multiple of the tile size {t}")
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size} must be >= 1")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    red_sequence = RedSequence.from_config(model_prior(model) if prior is None else prior)
    hdul, hdu, shape = _open_cube(path, len(spec.bands))
    with hdul, compute_context(dt, dev):
        reader = _StripReader(hdu.section, shape, window)
        probs = predict_image(cast_model(net, dt), spec, reader, shape, window=window, margin=margin,
                              batch_size=batch_size, dtype=dt, progress=progress)
        wcs = _tile_wcs(hdu.header, t)
        candidates = find_candidates(probs, t, spec.threshold if threshold is None else threshold, wcs,
                                     image=hdu.section, red_sequence=red_sequence,
                                     min_members=max(MIN_MEMBERS, spec.candidate_cut))
    header = wcs.to_header() if wcs is not None else fits.Header()
    header["BUNIT"] = ("probability", "P(tile holds a cluster member)")
    header["TILESIZE"] = (t, "pixels per tile side")
    header["WINDOW"], header["MARGIN"] = (window, "inference window, pixels"), (margin, "window margin, pixels")
    header["SRCFILE"] = (path.name, "input image")
    header["PSFAXVER"] = (version("psfax"), "psfax version")
    out_dir = Path(out_dir)
    prob_path = out_dir / f"{path.stem}.clusterprob.fits"
    cand_path = out_dir / f"{path.stem}.candidates.parquet"
    with atomic_path(prob_path) as tmp:
        fits.PrimaryHDU(probs, header=header).writeto(tmp, overwrite=True)
    with atomic_path(cand_path) as tmp:
        pq.write_table(candidates, tmp)
    return [prob_path, cand_path]

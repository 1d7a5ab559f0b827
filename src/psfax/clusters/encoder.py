"""The tile encoder: (4, H, W) image -> (H/tile, W/tile) cluster-membership logits.

1. per-band asinh-quantile normalisation, u_b = asinh((x_b - q50_b) / s_b), where
   q50_b is the median and s_b = (q84_b - q16_b) / 2 the robust noise scale of
   band b over the training images (stored in the model, not trained);
2. log2(tile) stages of [3x3 conv, stride 2] -> GroupNorm -> SiLU, down to one
   cell per tile;
3. ``context_layers`` 3x3 convs at tile resolution (GroupNorm + SiLU), so a
   tile sees its neighbours;
4. a 1x1 conv to one logit per tile.

Checkpoints are an ``.npz`` of the array leaves (``allow_pickle=False``) plus a
JSON file with the architecture, normalisation and training record.
"""

from __future__ import annotations

import dataclasses
import json
import math
from importlib import resources
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from psfax.errors import BadFileError, MissingFileError
from psfax.io.atomic import atomic_path

DEFAULT_MODEL = "default"
"""Stem of the shipped model in ``psfax/clusters/model/`` (``default.npz`` + ``default.json``)."""


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """Architecture of a :class:`TileEncoder` (what is needed to rebuild it)."""

    tile: int
    widths: tuple[int, ...]
    context_layers: int
    groups: int
    field_size: int           # size of the training fields (the default inference window)
    bands: tuple[str, ...] = ("g", "r", "i", "z")
    threshold: float = 0.5    # tile probability called positive: the best-F1 threshold on the val split
    candidate_cut: float = 0.0  # smallest `members` score of a candidate (0: the centring's floor alone):
    #                             the best per-cluster F1 on the val split (psfax.clusters.evaluate)


class ConvBlock(eqx.Module):
    """3x3 conv -> GroupNorm -> SiLU."""

    conv: eqx.nn.Conv2d
    norm: eqx.nn.GroupNorm

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int, key):
        self.conv = eqx.nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, key=key)
        self.norm = eqx.nn.GroupNorm(groups, c_out)

    def __call__(self, x):
        return jax.nn.silu(self.norm(self.conv(x)))


class TileEncoder(eqx.Module):
    """One logit per tile of a (bands, H, W) image; H and W multiples of the tile size."""

    centre: jax.Array          # (bands,) q50 per band
    scale: jax.Array           # (bands,) (q84 - q16) / 2 per band
    down: list[ConvBlock]
    context: list[ConvBlock]
    head: eqx.nn.Conv2d
    tile: int = eqx.field(static=True)

    def __init__(self, spec: EncoderSpec, centre, scale, key):
        n_down = int(math.log2(spec.tile))
        keys = jax.random.split(key, n_down + spec.context_layers + 1)
        chans = (len(spec.bands),) + tuple(spec.widths)
        self.down = [ConvBlock(chans[i], chans[i + 1], 2, spec.groups, keys[i]) for i in range(n_down)]
        w = chans[-1]
        self.context = [ConvBlock(w, w, 1, spec.groups, keys[n_down + i]) for i in range(spec.context_layers)]
        self.head = eqx.nn.Conv2d(w, 1, 1, key=keys[-1])
        self.centre = jnp.asarray(centre, jnp.float32)
        self.scale = jnp.asarray(scale, jnp.float32)
        self.tile = spec.tile

    def __call__(self, image):
        centre = jax.lax.stop_gradient(self.centre).astype(image.dtype)[:, None, None]
        scale = jax.lax.stop_gradient(self.scale).astype(image.dtype)[:, None, None]
        x = jnp.arcsinh((image - centre) / scale)
        for block in self.down + self.context:
            x = block(x)
        return self.head(x)[0]


def new_encoder(spec: EncoderSpec, centre, scale, seed: int) -> TileEncoder:
    """A freshly initialised :class:`TileEncoder` (weights drawn from ``seed``), built by one compiled
    program: constructed eagerly, each layer's initialiser is compiled on its own, about 10 s on a CPU."""
    return _compiled_encoder(spec, jnp.asarray(centre, jnp.float32), jnp.asarray(scale, jnp.float32),
                             jax.random.PRNGKey(seed))


_compiled_encoder = eqx.filter_jit(TileEncoder)


def band_normalisation(images: np.ndarray, n_sample: int = 200_000, seed: int = 0):
    """Per-band (q50, (q84 - q16) / 2) of (n, bands, H, W) images from a random pixel sample."""
    rng = np.random.default_rng(seed)
    n, nb, h, w = images.shape
    idx = rng.integers(0, [n, h, w], size=(n_sample, 3))
    sample = images[idx[:, 0], :, idx[:, 1], idx[:, 2]]  # (n_sample, bands)
    q16, q50, q84 = np.percentile(sample, [16, 50, 84], axis=0)
    return q50, (q84 - q16) / 2.0


def cast_model(model: TileEncoder, dtype) -> TileEncoder:
    """The model with its floating-point arrays in ``dtype``."""
    return jax.tree_util.tree_map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, model)


def save_model(model: TileEncoder, spec: EncoderSpec, path_stem: str | Path, record: dict | None = None) -> list[Path]:
    """Write ``<stem>.npz`` (array leaves, float32) and ``<stem>.json`` (spec + record)."""
    stem = Path(path_stem)
    leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array))
    npz, meta = stem.with_suffix(".npz"), stem.with_suffix(".json")
    with atomic_path(npz) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **{f"leaf_{i:03d}": np.asarray(a, np.float32) for i, a in enumerate(leaves)})
    with atomic_path(meta) as tmp:
        tmp.write_text(json.dumps({"format": FORMAT, "spec": dataclasses.asdict(spec),
                                   "record": record or {}}, indent=2))
    return [npz, meta]


FORMAT = "psfax-cluster-encoder/1"


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def spec_from_description(info, where) -> EncoderSpec:
    """The :class:`EncoderSpec` of a model's JSON description, every field checked (BadFileError naming
    ``where`` and the field otherwise); the description must also hold a ``record`` object."""
    def bad(why):
        return BadFileError(f"model {where}: {why}")

    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise bad(f"not a psfax cluster-encoder description (no \"format\": \"{FORMAT}\")")
    for key in ("spec", "record"):
        if not isinstance(info.get(key), dict):
            raise bad(f"'{key}' is missing or not an object")
    raw = dict(info["spec"])
    names = {f.name for f in dataclasses.fields(EncoderSpec)}
    unknown = sorted(set(raw) - names)
    missing = sorted(n for n in ("tile", "widths", "context_layers", "groups", "field_size", "bands")
                     if n not in raw)
    if unknown or missing:
        raise bad(f"spec has unknown keys {unknown} or lacks {missing}")
    tile, widths, groups = raw["tile"], raw["widths"], raw["groups"]
    if not _positive_int(tile) or tile < 2 or tile & (tile - 1):
        raise bad(f"spec.tile={tile!r} must be a power of two >= 2")
    n_down = int(math.log2(tile))
    if not isinstance(widths, list) or len(widths) != n_down or not all(map(_positive_int, widths)):
        raise bad(f"spec.widths={widths!r} must be {n_down} positive integers (log2 of tile={tile})")
    if not _positive_int(groups) or any(w % groups for w in widths):
        raise bad(f"spec.groups={groups!r} must be a positive integer dividing every width {widths}")
    ctx = raw["context_layers"]
    if not isinstance(ctx, int) or isinstance(ctx, bool) or ctx < 0:
        raise bad(f"spec.context_layers={ctx!r} must be an integer >= 0")
    if not _positive_int(raw["field_size"]) or raw["field_size"] % tile:
        raise bad(f"spec.field_size={raw['field_size']!r} must be a positive multiple of tile={tile}")
    bands = raw["bands"]
    if not isinstance(bands, list) or not bands or not all(isinstance(b, str) for b in bands):
        raise bad(f"spec.bands={bands!r} must be a non-empty list of band names")
    threshold = raw.get("threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise bad(f"spec.threshold={threshold!r} must be a probability in (0, 1)")
    cut = raw.get("candidate_cut", 0.0)
    if isinstance(cut, bool) or not isinstance(cut, (int, float)) or not 0 <= cut < math.inf:
        raise bad(f"spec.candidate_cut={cut!r} must be a finite number >= 0")
    return EncoderSpec(tile=tile, widths=tuple(widths), context_layers=ctx, groups=groups,
                       field_size=raw["field_size"], bands=tuple(bands), threshold=float(threshold),
                       candidate_cut=float(cut))


def load_model(path_stem: str | Path) -> tuple[TileEncoder, EncoderSpec, dict]:
    """Read a model written by :func:`save_model` (``stem``, ``stem.npz`` or ``stem.json``)."""
    stem = Path(path_stem)
    if stem.suffix in (".npz", ".json"):
        stem = stem.with_suffix("")
    npz, meta = stem.with_suffix(".npz"), stem.with_suffix(".json")
    for p in (npz, meta):
        if not p.is_file():
            raise MissingFileError(f"model {p}: no such file")
    try:
        info = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BadFileError(f"model {meta}: not JSON ({exc})") from None
    spec = spec_from_description(info, meta)
    nb = len(spec.bands)
    skeleton = eqx.filter_eval_shape(TileEncoder, spec, np.zeros(nb), np.ones(nb), jax.random.PRNGKey(0))
    params, static = eqx.partition(skeleton, lambda leaf: isinstance(leaf, jax.ShapeDtypeStruct))
    treedef = jax.tree_util.tree_structure(params)
    expected = jax.tree_util.tree_leaves(params)
    try:
        with np.load(npz, allow_pickle=False) as data:
            leaves = [data[f"leaf_{i:03d}"] for i in range(len(expected))]
    except (OSError, ValueError, KeyError) as exc:
        raise BadFileError(f"model {npz}: cannot read weights ({exc})") from None
    for i, (got, want) in enumerate(zip(leaves, expected)):
        if got.shape != want.shape:
            raise BadFileError(f"model {npz}: leaf {i} has shape {got.shape}, the spec needs {want.shape}")
        if not np.isfinite(got).all():
            raise BadFileError(f"model {npz}: leaf {i} holds NaN or infinite weights")
    params = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(leaf) for leaf in leaves])
    return eqx.combine(params, static), spec, info["record"]


def default_model_stem() -> Path:
    """Path stem of the shipped default model."""
    return Path(str(resources.files("psfax.clusters").joinpath("model", DEFAULT_MODEL)))

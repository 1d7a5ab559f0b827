"""Simulated data sets: catalogs -> rendered fields -> tile labels, stored in shards.

A data set directory holds, per split (``train``, ``val``, ``test``) and shard k:

* ``<split>-<k>.images.npy``: float32 (n, 4, size, size) images (g, r, i, z), counts;
* ``<split>-<k>.labels.npy``: uint8 (n, size/tile, size/tile) tile labels;
* ``<split>-<k>.catalog.parquet``: every source (``field`` = index in the split);
* ``<split>-<k>.fields.parquet``: the field-level truth;

plus ``config.yaml``, the configuration that made it.  ``.npy`` files are
memory-mapped on reading.  A tile is positive when the centroid of at least one
cluster member falls in it: pixel j spans [j - 0.5, j + 0.5), so tile
t = floor((x + 0.5) / tile).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from psfax.clusters.config import ClusterFieldConfig, config_from_dict
from psfax.clusters.prior import MEMBER, Catalog, sample_catalog
from psfax.clusters.render import add_noise, render_field_jit, sources_from_catalog
from psfax.device import compute_context, resolve_device
from psfax.errors import BadFileError, MissingFileError
from psfax.io.atomic import atomic_path

SPLITS = {"train": 0, "val": 1, "test": 2}
"""Split name -> index mixed into the random seed (``heldout`` sets pass their own)."""


@dataclasses.dataclass(frozen=True)
class FieldSet:
    """Images (n, 4, size, size) float32 and tile labels (n, T, T) uint8 of a split."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def tile_labels(cat: Catalog, size: int, tile: int) -> np.ndarray:
    """(size/tile, size/tile) uint8: 1 where a cluster member's centroid lies in the tile."""
    n_tiles = size // tile
    labels = np.zeros((n_tiles, n_tiles), np.uint8)
    member = cat.kind == MEMBER
    inside = member & (cat.x >= -0.5) & (cat.x < size - 0.5) & (cat.y >= -0.5) & (cat.y < size - 0.5)
    cols = np.floor((cat.x[inside] + 0.5) / tile).astype(int)
    rows = np.floor((cat.y[inside] + 0.5) / tile).astype(int)
    labels[rows, cols] = 1
    return labels


def field_rng(cfg: ClusterFieldConfig, split_index: int, field_index: int) -> np.random.Generator:
    """The generator of one field: seeded by (config seed, split, field), so fields are reproducible."""
    return np.random.default_rng([cfg.seed, split_index, field_index])


def simulate_field(cfg: ClusterFieldConfig, rng: np.random.Generator) -> tuple[Catalog, np.ndarray, np.ndarray]:
    """One field: its catalog, float32 (4, size, size) noisy image and tile labels.

    Call inside a ``compute_context`` (the rendering dtype is the context's).
    """
    f = cfg.field
    cat = sample_catalog(cfg, rng)
    dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
    src = sources_from_catalog(cat, f.pixel_scale, dtype)
    clean = render_field_jit(src, np.asarray(cfg.psf.fwhm, dtype), size=f.size, stamp=f.stamp, margin=f.margin)
    key = jax.random.PRNGKey(int(rng.integers(2**31)))
    image = add_noise(key, clean, cfg.noise.sky_sigma, cfg.noise.gain)
    return cat, np.asarray(image, np.float32), tile_labels(cat, f.size, f.tile)


def _catalog_table(cats: list[Catalog]) -> pa.Table:
    cols: dict[str, list] = {k: [] for k in ("field", "x", "y", "hlr", "g1", "g2", "kind")}
    mags = {b: [] for b in "griz"}
    for i, cat in enumerate(cats):
        cols["field"].append(np.full(len(cat), i, np.int32))
        for k in ("x", "y", "hlr", "g1", "g2", "kind"):
            cols[k].append(getattr(cat, k))
        for j, b in enumerate("griz"):
            mags[b].append(cat.mag[:, j])
    data = {k: np.concatenate(v) for k, v in cols.items()}
    data.update({f"mag_{b}": np.concatenate(v) for b, v in mags.items()})
    return pa.table(data)


def _fields_table(cats: list[Catalog]) -> pa.Table:
    rows = [dataclasses.asdict(c.truth) for c in cats]
    return pa.table({k: [r[k] for r in rows] for k in rows[0]})


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def _save_parquet(path: Path, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def simulate_split(cfg: ClusterFieldConfig, out_dir: str | Path, split: str, n_fields: int,
                   *, split_index: int | None = None, device=None, progress: bool = True) -> list[Path]:
    """Simulate ``n_fields`` fields of ``split`` into shards under ``out_dir``; return the image shard paths."""
    from rich.progress import track

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_config(cfg, out_dir / "config.yaml")
    index = SPLITS[split] if split_index is None else split_index
    dev = resolve_device(device)
    paths = []
    shard = cfg.dataset.shard_size
    with compute_context(np.float64 if dev.platform == "cpu" else np.float32, dev):
        for k, start in enumerate(range(0, n_fields, shard)):
            ids = range(start, min(start + shard, n_fields))
            fields = [simulate_field(cfg, field_rng(cfg, index, i))
                      for i in track(ids, description=f"{split} shard {k}", disable=not progress)]
            stem = out_dir / f"{split}-{k:03d}"
            _save_npy(stem.with_suffix(".images.npy"), np.stack([f[1] for f in fields]))
            _save_npy(stem.with_suffix(".labels.npy"), np.stack([f[2] for f in fields]))
            _save_parquet(stem.with_suffix(".catalog.parquet"), _catalog_table([f[0] for f in fields]))
            _save_parquet(stem.with_suffix(".fields.parquet"), _fields_table([f[0] for f in fields]))
            paths.append(stem.with_suffix(".images.npy"))
    return paths


def simulate_dataset(cfg: ClusterFieldConfig, out_dir: str | Path, *, device=None, progress: bool = True) -> None:
    """Simulate the train, val and test splits sized by ``cfg.dataset``."""
    for split, n in (("train", cfg.dataset.n_train), ("val", cfg.dataset.n_val), ("test", cfg.dataset.n_test)):
        simulate_split(cfg, out_dir, split, n, device=device, progress=progress)


def _write_config(cfg: ClusterFieldConfig, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_dataset_config(data_dir: str | Path) -> ClusterFieldConfig:
    """The configuration stored with a simulated data set."""
    path = Path(data_dir) / "config.yaml"
    if not path.is_file():
        raise MissingFileError(f"{data_dir}: no config.yaml, not a data set made by `psfax clusters simulate`")
    return config_from_dict(yaml.safe_load(path.read_text()), str(path))


def load_split(data_dir: str | Path, split: str) -> FieldSet:
    """All shards of a split, concatenated in memory."""
    data_dir = Path(data_dir)
    shards = sorted(data_dir.glob(f"{split}-*.images.npy"))
    if not shards:
        raise MissingFileError(f"{data_dir}: no '{split}' shards ({split}-*.images.npy)")
    images, labels = [], []
    for path in shards:
        label_path = Path(str(path).replace(".images.npy", ".labels.npy"))
        try:
            img = np.load(path, mmap_mode="r", allow_pickle=False)
            lab = np.load(label_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BadFileError(f"{path}: cannot read shard ({exc})") from None
        if img.ndim != 4 or lab.ndim != 3 or lab.shape[0] != img.shape[0] or img.shape[2] % lab.shape[1]:
            raise BadFileError(f"{path}: images {img.shape} and labels {lab.shape} do not match")
        images.append(np.asarray(img, np.float32))
        labels.append(lab)
    return FieldSet(np.concatenate(images), np.concatenate(labels))


def load_catalogs(data_dir: str | Path, split: str) -> pa.Table:
    """All source catalogs of a split; ``field`` renumbered across shards."""
    tables, offset = [], 0
    for path in sorted(Path(data_dir).glob(f"{split}-*.catalog.parquet")):
        t = pq.read_table(path)
        n = int(np.load(str(path).replace(".catalog.parquet", ".labels.npy"), mmap_mode="r").shape[0])
        tables.append(t.set_column(0, "field", pa.array(t["field"].to_numpy() + offset)))
        offset += n
    return pa.concat_tables(tables)

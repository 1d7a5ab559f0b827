"""Configuration of the cluster-field simulation and of the encoder training.

A configuration is a YAML file (read with ``yaml.safe_load``) whose sections map
onto the frozen dataclasses below.  Two are shipped: ``ci`` (256 x 256 fields,
32-px tiles) and ``faithful`` (2560 x 2560 fields, 256-px tiles, the BLISS
size).  ``load_config("ci")`` reads a shipped one, ``load_config(path)`` any
other.  Unknown or missing keys raise :class:`psfax.errors.InputError` naming
the file and the key.
"""

from __future__ import annotations

import dataclasses
import math
from importlib import resources
from pathlib import Path

import yaml

from psfax.errors import InputError, MissingFileError

SHIPPED = ("ci", "faithful")


@dataclasses.dataclass(frozen=True)
class FieldConfig:
    size: int
    tile: int
    margin: int
    pixel_scale: float
    zero_point: float
    bands: tuple[str, ...]
    stamp: int


@dataclasses.dataclass(frozen=True)
class PsfConfig:
    fwhm: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    sky_sigma: tuple[float, ...]
    gain: float


@dataclasses.dataclass(frozen=True)
class RangeConfig:
    min: float
    max: float
    slope: float = 0.0


@dataclasses.dataclass(frozen=True)
class RedSequenceConfig:
    z: tuple[float, ...]
    g_r: tuple[float, ...]
    r_i: tuple[float, ...]
    i_z: tuple[float, ...]
    scatter: float


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    fraction: float
    richness: RangeConfig
    redshift: RangeConfig
    radius_scale: float
    profile: str
    concentration: float
    lum_min: float
    lum_max: float
    schechter_alpha: float
    red_sequence: RedSequenceConfig


@dataclasses.dataclass(frozen=True)
class BackgroundConfig:
    density: float
    mag_min: float
    mag_max: float
    slope: float
    colour_mean: tuple[float, ...]
    colour_sigma: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class GalaxyConfig:
    hlr_at_21: float
    hlr_mag_slope: float
    hlr_scatter_dex: float
    hlr_max: float
    ellipticity_sigma: float


@dataclasses.dataclass(frozen=True)
class StarConfig:
    fraction: float
    mag_min: float
    mag_max: float
    slope: float


@dataclasses.dataclass(frozen=True)
class ShearConfig:
    sigma: float


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    n_train: int
    n_val: int
    n_test: int
    shard_size: int


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    dtype: str
    widths: tuple[int, ...]
    context_layers: int
    groups: int
    batch_size: int
    learning_rate: float
    max_epochs: int
    patience: int
    pos_weight: float
    augment: bool


@dataclasses.dataclass(frozen=True)
class ClusterFieldConfig:
    """Everything needed to simulate a data set and train an encoder on it."""

    name: str
    seed: int
    field: FieldConfig
    psf: PsfConfig
    noise: NoiseConfig
    clusters: ClusterConfig
    background: BackgroundConfig
    galaxies: GalaxyConfig
    stars: StarConfig
    shear: ShearConfig
    dataset: DatasetConfig
    train: TrainConfig

    @property
    def n_tiles(self) -> int:
        """Tiles per field side."""
        return self.field.size // self.field.tile

    def to_dict(self) -> dict:
        """Plain nested dict (YAML/JSON serialisable)."""
        return _to_plain(dataclasses.asdict(self))


def _to_plain(value):
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


def _coerce(value, annotation: str, where: str):
    """Convert ``value`` to the type named by a dataclass annotation string."""
    try:
        if annotation.startswith("tuple"):
            item = annotation[len("tuple["):].split(",")[0]
            return tuple(_coerce(v, item, where) for v in value)
        if annotation == "int":
            if isinstance(value, bool) or int(value) != value:
                raise ValueError
            return int(value)
        if annotation == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if annotation == "bool":
            if not isinstance(value, bool):
                raise ValueError
            return value
        if annotation == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        raise InputError(f"{where}: expected {annotation}, got {value!r}") from None
    return _build(_CLASSES[annotation], value, where)


def _build(cls, data, where: str):
    """Instantiate dataclass ``cls`` from a dict, checking keys and types."""
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}")
    kwargs = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is dataclasses.MISSING:
                raise InputError(f"{where}: missing key {name!r}")
            continue
        kwargs[name] = _coerce(data[name], field.type, f"{where}.{name}")
    return cls(**kwargs)


_CLASSES = {cls.__name__: cls for cls in (
    FieldConfig, PsfConfig, NoiseConfig, RangeConfig, RedSequenceConfig, ClusterConfig,
    BackgroundConfig, GalaxyConfig, StarConfig, ShearConfig, DatasetConfig, TrainConfig)}


def _validate(cfg: ClusterFieldConfig, where: str) -> ClusterFieldConfig:
    f = cfg.field
    nb = len(f.bands)
    if f.size % f.tile:
        raise InputError(f"{where}: field.size={f.size} is not a multiple of field.tile={f.tile}")
    if f.tile & (f.tile - 1) or f.tile < 4:
        raise InputError(f"{where}: field.tile={f.tile} must be a power of two >= 4")
    if f.stamp % 2:
        raise InputError(f"{where}: field.stamp={f.stamp} must be even")
    for key, values in (("psf.fwhm", cfg.psf.fwhm), ("noise.sky_sigma", cfg.noise.sky_sigma)):
        if len(values) != nb:
            raise InputError(f"{where}: {key} has {len(values)} values for {nb} bands")
    if f.bands != ("g", "r", "i", "z"):
        raise InputError(f"{where}: field.bands must be [g, r, i, z], got {list(f.bands)}")
    if not 0.0 <= cfg.clusters.fraction <= 1.0:
        raise InputError(f"{where}: clusters.fraction={cfg.clusters.fraction} is not in [0, 1]")
    if cfg.clusters.profile not in ("nfw", "uniform"):
        raise InputError(f"{where}: clusters.profile must be 'nfw' or 'uniform', got {cfg.clusters.profile!r}")
    n_down = int(math.log2(f.tile))
    if len(cfg.train.widths) != n_down:
        raise InputError(f"{where}: train.widths needs log2(tile) = {n_down} entries, got {len(cfg.train.widths)}")
    if any(w % cfg.train.groups for w in cfg.train.widths):
        raise InputError(f"{where}: every train.widths entry must be a multiple of train.groups={cfg.train.groups}")
    return cfg


def config_from_dict(data: dict, where: str = "config") -> ClusterFieldConfig:
    """Build and validate a configuration from a nested dict."""
    return _validate(_build(ClusterFieldConfig, data, where), where)


def load_config(name_or_path: str | Path) -> ClusterFieldConfig:
    """Read a shipped configuration (``"ci"``, ``"faithful"``) or a YAML file."""
    if str(name_or_path) in SHIPPED:
        text = resources.files("psfax.clusters").joinpath(f"{name_or_path}.yaml").read_text()
        where = f"{name_or_path}.yaml"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise MissingFileError(f"config {path}: no such file (shipped configs: {', '.join(SHIPPED)})")
        text, where = path.read_text(), str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{where}: not valid YAML ({exc})") from None
    return config_from_dict(data, where)

"""Configuration loading, prior, tile labels and shards."""

import numpy as np
import pytest
import yaml

from psfax.clusters.config import load_config
from psfax.clusters.dataset import field_rng, load_catalogs, load_split, simulate_field, simulate_split, tile_labels
from psfax.clusters.prior import GALAXY, MEMBER, STAR, Catalog, FieldTruth, mstar_i, sample_catalog
from psfax.device import compute_context, resolve_device
from psfax.errors import InputError, MissingFileError


def test_shipped_configs_load():
    ci, faithful = load_config("ci"), load_config("faithful")
    assert (ci.field.size, ci.field.tile, ci.n_tiles) == (256, 32, 8)
    assert (faithful.field.size, faithful.field.tile, faithful.n_tiles) == (2560, 256, 10)


def _write(tmp_path, mutate):
    data = load_config("ci").to_dict()
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(InputError, match=r"bad.yaml.field: unknown key\(s\) colour"):
        load_config(_write(tmp_path, lambda d: d["field"].update(colour=1)))
    with pytest.raises(InputError, match=r"bad.yaml.field.size: expected int, got 'big'"):
        load_config(_write(tmp_path, lambda d: d["field"].update(size="big")))
    with pytest.raises(InputError, match=r"field.size=250 is not a multiple of field.tile=32"):
        load_config(_write(tmp_path, lambda d: d["field"].update(size=250)))
    with pytest.raises(InputError, match=r"train.widths needs log2\(tile\) = 5 entries, got 2"):
        load_config(_write(tmp_path, lambda d: d["train"].update(widths=[8, 8])))
    with pytest.raises(MissingFileError, match=r"config nope.yaml: no such file"):
        load_config("nope.yaml")


def _catalog(x, y, kind):
    n = len(x)
    truth = FieldTruth(True, 0.3, 20, 0.0, 0.0, 100.0, 0.0, 0.0)
    return Catalog(np.asarray(x, float), np.asarray(y, float), np.zeros((n, 4)), np.zeros((n, 4)),
                   np.zeros(n), np.zeros(n), np.zeros(n), np.asarray(kind, np.int8), truth)


def test_tile_labels_follow_the_pixel_convention():
    # pixel j spans [j - 0.5, j + 0.5): x = 31.49 is in tile 0, x = 31.5 in tile 1
    cat = _catalog(x=[31.49, 31.5, 10.0, -0.6, 100.0, 255.4],
                   y=[0.0, 0.0, 200.0, 5.0, 100.0, 255.4],
                   kind=[MEMBER, MEMBER, STAR, MEMBER, GALAXY, MEMBER])
    labels = tile_labels(cat, 256, 32)
    expected = np.zeros((8, 8), np.uint8)
    expected[0, 0] = expected[0, 1] = expected[7, 7] = 1  # star, galaxy and the member off the field give none
    np.testing.assert_array_equal(labels, expected)


def test_prior_statistics():
    cfg = load_config("ci")
    cats = [sample_catalog(cfg, np.random.default_rng([1, i])) for i in range(400)]
    frac = np.mean([c.truth.is_cluster for c in cats])
    # binomial(400, 0.5): sigma = 0.025; allow 4 sigma
    assert abs(frac - cfg.clusters.fraction) < 0.1
    stars = sum((c.kind == STAR).sum() for c in cats)
    others = sum((c.kind != MEMBER).sum() for c in cats)
    # ~25000 non-member sources: the star fraction is known to +-0.3% (1 sigma); allow 1%
    assert stars / others == pytest.approx(cfg.stars.fraction, abs=0.01)
    members = np.concatenate([c.mag[c.kind == MEMBER] - 0 for c in cats])
    z = np.concatenate([np.full((c.kind == MEMBER).sum(), c.truth.redshift) for c in cats])
    # members are brighter than 0.2 L*: i <= m*(z) + 2.5 log10(5) = m* + 1.75 (exactly, by construction)
    assert np.all(members[:, 2] <= mstar_i(z) + 1.7475 + 1e-9)
    # red-sequence scatter 0.05 in g - r around the table: the sample std must be 0.05 to 5%
    cfg_rs = cfg.clusters.red_sequence
    resid = (members[:, 0] - members[:, 1]) - np.interp(z, cfg_rs.z, cfg_rs.g_r)
    assert resid.std() == pytest.approx(0.05, rel=0.05)


def test_simulation_is_seeded_and_shards_round_trip(tmp_path):
    cfg = load_config("ci")
    with compute_context(np.float64, resolve_device("cpu")):
        a = simulate_field(cfg, field_rng(cfg, 0, 5))
        b = simulate_field(cfg, field_rng(cfg, 0, 5))
    np.testing.assert_array_equal(a[1], b[1])  # same seed, same image, bit for bit
    simulate_split(cfg, tmp_path, "val", 3, progress=False)
    data = load_split(tmp_path, "val")
    assert data.images.shape == (3, 4, 256, 256) and data.labels.shape == (3, 8, 8)
    cat = load_catalogs(tmp_path, "val")
    for i in range(3):
        rows = cat.filter(cat["field"].to_numpy() == i)
        kind, x, y = (rows[k].to_numpy() for k in ("kind", "x", "y"))
        recon = tile_labels(_catalog(x, y, kind), 256, 32)
        np.testing.assert_array_equal(recon, data.labels[i])  # labels agree with the stored catalog
    # the stored images are the simulated ones (float32)
    with compute_context(np.float64, resolve_device("cpu")):
        again = simulate_field(cfg, field_rng(cfg, 1, 2))
    np.testing.assert_array_equal(data.images[2], again[1])

"""Streaming inference: window plan, fold-back, FITS/WCS output, bad files."""

import equinox as eqx
import jax
import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from psfax.clusters.encoder import EncoderSpec, TileEncoder
from psfax.clusters.infer import _StripReader, find_candidates, infer_file, plan_windows, predict_fields, predict_image
from psfax.errors import BadFileError, InputError

SPEC = EncoderSpec(tile=32, widths=(8, 8, 8, 8, 8), context_layers=1, groups=4, field_size=256)


@pytest.mark.parametrize("shape", [(8, 8, 8, 1), (40, 33, 8, 1), (5, 100, 8, 2), (313, 17, 8, 3), (3, 3, 8, 1)])
def test_window_cores_cover_every_tile_exactly_once(shape):
    ny, nx, w, m = shape
    count = np.zeros((ny, nx), int)
    for win in plan_windows(ny, nx, w, m):
        # each core lies inside its window, and the window inside the image (when the image is larger)
        assert win.row <= win.core_row0 < win.core_row1 <= win.row + w
        assert win.col <= win.core_col0 < win.core_col1 <= win.col + w
        assert win.row + w <= max(ny, w) and win.col + w <= max(nx, w)
        count[win.core_row0:win.core_row1, win.core_col0:win.core_col1] += 1
    assert count.min() == 1 and count.max() == 1


def test_plan_rejects_a_window_without_core():
    with pytest.raises(InputError, match="window of 4 tiles leaves no core with a margin of 2 tiles"):
        plan_windows(10, 10, 4, 2)


class TileMean(eqx.Module):
    """Stand-in model without context: logit = mean of band 0 over the tile."""

    def __call__(self, image):
        n = image.shape[1] // 32
        return image[0].reshape(n, 32, n, 32).mean(axis=(1, 3))


def test_fold_back_puts_every_tile_where_it_belongs():
    rng = np.random.default_rng(1)
    ny, nx = 700, 530  # not multiples of the tile: the last tiles are zero-padded
    cube = rng.normal(size=(4, ny, nx)).astype(np.float32)
    with jax.enable_x64(False):
        probs = predict_image(TileMean(), SPEC, _StripReader(cube, cube.shape, 256), cube.shape,
                              window=256, margin=64, batch_size=3, dtype=np.float32)
    padded = np.zeros((22 * 32, 17 * 32), np.float32)
    padded[:ny, :nx] = cube[0]
    expected = 1 / (1 + np.exp(-padded.reshape(22, 32, 17, 32).mean(axis=(1, 3))))
    # float32 means of 1024 numbers: agreement to 1e-6 (the same arithmetic on the same pixels)
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def _cube_file(path, shape=(4, 300, 420), with_wcs=True, members=None):
    """A noise cube (sigma 10) in a FITS file; ``members``: a function painting sources onto it."""
    rng = np.random.default_rng(2)
    header = fits.Header()
    if with_wcs:
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [150.0, 2.0]
        w.wcs.crpix = [210.5, 150.5]
        w.wcs.cdelt = [-0.263 / 3600, 0.263 / 3600]
        header.update(w.to_header())
    cube = rng.normal(0, 10, shape)
    if members is not None:
        members(cube)
    fits.PrimaryHDU(cube.astype(np.float32), header=header).writeto(path)
    return path


def test_infer_file_writes_map_with_tile_wcs_and_candidates(tmp_path, paint):
    model = TileEncoder(SPEC, np.zeros(4), np.full(4, 10.0), jax.random.PRNGKey(0))
    phi = np.arange(10) * np.pi / 5  # ten red-sequence galaxies 15 px around pixel (300, 80)
    src = _cube_file(tmp_path / "field.fits",
                     members=lambda cube: paint(cube, np.stack([300 + 15 * np.cos(phi), 80 + 15 * np.sin(phi)], 1)))
    prob_path, cand_path = infer_file(src, (model, SPEC), out_dir=tmp_path / "out", batch_size=2, threshold=0.0)
    with fits.open(prob_path) as hdul:
        probs, header = hdul[0].data, hdul[0].header
    assert probs.shape == (10, 14)  # ceil(300/32), ceil(420/32)
    assert np.all((probs >= 0) & (probs <= 1))
    tile_wcs, image_wcs = WCS(header), WCS(fits.getheader(src)).celestial
    # tile (ty, tx) is centred on image pixel (32 tx + 15.5, 32 ty + 15.5)
    ty, tx = np.array([0, 3, 9]), np.array([0, 7, 13])
    a = tile_wcs.pixel_to_world(tx, ty)
    b = image_wcs.pixel_to_world(32 * tx + 15.5, 32 * ty + 15.5)
    # same tangent projection evaluated at the same point: agreement to 1e-6 arcsec
    assert np.all(a.separation(b).arcsec < 1e-6)
    cand = pq.read_table(cand_path).to_pandas()
    # threshold 0: every tile is one 4-connected candidate, centred on its red members (the member density of
    # a ring peaks at its centre, within a pixel or two of the rounding of the members' positions)
    assert len(cand) == 1 and cand["n_tiles"][0] == 140
    assert abs(cand["x"][0] - 300) <= 2 and abs(cand["y"][0] - 80) <= 2 and cand["members"][0] > 8
    centre = tile_wcs.pixel_to_world((cand["x"][0] - 15.5) / 32, (cand["y"][0] - 15.5) / 32)
    assert abs(centre.ra.deg - cand["ra"][0]) < 1e-9 and abs(centre.dec.deg - cand["dec"][0]) < 1e-9
    assert header["TILESIZE"] == 32 and header["SRCFILE"] == "field.fits"


def test_single_window_equals_whole_field_prediction(tmp_path):
    model = TileEncoder(SPEC, np.zeros(4), np.full(4, 10.0), jax.random.PRNGKey(1))
    src = _cube_file(tmp_path / "f.fits", shape=(4, 256, 256), with_wcs=False)
    (prob_path, _) = infer_file(src, (model, SPEC), out_dir=tmp_path, dtype="float32")
    direct = predict_fields(model, fits.getdata(src)[None], dtype=np.float32)[0]
    # the same float32 network on the same pixels: differences are round-off only
    np.testing.assert_allclose(fits.getdata(prob_path), direct, atol=1e-6)


def test_find_candidates_groups_connected_tiles():
    probs = np.zeros((8, 8))
    probs[1, 1:3] = [0.9, 0.7]
    probs[4, 4] = 0.6   # 2 empty rows and 1 empty column from the first group: linked by the 1-tile dilation
    probs[5, 0] = 0.8   # 3 empty rows or columns from either: its own candidate
    table = find_candidates(probs, 32, 0.5).to_pandas()
    assert sorted(table["n_tiles"]) == [1, 3]
    merged = table[table["n_tiles"] == 3].iloc[0]
    # probability-weighted centroid of tiles (1,1), (1,2), (4,4): tile x = (0.9 + 1.4 + 2.4) / 2.2
    assert merged["x"] == pytest.approx((0.9 * 1 + 0.7 * 2 + 0.6 * 4) / 2.2 * 32 + 15.5, abs=1e-9)
    assert merged["prob_sum"] == pytest.approx(2.2, abs=1e-12)
    assert table[table["n_tiles"] == 1]["prob_max"].iloc[0] == pytest.approx(0.8, abs=1e-12)
    # without linking, the 4-connected groups stay apart
    assert sorted(find_candidates(probs, 32, 0.5, link=0).to_pandas()["n_tiles"]) == [1, 1, 2]


def test_bad_files_raise_naming_the_file(tmp_path):
    model = (TileEncoder(SPEC, np.zeros(4), np.ones(4), jax.random.PRNGKey(0)), SPEC)
    text = tmp_path / "notes.fits"
    text.write_text("not a fits file")
    with pytest.raises(BadFileError, match=r"notes.fits: cannot read as FITS"):
        infer_file(text, model, out_dir=tmp_path)
    three = _cube_file(tmp_path / "three.fits", shape=(3, 64, 64))
    with pytest.raises(BadFileError, match=r"three.fits: image cube has 3 planes, the model needs 4"):
        infer_file(three, model, out_dir=tmp_path)
    flat = tmp_path / "flat.fits"
    fits.PrimaryHDU(np.zeros((64, 64), np.float32)).writeto(flat)
    with pytest.raises(BadFileError, match=r"flat.fits: no 3-D image HDU"):
        infer_file(flat, model, out_dir=tmp_path)
    with pytest.raises(InputError, match=r"window=100 must be a positive multiple of the tile size 32"):
        infer_file(three, model, out_dir=tmp_path, window=100)

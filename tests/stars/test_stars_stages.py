"""Background, detection, selection cuts, stamps and catalog matching, stage by stage."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from scipy.spatial import cKDTree

from psfax.errors import InputError, MissingFileError, NoStarsError
from psfax.stars.catalog import match_catalog, read_reference_catalog
from psfax.stars.detect import detect_sources, measure_background
from psfax.stars.exposure import read_exposure
from psfax.stars.select import SelectionOptions, select_psf_stars
from psfax.stars.stamps import cut_stamps, noise_variance
from stars_synthetic import GAIN, READ_NOISE, SKY, render_field


@pytest.fixture(scope="module")
def field():
    return render_field(shape=(512, 512), n_stars=80, seed=11)


@pytest.fixture(scope="module")
def staged(field):
    exp = read_exposure(field.image, header=field.header)
    background = measure_background(exp)
    return exp, background, detect_sources(exp, background)


def test_background_matches_sky(staged):
    _, background, _ = staged
    # 512^2 px of sky, mesh medians: the mean level is known to << 1 ADU; 0.5 ADU is
    # ~0.1 sky sigma, generous for sep's mode estimator on a field with stars
    assert np.mean(background.level) == pytest.approx(SKY, abs=0.5)
    # rms of a Poisson+read-noise sky: sqrt(sky/gain + (rn/gain)^2) = 5.22 ADU; 3 %
    assert background.rms == pytest.approx(np.sqrt(SKY / GAIN + (READ_NOISE / GAIN) ** 2), rel=0.03)


def test_detection_finds_every_star_at_its_position(field, staged):
    _, _, det = staged
    dist, _ = cKDTree(np.column_stack([det["x"], det["y"]])).query(np.column_stack([field.x, field.y]))
    assert np.all(dist < 0.5)  # every star found; a windowed centroid is good to << 0.5 px at S/N > 20
    assert len(det) == len(field.x)  # no spurious detection at 5 sigma on 2.6e5 px of pure noise
    # aperture magnitude of the brightest: r = 5 px holds ~90-97% of a beta 2.5 Moffat
    # of FWHM 1.3-1.9 px, i.e. 0.03-0.11 mag fainter than the truth
    bright = np.argsort(field.flux)[-10:]
    _, idx = cKDTree(np.column_stack([det["x"], det["y"]])).query(
        np.column_stack([field.x[bright], field.y[bright]]))
    true_mag = 26.0 - 2.5 * np.log10(field.flux[bright])
    offset = np.asarray(det["mag_aper"][idx]) - true_mag
    assert np.all((offset > 0.0) & (offset < 0.15))


def _sources(**columns) -> Table:
    n = len(columns["x"])
    base = {"a": np.ones(n), "b": np.ones(n) * 0.95, "raw_peak": np.full(n, 1000.0),
            "mag_aper": np.full(n, 16.0), "sep_flag": np.zeros(n, np.int32)}
    base.update(columns)
    return Table(base)


def test_each_cut_removes_its_source(quiet_exposure):
    # 0 good; 1 at the edge; 2 on a bad pixel; 3 near saturation; 4 and 5 a close pair;
    # 6 too bright; 7 elongated; 8 deblended; 9 a cosmic ray (too small); 10, 11 good
    x = np.array([50, 5, 80, 110, 140, 145, 170, 50, 80, 110, 140, 170.0])
    y = np.array([50, 50, 50, 50, 50, 50, 50, 150, 150, 150, 150, 150.0])
    raw_peak = np.full(12, 1000.0)
    raw_peak[3] = 0.85 * 50000
    mag = np.full(12, 16.0)
    mag[6] = 13.0
    a = np.ones(12)
    a[7] = 2.0
    a[9] = 0.4
    b = np.full(12, 0.95)
    b[9] = 0.4
    flag = np.zeros(12, np.int32)
    flag[8] = 1
    src = _sources(x=x, y=y, raw_peak=raw_peak, mag_aper=mag, a=a, b=b, sep_flag=flag)
    sel = select_psf_stars(src, quiet_exposure, SelectionOptions(isolation=10.0))
    assert sel.counts == {"detected": 12, "edge": 11, "mask": 10, "saturation": 9,
                          "isolation": 7, "magnitude": 6, "shape": 3}
    assert sel.index.tolist() == [0, 10, 11]


def test_no_star_left_names_the_cut(quiet_exposure):
    src = _sources(x=np.array([50.0]), y=np.array([50.0]), mag_aper=np.array([12.0]))
    with pytest.raises(NoStarsError, match=r"no star passes the selection cuts .*'magnitude' cut"):
        select_psf_stars(src, quiet_exposure)


def test_bad_selection_option():
    with pytest.raises(InputError, match=r"saturation_margin must be in \(0, 1\], got 1.5"):
        SelectionOptions(saturation_margin=1.5)


@pytest.fixture
def quiet_exposure():
    from astropy.io import fits

    data = np.full((200, 200), 100.0, np.float32)
    mask = np.zeros((200, 200), np.int16)
    mask[51, 81] = 1
    header = fits.Header({"GAIN": 2.0, "READNOI": 4.0, "SATURATE": 50000.0, "MAGZP": 26.0,
                          "MAGZPUNC": 0.0, "SEEING": 2.0, "PIXSCALE": 1.0})
    return read_exposure(data, mask, header=header)


def test_stamps_keep_subpixel_centre_and_noise(staged):
    exp, background, det = staged
    stamps = cut_stamps(exp, background, det["x"][:5], det["y"][:5], size=15)
    # corner + stamp-pixel centre gives back the image position exactly (integer arithmetic)
    assert np.allclose(stamps.x0 + stamps.x_init, det["x"][:5], atol=1e-12)
    assert np.allclose(stamps.y0 + stamps.y_init, det["y"][:5], atol=1e-12)
    assert np.all(np.abs(stamps.x_init - 7) <= 0.5) and np.all(np.abs(stamps.y_init - 7) <= 0.5)
    i = 2
    np.testing.assert_array_equal(stamps.data[i], exp.data[stamps.y0[i]:stamps.y0[i] + 15,
                                                            stamps.x0[i]:stamps.x0[i] + 15])


def test_noise_variance_formula():
    # 600 ADU of star over 150 ADU of sky of rms 5 ADU, gain 6: 100 + 25 ADU^2
    assert noise_variance(np.array([750.0]), np.array([150.0]), np.array([5.0]), 6.0)[0] \
        == pytest.approx(125.0, rel=1e-12)


def test_stamp_variance_on_sky_matches_scatter(staged):
    exp, background, det = staged
    # stamps on empty sky: the variance must match the pixels' actual scatter
    rng = np.random.default_rng(0)
    x, y = rng.uniform(20, 490, 400), rng.uniform(20, 490, 400)
    far = np.min(np.hypot(x[:, None] - det["x"][None], y[:, None] - det["y"][None]), axis=1) > 15
    stamps = cut_stamps(exp, background, x[far], y[far], size=5)
    resid = (stamps.data - background.level.mean()) / np.sqrt(stamps.variance)
    # ~5000 sky pixels: the sd of normalised residuals is 1 to ~1 %; 4 % allows for
    # faint star wings and the data-based Poisson term of positive fluctuations
    assert np.std(resid) == pytest.approx(1.0, abs=0.04)


def test_stamp_size_must_be_odd(staged):
    exp, background, det = staged
    with pytest.raises(InputError, match="stamp size must be an odd number >= 5, got 14"):
        cut_stamps(exp, background, det["x"][:1], det["y"][:1], size=14)


@pytest.mark.parametrize("suffix", ["csv", "parquet", "fits"])
def test_catalog_matching_through_wcs(field, staged, tmp_path, suffix):
    exp, _, det = staged
    ra, dec = exp.wcs.pixel_to_world_values(field.x, field.y)
    mags = 26.0 - 2.5 * np.log10(field.flux)
    path = tmp_path / f"ref.{suffix}"
    Table({"RA_deg": ra, "DEJ2000": dec, "phot_g_mean_mag": mags}).write(path)
    ref = read_reference_catalog(path)
    matched = match_catalog(exp, det, ref, radius=2.0)
    assert len(matched) == len(field.x)  # every star has one detection within 2 px
    # the matched magnitude is the catalog's (copied, so exact to float64)
    _, idx = cKDTree(np.column_stack([field.x, field.y])).query(
        np.column_stack([matched["x"], matched["y"]]))
    np.testing.assert_allclose(matched["mag"], mags[idx], atol=1e-12)


def test_catalog_errors(tmp_path):
    with pytest.raises(MissingFileError, match="reference catalog .*nothing.csv does not exist"):
        read_reference_catalog(tmp_path / "nothing.csv")
    path = tmp_path / "cat.csv"
    Table({"ra": [1.0], "dec": [2.0]}).write(path)
    with pytest.raises(InputError, match=r"cat.csv: no magnitude column"):
        read_reference_catalog(path)

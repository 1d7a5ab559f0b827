"""Reading exposures: header values, mask bits, defaults, and every bad-input message."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from astropy.io import fits

from psfax.errors import BadFileError, InputError, MissingFileError
from psfax.stars.exposure import HeaderDefaultWarning, bad_mask_bits, read_exposure


def test_real_header_values(ztf_exposure):
    exp = ztf_exposure
    assert exp.shape == (3080, 3072)
    # header values are copied exactly (no arithmetic): tolerance is float64 round-off
    assert exp.gain == pytest.approx(6.0, abs=1e-12)
    assert exp.read_noise == pytest.approx(9.0, abs=1e-12)
    assert exp.saturate == pytest.approx(58647.152, abs=1e-9)
    assert exp.zero_point == pytest.approx(26.285139, abs=1e-9)
    assert exp.pixscale == pytest.approx(1.012, abs=1e-12)
    assert exp.seeing == pytest.approx(1.241, abs=1e-12)
    assert exp.wcs is not None and exp.wcs.has_celestial


def test_real_mask_bits_chosen_by_name(ztf_exposure):
    # From the mask header: 1 = SEXTRACTOR DETECTION and 11 = PSF-EXTRACTED SOURCE are
    # informational, 13-15 reserved; every other described defect is rejected.
    expected = {0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12}
    assert {b for b in range(16) if ztf_exposure.bad_bits >> b & 1} == expected
    bits = ztf_exposure.mask_bits
    # bad map = mask bits | NaN | >= SATURATE; exact integer count
    direct = ((bits & ztf_exposure.bad_bits) != 0) | ~np.isfinite(ztf_exposure.data) \
        | (ztf_exposure.data >= ztf_exposure.saturate)
    assert int(ztf_exposure.bad.sum()) == int(direct.sum())
    assert int((bits >> 1 & 1).sum()) > 100_000  # detections are flagged but not bad
    assert int(ztf_exposure.bad.sum()) < 10_000


def test_bad_mask_bits_from_header_words():
    header = fits.Header()
    header["BIT00"] = (0, "AIRCRAFT/SATELLITE TRACK")
    header["BIT01"] = (1, "CONTAINS SEXTRACTOR DETECTION")
    header["BIT04"] = (4, "NOISY")
    assert sorted(bad_mask_bits(header)) == [0, 4]


def test_missing_keywords_fall_back_with_warning():
    data = np.ones((20, 30), np.float32)
    with pytest.warns(HeaderDefaultWarning, match="SATURATE missing") as record:
        exp = read_exposure(data, gain=2.0, read_noise=5.0)
    # every documented keyword but the two given missing -> one warning each
    assert len([w for w in record if issubclass(w.category, HeaderDefaultWarning)]) == 5
    assert exp.gain == 2.0 and exp.zero_point == 25.0 and np.isinf(exp.saturate)


@pytest.mark.parametrize("missing", ["GAIN", "READNOI"])
def test_missing_gain_or_read_noise_without_option_is_an_error(missing, quiet_header):
    del quiet_header[missing]
    field = {"GAIN": "gain", "READNOI": "read_noise"}[missing]
    with pytest.raises(InputError, match=f"{missing} missing or not a number, and no {field} given"):
        read_exposure(np.ones((8, 8), np.float32), header=quiet_header)
    assert getattr(read_exposure(np.ones((8, 8), np.float32), header=quiet_header, **{field: 3.0}), field) == 3.0


def test_override_beats_header():
    header = fits.Header({"GAIN": 6.0, "READNOI": 9.0, "SATURATE": 5e4, "MAGZP": 26.0,
                          "MAGZPUNC": 0.01, "SEEING": 2.0, "PIXSCALE": 1.0})
    exp = read_exposure(np.ones((8, 8), np.float32), header=header, gain=2.5)
    assert exp.gain == 2.5 and exp.read_noise == 9.0


@pytest.fixture
def quiet_header():
    return fits.Header({"GAIN": 6.0, "READNOI": 9.0, "SATURATE": 5e4, "MAGZP": 26.0,
                        "MAGZPUNC": 0.01, "SEEING": 2.0, "PIXSCALE": 1.0})


def test_missing_file(tmp_path):
    with pytest.raises(MissingFileError, match=r"science file .*nope.fits does not exist"):
        read_exposure(tmp_path / "nope.fits")


def test_not_fits(tmp_path):
    path = tmp_path / "notes.fits"
    path.write_text("this is not a FITS file\n" * 50)
    with pytest.raises(BadFileError, match=r"science file .*notes.fits is not a readable FITS image"):
        read_exposure(path)


def test_truncated_gzip(tmp_path, quiet_header):
    path = tmp_path / "cut.fits.gz"
    fits.PrimaryHDU(np.random.default_rng(1).normal(size=(300, 300)).astype(np.float32),
                    header=quiet_header).writeto(tmp_path / "full.fits")
    raw = gzip.compress((tmp_path / "full.fits").read_bytes())
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BadFileError, match=r"science file .*cut.fits.gz is not a readable FITS image"):
        read_exposure(path)


def test_truncated_plain_fits(tmp_path, quiet_header):
    path = tmp_path / "cut.fits"
    fits.PrimaryHDU(np.zeros((300, 300), np.float32), header=quiet_header).writeto(tmp_path / "full.fits")
    path.write_bytes((tmp_path / "full.fits").read_bytes()[:20000])
    with pytest.raises(BadFileError, match=r"cut.fits"):
        read_exposure(path)


def test_mask_of_another_shape(quiet_header):
    with pytest.raises(InputError, match=r"mask shape \(10, 10\) differs from the science image's \(8, 8\)"):
        read_exposure(np.ones((8, 8), np.float32), np.zeros((10, 10), np.int16), header=quiet_header)


def test_all_nan_image(tmp_path, quiet_header):
    path = tmp_path / "nan.fits"
    fits.PrimaryHDU(np.full((16, 16), np.nan, np.float32), header=quiet_header).writeto(path)
    with pytest.raises(BadFileError, match=r"nan.fits: science image has no finite pixel"):
        read_exposure(path)


def test_array_mask_rejects_every_set_bit(quiet_header):
    mask = np.zeros((8, 8), np.int16)
    mask[2, 3] = 64
    data = np.ones((8, 8), np.float32)
    data[5, 5] = np.nan
    exp = read_exposure(data, mask, header=quiet_header)
    assert int(exp.bad.sum()) == 2 and exp.bad[2, 3] and exp.bad[5, 5]

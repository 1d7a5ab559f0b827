"""Pipeline stages (read_level1, prep_map, write_level16) and ``psfax aia prep``."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from psfax.errors import BadFileError, MissingFileError
from psfax.solar.prep import prep_map, read_level1, write_level16


def test_read_level1(aia_map):
    assert aia_map.data.shape == (128, 128)
    assert aia_map.wavelength.to_value("angstrom") == 171
    assert aia_map.processing_level == 1


def test_read_errors_name_the_file(tmp_path, aia_level1_file, ztf_files):
    bad = tmp_path / "bad.fits"
    bad.write_text("not a FITS file")
    with pytest.raises(BadFileError, match=r"bad.fits: not a readable FITS file"):
        read_level1(bad)
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(aia_level1_file.read_bytes()[:40000])
    with pytest.raises(BadFileError, match=r"truncated.fits: .*truncated"):
        read_level1(truncated)
    ztf = ztf_files[1]
    with pytest.raises(BadFileError, match=r"mskimg.fits(.gz)?: not an AIA image"):
        read_level1(ztf)
    with pytest.raises(MissingFileError, match=r"absent.fits: no such file"):
        read_level1(tmp_path / "absent.fits")


def test_prep_register_and_write_round_trip(aia_map, tmp_path):
    out = prep_map(aia_map, register=True, order=1)
    path = write_level16(out, tmp_path)
    assert path.name == "aia_lev1.5_0171a_2011-02-15T00-00-01.340.fits"
    data, header = fits.getdata(path, header=True)
    assert np.array_equal(data, out.data)  # float64 written as is
    assert header["LVL_NUM"] == 1.5
    assert header["PSFORDER"] == 1 and header["PSFDECON"] is False
    assert header["PSFAXVER"]
    assert any("register: spline order 1" in str(card) for card in header["HISTORY"])
    assert not list(tmp_path.glob("*.part"))  # atomic write leaves no temporary file


def test_prep_without_steps_leaves_input_header(aia_map):
    out = prep_map(aia_map)
    assert out.meta["psfdecon"] is False
    assert "psfaxver" not in aia_map.meta


@pytest.mark.slow
def test_level16_full_resolution(aia_map_4096, tmp_path):
    out = prep_map(aia_map_4096, deconvolve=True, register=True, iterations=2)
    assert out.meta["lvl_num"] == 1.6
    assert out.meta["psfiter"] == 2
    path = write_level16(out, tmp_path)
    assert fits.getheader(path)["LVL_NUM"] == 1.6


def test_cli_skips_bad_files_and_reports(tmp_path, aia_level1_file, capsys):
    from psfax.cli import main

    bad = tmp_path / "bad.fits"
    bad.write_text("garbage")
    good = aia_level1_file
    rc = main(["aia", "prep", str(bad), str(good), "--register", "--order", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2  # a file failed: one-line psfax error, exit code 2
    assert "1 of 2 files failed" in err and "bad.fits" in err
    written = list((tmp_path / "o").glob("*.fits"))
    assert [p.name for p in written] == ["aia_lev1.5_0171a_2011-02-15T00-00-01.340.fits"]


def test_cli_all_good(tmp_path, aia_level1_file):
    from psfax.cli import main

    good = aia_level1_file
    assert main(["aia", "prep", str(good), "--register", "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("*.fits")
    assert f'href="{written.name}"' in (tmp_path / "report.html").read_text()


def test_cli_psf(tmp_path):
    from psfax.cli import main
    from psfax.solar import aia_psf

    out = tmp_path / "psf171.fits"
    assert main(["aia", "psf", "171", "--out", str(out)]) == 0
    assert np.array_equal(fits.getdata(out), aia_psf(171))

"""update_pointing from a user-supplied master pointing table, against aiapy 0.12.1."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from psfax.errors import InputError, MissingFileError
from psfax.solar import update_pointing


def _table(t_obs, *, x0=2051.2, y0=2044.7, imscale=0.600109, instrot=-0.0321):
    import astropy.units as u
    from astropy.table import QTable
    from astropy.time import Time, TimeDelta

    start = Time(t_obs) - TimeDelta(3600 * np.array([4.0, 1.0]), format="sec")
    table = QTable()
    table["T_START"] = start
    table["T_STOP"] = start + TimeDelta(3 * 3600.0, format="sec")
    # the first row ends before T_OBS: the second one must be chosen
    table["A_171_X0"] = [1.0, x0] * u.pix
    table["A_171_Y0"] = [1.0, y0] * u.pix
    table["A_171_IMSCALE"] = [0.5, imscale] * u.arcsec / u.pix
    table["A_171_INSTROT"] = [9.0, instrot] * u.deg
    return table


def test_equals_aiapy(aia_map):
    meta_calibrate = pytest.importorskip("aiapy.calibrate")
    table = _table(aia_map.reference_date)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = meta_calibrate.update_pointing(aia_map, pointing_table=table)
        ours = update_pointing(aia_map, table)
    for key in ["crpix1", "crpix2", "cdelt1", "cdelt2", "crota2", "x0_mp", "y0_mp"]:
        # same arithmetic on the same float64 numbers
        assert ours.meta[key] == pytest.approx(ref.meta[key], rel=1e-12), key
    assert np.allclose(ours.rotation_matrix, ref.rotation_matrix, rtol=0, atol=1e-14)
    assert ours.meta["cdelt1"] == pytest.approx(0.600109)
    assert ours.meta["crota2"] == pytest.approx(-0.0321 + aia_map.meta["sat_rot"])


def test_table_from_ecsv_file(aia_map, tmp_path):
    path = tmp_path / "mpt.ecsv"
    _table(aia_map.reference_date).write(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = update_pointing(aia_map, path)
    assert ours.meta["x0_mp"] == pytest.approx(2051.2)
    assert "update_pointing" in ours.meta["history"]


def test_no_interval(aia_map):
    from astropy.time import TimeDelta

    table = _table(aia_map.reference_date + TimeDelta(10 * 86400.0, format="sec"))
    with pytest.raises(InputError, match="no interval containing T_OBS=2011-02-15T00:00:01"):
        update_pointing(aia_map, table)


def test_missing_columns(aia_map):
    table = _table(aia_map.reference_date)
    table.remove_column("A_171_INSTROT")
    with pytest.raises(InputError, match=r"lacks columns \['A_171_INSTROT'\]"):
        update_pointing(aia_map, table)


def test_missing_file(aia_map, tmp_path):
    with pytest.raises(MissingFileError, match="pointing table .*nope.ecsv does not exist"):
        update_pointing(aia_map, tmp_path / "nope.ecsv")

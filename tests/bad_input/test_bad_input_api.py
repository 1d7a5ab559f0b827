"""The public functions against bad input: a PsfaxError naming the parameter or file, raised before
any slow work; and the output sets that must never be left half-replaced."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from bad_input_helpers import ZTF_HEADER

from psfax.errors import BadFileError, InputError, InputTypeError, MissingFileError, PsfaxError


def test_fit_image_bad_science_values(files):
    from psfax.stars import fit_image

    header = fits.Header(ZTF_HEADER)
    with pytest.raises(InputError, match=r"science image must be 2-D, got shape \(3, 4, 5\)"):
        fit_image(np.zeros((3, 4, 5), np.float32), header=header)
    with pytest.raises(InputTypeError, match="science must be a FITS path or a 2-D numpy array, got list"):
        fit_image([[1.0, 2.0]], header=header)
    with pytest.raises(MissingFileError, match="absent.fits does not exist"):
        fit_image(files["missing"])
    with pytest.raises(BadFileError, match="no finite pixel"):
        fit_image(np.full((16, 16), np.nan, np.float32), header=header)


@pytest.mark.parametrize(("options", "message"), [
    ({"stamp_size": 4}, "stamp_size must be an odd number >= 5"),
    ({"stamp_size": 15, "edge": 2}, "edge must be at least half the stamp"),
    ({"gain": float("nan")}, "gain must be finite and > 0"),
    ({"read_noise": -1.0}, "read_noise must be finite and >= 0"),
    ({"clip_sigma": float("nan")}, "clip_sigma must be > 0"),
    ({"colour": "red"}, "unknown fit option"),
])
def test_fit_image_bad_options_before_the_read(files, options, message):
    """The path does not exist: the option error must come first."""
    from psfax.stars import fit_image

    with pytest.raises(InputError, match=message):
        fit_image(files["missing"], **options)


def test_stamp_size_41_ties_the_edge_cut_to_the_stamp():
    """#20.5: the default edge cut (15 px) let stars whose 41-px stamp leaves the image through to
    cut_stamps, which raised; the default edge is now half the stamp when that is more."""
    from psfax.stars.pipeline import FitOptions

    assert FitOptions(stamp_size=41).selection.edge == 20
    assert FitOptions().selection.edge == 15
    assert FitOptions.from_kwargs(stamp_size=41, edge=30).selection.edge == 30


def test_is_psf_star_with_a_nan_row_from_a_saturated_source():
    """#20.1: a source with too few usable pixels has a NaN row; it must not reach the KD-tree."""
    from psfax.stars.pipeline import _is_psf_star

    catalog = Table({"x_fit": [10.0, np.nan, 50.2], "y_fit": [10.0, np.nan, 49.9]})
    psf_stars = Table({"x_fit": [10.3, 50.0], "y_fit": [10.0, 50.0]})
    np.testing.assert_array_equal(_is_psf_star(catalog, psf_stars), [True, False, True])


def test_missing_gain_is_an_error_and_option_fills_it():
    from psfax.stars.exposure import read_exposure

    header = fits.Header({k: v for k, v in ZTF_HEADER.items() if k != "GAIN"})
    with pytest.raises(InputError, match="GAIN missing or not a number, and no gain given"):
        read_exposure(np.ones((8, 8), np.float32), header=header)
    assert read_exposure(np.ones((8, 8), np.float32), header=header, gain=6.0).gain == 6.0


def test_run_jobs_checks_options_before_any_input(files, tmp_path):
    from psfax import run

    with pytest.raises(InputError, match="model must be one of"):
        run("stars-fit", [str(files["not_fits"])], out_dir=tmp_path / "o", model="bogus", show_progress=False)
    with pytest.raises(InputError, match="order must be 1 or 3"):
        run("aia-prep", [str(files["not_fits"])], out_dir=tmp_path / "o", order=2, show_progress=False)
    with pytest.raises(InputError, match="out_dir .* is not a folder"):
        run("aia-prep", [str(files["not_fits"])], out_dir=files["a_file"], show_progress=False)
    assert not (tmp_path / "o").exists()  # no manifest started


def test_aia_functions_bad_input(files, aia_variants):
    from psfax.solar.prep import check_prep_options, read_level1
    from psfax.solar.psf import aia_psf

    with pytest.raises(BadFileError, match="WAVELNTH=9999 is not an AIA channel"):
        read_level1(aia_variants["wavelength_9999"])
    with pytest.raises(BadFileError, match="not an AIA image"):
        read_level1(aia_variants["hmi"])
    with pytest.raises(BadFileError, match="not a readable FITS file"):
        read_level1(files["empty"])
    with pytest.raises(InputError, match="channel must be one of"):
        aia_psf(9999)
    for bad, message in [({"order": 2}, "order"), ({"iterations": 2.5}, "iterations"),
                         ({"dtype": "int16"}, "dtype")]:
        with pytest.raises(InputError, match=message):
            check_prep_options(**bad)


def test_commit_of_an_output_set_moves_nothing_when_one_target_is_a_folder(tmp_path):
    """#20.12: with psf.json pre-made as a folder, the new tables must not replace the old ones."""
    from psfax.outputs import commit_files, staging_folder

    out = tmp_path / "out"
    (out / "psf.json").mkdir(parents=True)
    (out / "stars.parquet").write_text("old")
    with staging_folder(out) as staging:
        (staging / "stars.parquet").write_text("new")
        (staging / "psf.json").write_text("{}")
        with pytest.raises(PsfaxError, match="psf.json is a folder"):
            commit_files(staging, out)
    assert (out / "stars.parquet").read_text() == "old"
    assert sorted(p.name for p in out.iterdir()) == ["psf.json", "stars.parquet"]  # staging removed


def test_runner_commit_replaces_the_earlier_output_set(tmp_path):
    """#20.12: a re-run whose outputs have other names (level 1.0, then 1.5 with --register) leaves
    only the new set in the input's folder."""
    from psfax.runner.jobs import commit, staging_dir

    out = tmp_path / "out"
    first = staging_dir(out, "img")
    (first / "aia_lev1.0_0171a.fits").write_text("level 1")
    commit(first, out / "img", [first / "aia_lev1.0_0171a.fits"])
    second = staging_dir(out, "img")
    (second / "aia_lev1.5_0171a.fits").write_text("level 1.5")
    paths = commit(second, out / "img", [second / "aia_lev1.5_0171a.fits"])
    assert paths == [out / "img" / "aia_lev1.5_0171a.fits"]
    assert [p.name for p in (out / "img").iterdir()] == ["aia_lev1.5_0171a.fits"]

"""Every CLI command against the bad inputs it meets: exit 2 (1 for ``run`` with a failed input), one
``psfax: error:`` line naming the file or option, no traceback, and earlier outputs left as they were.

Everything runs in this process through ``psfax.cli.main`` on tiny files; no case fits a PSF (the
options and output locations are checked before any reading or computing, and that is asserted too).
"""

from __future__ import annotations

import os

import pytest
from bad_input_helpers import assert_untouched, fails_cleanly

from psfax.cli import main


# --- psfax stars fit --------------------------------------------------------------------------------

@pytest.mark.parametrize(("case", "message"), [
    ("not_fits", "is not a readable FITS image"),
    ("empty", "is not a readable FITS image"),
    ("truncated", "is not a readable FITS image"),
    ("cube", "has no 2-D image HDU"),
    ("all_nan", "has no finite pixel"),
    ("missing", "does not exist"),
    ("no_gain", "GAIN missing or not a number, and no gain given (--gain"),
    ("no_read_noise", "READNOI missing or not a number, and no read_noise given (--read-noise"),
    ("all_zero", "no source detected"),
])
def test_stars_fit_bad_science_file(files, guarded_out, capsys, case, message):
    fails_cleanly(capsys, ["stars", "fit", files[case], "--out", guarded_out], files[case], message)
    assert_untouched(guarded_out)


def test_stars_fit_mask_of_another_shape(files, guarded_out, capsys):
    fails_cleanly(capsys, ["stars", "fit", files["good"], "--mask", files["mask_small"], "--out", guarded_out],
                  files["mask_small"], "mask shape (32, 32) differs")
    assert_untouched(guarded_out)


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--stamp-size", "4", "stamp_size must be an odd number >= 5, got 4"),
    ("--stamp-size", "0", "stamp_size must be an odd number >= 5, got 0"),
    ("--stamp-size", "-3", "stamp_size must be an odd number >= 5, got -3"),
    ("--edge", "3", "edge must be at least half the stamp (7 px for stamp_size 15), got 3.0"),
    ("--edge", "-1", "edge, mask_radius and isolation must be >= 0"),
    ("--isolation", "nan", "edge, mask_radius and isolation must be >= 0"),
    ("--mag-min", "nan", "mag_min must be < mag_max"),
    ("--mag-min", "19", "mag_min must be < mag_max"),
    ("--spatial-degree", "5", "spatial_degree must be 0, 1 or 2, got 5"),
    ("--group-radius", "0", "group_radius must be > 0 (in FWHM), got 0.0"),
    ("--group-radius", "nan", "group_radius must be > 0 (in FWHM), got nan"),
    ("--passes", "0", "passes must be an integer >= 1, got 0"),
    ("--model", "bogus", "model must be one of"),
    ("--gain", "0", "gain must be finite and > 0, got 0.0"),
    ("--gain", "nan", "gain must be finite and > 0, got nan"),
    ("--gain", "-6", "gain must be finite and > 0, got -6.0"),
    ("--read-noise", "-1", "read_noise must be finite and >= 0, got -1.0"),
    ("--saturate", "0", "saturate must be finite and > 0"),
    ("--zero-point", "nan", "zero_point must be finite"),
])
def test_stars_fit_bad_option_before_reading(files, guarded_out, capsys, option, value, message):
    """The science path does not exist: an option error must come first, before the file is looked at."""
    fails_cleanly(capsys, ["stars", "fit", files["missing"], option, value, "--out", guarded_out], message)
    assert_untouched(guarded_out)


@pytest.mark.parametrize(("case", "message"), [("not_fits", "cannot be read as fits"),
                                             ("missing", "does not exist"),
                                             ("a_file", "unknown format")])
def test_stars_fit_bad_reference_catalog_before_the_image(files, guarded_out, capsys, case, message):
    fails_cleanly(capsys, ["stars", "fit", files["good"], "--catalog", files[case], "--out", guarded_out],
                  f"reference catalog {files[case]}", message)
    assert_untouched(guarded_out)


def test_stars_fit_out_is_an_existing_file(files, capsys):
    before = files["a_file"].read_text()
    fails_cleanly(capsys, ["stars", "fit", files["missing"], "--out", files["a_file"]],
                  "--out", files["a_file"], "is not a folder")
    assert files["a_file"].read_text() == before


def test_stars_fit_out_below_a_file(files, capsys):
    fails_cleanly(capsys, ["stars", "fit", files["missing"], "--out", files["a_file"] / "sub"],
                  "--out", "exists and is not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_stars_fit_out_read_only(files, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    fails_cleanly(capsys, ["stars", "fit", files["missing"], "--out", locked / "o"], "--out", "is not writable")


def test_stars_fit_psf_json_is_a_folder(files, tmp_path, capsys):
    """An output name taken by a folder is found before the fit (and at the commit, see test_outputs)."""
    out = tmp_path / "out"
    (out / "psf.json").mkdir(parents=True)
    (out / "stars.parquet").write_text("old")
    fails_cleanly(capsys, ["stars", "fit", files["missing"], "--out", out], out / "psf.json", "is a folder")
    assert (out / "stars.parquet").read_text() == "old"


# --- psfax aia prep / aia psf -------------------------------------------------------------------------

@pytest.mark.parametrize(("option", "value", "message"), [
    ("--order", "2", "order must be 1 or 3, got 2"),
    ("--iterations", "-1", "iterations must be a non-negative integer, got -1"),
    ("--dtype", "int8", "dtype must be float32 or float64, got 'int8'"),
    ("--dtype", "bogus", "dtype must be float32 or float64, got 'bogus'"),
])
def test_aia_prep_bad_option_once_before_reading(files, guarded_out, capsys, option, value, message):
    line = fails_cleanly(capsys, ["aia", "prep", files["missing"], files["not_fits"], option, value,
                                  "--out", guarded_out], message)
    assert "files failed" not in line  # one line for the option, not one per file
    assert_untouched(guarded_out)


def test_aia_prep_pointing_not_a_table(files, guarded_out, capsys):
    fails_cleanly(capsys, ["aia", "prep", files["missing"], "--pointing", files["table_not"], "--out", guarded_out],
                  files["table_not"], "cannot be read")
    assert_untouched(guarded_out)


def test_aia_prep_pointing_missing(files, guarded_out, capsys):
    fails_cleanly(capsys, ["aia", "prep", files["not_fits"], "--pointing", files["missing"], "--out", guarded_out],
                  files["missing"], "does not exist")
    assert_untouched(guarded_out)


def test_aia_prep_out_is_an_existing_file(files, capsys):
    fails_cleanly(capsys, ["aia", "prep", files["not_fits"], "--out", files["a_file"]], "--out", files["a_file"])


@pytest.mark.parametrize("case", ["not_fits", "empty", "truncated", "missing", "good"])
def test_aia_prep_unusable_files_reported_and_failed(files, guarded_out, capsys, case):
    """``good`` is a fine FITS image but not an AIA one."""
    fails_cleanly(capsys, ["aia", "prep", files[case], "--out", guarded_out], "1 of 1 files failed", files[case])
    assert_untouched(guarded_out)


def test_aia_prep_wrong_channel_and_not_aia(aia_variants, guarded_out, capsys):
    fails_cleanly(capsys, ["aia", "prep", aia_variants["wavelength_9999"], aia_variants["hmi"], "--out", guarded_out],
                  "2 of 2 files failed", reported=("WAVELNTH=9999", "not an AIA image"))
    assert_untouched(guarded_out)


def test_aia_prep_register_needs_a_full_disk_image(aia_cutout_file, guarded_out, capsys):
    cutout = aia_cutout_file
    fails_cleanly(capsys, ["aia", "prep", cutout, "--register", "--out", guarded_out], "1 of 1 files failed",
                  reported=("full-disk",))
    assert_untouched(guarded_out)


def test_aia_prep_same_channel_and_time_written_once(aia_file, aia_variants, tmp_path, capsys):
    out = tmp_path / "out"
    fails_cleanly(capsys, ["aia", "prep", aia_file, aia_variants["copy"], "--out", out],
                  "1 of 2 files failed", aia_variants["copy"])
    # the first input's result, not overwritten by the second, beside the run's report page
    (written,) = [p for p in out.iterdir() if p.name != "report.html"]
    assert written.name.startswith("aia_lev1.0_0171a_")


def test_aia_psf_out_is_a_folder(tmp_path, capsys):
    fails_cleanly(capsys, ["aia", "psf", "171", "--out", tmp_path], "--out", tmp_path, "is a folder")


def test_aia_psf_wrong_channel(tmp_path, capsys):
    fails_cleanly(capsys, ["aia", "psf", "9999", "--out", tmp_path / "psf.fits"], "channel must be one of")
    assert not (tmp_path / "psf.fits").exists()


# --- psfax run --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "message"), [
    (["stars-fit", "--model", "bogus"], "model must be one of"),
    (["stars-fit", "--stamp-size", "8"], "stamp_size must be an odd number >= 5, got 8"),
    (["stars-fit", "--gain", "-1"], "gain must be finite and > 0"),
    (["stars-fit", "--colour", "red"], "has no option --colour"),
    (["aia-prep", "--order", "2"], "order must be 1 or 3, got 2"),
    (["aia-prep", "--pointing", "absent.ecsv"], "pointing table absent.ecsv does not exist"),
])
def test_run_checks_job_options_once_before_the_first_input(files, guarded_out, capsys, monkeypatch, argv, message):
    """Exit 2 and one line; no input is read, no manifest is started."""
    monkeypatch.chdir(guarded_out.parent)
    fails_cleanly(capsys, ["run", argv[0], files["not_fits"], files["empty"], *argv[1:], "--out", guarded_out], message)
    assert_untouched(guarded_out)


def test_run_out_is_an_existing_file(files, capsys):
    fails_cleanly(capsys, ["run", "aia-prep", files["not_fits"], "--out", files["a_file"]], "--out", files["a_file"])


def test_run_without_inputs_or_out(files, tmp_path, capsys):
    fails_cleanly(capsys, ["run", "aia-prep", "--out", tmp_path], "no input given")
    fails_cleanly(capsys, ["run", "aia-prep", files["not_fits"]], "--out")


def test_run_bad_inputs_fail_per_input_with_exit_1(files, tmp_path, capsys):
    """Unusable input files are failed inputs (exit 1, listed), not a crash of the run."""
    out = tmp_path / "out"
    assert main(["run", "aia-prep", str(files["not_fits"]), str(files["empty"]), str(files["missing"]),
                 "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "3 failed" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl", "manifest.parquet", "report.html"]


# --- psfax data --------------------------------------------------------------------------------------

def test_data_fetch_unknown_sample(capsys):
    fails_cleanly(capsys, ["data", "fetch", "no-such-sample"], "no-such-sample")


# --- psfax clusters ----------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["clusters", "simulate", "{file}", "--n-train", "1", "--n-val", "1", "--n-test", "1"],
    ["clusters", "train", "{folder}", "--out", "{file}/model"],
    ["clusters", "infer", "{folder}/cube.fits", "--out-dir", "{file}"],
    ["clusters", "evaluate", "{folder}", "--out", "{folder}"],
], ids=["simulate", "train", "infer", "evaluate"])
def test_clusters_output_location_checked_before_work(tmp_path, capsys, argv):
    """An output path that is an existing file (or a folder where a file goes) is one line, exit 2,
    before any simulation, training or reading."""
    (tmp_path / "a_file").write_text("keep\n")
    argv = [a.format(file=tmp_path / "a_file", folder=tmp_path) for a in argv]
    fails_cleanly(capsys, argv, tmp_path)
    assert (tmp_path / "a_file").read_text() == "keep\n"

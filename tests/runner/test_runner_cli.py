"""``psfax run JOB INPUTS... --out DIR``: the syntax, job options, exit codes."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from typer.testing import CliRunner
from runner_testjobs import SMOOTH_JOB, expected_smooth, make_images

from psfax.cli import main
from psfax.errors import InputError
from psfax.runner import jobs
from psfax.runner.cli import app as run_app
from psfax.runner.cli import split_job_arguments

# float64 smoothing agrees with scipy to rounding: 1e-12 is ~1e4 ulps of slack.
ATOL = 1e-12


@pytest.fixture
def smooth_registered(monkeypatch):
    monkeypatch.setitem(jobs.JOBS, "smooth", lambda: SMOOTH_JOB)


def test_run_syntax_with_job_options_between_and_after_inputs(tmp_path, smooth_registered):
    images = make_images(tmp_path / "in", 3)
    code = main(["run", "smooth", str(images[0]), "--scale", "2.5", str(images[1]), str(images[2]),
                 "--out", str(tmp_path / "out"), "--hdu=0"])
    assert code == 0
    for image in images:
        np.testing.assert_allclose(fits.getdata(tmp_path / "out" / image.stem / "smooth.fits"),
                                   expected_smooth(image, 2.5), rtol=0, atol=ATOL)


def test_exit_code_1_when_an_input_fails_and_resume_skips(tmp_path, smooth_registered):
    images = make_images(tmp_path / "in", 2)
    args = ["smooth", str(tmp_path / "in" / "*.fits"), str(tmp_path / "absent.fits"), "--out", str(tmp_path / "out")]
    first = CliRunner().invoke(run_app, args)
    assert first.exit_code == 1
    assert "absent.fits" in first.output and "MissingFileError" in first.output
    assert "2 done, 1 failed" in first.output
    second = CliRunner().invoke(run_app, [*args, "--resume"])
    assert second.exit_code == 1 and "0 done, 1 failed, 2 skipped" in second.output
    assert all((tmp_path / "out" / p.stem / "smooth.fits").exists() for p in images)


def test_psfax_main_passes_exit_code_1_on(tmp_path, smooth_registered):
    assert main(["run", "smooth", str(tmp_path / "absent.fits"), "--out", str(tmp_path / "out")]) == 1


@pytest.mark.parametrize(("argv", "message"), [
    (["run", "fit", "x.fits", "--out", "o"], "job must be one of stars-fit, stars-forced, aia-prep, clusters-infer, smooth, got 'fit'"),
    (["run", "smooth", "x.fits", "--out", "o", "--colour", "red"], "job 'smooth' has no option --colour"),
    (["run", "smooth", "x.fits", "--out", "o", "--scale", "big"], "--scale: cannot use 'big'"),
    (["run", "smooth", "x.fits", "--out", "o", "--executor", "spark"], "executor must be one of local, dask"),
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, monkeypatch, smooth_registered, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_option_words_follow_the_option_types():
    flags = jobs.Job("flags", None, None, None, (
        jobs.JobOption("deconvolve", "compute", False), jobs.JobOption("iterations", "compute", 25),
        jobs.JobOption("size_range", "compute", (0.7, 1.4)), jobs.JobOption("pointing", "compute", None)))
    inputs, options = split_job_arguments(flags, [
        "a.fits", "--deconvolve", "b.fits", "--iterations", "10", "--size-range=[0.5, 2]", "--pointing", "p.csv"])
    assert inputs == ["a.fits", "b.fits"]
    assert options == {"deconvolve": True, "iterations": 10, "size_range": (0.5, 2), "pointing": "p.csv"}
    assert split_job_arguments(flags, ["--no-deconvolve", "c.fits"]) == (["c.fits"], {"deconvolve": False})
    with pytest.raises(InputError, match="--iterations: a value is missing"):
        split_job_arguments(flags, ["a.fits", "--iterations"])

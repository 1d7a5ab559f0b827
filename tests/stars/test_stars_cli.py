"""``psfax stars fit``: a run on a small synthetic image, and every bad input as one line + exit 2."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from astropy.io import fits

from psfax.cli import main


@pytest.fixture(scope="module")
def image_files(tmp_path_factory, galsim_field):
    folder = tmp_path_factory.mktemp("cli")
    science = folder / "small_sciimg.fits"
    fits.PrimaryHDU(galsim_field.image, header=galsim_field.header).writeto(science)
    mask = np.zeros(galsim_field.image.shape, np.int16)
    mask_header = fits.Header()
    mask_header["BIT00"] = (0, "AIRCRAFT/SATELLITE TRACK")
    fits.PrimaryHDU(mask, header=mask_header).writeto(folder / "small_mskimg.fits")
    return science, folder / "small_mskimg.fits", galsim_field


def test_fit_writes_outputs_and_summary(image_files, tmp_path, capsys):
    science, mask, _ = image_files
    out = tmp_path / "out"
    assert main(["stars", "fit", str(science), "--mask", str(mask), "--out", str(out), "--no-plots"]) == 0
    captured = capsys.readouterr()
    assert "median reduced chi2" in captured.err  # the summary table
    assert str(out / "psf.json") in captured.out
    info = json.loads((out / "psf.json").read_text())
    # truth at the image centre: 1.3 px; 4 sigma of the fit's own error
    assert abs(info["fwhm"]["intrinsic_px"] - 1.3) < 4 * info["fwhm"]["intrinsic_px_err"]
    assert info["selection_counts"]["detected"] == 200
    assert info["psf_choice"]["asked"] == "auto"  # the default


@pytest.mark.slow
def test_fit_with_psf_auto_writes_the_choice_and_psf_fits(image_files, tmp_path, capsys):
    science, mask, _ = image_files
    out = tmp_path / "out"
    assert main(["stars", "fit", str(science), "--mask", str(mask), "--out", str(out), "--no-plots",
                 "--psf", "auto"]) == 0
    info = json.loads((out / "psf.json").read_text())
    # --psf auto: the empirical PSF built on the selected stars, the choice and both reserve figures written;
    # the GalSim PSF is a Moffat, so either may win, but both must be finite and the choice consistent
    choice = info["psf_choice"]
    figures = choice["reserve_median_reduced_chi2"]
    assert choice["asked"] == "auto" and set(figures) == {"empirical", "moffat"}
    assert all(0.5 < v < 5 for v in figures.values()), figures
    assert choice["chosen"] == min(figures, key=figures.get)
    assert 1.0 <= choice["aperture_correction"] < 1.2  # light within 14 px over that within 7 px
    from psfax.psf.io import read_psf_fits

    assert read_psf_fits(out / "psf.fits").aperture_correction == choice["aperture_correction"]


def _fails_with(args, capsys, pattern):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("psfax: error: ")
    assert pattern in err[0]


def test_truncated_file(image_files, tmp_path, capsys):
    science, _, _ = image_files
    cut = tmp_path / "cut.fits.gz"
    cut.write_bytes(gzip.compress(science.read_bytes())[:5000])
    _fails_with(["stars", "fit", str(cut), "--out", str(tmp_path / "o")], capsys,
                f"science file {cut} is not a readable FITS image")


def test_not_a_fits_file(tmp_path, capsys):
    text = tmp_path / "readme.fits"
    text.write_text("hello\n" * 1000)
    _fails_with(["stars", "fit", str(text), "--out", str(tmp_path / "o")], capsys,
                f"science file {text} is not a readable FITS image")


def test_mask_of_another_shape(image_files, tmp_path, capsys):
    science, _, _ = image_files
    mask = tmp_path / "m.fits"
    fits.PrimaryHDU(np.zeros((100, 100), np.int16)).writeto(mask)
    _fails_with(["stars", "fit", str(science), "--mask", str(mask), "--out", str(tmp_path / "o")], capsys,
                f"{mask}: mask shape (100, 100) differs from the science image's (1024, 1024)")


def test_all_nan_image(image_files, tmp_path, capsys):
    _, _, field = image_files
    path = tmp_path / "nan.fits"
    fits.PrimaryHDU(np.full((64, 64), np.nan, np.float32), header=field.header).writeto(path)
    _fails_with(["stars", "fit", str(path), "--out", str(tmp_path / "o")], capsys,
                f"{path}: science image has no finite pixel")


def test_no_star_passes_the_cuts(image_files, tmp_path, capsys):
    science, _, _ = image_files
    _fails_with(["stars", "fit", str(science), "--mag-min", "5", "--mag-max", "6",
                 "--out", str(tmp_path / "o")], capsys,
                f"{science}: no star passes the selection cuts")


def test_bad_model_name(image_files, tmp_path, capsys):
    science, _, _ = image_files
    _fails_with(["stars", "fit", str(science), "--model", "airy", "--out", str(tmp_path / "o")], capsys,
                "model must be one of moffat, gaussian, elliptical_moffat, elliptical_gaussian, got 'airy'")


def test_bad_psf_name(image_files, tmp_path, capsys):
    science, _, _ = image_files
    _fails_with(["stars", "fit", str(science), "--psf", "airy", "--out", str(tmp_path / "o")], capsys,
                "psf must be one of analytic, empirical, auto or a model name (moffat, gaussian, elliptical_moffat, "
                "elliptical_gaussian), got 'airy'")


def test_one_option_vocabulary_with_run_stars_fit_and_fit_image():
    """#21.5: every option of ``stars fit`` (first name) is an option of ``run stars-fit`` by that name,
    and so a keyword of ``fit_image``; ``--degree`` is kept as a second name of ``--spatial-degree``."""
    import typer

    from psfax.runner.jobs import stars_fit_job
    from psfax.stars.cli import app

    command = typer.main.get_command(app)
    fit = command.commands["fit"] if hasattr(command, "commands") else command
    names = {p.name for p in fit.params} - {"science", "out", "mask", "install_completion", "show_completion"}
    job_names = {o.name for o in stars_fit_job().options}
    assert names <= job_names, names - job_names
    degree = next(p for p in fit.params if p.name == "spatial_degree")
    assert degree.opts == ["--spatial-degree", "--degree"]


@pytest.mark.slow
def test_fit_with_stamp_size_41(image_files, tmp_path, capsys):
    """#20.5: a valid odd stamp size larger than twice the 15-px edge cut."""
    science, mask, _ = image_files
    out = tmp_path / "out"
    assert main(["stars", "fit", str(science), "--mask", str(mask), "--stamp-size", "41",
                 "--out", str(out), "--no-plots"]) == 0
    info = json.loads((out / "psf.json").read_text())
    assert info["options"]["selection"]["edge"] == 20
    capsys.readouterr()

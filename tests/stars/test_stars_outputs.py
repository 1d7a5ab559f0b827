"""What a stars fit writes, as a reader sees it: Parquet units and descriptions (astropy, pandas,
pyarrow), the figures (size, not blank), the pixel-convolved FWHM against GalSim, ``report.html``
rendered by headless Chromium (every figure decoded)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.table import Table

from psfax.stars.catalog import COLUMNS, write_catalog
from psfax.profiles import pixel_convolved_fwhm


@pytest.fixture(scope="module")
def written(galsim_fit, tmp_path_factory):
    """The pipeline's outputs on the GalSim quadrant (PSF at the centre: Moffat FWHM 1.3 px, beta 2.5)."""
    out = tmp_path_factory.mktemp("outputs")
    return out, galsim_fit.write(out)


def test_every_column_has_unit_and_description(written):
    out, _ = written
    import pandas as pd
    import pyarrow.parquet as pq

    for name in ("stars.parquet", "psf_stars.parquet"):
        table = Table.read(out / name)
        schema = pq.read_schema(out / name)
        frame = pd.read_parquet(out / name)
        assert list(frame.columns) == table.colnames
        for column in table.colnames:
            unit, description = COLUMNS[column]  # KeyError: a column without metadata
            assert table[column].description == description
            assert (str(table[column].unit) if table[column].unit is not None else "") == unit
            assert schema.field(column).metadata == {b"unit": unit.encode(), b"description": description.encode()}
            assert table[column].dtype.kind != "f" or table[column].dtype == np.float64, column
        # image coordinates, as photutils has them: the stamp corner plus the stamp-local position
        np.testing.assert_allclose(table["x_fit"], table["x0"] + table["x_stamp"], rtol=0, atol=1e-9)


def test_write_catalog_makes_floats_float64_and_keeps_values(tmp_path):
    table = Table({"flux_fit": np.array([1.5, 2.25], np.float32), "flags": np.array([0, 4], np.int32)})
    write_catalog(table, tmp_path / "t.parquet")
    back = Table.read(tmp_path / "t.parquet")
    assert back["flux_fit"].dtype == np.float64 and back["flags"].dtype == np.int32
    assert back["flux_fit"].tolist() == [1.5, 2.25] and str(back["flux_fit"].unit) == "adu"
    assert table["flux_fit"].dtype == np.float32  # the caller's table is left as it was


def test_pixel_convolved_fwhm_matches_galsim():
    """GalSim's exact values of the Moffat convolved with the 1 x 1 px pixel along the x axis, every
    1e-3 px, give an independent FWHM.  Tolerance 3e-4 px: our quadrature is accurate to 1e-4 of the
    peak, which moves the half-maximum crossing by ~1e-4 px (the slope there is ~ the peak per px)."""
    import galsim

    profile = galsim.Convolve(galsim.Moffat(beta=2.5, fwhm=1.3), galsim.Pixel(1.0))
    d = np.arange(0.0, 2.0, 1e-3)
    cut = np.array([profile.xValue(galsim.PositionD(x, 0.0)) for x in d])
    truth = 2 * np.interp(-cut[0] / 2, -cut, d)
    assert pixel_convolved_fwhm("moffat", {"fwhm": 1.3, "beta": 2.5}) == pytest.approx(truth, abs=3e-4)
    # and it is what a measurement on the image compares with: far wider than the intrinsic FWHM
    assert truth > 1.3 + 0.2


def test_psf_json_names_its_counts_and_noise_model(written):
    out, _ = written
    info = json.loads((out / "psf.json").read_text())
    counts = info["counts"]
    assert counts["psf_stars_selected"] == counts["psf_stars_in_first_fit"] == info["psf_stars_per_refit"][0]
    assert counts["psf_stars_kept_after_clipping"] == info["psf_stars_per_refit"][-1] == len(
        Table.read(out / "psf_stars.parquet"))
    assert counts["psf_stars_converged_in_first_fit"] <= counts["psf_stars_selected"]
    assert info["noise_model"]["gain_e_per_adu"] == info["header"]["gain"]
    assert "gain" not in info["fit"]["options"]  # the engine's unused noise defaults are not reported
    fwhm = info["fwhm"]
    assert fwhm["pixel_convolved_px"] > fwhm["intrinsic_px"]
    assert set(info["timings_s"]) >= {"fit", "photometry"}


def test_progress_names_each_stage_and_the_compilation(galsim_fit_and_progress):
    fit, messages = galsim_fit_and_progress
    stages = ["background", "detection", "selection", "stamps", "fit", "photometry"]
    # every stage announced, in order (a stage is named again when a compilation within it ends)
    assert list(dict.fromkeys(m for m in messages if m in stages)) == stages
    assert "fit 1 of at most 4: " in " ".join(messages)  # the chi2-clipping fits are counted
    # the timings keep compilation apart: where the fit compiled, the display said so meanwhile
    if fit.timings.get("fit_compile", 0) > 0:
        assert "fit: compiling (first run only; cached afterwards)" in messages
    assert all(v >= 0 for v in fit.timings.values())


def test_figures_are_150_dpi_and_not_blank(written):
    from PIL import Image

    out, paths = written
    pngs = sorted(p for p in paths if p.suffix == ".png")
    assert [p.name for p in pngs] == ["ellipticity_map.png", "fwhm_map.png", "radial_profile.png", "residuals.png"]
    for path in pngs:
        image = Image.open(path)
        assert image.info["dpi"] == pytest.approx((150, 150), abs=0.05)  # PNG stores pixels per metre
        assert min(image.size) >= 500 and max(image.size) >= 750  # each figure is >= 3.6 x 5 inches
        pixels = np.asarray(image.convert("L"), float)
        # not blank: a real plot has >= 3 % of its pixels away from the background (white) by 30 levels
        assert np.mean(np.abs(pixels - 255) > 30) > 0.03, path.name


def test_report_page_renders_offline_with_every_figure(written, render_dom):
    out, paths = written
    page = out / "report.html"
    assert page in paths
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # no external asset
    assert 'href="stars.parquet"' in text and "Selection cuts" in text
    assert 'data-figures-loaded="4/4"' in render_dom(page)


def test_residual_image_is_the_data_minus_sky_and_models(galsim_fit, tmp_path):
    # `--residual`: image - sky - every source's model, NaN on bad pixels, float32, the same values as the
    # stamps the floor is measured on.  On the GalSim quadrant the models take the stars out: the residual's
    # robust spread over the whole image must be the sky's noise to 5 % (measured 1 %; undetected faint stars
    # and the sky map's own error add a little), and the brightest tenth of the stars keep a median 0.5 % of
    # their flux in their 5 x 5 cores (measured 0.04 %, the noise there; a star left in keeps ~80 %).
    from astropy.io import fits

    paths = galsim_fit.write(tmp_path, residual=True)
    assert tmp_path / "residual.fits" in paths
    residual = fits.getdata(tmp_path / "residual.fits")
    grouped = galsim_fit.photometry_passes
    np.testing.assert_array_equal(residual, grouped.residual)
    assert residual.dtype.itemsize == 4 and np.all(np.isnan(residual) == galsim_fit.exposure.bad)
    sky = np.asarray(galsim_fit.background.rms_map, float)
    spread = 1.4826 * np.nanmedian(np.abs(residual - np.nanmedian(residual)))
    print(f"residual spread {spread:.3f}, sky noise {np.median(sky):.3f}")
    assert spread == pytest.approx(np.median(sky), rel=0.05)
    cat = galsim_fit.catalog
    bright = np.flatnonzero(np.asarray(cat["flux_fit"], float) > np.nanpercentile(cat["flux_fit"], 90))
    x, y = (np.rint(np.asarray(cat[c], float)[bright]).astype(int) for c in ("x_fit", "y_fit"))
    cores = np.array([np.nansum(residual[j - 2:j + 3, i - 2:i + 3]) for i, j in zip(x, y)])
    print(f"median |core residual| / flux {np.median(np.abs(cores) / np.asarray(cat['flux_fit'], float)[bright]):.4f}")
    assert np.median(np.abs(cores) / np.asarray(cat["flux_fit"], float)[bright]) < 0.005
    corners = grouped.stamp_table(galsim_fit.background, 15)[1]
    stamps = grouped.residual_stamps(corners, 15)
    row, col = corners.y0[0] + 7, corners.x0[0] + 7
    assert stamps[0, 7, 7] == pytest.approx(residual[row, col] - np.nan_to_num(grouped.fit["bkg_fit"][0]), abs=1e-9)

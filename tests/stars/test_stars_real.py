"""The pipeline on the real ZTF quadrant: a 1024 x 1024 cut-out in the fast suite, the
whole quadrant through the CLI in the slow one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from psfax.cli import main
from psfax.stars import fit_exposure, read_exposure
from psfax.stars.pipeline import _fit

CUT = (slice(0, 1024), slice(0, 1024))  # origin kept, so the header's WCS stays valid


@pytest.fixture(scope="module")
def cutout(ztf_exposure):
    exp = ztf_exposure
    return read_exposure(exp.data[CUT].copy(), exp.mask_bits[CUT].copy(), header=exp.header,
                         bad_bits=exp.bad_bits)


@pytest.fixture(scope="module")
def moffat(cutout):
    return fit_exposure(cutout, photometry=False)


def test_cutout_selection_and_convergence(moffat):
    counts = moffat.counts
    # a ninth of the quadrant's 7838 detections and ~1232 PSF stars; +-30 % for the
    # uneven star density across the quadrant
    assert 600 < counts["detected"] < 1200
    assert 90 < counts["shape"] < 180
    assert moffat.converged_fraction >= 0.95  # the target
    # clipping keeps most stars: a chi2 4-MAD outlier rule removes the tail only
    assert moffat.clipping[-1] >= 0.6 * moffat.clipping[0]


def test_cutout_psf_is_undersampled_moffat(moffat):
    centre = moffat.psf_at(512.0, 512.0)
    err = moffat.psf_err_at(512.0, 512.0)
    # the issue quotes an intrinsic FWHM of ~0.9 px, beta 1.8-2.3 from bright isolated
    # stars; our fit of all 14-18 mag stars lands near 0.8 px, beta 1.6: the window
    # 0.7-1.0 px, beta 1.4-2.5 says "undersampled Moffat", not a point or a blob
    assert 0.7 < centre["fwhm"][0] < 1.0
    assert 1.4 < centre["beta"][0] < 2.5
    assert err["fwhm"][0] < 0.02  # ~100 stars constrain the FWHM to ~1 %


def test_moffat_fits_better_than_gaussian(cutout, moffat):
    import dataclasses

    gauss = _fit(moffat.psf_stamps, cutout, dataclasses.replace(moffat.options, model="gaussian"))
    moffat_chi2 = np.median(moffat.psf_stars["reduced_chi2"])
    gauss_chi2 = np.median(gauss.table["reduced_chi2"])
    # the claim measured on identical stars and pixels; the Moffat wings make a
    # difference far larger than the ~2 % scatter of a median over ~100 stars
    assert moffat_chi2 < 0.95 * gauss_chi2


@pytest.mark.slow
def test_whole_quadrant_cli(ztf_files, tmp_path):
    science, mask = ztf_files
    out = tmp_path / "out"
    assert main(["stars", "fit", str(science), "--mask", str(mask), "--out", str(out)]) == 0
    info = json.loads((out / "psf.json").read_text())
    assert info["counts"]["converged_fraction_first_fit"] >= 0.95
    fwhm = info["fwhm"]
    assert 0.7 < fwhm["intrinsic_px"] < 1.0  # as in the cut-out test
    assert fwhm["intrinsic_arcsec"] == pytest.approx(fwhm["intrinsic_px"] * 1.012, rel=1e-12)
    # the pixel-convolved FWHM is the one a measurement on the image gives: the header's SEEING
    # (1.241 px, measured by the ZTF pipeline on its own) within 10 %
    assert fwhm["pixel_convolved_px"] == pytest.approx(fwhm["header_seeing_px"], rel=0.1)
    from astropy.table import Table

    stars = Table.read(out / "stars.parquet")
    # ~7700 detections have a full stamp; most are faint point sources
    assert len(stars) > 7000
    good = (stars["flags"] == 0) & (stars["source_flags"] == 0)
    assert good.mean() > 0.5

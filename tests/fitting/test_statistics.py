"""Statistical checks of the fitter against GalSim-rendered stars with known truth.

For >= 500 stars per case: pulls (fit - truth) / err of x, y and flux have a
standard deviation in [0.9, 1.1] and a mean within +-0.1 (with 500 stars the
standard error of a pull's mean is 0.045 and of its standard deviation
0.032, so these bounds are about 2-3 sigma of the sampling noise), the flux
bias is below 0.2 % (fluxes of 1e4-3e5 ADU give a standard error of the mean
ratio of about 0.03 %), and more than 99 % of the stars converge.
"""

import numpy as np
import pytest

import psfax
from galsim_stars import GAIN, READ_NOISE, pulls


def check_statistics(result, stars, *, shape_tol=None):
    t = result.table
    assert len(t) == len(stars.stamps)
    assert np.mean(t["converged"]) > 0.99
    for name in ("x", "y", "flux"):
        p = pulls(t, stars.truth, name)
        assert np.all(np.isfinite(p)), name
        assert 0.9 <= np.std(p) <= 1.1, (name, np.std(p))
        assert abs(np.mean(p)) < 0.1, (name, np.mean(p))
    ratio = np.asarray(t["flux_fit"]) / stars.truth["flux"]
    assert abs(np.mean(ratio) - 1) < 2e-3, np.mean(ratio) - 1
    assert np.median(t["reduced_chi2"]) == pytest.approx(1.0, abs=0.05)  # 225-pixel stamps: chi2/dof scatter ~0.1
    if shape_tol is not None:
        for name, tol in shape_tol.items():
            assert np.median(t[name]) == pytest.approx(stars.truth[name], abs=tol), name


def fit(stars, **kw):
    return psfax.fit_stamps(stars.stamps, gain=GAIN, read_noise=READ_NOISE, model=stars.model, **kw)


MODES = {
    "per_star": {},
    "shared": {"shared_shape": True},
}


@pytest.mark.parametrize("mode", list(MODES))
def test_lm_moffat(moffat_stars, mode):
    # shape errors per star are ~1 %: medians recovered to 0.01 px (fwhm) and 0.05 (beta)
    check_statistics(fit(moffat_stars, **MODES[mode]), moffat_stars, shape_tol={"fwhm": 0.01, "beta": 0.05})


def test_lm_photometry_fixed_shape(moffat_stars):
    check_statistics(fit(moffat_stars, shape={"fwhm": 1.8, "beta": 2.5}), moffat_stars)


@pytest.mark.parametrize("mode", ["per_star", pytest.param("shared", marks=pytest.mark.slow)])
def test_lm_gaussian(gaussian_stars, mode):
    check_statistics(fit(gaussian_stars, **MODES[mode]), gaussian_stars, shape_tol={"fwhm": 0.01})


@pytest.mark.slow
def test_lm_undersampled_needs_pixel_integration(undersampled_stars):
    """FWHM 0.9 px: the pixel-integrated model is unbiased; the point-sampled one is not."""
    check_statistics(fit(undersampled_stars, shared_shape=True), undersampled_stars,
                     shape_tol={"fwhm": 0.01, "beta": 0.05})
    sampled = fit(undersampled_stars, shared_shape=True, pixel_integrated=False)
    # a point-sampled Moffat has to widen by ~0.3 px to mimic the pixel: far outside any error
    assert sampled.shape["fwhm"] - 0.9 > 0.2
    assert np.median(sampled.table["reduced_chi2"]) > 1.1


# the optimizers other than LM (the default) run in `make test-all`
@pytest.mark.slow
@pytest.mark.parametrize("optimizer, mode", [("tncg", "per_star"), ("scipy", "shared"), ("tncg", "shared"),
                                             ("scipy", "per_star")])
def test_other_optimizers_moffat(moffat_stars, optimizer, mode):
    result = fit(moffat_stars, optimizer=optimizer, **MODES[mode])
    check_statistics(result, moffat_stars, shape_tol={"fwhm": 0.01, "beta": 0.05})
    # every optimizer reaches the same minimum as LM: positions agree to 1 % of their errors
    lm = fit(moffat_stars, **MODES[mode]).table
    assert np.max(np.abs(result.table["x_fit"] - lm["x_fit"]) / lm["x_err"]) < 0.01


@pytest.mark.slow
def test_adam_moffat_per_star(moffat_stars):
    result = fit(moffat_stars, optimizer="adam")
    check_statistics(result, moffat_stars, shape_tol={"fwhm": 0.01, "beta": 0.05})


@pytest.mark.slow
def test_adam_moffat_shared(moffat_stars):
    # Adam's 1500 steps reach the joint minimum from the peak-pixel FWHM start (the old Gaussian
    # peak-to-flux start, 36 % wide, left it ~260 above LM's chi2): the same minimum as LM's
    result = fit(moffat_stars, optimizer="adam", shared_shape=True)
    check_statistics(result, moffat_stars, shape_tol={"fwhm": 0.01, "beta": 0.05})
    lm = fit(moffat_stars, shared_shape=True)
    assert np.sum(result.table["chi2"]) - np.sum(lm.table["chi2"]) < 0.1


@pytest.mark.slow
def test_adam_photometry_fixed_shape(moffat_stars):
    check_statistics(fit(moffat_stars, optimizer="adam", shape={"fwhm": 1.8, "beta": 2.5}), moffat_stars)


@pytest.mark.slow
def test_shared_shape_errors_match_scatter():
    """The shared FWHM's error is honest: across 20 independent fields its pull has unit scatter.

    20 fields give a standard deviation known to +-16 %; we accept [0.6, 1.5].
    """
    from galsim_stars import make_stars

    fwhm_pulls = []
    for seed in range(20):
        stars = make_stars("moffat", {"fwhm": 1.8, "beta": 2.5}, n=40, seed=100 + seed)
        r = fit(stars, shared_shape=True)
        fwhm_pulls.append((r.shape["fwhm"] - 1.8) / r.shape_err["fwhm"])
    assert 0.6 <= np.std(fwhm_pulls) <= 1.5, fwhm_pulls
    assert abs(np.mean(fwhm_pulls)) < 0.7  # standard error of the mean of 20: 0.22


@pytest.mark.slow
def test_elliptical_moffat_recovers_shear():
    from galsim_stars import make_stars

    shape = {"fwhm": 1.8, "beta": 2.5, "g1": 0.08, "g2": -0.05}
    stars = make_stars("elliptical_moffat", shape, n=500, seed=21)
    r = fit(stars, shared_shape=True)
    check_statistics(r, stars)
    g = np.hypot(0.08, -0.05)
    e_true, theta_true = 2 * g / (1 + g), 0.5 * np.arctan2(-0.05, 0.08)
    # 500 bright stars fix the ellipticity to ~1e-3; allow 5 errors
    assert r.shape["ellipticity"] == pytest.approx(e_true, abs=5 * r.shape_err["ellipticity"] + 1e-4)
    assert r.shape["theta"] == pytest.approx(theta_true, abs=5 * r.shape_err["theta"] + 1e-3)


@pytest.mark.slow
def test_spatially_varying_shape():
    """FWHM varying across a 2000-px field is recovered by a degree-1 shared model.

    The polynomial acts on the unconstrained log FWHM, so the truth varies
    log-linearly (1.6 -> 2.0 px along x).
    """
    import galsim

    from galsim_stars import GAIN, READ_NOISE, SIZE, SKY

    rng = np.random.default_rng(5)
    n = 1000  # pull means known to +-0.032: the +-0.1 bound is 3 sigma
    pos = rng.uniform(0, 2000, (n, 2))
    fwhm_true = 1.6 * 1.25 ** (pos[:, 0] / 2000)  # 1.6 -> 2.0 px across x
    flux = np.exp(rng.uniform(np.log(2e4), np.log(3e5), n))
    off = rng.uniform(-0.5, 0.5, (n, 2))
    stamps = np.empty((n, SIZE, SIZE))
    for i in range(n):
        img = galsim.ImageD(SIZE, SIZE, scale=1.0)
        galsim.Moffat(beta=2.5, fwhm=fwhm_true[i]).withFlux(flux[i]).drawImage(img, offset=tuple(off[i]))
        stamps[i] = (rng.poisson((img.array + SKY) * GAIN) + rng.normal(0, READ_NOISE, img.array.shape)) / GAIN
    r = psfax.fit_stamps(stamps, gain=GAIN, read_noise=READ_NOISE, shared_shape=True, positions=pos,
                         spatial_degree=1)
    corners = np.array([[0, 0], [2000, 0], [0, 2000], [2000, 2000]], float)
    got = r.psf_at(corners[:, 0], corners[:, 1])["fwhm"]
    truth = 1.6 * 1.25 ** (corners[:, 0] / 2000)
    _, err = r.shared.shape_at(corners[:, 0], corners[:, 1])
    # corners are extrapolation-free (stars fill the field); 4 errors of the spatial model
    assert np.all(np.abs(got - truth) < 4 * err["fwhm"]), (got, truth, err["fwhm"])
    check_statistics(r, type("S", (), {"stamps": stamps, "truth": {"x": 7 + off[:, 0], "y": 7 + off[:, 1],
                                                                   "flux": flux}})())

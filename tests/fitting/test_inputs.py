"""Bad input gives a clear exception (message pinned) or a per-star flag, never a silent NaN row."""

import numpy as np
import pytest

import psfax
from psfax.errors import InputError, InputTypeError
from psfax.fitting import flags as F


def good_stamps(n=20, seed=0):
    """n bright Moffat stars (15 x 15): the tests share n, so they share the fitter's compiled programs."""
    truth = {"x": np.full(n, 7.2), "y": np.full(n, 6.8), "flux": np.full(n, 5e4), "bkg": 100.0,
             "fwhm": 1.8, "beta": 2.5}
    clean = psfax.render_stamps(truth, (15, 15), model="moffat")
    rng = np.random.default_rng(seed)
    return rng.poisson(clean * 6.0) / 6.0


def fit(stamps, **kw):
    kw.setdefault("gain", 6.0)
    kw.setdefault("read_noise", 9.0)
    return psfax.fit_stamps(stamps, **kw)


def test_nan_pixels_are_masked_and_flagged():
    stamps = good_stamps()
    stamps[3, 2, 2] = np.nan
    t = fit(stamps).table
    assert t["flags"][3] & F.BAD_PIXELS
    assert np.isfinite(t["x_fit"][3]) and t["converged"][3]
    assert t["dof"][3] == t["dof"][0] - 1  # one pixel fewer
    assert np.all(t["flags"][[0, 1, 2, 4]] == 0)


def test_all_masked_stamp_is_flagged_not_fitted():
    stamps = good_stamps()
    mask = np.zeros(stamps.shape, bool)
    mask[5] = True
    t = fit(stamps, mask=mask).table
    assert t["flags"][5] & F.TOO_FEW_PIXELS
    assert not t["converged"][5] and np.isnan(t["x_fit"][5])
    assert np.all(t["flags"][:5] == 0) and np.all(t["converged"][:5])


def test_fewer_pixels_than_parameters_is_flagged():
    stamps = good_stamps()
    mask = np.ones(stamps.shape, bool)
    mask[:, 6:8, 6:9] = False  # 6 usable pixels, 6 free parameters (per-star Moffat)
    mask[0] = False
    t = fit(stamps, mask=mask).table
    assert np.all(t["flags"][1:] & F.TOO_FEW_PIXELS)
    assert t["flags"][0] == 0


def test_nonpositive_variance_pixels_are_masked_and_flagged():
    stamps = good_stamps()
    var = np.maximum(stamps, 1.0) / 6.0 + 2.25
    var[2, 7, 7] = 0.0
    var[4, 0, 0] = -1.0
    t = fit(stamps, variance=var, model_variance=False).table
    assert t["flags"][2] & F.BAD_PIXELS and t["flags"][4] & F.BAD_PIXELS
    assert np.isfinite(t["flux_err"][2])


@pytest.mark.parametrize("kwargs, error, match", [
    ({"stamps": np.zeros(15)}, InputError, r"stamps must have shape \(N, ny, nx\)"),
    ({"stamps": [[1.0]]}, InputTypeError, "stamps must be an array"),
    ({"variance": np.ones((2, 15, 15))}, InputError, "variance must have the shape of stamps"),
    ({"mask": np.zeros((20, 14, 15), bool)}, InputError, "mask must have the shape of stamps"),
    ({"model": "airy"}, InputError, "model must be one of"),
    ({"optimizer": "bfgs"}, InputError, "optimizer must be one of"),
    ({"gain": None}, InputError, "give variance= or gain="),
    ({"gain": -1.0}, InputError, "gain must be a positive number"),
    ({"read_noise": np.nan}, InputError, "read_noise must be a non-negative number"),
    ({"shape": {"fwhm": 1.0}}, InputError, r"shape for model 'moffat' needs \['beta'\]"),
    ({"shape": {"fwhm": 1.0, "beta": 0.9}}, InputError, "shape 'beta' must be finite and > 1"),
    ({"shape": {"fwhm": [1.0, 2.0], "beta": 2.0}}, InputError, "must be a scalar or have one value per stamp"),
    ({"shape": {"fwhm": 1.8, "beta": 2.5}, "shared_shape": True}, InputError, "not both"),
    ({"spatial_degree": 1}, InputError, "spatial_degree needs shared_shape=True"),
    ({"shared_shape": True, "spatial_degree": 3, "positions": np.zeros((20, 2))}, InputError,
     "spatial_degree must be 0, 1 or 2"),
    ({"shared_shape": True, "spatial_degree": 1, "positions": np.zeros((20, 3))}, InputError,
     r"positions must be a finite \(N, 2\) array"),
    ({"dtype": np.int32}, InputError, "dtype must be float32 or float64"),
    ({"device": "tpu"}, InputError, "device must be 'cpu' or 'gpu'"),
    ({"chi2_tolerance": 0.0}, InputError, "chi2_tolerance must be a positive number"),
])
def test_bad_arguments_raise_clear_errors(kwargs, error, match):
    kw = {"stamps": good_stamps(), "gain": 6.0, "read_noise": 9.0, **kwargs}
    stamps = kw.pop("stamps")
    with pytest.raises(error, match=match):
        psfax.fit_stamps(stamps, **kw)


def test_all_stamps_unusable_raises():
    stamps = good_stamps()
    with pytest.raises(InputError, match="no stamp has more usable pixels"):
        fit(stamps, mask=np.ones(stamps.shape, bool))


def test_render_stamps_errors():
    with pytest.raises(InputError, match="render_stamps needs 'beta'"):
        psfax.render_stamps({"x": 1, "y": 1, "flux": 1, "fwhm": 1}, (5, 5), model="moffat")
    with pytest.raises(InputError, match=r"shape must be \(ny, nx\)"):
        psfax.render_stamps({"x": 1, "y": 1, "flux": 1, "fwhm": 1}, 5, model="gaussian")


def test_float32_fit_matches_float64():
    """float32 (the GPU default) reaches the float64 answer to a small fraction of the errors."""
    stamps = good_stamps()
    t64 = fit(stamps, shape={"fwhm": 1.8, "beta": 2.5}).table
    t32 = fit(stamps, shape={"fwhm": 1.8, "beta": 2.5}, dtype=np.float32).table
    # float32 carries ~7 digits: chi2 minima agree to ~1e-3 of the errors; allow 5 %
    assert np.max(np.abs(t32["x_fit"] - t64["x_fit"]) / t64["x_err"]) < 0.05
    assert np.max(np.abs(t32["flux_fit"] - t64["flux_fit"]) / t64["flux_err"]) < 0.05
    assert np.allclose(t32["flux_err"], t64["flux_err"], rtol=1e-3)


def test_import_leaves_jax_x64_alone():
    import jax

    # start from x64 off, whatever ran before (importing aiapy, the solar peer, turns it on globally); a global
    # switch, not a context, so that psfax turning it on globally would show
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)
    try:
        fit(good_stamps())
        assert not jax.config.jax_enable_x64
    finally:
        jax.config.update("jax_enable_x64", before)


def test_fixed_elliptical_shape_from_ellipticity_and_theta():
    """``shape=`` takes ellipticity/theta (the reported columns) as well as g1/g2, with the same result."""
    truth = {"x": np.full(8, 7.1), "y": np.full(8, 6.9), "flux": np.full(8, 5e4), "bkg": 100.0, "fwhm": 1.8,
             "beta": 2.5, "ellipticity": 0.2, "theta": 0.4}
    stamps = np.random.default_rng(1).poisson(psfax.render_stamps(truth, (15, 15), model="elliptical_moffat") * 6) / 6
    by_e = fit(stamps, model="elliptical_moffat", shape={k: truth[k] for k in ("fwhm", "beta", "ellipticity", "theta")})
    g = 0.2 / 1.8
    by_g = fit(stamps, model="elliptical_moffat",
               shape={"fwhm": 1.8, "beta": 2.5, "g1": g * np.cos(0.8), "g2": g * np.sin(0.8)})
    np.testing.assert_allclose(by_e.table["flux_fit"], by_g.table["flux_fit"], rtol=1e-10)  # same model
    assert np.allclose(by_e.table["ellipticity"], 0.2) and np.allclose(by_e.table["theta"], 0.4)
    with pytest.raises(InputError, match=r"needs \['g1', 'g2'\]"):
        fit(stamps, model="elliptical_moffat", shape={"fwhm": 1.8, "beta": 2.5})


def test_data_based_variance_weights_the_pixels():
    """model_variance=False with gain: weights from the data, not unit weights.

    For 5e4-ADU stars the data- and model-based variances differ by the
    Poisson noise of the pixels (~1 %), so the flux errors agree to 5 %;
    unit weights would give errors off by the sqrt of the variance (~10x).
    """
    stamps = good_stamps()
    model_based = fit(stamps, shape={"fwhm": 1.8, "beta": 2.5}).table
    data_based = fit(stamps, shape={"fwhm": 1.8, "beta": 2.5}, model_variance=False).table
    np.testing.assert_allclose(data_based["flux_err"], model_based["flux_err"], rtol=0.05)
    assert np.median(data_based["reduced_chi2"]) == pytest.approx(1.0, abs=0.15)  # 221 dof: scatter ~0.1


@pytest.mark.parametrize("rows", [19, 21])
def test_positions_with_wrong_row_count_raises(rows):
    """Issue 20.2: positions= with N - 1 rows gave the last star (0, 0) silently; N + 1 a raw JAX error."""
    with pytest.raises(InputError, match=rf"positions has {rows} rows but there are 20 stamps"):
        fit(good_stamps(), shared_shape=True, spatial_degree=1, positions=np.zeros((rows, 2)))


@pytest.mark.slow
@pytest.mark.parametrize("size", [3, 4])
def test_free_moffat_on_stamps_smaller_than_5x5_fits(size):
    """Issue 20.6: a free-shape Moffat on stamps smaller than the 5 x 5 inner quadrature window raised a raw
    JAX TypeError; the window now shrinks to the stamp (all of it integrated at the inner order).  A 3 x 3
    stamp of a FWHM 1.2 px star holds ~70 % of its light: the fit converges and finds the flux within 5 %
    (the model extrapolates the wings from 9 or 16 pixels; seen: within 1 %)."""
    n = 20
    truth = {"x": np.full(n, (size - 1) / 2 + 0.1), "y": np.full(n, (size - 1) / 2), "flux": np.full(n, 5e4),
             "bkg": 100.0, "fwhm": 1.2, "beta": 2.5}
    stamps = np.random.default_rng(3).poisson(psfax.render_stamps(truth, (size, size)) * 6.0) / 6.0
    t = fit(stamps, shape={"fwhm": 1.2, "beta": 2.5}).table
    assert np.all(t["converged"])
    assert abs(np.median(t["flux_fit"]) / 5e4 - 1) < 0.05
    free = fit(stamps, model="gaussian") if size == 3 else fit(stamps)  # 9 pixels: too few for 6 parameters
    assert np.all(np.isfinite(free.table["flux_fit"]))


@pytest.mark.parametrize("params, match", [
    ({"fwhm": -2.0}, r"fwhm must be finite and > 0"),
    ({"fwhm": 0.0}, r"fwhm must be finite and > 0"),
    ({"fwhm": np.nan}, r"fwhm must be finite and > 0"),
    ({"beta": 1.0}, r"beta must be finite and > 1.0"),
    ({"beta": 0.5}, r"beta must be finite and > 1.0"),
    ({"x": [1.0, 2.0], "flux": [1.0, 2.0, 3.0]}, r"different lengths"),
    ({"x": []}, r"params\['x'\] must be a scalar or a non-empty 1-D array"),
    ({"x": None}, r"params\['x'\] is None"),
    ({"x": "left"}, r"params\['x'\] must be numbers"),
    ({"flux": np.inf}, r"flux must be finite"),
])
def test_render_stamps_validates_shape_parameters(params, match):
    """Issue 20.7: bad shape parameters drew mirrored, NaN, negative or zero images; bad lengths or types
    raised raw errors.  beta <= 1 is refused because the Moffat's total flux is finite only for beta > 1
    (the same limit fit_stamps' shape= holds)."""
    good = {"x": 7.0, "y": 7.0, "flux": 1000.0, "fwhm": 2.0, "beta": 2.5}
    with pytest.raises(InputError, match=match):
        psfax.render_stamps({**good, **params}, (15, 15), model="moffat")


def test_render_stamps_needs_a_table_or_dict():
    with pytest.raises(InputTypeError, match="params must be a dict or an astropy Table, got list"):
        psfax.render_stamps([7.0, 7.0, 1000.0], (15, 15))


def test_held_shape_reported_without_a_fake_zero_error():
    """Issue 21.4: a held (fixed) shape has no error: like photutils, whose table has no column for fixed
    parameters, the table keeps the held values (fwhm, beta) but no fwhm_err/beta_err, and the covariance
    covers the fitted x, y, flux, bkg only."""
    r = fit(good_stamps(), shape={"fwhm": 1.8, "beta": 2.5})
    assert "fwhm_err" not in r.table.colnames and "beta_err" not in r.table.colnames
    np.testing.assert_allclose(r.table["fwhm"], 1.8, rtol=1e-12)
    np.testing.assert_allclose(r.table["beta"], 2.5, rtol=1e-12)
    assert r.param_names == ["x_fit", "y_fit", "flux_fit", "bkg_fit"] and r.covariance.shape[1:] == (4, 4)
    assert np.all(np.isfinite(r.table["flux_err"]) & (r.table["flux_err"] > 0))

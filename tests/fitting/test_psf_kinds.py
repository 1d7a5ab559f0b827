"""A PSF kind is one new module plus its registration: a toy kind defined here (a known PSF sampled on a
fine pixel grid, shifted by bilinear interpolation) fits stamps through ``fit_stamps(psf=...)`` with no
change to psfax, and agrees with the analytic photometry of the same PSF."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.ndimage import map_coordinates

import psfax
from galsim_stars import GAIN, READ_NOISE
from psfax.fitting import PSF, register_psf
from psfax.fitting.psf import KINDS, static, unit_stamps
from psfax.fitting.table import table_linearise
from psfax.profiles import get_profile, pixel_values

STEP = 1.0 / 32
HALF = 12.0


@register_psf
@dataclasses.dataclass(frozen=True)
class SampledStamp(PSF):
    """Unit-flux pixel-integrated PSF sampled at offsets ``j * step - half`` px on both axes."""

    name = "sampled_stamp_test"
    image: jnp.ndarray = None
    step: float = static(STEP)
    half: float = static(HALF)

    def stamp(self, x0, y0, size):
        ny, nx = size
        yy, xx = jnp.meshgrid(jnp.arange(ny, dtype=self.image.dtype), jnp.arange(nx, dtype=self.image.dtype),
                              indexing="ij")
        coords = [(yy - y0 + self.half) / self.step, (xx - x0 + self.half) / self.step]
        return map_coordinates(self.image, coords, order=1)

    def linearise(self, v, size):
        p = self.stamp(v[0], v[1], size)
        dx, dy = jax.jacfwd(self.stamp, argnums=(0, 1))(v[0], v[1], size)
        return table_linearise(v, (p, dx, dy))


def sampled_moffat(fwhm, beta):
    offsets = np.arange(int(round(2 * HALF / STEP)) + 1) * STEP - HALF
    with jax.enable_x64(True):
        image = pixel_values(get_profile("moffat"), jnp.asarray(offsets)[None, :], jnp.asarray(offsets)[:, None],
                             {"fwhm": fwhm, "beta": beta})
    return SampledStamp(np.asarray(image))


def test_toy_kind_fits_like_the_analytic_photometry(moffat_stars):
    """The toy kind holds the GalSim stars' own PSF (Moffat FWHM 1.8 px, beta 2.5), pixel-integrated, on a
    1/32 px grid: bilinear interpolation then errs by ~h^2 f''/8 ~ 2e-4 of the peak, a small fraction of
    the photometric errors of these stars (flux S/N ~ 200-500), so x, y and flux agree with the tabulated
    analytic fit within 0.1 sigma, and their errors within 2 %."""
    toy = sampled_moffat(1.8, 2.5)
    assert KINDS["sampled_stamp_test"] is SampledStamp
    got = psfax.fit_stamps(moffat_stars.stamps, gain=GAIN, read_noise=READ_NOISE, psf=toy)
    ref = psfax.fit_stamps(moffat_stars.stamps, gain=GAIN, read_noise=READ_NOISE, shape={"fwhm": 1.8, "beta": 2.5})
    assert got.model == "sampled_stamp_test" and got.param_names == ["x_fit", "y_fit", "flux_fit", "bkg_fit"]
    assert "fwhm" not in got.table.colnames and got.covariance.shape == (len(moffat_stars.stamps), 4, 4)
    assert np.all(got.table["converged"]) and np.all(got.table["flags"] == 0)
    for name in ("x", "y", "flux"):
        diff = (np.asarray(got.table[f"{name}_fit"]) - ref.table[f"{name}_fit"]) / ref.table[f"{name}_err"]
        assert np.max(np.abs(diff)) < 0.1, name
    np.testing.assert_allclose(got.table["flux_err"], ref.table["flux_err"], rtol=0.02)


def test_unit_stamps_of_a_kind_sum_to_its_flux_on_the_stamp():
    """``unit_stamps`` evaluates a kind on a batch: the toy Moffat at two sub-pixel centres sums over a
    15 x 15 stamp to the pixel-integrated Moffat's own sum there (to the interpolation's 1e-3)."""
    toy = sampled_moffat(1.8, 2.5)
    with jax.enable_x64(True):
        stamps = np.asarray(unit_stamps(toy, jnp.asarray([7.0, 6.7]), jnp.asarray([7.0, 7.4]), (15, 15)))
        exact = psfax.render_stamps({"x": [7.0, 6.7], "y": [7.0, 7.4], "flux": 1.0, "fwhm": 1.8, "beta": 2.5},
                                    (15, 15))
    assert stamps.shape == (2, 15, 15)
    np.testing.assert_allclose(stamps.sum(axis=(1, 2)), exact.sum(axis=(1, 2)), rtol=1e-3)


def test_psf_value_must_be_a_psf():
    with pytest.raises(TypeError, match="psf must be a PSF value"):
        psfax.fit_stamps(np.ones((3, 9, 9)), gain=1.0, psf="moffat")

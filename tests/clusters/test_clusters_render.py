"""Renderer parity against GalSim (the independent reference)."""

import galsim
import jax
import numpy as np
import pytest

from psfax.clusters.prior import HLR_PER_SCALE_RADIUS
from psfax.clusters.render import Sources, add_noise, kolmogorov_transfer, render_field_jit, shear_matrix
from psfax.device import compute_context, resolve_device

STAMP, SIZE, FLUX = 64, 64, 1000.0

# (half-light radius px, sub-pixel offset dx, dy, intrinsic g1, g2, field shear g1, g2, PSF FWHM px)
CASES = [
    (3.0, 0.0, 0.0, 0.0, 0.0, 0.3, 0.2, 4.0),
    (0.0, 0.2, -0.3, 0.0, 0.0, 0.0, 0.0, 3.6),      # point source (star)
    (1.5, 0.45, 0.45, -0.5, 0.1, 0.0, 0.0, 4.2),
    (6.0, -0.4, 0.1, 0.3, -0.2, 0.02, -0.01, 3.8),  # near the prior's size cap (2 arcsec = 7.6 px)
]


def _one_source(hlr, dx, dy, g1, g2, s1, s2, fwhm):
    n_pad = 64
    src = Sources(
        x=np.r_[SIZE / 2 - 0.5 + dx, np.zeros(n_pad - 1)], y=np.r_[SIZE / 2 - 0.5 + dy, np.zeros(n_pad - 1)],
        flux=np.r_[FLUX, np.zeros(n_pad - 1)][:, None],
        scale_radius=np.r_[hlr / HLR_PER_SCALE_RADIUS, np.zeros(n_pad - 1)],
        jac=np.concatenate([(shear_matrix(s1, s2) @ shear_matrix(g1, g2))[None],
                            np.broadcast_to(np.eye(2), (n_pad - 1, 2, 2))]))
    with compute_context(np.float64, resolve_device("cpu")):
        return np.asarray(render_field_jit(src, np.array([fwhm]), size=SIZE, stamp=STAMP, margin=0))[0]


def _galsim(hlr, dx, dy, g1, g2, s1, s2, fwhm):
    gal = (galsim.Exponential(half_light_radius=hlr, flux=FLUX).shear(g1=g1, g2=g2).shear(g1=s1, g2=s2)
           if hlr > 0 else galsim.DeltaFunction(flux=FLUX))
    return galsim.Convolve(gal, galsim.Kolmogorov(fwhm=fwhm)).drawImage(
        nx=SIZE, ny=SIZE, scale=1.0, offset=(dx, dy)).array


@pytest.mark.parametrize("case", CASES)
def test_stamp_matches_galsim(case):
    ours, ref = _one_source(*case), _galsim(*case)
    # 5e-3 of the peak: GalSim's own default accuracy (folding_threshold 5e-3, maxk_threshold
    # 1e-3); the largest galaxy also loses ~0.5% of its flux beyond the 64-px stamp.
    assert np.abs(ours - ref).max() < 5e-3 * ref.max()
    # total flux to 0.2%: both truncate the same profile to the same 64 x 64 pixels
    assert ours.sum() == pytest.approx(ref.sum(), rel=2e-3)


def test_kolmogorov_transfer_matches_galsim():
    k = np.linspace(0.0, 2.0, 21)
    ref = np.array([galsim.Kolmogorov(fwhm=3.7).kValue(kk, 0.0).real for kk in k])
    with jax.enable_x64(True):
        ours = np.asarray(kolmogorov_transfer(k, 3.7))
    # 1e-5 absolute: the FWHM / (lambda / r0) constant is published to 6 digits
    assert np.abs(ours - ref).max() < 1e-5


def test_noise_has_sky_plus_poisson_variance():
    with compute_context(np.float64, resolve_device("cpu")):
        image = np.zeros((2, 200, 200))
        image[1] = 400.0
        noisy = np.asarray(add_noise(jax.random.PRNGKey(3), image, [5.0, 5.0], 2.0))
    # 40000 pixels: the sample std has a relative error of 1/sqrt(2 * 40000) = 0.35%; allow 4 sigma
    assert noisy[0].std() == pytest.approx(5.0, rel=0.015)
    assert noisy[1].std() == pytest.approx(np.sqrt(25.0 + 400.0 / 2.0), rel=0.015)

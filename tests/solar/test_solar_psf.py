"""The AIA PSF against aiapy 0.12.1 ``calculate_psf`` and its own invariants."""

from __future__ import annotations

import numpy as np
import pytest

from psfax.errors import InputError
from psfax.solar import aia_psf
from psfax.solar.psf import _disk_path, clear_memory_cache, compute_psf

# Equality with aiapy is asked to 1e-10 of the peak; both sum the same float64
# Gaussians and FFTs, so the only difference is summation order and FFT
# rounding (~1e-16 of the peak, times sqrt(log N)).
PSF_TOL = 1e-10


def _aiapy_psf(channel, **kwargs):
    aiapy_psf = pytest.importorskip("aiapy.psf")
    import astropy.units as u

    return np.asarray(aiapy_psf.calculate_psf(channel * u.angstrom, **kwargs))


@pytest.mark.slow
def test_psf_171_equals_aiapy():
    ours = aia_psf(171)
    ref = _aiapy_psf(171)
    assert ours.shape == (4096, 4096)
    assert np.abs(ours - ref).max() / ref.max() < PSF_TOL


def test_preflight_core_and_few_orders_equal_aiapy():
    # few orders keep aiapy fast; the pre-flight width (0.951 for 94 A) exercises a wider spike window
    orders = np.arange(-4, 5)
    ours = compute_psf(94, use_preflightcore=True, diffraction_orders=orders)
    ref = _aiapy_psf(94, use_preflightcore=True, diffraction_orders=orders)
    assert np.abs(ours - ref).max() / ref.max() < PSF_TOL


@pytest.mark.slow
@pytest.mark.parametrize("channel", [94, 131, 193, 211, 304, 335])
def test_psf_other_channels_equal_aiapy(channel):
    ours = compute_psf(channel)
    ref = _aiapy_psf(channel)
    assert np.abs(ours - ref).max() / ref.max() < PSF_TOL


def test_psf_unit_sum_and_peak_at_centre():
    psf = aia_psf(171)
    # the two filter PSFs are normalised, so the composite sums to 1 up to FFT rounding (~1e-13)
    assert abs(psf.sum() - 1.0) < 1e-12
    assert np.unravel_index(np.argmax(psf), psf.shape) == (2048, 2048)
    # 82% of each filter is the core; the composite core holds at least 0.82^2 of the light
    assert psf[2040:2057, 2040:2057].sum() > 0.82**2


def test_psf_cache_memory_and_disk():
    clear_memory_cache()
    first = aia_psf(171)
    assert aia_psf(171) is first  # memory cache
    path = _disk_path((171, False, tuple(range(-100, 101)), "<f8"))
    assert path.is_file() and path.suffix == ".npz"
    clear_memory_cache()
    again = aia_psf(171)  # read back from disk, bit for bit
    assert again is not first
    assert np.array_equal(again, first)
    assert not again.flags.writeable


def test_psf_float32_close_to_float64():
    p64 = aia_psf(171)
    p32 = compute_psf(171, dtype="float32")
    assert p32.dtype == np.float32
    # float32 FFTs of a unit-sum array: rounding ~1e-7 of the peak
    assert np.abs(p32 - p64).max() / p64.max() < 1e-5


@pytest.mark.parametrize("bad", [170, 1600, "x", None])
def test_bad_channel_is_named(bad):
    with pytest.raises(InputError, match="channel must be one of"):
        aia_psf(bad)


def test_bad_orders_are_named():
    with pytest.raises(InputError, match="diffraction_orders must be"):
        aia_psf(171, diffraction_orders=[0.5, 1.0])


def test_channel_as_quantity():
    import astropy.units as u

    assert aia_psf(171 * u.angstrom) is aia_psf(171)

"""Level-1.5 registration against aiapy 0.12.1 ``register`` and the spline kernel against scipy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from psfax.errors import InputError, InputTypeError
from psfax.solar import register
from psfax.solar.interpolate import affine_transform, spline_coefficients

# Asked: 1e-4 relative on the disk.  Same geometry and the same spline maths
# as scipy.ndimage, so the difference is rounding (~1e-14 of the peak).
DISK_REL_TOL = 1e-4
HEADER_KEYS = ["crpix1", "crpix2", "crval1", "crval2", "cdelt1", "cdelt2", "pc1_1", "pc1_2", "pc2_1",
               "pc2_2", "r_sun", "lvl_num", "naxis1", "naxis2"]


def _aiapy_register(smap, order, missing=None):
    calibrate = pytest.importorskip("aiapy.calibrate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return calibrate.register(smap, order=order, missing=missing)


def _on_disk(smap):
    """Boolean mask of pixels within 0.95 solar radii of the disk centre."""
    ny, nx = smap.data.shape
    cx, cy = smap.wcs.world_to_pixel_values(0.0, 0.0)
    radius = smap.meta["r_sun"]
    yy, xx = np.mgrid[:ny, :nx]
    return (xx - cx) ** 2 + (yy - cy) ** 2 < (0.95 * radius) ** 2


def _compare(ours, ref):
    assert ours.data.shape == ref.data.shape
    disk = _on_disk(ref)
    assert disk.sum() > 0.5 * np.pi * ref.meta["r_sun"] ** 2
    rel = np.abs(ours.data[disk] - ref.data[disk]) / np.abs(ref.data[disk])
    assert rel.max() < DISK_REL_TOL
    # everywhere, including the limb and the corners: rounding only, relative to the peak
    assert np.abs(ours.data - ref.data).max() / np.abs(ref.data).max() < 1e-10
    for key in HEADER_KEYS:
        # header values are computed with the same formulas; 1e-9 allows the
        # reference coordinate's round trip through astropy
        assert ours.meta[key] == pytest.approx(ref.meta[key], rel=1e-9, abs=1e-12), key
    assert "crota2" not in ours.meta


@pytest.mark.parametrize("order", [1, 3])
def test_binned_full_disk_equals_aiapy(aia_map, order):
    ours = register(aia_map, order=order)
    _compare(ours, _aiapy_register(aia_map, order))
    assert ours.meta["lvl_num"] == 1.5
    assert f"spline order {order}" in ours.meta["history"]


@pytest.mark.slow
@pytest.mark.parametrize("order", [1, 3])
def test_full_resolution_equals_aiapy(aia_map_4096, order):
    _compare(register(aia_map_4096, order=order), _aiapy_register(aia_map_4096, order))


def test_rotated_map_equals_aiapy(aia_map):
    # a roll of 20 degrees makes the padding and the crop non-trivial
    meta = dict(aia_map.meta)
    meta["crota2"] = 20.0
    rolled = aia_map._new_instance(aia_map.data, meta)
    _compare(register(rolled, order=3), _aiapy_register(rolled, 3))


@pytest.mark.parametrize("order", [1, 3])
def test_affine_kernel_equals_scipy(order):
    ndimage = pytest.importorskip("scipy.ndimage")
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(3)
    img = rng.random((61, 75))
    angle = 0.3
    matrix = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / 0.9
    offset = np.array([5.0, -8.0])
    ref = ndimage.affine_transform(img.T, matrix, offset=offset, order=order, mode="constant", cval=-1.0).T
    with jax.enable_x64(True):
        ours = np.asarray(affine_transform(jnp.asarray(img), jnp.asarray(matrix), jnp.asarray(offset),
                                           output_shape=img.shape, order=order, cval=-1.0))
    # values in [0, 1]; float64 rounding of a 16-term sum
    assert np.abs(ours - ref).max() < 1e-12
    assert np.sum(ours == -1.0) == np.sum(ref == -1.0)


# block-aligned (no padding), ragged (the last block completed by mirroring), and shorter than
# a block (the mirror extension repeats)
@pytest.mark.parametrize("shape", [(100, 37), (1, 5)] + [pytest.param(s, marks=pytest.mark.slow)
                                                          for s in [(64, 96), (33, 65), (7, 31)]])
def test_prefilter_equals_scipy_mirror(shape):
    ndimage = pytest.importorskip("scipy.ndimage")
    import jax
    import jax.numpy as jnp

    img = np.random.default_rng(4).random(shape)
    with jax.enable_x64(True):
        ours = np.asarray(spline_coefficients(jnp.asarray(img), 3))
    # the block filter drops taps below |z|^33 ~ 1e-19: rounding only
    assert np.abs(ours - ndimage.spline_filter(img, 3, mode="mirror")).max() < 1e-12


def test_float32_register_close(aia_map):
    o64 = register(aia_map, order=3)
    o32 = register(aia_map, order=3, dtype="float32")
    assert o32.data.dtype == np.float32
    disk = _on_disk(o64)
    # float32 spline prefilter and 16-term sums: ~1e-6 relative on the bright disk
    assert np.max(np.abs(o32.data[disk] - o64.data[disk]) / np.abs(o64.data[disk])) < 1e-4


def test_cutout_is_not_full_disk(aia_cutout):
    with pytest.raises(InputError, match="register needs a full-disk image"):
        register(aia_cutout)


def test_bad_order(aia_map):
    with pytest.raises(InputError, match="order must be 1 or 3, got 2"):
        register(aia_map, order=2)


def test_not_an_aia_map(aia_map):
    import sunpy.map

    generic = sunpy.map.GenericMap(aia_map.data, {**aia_map.meta, "instrume": "X", "telescop": "Y",
                                                  "detector": "Z"})
    with pytest.raises(InputTypeError, match="expected a sunpy AIAMap, got GenericMap"):
        register(generic)


@pytest.mark.parametrize("missing", [np.nan, "zero"])
def test_bad_missing(aia_map, missing):
    with pytest.raises(InputError, match="missing must be a finite number"):
        register(aia_map, missing=missing)


def test_explicit_missing_equals_aiapy(aia_map):
    _compare(register(aia_map, order=1, missing=0.0), _aiapy_register(aia_map, 1, missing=0.0))


def test_nan_image(aia_map):
    data = aia_map.data.copy()
    data[5, 5] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        register(aia_map._new_instance(data, aia_map.meta))

"""Candidate centres on the red-sequence member density (psfax.clusters.centres)."""

import numpy as np
import pytest

from psfax.clusters.centres import (MIN_MEMBERS, REFERENCE_SCALE_PX, SMOOTHING_SCALES_PX, box_photometry,
                                    centre_on_members, gaussian_count, member_density, member_flags, member_score)
from psfax.clusters.infer import find_candidates
from psfax.clusters.metrics import source_peaks

BLUE = np.array([0.9, 0.95, 1.0, 1.0])  # flat-spectrum galaxies: g-r ~ 0.06, far from any red-sequence colour


def _noise(shape=(4, 256, 256), seed=0):
    return np.random.default_rng(seed).normal(0.0, 1.0, shape) * np.array([6.0, 8.0, 10.0, 13.0])[:, None, None]


def _ring(cx, cy, n, radius, seed=1):
    """n positions scattered within ``radius`` of (cx, cy)."""
    rng = np.random.default_rng(seed)
    r, phi = radius * np.sqrt(rng.uniform(size=n)), rng.uniform(0, 2 * np.pi, n)
    return np.stack([cx + r * np.cos(phi), cy + r * np.sin(phi)], 1)


def test_member_flags_pick_the_red_sequence_at_its_redshift(red_sequence, paint):
    cube = _noise()
    paint(cube, [(60, 60)], z=0.4)
    paint(cube, [(180, 180)], ratio=BLUE)
    rows, cols = np.nonzero(source_peaks(cube[None])[0])
    order = np.argsort(cols)  # the red source first
    assert list(cols[order]) == [60, 180] and list(rows[order]) == [60, 180]
    flux, var = box_photometry(cube, rows[order], cols[order], 1.0)
    # a sigma = 1.5 px Gaussian puts erf(2.5 / (1.5 sqrt 2))^2 = 0.82 of its flux in the 5x5 box, in every band
    np.testing.assert_allclose(flux[0] / flux[0, 2], red_sequence.flux_ratio[12], rtol=0.05)
    flags = member_flags(flux, var, red_sequence)
    z_ok = red_sequence.z[flags[0]]
    # the red galaxy fits at z = 0.4 and only near it (the r-i colour changes 0.2 mag per 0.1 in z)
    assert 0.4 in np.round(z_ok, 3) and z_ok.min() >= 0.3 and z_ok.max() <= 0.5
    assert not flags[1].any()


def test_member_density_counts_members_under_the_kernel(red_sequence, paint):
    phi = np.arange(8) * np.pi / 4
    cube = paint(_noise(), np.stack([128 + 12 * np.cos(phi), 128 + 12 * np.sin(phi)], 1), z=0.3)
    density = member_density(cube, red_sequence)
    rows, cols = np.nonzero(source_peaks(cube[None])[0])
    assert len(rows) == 8  # 9.4 px apart: eight separate peaks (at the nearest pixels), no noise peaks
    # at the ring's centre each member weighs exp(-d^2 / (2 * 30^2)), d ~ 12 px; the density is their exact sum
    expected = np.sum(np.exp(-((rows - 128) ** 2 + (cols - 128) ** 2) / (2 * REFERENCE_SCALE_PX**2)))
    assert density[128, 128] == pytest.approx(expected, rel=1e-9)
    # 150 px away: exp(-150^2 / 1800) = 4e-6 per member
    assert density[0, 0] < 1e-3


def test_candidate_is_centred_on_red_members_not_on_its_tiles(red_sequence, paint):
    """A cluster cut by the field edge: its tiles fill the field, its red members sit near a corner."""
    cube = _noise()
    paint(cube, _ring(40, 50, 14, 35.0), z=0.45)
    paint(cube, _ring(190, 190, 14, 35.0, seed=2), ratio=BLUE)  # as many blue galaxies: ignored
    probs = np.full((8, 8), 0.9)
    table = find_candidates(probs, 32, 0.5, image=cube, red_sequence=red_sequence).to_pandas()
    assert len(table) == 1
    plain = find_candidates(probs, 32, 0.5).to_pandas()
    assert plain["x"][0] == pytest.approx(127.5) and plain["y"][0] == pytest.approx(127.5)
    # 14 members scattered over 35 px: the smoothed peak lies within ~10 px of their centre (a 64-px match)
    assert np.hypot(table["x"][0] - 40, table["y"][0] - 50) < 15
    assert table["members"][0] > MIN_MEMBERS


def test_candidates_without_members_are_dropped_and_centres_stay_in_their_tiles(red_sequence, paint):
    cube = paint(_noise(), _ring(200, 200, 12, 20.0), z=0.35)
    probs = np.zeros((8, 8))
    probs[0:2, 0:2] = 0.9     # tiles with no red members: dropped (density < MIN_MEMBERS)
    probs[4:6, 4:6] = 0.8     # tiles (4..5, 4..5) = pixels 128..191: the members at ~200 lie in the dilated region
    table = find_candidates(probs, 32, 0.5, image=cube, red_sequence=red_sequence).to_pandas()
    assert len(table) == 1 and table["n_tiles"][0] == 4
    assert 96 <= table["x"][0] < 224 and 96 <= table["y"][0] < 224  # within the tiles dilated by one
    assert np.hypot(table["x"][0] - 200, table["y"][0] - 200) < 15
    # restricted to the undilated tiles (pixels <= 191), the peak is pushed to their corner, lower
    x, y, members, smoothing = centre_on_members(cube, probs >= 0.5, 32, red_sequence)
    assert (x, y) == (191.0, 191.0) and members < table["members"][0]
    assert table["smoothing_px"][0] == REFERENCE_SCALE_PX == 30.0  # a compact group: the scale the tolerances assume


def test_candidates_under_the_cut_are_dropped(red_sequence, paint):
    cube = paint(_noise(), _ring(200, 200, 12, 20.0), z=0.35)
    probs = np.zeros((8, 8))
    probs[5:7, 5:7] = 0.8
    members = find_candidates(probs, 32, 0.5, image=cube, red_sequence=red_sequence)["members"][0].as_py()
    # 12 members within ~20 px under a 30-px Gaussian: the peak counts most of them (about 10)
    assert 6 < members <= 12
    for cut, n in ((members, 1), (members + 0.01, 0)):
        assert len(find_candidates(probs, 32, 0.5, image=cube, red_sequence=red_sequence, min_members=cut)) == n


def test_gaussian_count_is_the_sum_of_unit_gaussians():
    rows, cols = np.array([3.0, 10.0, 10.0]), np.array([5.0, 0.0, 7.0])
    got = gaussian_count(rows, cols, (12, 9), 2.5)
    yy, xx = np.mgrid[:12, :9]
    want = sum(np.exp(-((yy - r) ** 2 + (xx - c) ** 2) / (2 * 2.5**2)) for r, c in zip(rows, cols))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[3, 5] == pytest.approx(1.0 + np.exp(-(49 + 25) / 12.5) + np.exp(-(49 + 4) / 12.5), rel=1e-12)


def test_member_score_takes_the_most_significant_scale(red_sequence, paint):
    """A compact group scores at the reference scale; members spread over the field (a low-redshift cluster
    larger than the field) at a larger one, where its significance D_s * 30 / s is higher."""
    assert SMOOTHING_SCALES_PX == (30.0, 60.0, 90.0)
    grid = np.stack(np.meshgrid(np.arange(28, 240, 40.0), np.arange(28, 240, 40.0)), -1).reshape(-1, 2)
    wide = paint(_noise(seed=3), grid, z=0.3)  # 36 members 40 px apart over the whole field
    score, scale = member_score(wide, red_sequence)
    rows, cols = np.nonzero(source_peaks(wide[None])[0])
    assert len(rows) == 36
    d2 = (rows - 128) ** 2 + (cols - 128) ** 2
    sums = {s: np.sum(np.exp(-d2 / (2 * s**2))) * 30 / s for s in SMOOTHING_SCALES_PX}
    # D_s * 30 / s at the centre: 3.5 (30 px), 6.5 (60 px), 7.2 (90 px): the 90-px scale wins
    assert max(sums, key=sums.get) == 90.0 and sums[90.0] > 1.05 * sums[60.0] and sums[60.0] > 1.5 * sums[30.0]
    assert scale[128, 128] == 90.0 and score[128, 128] == pytest.approx(sums[90.0], rel=1e-9)
    compact = paint(_noise(seed=4), _ring(128, 128, 10, 10.0), z=0.3)
    score, scale = member_score(compact, red_sequence)
    assert scale[128, 128] == 30.0
    assert score[128, 128] == pytest.approx(member_density(compact, red_sequence)[128, 128], rel=1e-12)

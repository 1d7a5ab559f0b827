"""Candidate centres on the red-sequence member density (psfax.clusters.centres)."""

import numpy as np
import pytest

from psfax.clusters.centres import (MIN_MEMBERS, REFERENCE_SCALE_PX, SMOOTHING_SCALES_PX, box_photometry,
                                    centre_on_members, gaussian_count, is_local_peak, member_density, member_flags,
                                    member_score, window_fraction)
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
    # restricted to the undilated tiles (pixels <= 191), the peak is pushed to their corner, lower, and is no
    # local maximum of the score (it rises towards the members at ~200): such a candidate would be dropped
    x, y, members, smoothing, peak = centre_on_members(cube, probs >= 0.5, 32, red_sequence)
    assert (x, y) == (191.0, 191.0) and members < table["members"][0] and not peak
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
    inside = {s: (window_fraction(128, 129, 256, s)[0]) ** 2 for s in SMOOTHING_SCALES_PX}
    sums = {s: np.sum(np.exp(-d2 / (2 * s**2))) * 30 / s / np.sqrt(inside[s]) for s in SMOOTHING_SCALES_PX}
    # at the field's centre W_s = 1.00, 0.97, 0.71 (30, 60, 90 px); D_s / sqrt(W_s) * 30 / s there: 3.5, 6.6,
    # 8.6: the 90-px scale wins
    assert inside[30.0] == pytest.approx(1.0, abs=1e-4) and inside[90.0] == pytest.approx(0.71, abs=0.01)
    assert max(sums, key=sums.get) == 90.0 and sums[90.0] > 1.2 * sums[60.0] and sums[60.0] > 1.5 * sums[30.0]
    assert scale[128, 128] == 90.0 and score[128, 128] == pytest.approx(sums[90.0], rel=1e-9)
    compact = paint(_noise(seed=4), _ring(128, 128, 10, 10.0), z=0.3)
    score, scale = member_score(compact, red_sequence)
    assert scale[128, 128] == 30.0
    # W_30 = 1 - 4e-5 at the centre: the score is the member density itself to 3e-5
    assert score[128, 128] == pytest.approx(member_density(compact, red_sequence)[128, 128], rel=3e-5)


def test_window_fraction_is_the_gaussian_mass_inside_the_axis():
    w = window_fraction(0, 256, 256, 30.0)
    # on the first and last pixels: erf(255.5 / (30 sqrt 2)) / 2 + erf(0.5 / (30 sqrt 2)) / 2 = 0.5 + 0.0066
    assert w[0] == pytest.approx(0.5 + 0.5 * 0.5 / (30 * np.sqrt(np.pi / 2)), rel=1e-4) and w[-1] == pytest.approx(w[0])
    assert w[128] == pytest.approx(1.0, abs=1e-4) and np.all(np.diff(w[:128]) > 0)
    # one sigma inside the edge: (1 + erf(30.5 / (30 sqrt 2))) / 2 = 0.845
    assert w[30] == pytest.approx(0.8454, abs=1e-3)
    # a cut-out's pixels take the fraction of the whole axis: pixels 100..109 of a 256-px axis
    np.testing.assert_allclose(window_fraction(100, 110, 256, 90.0), window_fraction(0, 256, 256, 90.0)[100:110],
                               rtol=1e-15)
    # against the midpoint rule (step 0.01 px) of the Gaussian's density over the axis [-0.5, 255.5)
    u = np.arange(-0.5, 255.5, 0.01) + 0.005
    direct = np.sum(np.exp(-(u - 5.0) ** 2 / (2 * 60.0**2))) * 0.01 / (60.0 * np.sqrt(2 * np.pi))
    assert window_fraction(5, 6, 256, 60.0)[0] == pytest.approx(direct, rel=1e-6)


def test_member_score_corrects_for_the_kernel_outside_the_image(red_sequence, paint):
    """A group on the field's edge loses half its kernel's area: the score divides D_s by sqrt(W_s)."""
    edge = paint(_noise(seed=5), _ring(128, 6, 10, 10.0), z=0.3)
    score, scale = member_score(edge, red_sequence)
    density = member_density(edge, red_sequence)
    w = window_fraction(0, 256, 256, 30.0)
    r, c = np.unravel_index(np.argmax(score), score.shape)
    assert abs(r - 6) <= 6 and abs(c - 128) <= 8 and scale[r, c] == 30.0
    assert score[r, c] == pytest.approx(density[r, c] / np.sqrt(w[r] * w[c]), rel=1e-9)
    # the same score map of a cut-out (rows 0..99, columns 50..199) knows where the image's edge is
    cut, _ = member_score(edge[:, :100, 50:200], red_sequence, origin=(0, 50), full_shape=(256, 256))
    assert cut[r, c - 50] == pytest.approx(score[r, c], rel=1e-6)


def test_is_local_peak_compares_a_box_around_the_pixel():
    score = np.zeros((20, 20))
    score[10, 10], score[10, 14], score[0, 1] = 2.0, 3.0, 1.0
    assert is_local_peak(score, 10, 10)                    # the higher pixel is 4 px away, outside the 3-px box
    assert not is_local_peak(score, 10, 10, half_width=4)
    assert is_local_peak(score, 10, 14) and is_local_peak(score, 0, 1)   # the box is clipped to the map
    assert not is_local_peak(score, 0, 0) and is_local_peak(np.ones((5, 5)), 2, 2)   # ties count as peaks

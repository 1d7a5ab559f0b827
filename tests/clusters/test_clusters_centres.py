"""Candidate centres on the red-sequence member density (psfax.clusters.centres)."""

import numpy as np
import pytest

from psfax.clusters.centres import (MIN_MEMBERS, SMOOTHING_PX, box_photometry, centre_on_members, member_density,
                                    member_flags)
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
    # at the ring's centre each member weighs exp(-d^2 / (2 * 30^2)), d ~ 12 px; the kernel sums them (the
    # sampled, 4-sigma-truncated Gaussian differs from the continuous one by < 1e-4)
    expected = np.sum(np.exp(-((rows - 128) ** 2 + (cols - 128) ** 2) / (2 * SMOOTHING_PX**2)))
    assert density[128, 128] == pytest.approx(expected, rel=1e-3)
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
    x, y, members = centre_on_members(cube, probs >= 0.5, 32, red_sequence)
    assert (x, y) == (191.0, 191.0) and members < table["members"][0]
    assert SMOOTHING_PX == 30.0  # the scale the tolerances above assume


def test_candidates_under_the_cut_are_dropped(red_sequence, paint):
    cube = paint(_noise(), _ring(200, 200, 12, 20.0), z=0.35)
    probs = np.zeros((8, 8))
    probs[5:7, 5:7] = 0.8
    members = find_candidates(probs, 32, 0.5, image=cube, red_sequence=red_sequence)["members"][0].as_py()
    # 12 members within ~20 px under a 30-px Gaussian: the peak counts most of them (about 10)
    assert 6 < members <= 12
    for cut, n in ((members, 1), (members + 0.01, 0)):
        assert len(find_candidates(probs, 32, 0.5, image=cube, red_sequence=red_sequence, min_members=cut)) == n

"""Tile metrics on known confusion matrices and the counts-in-tile baseline."""

import numpy as np
import pytest

from psfax.clusters.metrics import average_precision, best_f1_threshold, confusion, counts_in_tile, score_tiles
from psfax.errors import InputError


def test_confusion_and_scores_by_hand():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    predicted = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])
    c = confusion(labels, predicted)
    assert (c.tp, c.fp, c.tn, c.fn) == (3, 1, 5, 1)
    s = c.scores()
    # exact ratios of small integers: compare to double precision
    assert s["accuracy"] == pytest.approx(8 / 10, abs=1e-15)
    assert s["precision"] == pytest.approx(3 / 4, abs=1e-15)
    assert s["recall"] == pytest.approx(3 / 4, abs=1e-15)
    assert s["f1"] == pytest.approx(6 / 8, abs=1e-15)


def test_empty_cases_are_zero_not_nan():
    s = confusion(np.zeros(5), np.zeros(5)).scores()
    assert (s["precision"], s["recall"], s["f1"], s["accuracy"]) == (0.0, 0.0, 0.0, 1.0)


def test_average_precision_by_hand():
    labels = [1, 0, 1, 1, 0]
    scores = [0.9, 0.8, 0.7, 0.6, 0.1]
    # positives found at ranks 1, 3, 4: AP = (1 + 2/3 + 3/4) / 3
    assert average_precision(labels, scores) == pytest.approx((1 + 2 / 3 + 3 / 4) / 3, abs=1e-12)
    # a tie between a positive and a negative counts as one threshold: P = 1/2 at R = 1
    assert average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5, abs=1e-12)
    # a perfect ranking has AP = 1
    assert average_precision([0, 1, 1], [0.1, 0.7, 0.8]) == pytest.approx(1.0, abs=1e-12)


def test_best_threshold_and_score_tiles():
    labels = np.array([0, 0, 1, 1, 1, 0])
    scores = np.array([0, 1, 2, 3, 3, 2])
    # thresholds: >=3 gives F1 = 4/5; >=2 gives 6/7 (tp 3, fp 1); >=1: 6/8; >=0: 6/9
    assert best_f1_threshold(labels, scores) == 2
    s = score_tiles(labels, scores, 2)
    assert s["f1"] == pytest.approx(6 / 7, abs=1e-12)
    with pytest.raises(InputError, match=r"scores has shape \(2,\), labels have \(6,\)"):
        score_tiles(labels, scores[:2], 1)


def test_counts_in_tile_counts_sources():
    rng = np.random.default_rng(0)
    images = rng.normal(0.0, 1.0, (1, 4, 64, 64))
    yy, xx = np.mgrid[:64, :64]
    for x, y in [(5, 5), (20, 10), (10, 25), (45, 50)]:  # three sources in tile (0, 0), one in (1, 1)
        images[0, 2] += 200.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
    counts = counts_in_tile(images, 32)
    # noise peaks need > 5 sigma of the 3x3 mean: expected ~1e-4 false peaks in the image
    np.testing.assert_array_equal(counts[0], [[3, 0], [0, 1]])

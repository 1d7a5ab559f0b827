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


def test_bootstrap_se_of_a_mean_matches_the_textbook_value():
    from psfax.clusters.metrics import bootstrap_se

    x = np.random.default_rng(1).normal(size=400)
    se = bootstrap_se(len(x), lambda idx: {"mean": float(np.mean(x[idx]))}, n_boot=400)["mean"]
    # the bootstrap SE of a mean is std/sqrt(n) (x (n-1)/n); 400 resamples estimate it to ~3.5% (1/sqrt(2*400))
    assert se == pytest.approx(np.std(x) / np.sqrt(len(x)), rel=0.12)


def test_score_tiles_with_se_resamples_whole_fields():
    from psfax.clusters.metrics import score_tiles_with_se

    labels = np.zeros((10, 2, 2), np.uint8)
    labels[:, 0, 0] = 1  # every field holds positives, so no resample leaves F1 undefined
    perfect = score_tiles_with_se(labels, labels.astype(float), 0.5)
    # a perfect classifier on every field scores 1 in every resample: zero spread
    assert perfect["f1"] == 1.0 and perfect["se"]["f1"] == 0.0
    noisy = labels.astype(float).copy()
    noisy[0] = 0.0  # one field entirely missed
    s = score_tiles_with_se(labels, noisy, 0.5)
    # one field in ten missed: recall 0.9; its resampled count is binomial, SE ~ sqrt(0.9 * 0.1 / 10) = 0.095
    assert s["recall"] == pytest.approx(0.9, abs=1e-12) and 0.06 < s["se"]["recall"] < 0.13


def _truth(is_cluster, x, y, richness, redshift):
    return {"is_cluster": np.asarray(is_cluster, bool), "x_center": np.asarray(x, float),
            "y_center": np.asarray(y, float), "richness": np.asarray(richness), "redshift": np.asarray(redshift)}


def test_match_clusters_and_cluster_scores_by_hand():
    from psfax.clusters.metrics import cluster_scores, match_clusters

    truth = _truth([1, 1, 0, 1], [100, 50, 0, 10], [100, 50, 0, 10], [60, 25, 0, 40], [0.15, 0.35, 0, 0.55])
    cands = [np.array([[110.0, 100.0], [200.0, 200.0]]),   # field 0: one within 10 px, one far
             np.array([[50.0, 120.0]]),                     # field 1: 70 px away, beyond a 64-px radius
             np.array([[30.0, 30.0]]),                      # field 2: no cluster, so a false candidate
             np.zeros((0, 2))]                              # field 3: nothing found
    m = match_clusters(truth, cands, 64.0)
    assert list(m.found) == [True, False, False]
    assert list(m.cand_matched) == [True, False, False, False]
    s = cluster_scores(m, 4, n_boot=50)
    assert s["completeness"] == pytest.approx(1 / 3, abs=1e-12)
    assert s["purity"] == pytest.approx(1 / 4, abs=1e-12)
    assert s["completeness_rich50"] == 1.0 and s["n_clusters_rich50"] == 1
    assert s["completeness_richness_20_30"] == 0.0 and np.isnan(s["completeness_z_0.2_0.3"])
    assert s["bins"]["redshift"][0] == {"lo": 0.1, "hi": 0.2, "n": 1, "found": 1}
    assert s["se"]["completeness"] > 0
    with pytest.raises(InputError, match="match radius 0.0 must be a positive"):
        match_clusters(truth, cands, 0.0)


def test_best_candidate_cut_by_hand():
    from psfax.clusters.evaluate import best_candidate_cut

    truth = _truth([1, 1, 1, 0], [100, 100, 100, 0], [100, 100, 100, 0], [60, 30, 40, 0], [0.3, 0.3, 0.3, 0])
    cands = [np.array([[105.0, 100.0, 9.0]]),                         # found, score 9
             np.array([[100.0, 110.0, 4.0], [220.0, 30.0, 3.0]]),     # found (4) and a false one (3)
             np.array([[30.0, 30.0, 5.0]]),                           # 99 px off: false, the cluster missed
             np.array([[128.0, 128.0, 3.5]])]                         # no cluster: false
    # per-cluster F1 = 2CP/(C+P) by cut: 0 or 3: C 2/3, P 2/5 -> 0.50; 3.5: P 2/4 -> 0.57;
    # 4: P 2/3 -> 0.67; 5: C 1/3, P 1/2 -> 0.40; 9: C 1/3, P 1 -> 0.50
    assert best_candidate_cut(truth, cands, 64.0) == 4.0
    # at a 100-px radius the 5-member candidate matches too: every cut up to 4 finds all three
    # (C 1, P 3/5 at 0 and 3, 3/4 at 3.5, 3/3 at 4): the cut stays 4, now with F1 1
    assert best_candidate_cut(truth, cands, 100.0) == 4.0
    # only the lambda >= 50 cluster (field 0, score 9) counts for completeness: the highest cut that keeps it,
    # 9, gives C 1 and P 1
    assert best_candidate_cut(truth, cands, 64.0, min_richness=50) == 9.0

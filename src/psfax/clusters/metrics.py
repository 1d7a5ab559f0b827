"""Tile-level scores of a classifier and the counts-in-tile baseline.

* confusion counts TP, FP, TN, FN of binary predictions against labels;
* accuracy = (TP + TN) / N, precision = TP / (TP + FP), recall = TP / (TP + FN),
  F1 = 2 TP / (2 TP + FP + FN) (each 0 when its denominator is 0);
* PR-AUC as average precision, AP = sum_n (R_n - R_(n-1)) P_n over the distinct
  score thresholds, highest first;
* the baseline scores a tile by the number of sources in it: local maxima of the
  3x3-smoothed i-band image above ``nsigma`` times the field's robust noise
  (1.4826 MAD).  Its count threshold is the one with the best F1 on training fields.

Per cluster (:func:`match_clusters`, :func:`cluster_scores`): a true cluster is
*found* when a candidate's centre lies within the match radius of its centre
in the same field; completeness = found / true clusters (overall, and in bins
of richness and redshift), purity = candidates within the radius of a true
cluster / all candidates (several candidates may match one cluster; their
excess is reported as ``duplicates``).

Uncertainties (:func:`bootstrap_se`) resample the *fields* with replacement
(tiles and clusters of one field stay together) and take the standard
deviation of the statistic over the resamples.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from psfax.errors import InputError

I_BAND = 2


@dataclasses.dataclass(frozen=True)
class Confusion:
    tp: int
    fp: int
    tn: int
    fn: int

    def scores(self) -> dict:
        """Accuracy, precision, recall and F1 (0 where undefined) with the counts."""
        n = self.tp + self.fp + self.tn + self.fn

        def ratio(a, b):
            return a / b if b else 0.0

        return {"tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn,
                "accuracy": ratio(self.tp + self.tn, n), "precision": ratio(self.tp, self.tp + self.fp),
                "recall": ratio(self.tp, self.tp + self.fn), "f1": ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)}


def _check_same_shape(labels, other, name):
    labels, other = np.asarray(labels), np.asarray(other)
    if labels.shape != other.shape:
        raise InputError(f"{name} has shape {other.shape}, labels have {labels.shape}")
    return labels.astype(bool).ravel(), other.ravel()


def confusion(labels, predicted) -> Confusion:
    """TP, FP, TN, FN of boolean ``predicted`` against boolean ``labels`` (same shape)."""
    y, p = _check_same_shape(labels, predicted, "predicted")
    p = p.astype(bool)
    return Confusion(int(np.sum(y & p)), int(np.sum(~y & p)), int(np.sum(~y & ~p)), int(np.sum(y & ~p)))


def _pr_curve(labels, scores):
    """Precision and recall at each distinct threshold (highest score first), and the thresholds."""
    y, s = _check_same_shape(labels, scores, "scores")
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct score
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    n_pos = max(int(y.sum()), 1)
    return tp / (tp + fp), tp / n_pos, s[last], tp, fp, n_pos


def average_precision(labels, scores) -> float:
    """PR-AUC as average precision: sum over thresholds of (R_n - R_(n-1)) P_n."""
    precision, recall, *_ = _pr_curve(labels, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def best_f1_threshold(labels, scores) -> float:
    """The score threshold t (predict score >= t) with the highest F1."""
    _, _, thresholds, tp, fp, n_pos = _pr_curve(labels, scores)
    f1 = 2 * tp / (tp + fp + n_pos)
    return float(thresholds[np.argmax(f1)])


def score_tiles(labels, scores, threshold: float) -> dict:
    """Confusion-based scores at ``scores >= threshold`` plus PR-AUC."""
    _check_same_shape(labels, scores, "scores")
    out = confusion(labels, np.asarray(scores) >= threshold).scores()
    out["pr_auc"] = average_precision(labels, scores)
    out["threshold"] = float(threshold)
    return out


@jax.jit
def _peak_mask(images, nsigma):
    """(n, H, W) True at the i-band sources of (n, 4, H, W) images: local maxima (3x3) of the 3x3 mean
    above ``nsigma`` times its noise (1.4826 MAD of the band / 3)."""
    band = images[:, I_BAND]
    smooth = jax.lax.reduce_window(band, 0.0, jax.lax.add, (1, 3, 3), (1, 1, 1), "SAME") / 9.0
    neighbours = jax.lax.reduce_window(smooth, -jnp.inf, jax.lax.max, (1, 3, 3), (1, 1, 1), "SAME")
    med = jnp.median(band, axis=(1, 2), keepdims=True)
    sigma = 1.4826 * jnp.median(jnp.abs(band - med), axis=(1, 2), keepdims=True) / 3.0  # noise of a 3x3 mean
    return (smooth >= neighbours) & (smooth > nsigma * sigma)


def source_peaks(images, nsigma: float = 5.0) -> np.ndarray:
    """(n, H, W) boolean map of the i-band sources (see :func:`counts_in_tile`) of (n, 4, H, W) images."""
    return np.asarray(_peak_mask(jnp.asarray(images), nsigma))


def counts_in_tile(images, tile: int, nsigma: float = 5.0) -> np.ndarray:
    """(n, H/tile, W/tile) number of i-band peaks above ``nsigma`` noise per tile (the baseline's score)."""
    peaks = source_peaks(images, nsigma)
    n, h, w = peaks.shape
    return peaks.reshape(n, h // tile, tile, w // tile, tile).sum(axis=(2, 4))


N_BOOT = 200
"""Bootstrap resamples of the fields behind every standard error (SE of an SE ~ 1/sqrt(2 N_BOOT) = 5%)."""


def bootstrap_se(n_fields: int, statistic: Callable[[np.ndarray], dict], *, n_boot: int = N_BOOT,
                 seed: int = 0) -> dict:
    """Per-key standard deviation of ``statistic(field_indices)`` over field resamples with replacement.

    ``statistic`` maps an index array (length ``n_fields``, repeats allowed) to a dict of floats;
    keys whose value is NaN in a resample (e.g. an empty bin) use the finite resamples only.
    """
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n_fields, n_fields)) for _ in range(n_boot)]
    out = {}
    for key in values[0]:
        v = np.asarray([d[key] for d in values], float)
        v = v[np.isfinite(v)]
        out[key] = float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")
    return out


TILE_KEYS = ("accuracy", "precision", "recall", "f1", "pr_auc")


def score_tiles_with_se(labels, scores, threshold: float, *, n_boot: int = N_BOOT) -> dict:
    """:func:`score_tiles` of (n, T, T) fields plus ``se``: bootstrap-over-fields standard errors."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    out = score_tiles(labels, scores, threshold)

    def stat(idx):
        s = score_tiles(labels[idx], scores[idx], threshold)
        return {k: s[k] for k in TILE_KEYS}

    out["se"] = bootstrap_se(len(labels), stat, n_boot=n_boot)
    return out


@dataclasses.dataclass(frozen=True)
class ClusterMatch:
    """Truth and candidates of n fields matched within a radius.

    ``truth_*`` are per true cluster (``truth_field`` its field), ``cand_*`` per candidate.
    """

    truth_field: np.ndarray
    richness: np.ndarray
    redshift: np.ndarray
    found: np.ndarray          # bool per true cluster
    cand_field: np.ndarray
    cand_matched: np.ndarray   # bool per candidate
    radius_px: float


def match_clusters(truth, candidates: Sequence, radius_px: float) -> ClusterMatch:
    """Match candidates to true clusters field by field within ``radius_px`` (pixels).

    ``truth``: a table with one row per field and columns ``is_cluster``, ``x_center``,
    ``y_center``, ``richness``, ``redshift`` (the ``fields.parquet`` of a data set, as a dict
    of arrays or a pyarrow Table); ``candidates``: per field, an (m, 2) array of candidate
    centres (x, y) in the same pixel frame.
    """
    if not radius_px > 0:
        raise InputError(f"match radius {radius_px!r} must be a positive number of pixels")
    col = {k: np.asarray(truth[k]) for k in ("is_cluster", "x_center", "y_center", "richness", "redshift")}
    if len(col["is_cluster"]) != len(candidates):
        raise InputError(f"{len(col['is_cluster'])} fields of truth but candidates for {len(candidates)}")
    found, cand_field, cand_matched = [], [], []
    for i, cand in enumerate(candidates):
        cand = np.asarray(cand, float).reshape(-1, 2)
        if col["is_cluster"][i]:
            d = np.hypot(cand[:, 0] - col["x_center"][i], cand[:, 1] - col["y_center"][i])
            near = d <= radius_px
            found.append(bool(near.any()))
        else:
            near = np.zeros(len(cand), bool)
        cand_field.append(np.full(len(cand), i))
        cand_matched.append(near)
    is_c = col["is_cluster"].astype(bool)
    return ClusterMatch(np.nonzero(is_c)[0], col["richness"][is_c].astype(float), col["redshift"][is_c].astype(float),
                        np.asarray(found, bool), np.concatenate(cand_field).astype(int),
                        np.concatenate(cand_matched).astype(bool), float(radius_px))


RICHNESS_BINS = (20, 30, 50, 151)
"""Richness bin edges [lo, hi) of the completeness table (the prior spans 20..150)."""
REDSHIFT_BINS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
RICH = 50
"""Completeness is also reported for richness >= RICH (the issue's target population)."""


def _fraction(flags) -> float:
    return float(np.mean(flags)) if len(flags) else float("nan")


def _cluster_stat(m: ClusterMatch, fields: np.ndarray, n_fields: int) -> dict:
    """Completeness (overall, richness >= RICH, per bin) and purity of the clusters and candidates of
    ``fields`` (an index array, repeats counted again)."""
    counts = np.bincount(fields, minlength=n_fields)
    tw = counts[m.truth_field]      # weight of each true cluster in this resample
    cw = counts[m.cand_field]

    def comp(sel):
        w = tw * sel
        return float(np.sum(w * m.found) / np.sum(w)) if np.sum(w) else float("nan")

    out = {"completeness": comp(np.ones(len(m.found), bool)), f"completeness_rich{RICH}": comp(m.richness >= RICH),
           "purity": float(np.sum(cw * m.cand_matched) / np.sum(cw)) if np.sum(cw) else float("nan")}
    for lo, hi in zip(RICHNESS_BINS[:-1], RICHNESS_BINS[1:]):
        out[f"completeness_richness_{lo}_{hi}"] = comp((m.richness >= lo) & (m.richness < hi))
    for lo, hi in zip(REDSHIFT_BINS[:-1], REDSHIFT_BINS[1:]):
        out[f"completeness_z_{lo:.1f}_{hi:.1f}"] = comp((m.redshift >= lo) & (m.redshift < hi))
    return out


def cluster_scores(m: ClusterMatch, n_fields: int, *, n_boot: int = N_BOOT) -> dict:
    """Per-cluster completeness and purity with counts and bootstrap-over-fields standard errors."""
    out = _cluster_stat(m, np.arange(n_fields), n_fields)
    out["se"] = bootstrap_se(n_fields, lambda idx: _cluster_stat(m, idx, n_fields), n_boot=n_boot)
    by_field = np.bincount(m.cand_field[m.cand_matched], minlength=n_fields)
    out.update({"match_radius_px": m.radius_px, "n_clusters": int(len(m.found)), "n_found": int(m.found.sum()),
                f"n_clusters_rich{RICH}": int(np.sum(m.richness >= RICH)),
                f"n_found_rich{RICH}": int(np.sum(m.found & (m.richness >= RICH))),
                "n_candidates": int(len(m.cand_matched)), "n_matched_candidates": int(m.cand_matched.sum()),
                "duplicates": int(np.sum(np.maximum(by_field - 1, 0))), "bins": completeness_bins(m)})
    return out


def completeness_bins(m: ClusterMatch) -> dict:
    """Per richness and redshift bin: edges, number of true clusters and number found (for pooling)."""
    def rows(values, edges):
        return [{"lo": lo, "hi": hi, "n": int(np.sum(sel)), "found": int(np.sum(m.found & sel))}
                for lo, hi in zip(edges[:-1], edges[1:]) for sel in [(values >= lo) & (values < hi)]]

    return {"richness": rows(m.richness, RICHNESS_BINS), "redshift": rows(m.redshift, REDSHIFT_BINS)}

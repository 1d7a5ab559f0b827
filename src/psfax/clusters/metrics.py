"""Tile-level scores of a classifier and the counts-in-tile baseline.

* confusion counts TP, FP, TN, FN of binary predictions against labels;
* accuracy = (TP + TN) / N, precision = TP / (TP + FP), recall = TP / (TP + FN),
  F1 = 2 TP / (2 TP + FP + FN) (each 0 when its denominator is 0);
* PR-AUC as average precision, AP = sum_n (R_n - R_(n-1)) P_n over the distinct
  score thresholds, highest first;
* the baseline scores a tile by the number of sources in it: local maxima of the
  3x3-smoothed i-band image above ``nsigma`` times the field's robust noise
  (1.4826 MAD).  Its count threshold is the one with the best F1 on training fields.
"""

from __future__ import annotations

import dataclasses

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
def _source_counts(images, tile_grid, nsigma):
    band = images[:, I_BAND]
    smooth = jax.lax.reduce_window(band, 0.0, jax.lax.add, (1, 3, 3), (1, 1, 1), "SAME") / 9.0
    neighbours = jax.lax.reduce_window(smooth, -jnp.inf, jax.lax.max, (1, 3, 3), (1, 1, 1), "SAME")
    med = jnp.median(band, axis=(1, 2), keepdims=True)
    sigma = 1.4826 * jnp.median(jnp.abs(band - med), axis=(1, 2), keepdims=True) / 3.0  # noise of a 3x3 mean
    peaks = (smooth >= neighbours) & (smooth > nsigma * sigma)
    n, h, w = peaks.shape
    t = h // tile_grid.shape[0]
    return peaks.reshape(n, h // t, t, w // t, t).sum(axis=(2, 4))


def counts_in_tile(images, tile: int, nsigma: float = 5.0) -> np.ndarray:
    """(n, H/tile, W/tile) number of i-band peaks above ``nsigma`` noise per tile (the baseline's score)."""
    images = jnp.asarray(images)
    grid = jnp.zeros((images.shape[2] // tile,))
    return np.asarray(_source_counts(images, grid, nsigma))

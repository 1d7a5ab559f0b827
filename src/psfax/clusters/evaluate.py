"""Scoring a model and the counts-in-tile baseline on the same simulated fields.

The model predicts a tile positive when its probability is >= 0.5.  The baseline
(:func:`psfax.clusters.metrics.counts_in_tile`) predicts positive when the
number of i-band sources in the tile is >= a count threshold chosen for the best
F1 on the ``val`` split (fields the scored split never sees).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from psfax.clusters.dataset import load_split
from psfax.clusters.encoder import EncoderSpec, TileEncoder
from psfax.clusters.infer import predict_fields
from psfax.clusters.metrics import best_f1_threshold, counts_in_tile, score_tiles

MODEL_THRESHOLD = 0.5


def baseline_threshold(images: np.ndarray, labels: np.ndarray, tile: int) -> float:
    """Count threshold with the best F1 of the counts-in-tile baseline on the given fields."""
    return best_f1_threshold(labels, counts_in_tile(images, tile))


def evaluate_fields(model: TileEncoder, spec: EncoderSpec, images: np.ndarray, labels: np.ndarray,
                    baseline_count: float, *, device=None) -> dict:
    """Scores of the model (probability >= 0.5) and of the baseline (count >= baseline_count)."""
    probs = predict_fields(model, images, device=device)
    counts = counts_in_tile(images, spec.tile)
    model_scores = score_tiles(labels, probs, MODEL_THRESHOLD)
    base_scores = score_tiles(labels, counts, baseline_count)
    return {"n_fields": int(len(images)), "n_tiles": int(labels.size), "positive_fraction": float(labels.mean()),
            "model": model_scores, "baseline": base_scores,
            "f1_gain": model_scores["f1"] - base_scores["f1"]}


def evaluate_model(model: TileEncoder, spec: EncoderSpec, data_dir: str | Path, *, split: str = "test",
                   device=None) -> dict:
    """Score ``split`` of a simulated data set; the baseline's threshold comes from its ``val`` split."""
    fields = load_split(data_dir, split)
    val = load_split(data_dir, "val")
    report = evaluate_fields(model, spec, fields.images, fields.labels,
                             baseline_threshold(val.images, val.labels, spec.tile), device=device)
    report["split"] = split
    return report

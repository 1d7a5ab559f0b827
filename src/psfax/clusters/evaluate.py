"""Scoring a model and the counts-in-tile baseline on the same simulated fields.

The model predicts a tile positive when its probability is >= its calibrated
threshold (``EncoderSpec.threshold``, the best-F1 threshold on its val split;
0.5 for models made before calibration), and keeps the candidates whose member-density
score is >= its candidate cut (``EncoderSpec.candidate_cut``, the best per-cluster F1 on
its val split, :func:`calibrate_candidate_cut`; 0, the centring's floor alone, for older
models): both are chosen once, with the model, never on the scored data set.  The baseline
(:func:`psfax.clusters.metrics.counts_in_tile`) predicts positive when the
number of i-band sources in the tile is >= a count threshold chosen for the best
F1 on the scored data set's ``val`` split (fields the scored split never sees).

Both are scored per tile (with bootstrap-over-fields standard errors) and per
cluster: the candidates of a field are the 4-connected groups of positive tiles
(:func:`psfax.clusters.infer.find_candidates`; the model's centred on the peak of the
red-sequence member density, :mod:`psfax.clusters.centres`, the baseline's on the
count-weighted centroid), matched to the true cluster centre within ``match_radius`` pixels
(default :data:`MATCH_RADIUS_TILES` tiles).

:func:`evaluate_seeds` simulates fresh data sets (one per seed: a val split for
the baseline's threshold, a test split scored) and reports the mean and the
standard error of each score across seeds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from psfax.clusters.centres import RedSequence
from psfax.clusters.config import ClusterFieldConfig
from psfax.clusters.dataset import load_split, read_dataset_config, simulate_split
from psfax.clusters.encoder import EncoderSpec, TileEncoder
from psfax.clusters.infer import find_candidates, predict_fields
from psfax.clusters.metrics import (RICH, TILE_KEYS, best_f1_threshold, cluster_scores, counts_in_tile, match_clusters,
                                    score_tiles_with_se)
from psfax.errors import InputError, MissingFileError

MATCH_RADIUS_TILES = 2.0
"""Default match radius of the per-cluster scores, in tiles (64 px = 16.8" at the CI size)."""


def baseline_threshold(images: np.ndarray, labels: np.ndarray, tile: int) -> float:
    """Count threshold with the best F1 of the counts-in-tile baseline on the given fields."""
    return best_f1_threshold(labels, counts_in_tile(images, tile))


def candidate_table(scores: np.ndarray, tile: int, threshold: float, images=None,
                    red_sequence: RedSequence | None = None) -> list[np.ndarray]:
    """Per field of (n, T, T) tile scores, the (m, 3) rows (x, y, score) of its candidates at ``threshold``.

    Without ``images``: centred on the score-weighted centroid of the group's tiles, score the sum of its
    tile scores (``prob_sum``); with the (n, 4, H, W) ``images`` and a ``red_sequence``: centred on the
    red-sequence member-density peak, score its value (``members``; :mod:`psfax.clusters.centres`)."""
    out = []
    for i, s in enumerate(scores):
        image = None if images is None else images[i]
        t = find_candidates(np.asarray(s, float), tile, threshold, image=image, red_sequence=red_sequence)
        score = t["prob_sum" if image is None else "members"].to_numpy()
        out.append(np.stack([t["x"].to_numpy(), t["y"].to_numpy(), score], axis=1))
    return out


def _cut(cands: list[np.ndarray], min_score: float) -> list[np.ndarray]:
    return [c[c[:, 2] >= min_score, :2] for c in cands]


def best_candidate_cut(truth, cands: list[np.ndarray], radius: float, min_richness: float = 0.0) -> float:
    """The candidate score cut with the best per-cluster F1 = 2 C P / (C + P): C the completeness of the
    clusters with richness >= ``min_richness``, P the purity of all candidates."""
    best, best_f1 = 0.0, -1.0
    for cut in np.unique(np.concatenate([c[:, 2] for c in cands] + [np.zeros(1)])):
        m = match_clusters(truth, _cut(cands, cut), radius)
        found = m.found[m.richness >= min_richness]
        c = found.mean() if len(found) else 0.0
        p = m.cand_matched.mean() if len(m.cand_matched) else 0.0
        f1 = 2 * c * p / (c + p) if c + p else 0.0
        if f1 > best_f1:
            best, best_f1 = float(cut), f1
    return best


OTHER_RADII_TILES = (1.0, 2.0, 3.0, 4.0)
"""Match radii (tiles) of the ``by_radius`` table: how completeness and purity depend on the radius."""


def _by_radius(truth, cands, tile) -> list[dict]:
    rows = []
    for r in OTHER_RADII_TILES:
        m = match_clusters(truth, cands, r * tile)
        rich = m.richness >= RICH
        rows.append({"radius_px": r * tile, "completeness": float(np.mean(m.found)) if len(m.found) else None,
                     f"completeness_rich{RICH}": float(np.mean(m.found[rich])) if rich.any() else None,
                     "purity": float(np.mean(m.cand_matched)) if len(m.cand_matched) else None})
    return rows


def _scores(labels, scores, threshold, tile, truth, radius, min_score, images=None, red_sequence=None) -> dict:
    out = {"tiles": score_tiles_with_se(labels, scores, threshold)}
    if truth is not None:
        cands = _cut(candidate_table(scores, tile, threshold, images, red_sequence), min_score)
        match = match_clusters(truth, cands, radius)
        out["clusters"] = {**cluster_scores(match, len(labels)), "min_candidate_score": min_score,
                           "by_radius": _by_radius(truth, cands, tile)}
    return out


@dataclasses.dataclass(frozen=True)
class Calibration:
    """The baseline's choices, made on the scored data set's val split (fields the scored split never
    sees): its count threshold (best tile F1) and its candidate score cut (prob_sum of counts, best
    per-cluster F1 of all clusters' completeness and purity).  The model's own threshold and candidate
    cut are stored with it (its spec)."""

    baseline_count: float
    baseline_min_score: float = 0.0


def calibrate(images, labels, truth, tile: int, radius: float) -> Calibration:
    """The baseline's :class:`Calibration` from val fields (images, labels, truth table)."""
    counts = counts_in_tile(images, tile)
    count_thr = best_f1_threshold(labels, counts)
    return Calibration(count_thr, best_candidate_cut(truth, candidate_table(counts, tile, count_thr), radius))


def calibrate_candidate_cut(model: TileEncoder, spec: EncoderSpec, images, truth, prior: ClusterFieldConfig, *,
                            min_richness: float = RICH, match_radius: float | None = None,
                            device=None) -> tuple[EncoderSpec, dict]:
    """The spec with ``candidate_cut`` chosen on the given (val) fields for the best per-cluster F1 of the
    completeness of clusters with richness >= ``min_richness`` (default: the issue's population, RICH) and
    the purity, and what the choice saw (fields, clusters, found, candidates at the cut)."""
    radius = match_radius_px(spec, match_radius)
    cands = candidate_table(predict_fields(model, images, device=device), spec.tile, spec.threshold, images,
                            RedSequence.from_config(prior))
    cut = best_candidate_cut(truth, cands, radius, min_richness)
    m = match_clusters(truth, _cut(cands, cut), radius)
    rich = m.richness >= RICH
    return dataclasses.replace(spec, candidate_cut=cut), {
        "candidate_cut": cut, "min_richness": float(min_richness), "match_radius_px": radius,
        "n_fields": int(len(images)),
        "n_clusters": int(len(m.found)), "n_found": int(m.found.sum()), f"n_clusters_rich{RICH}": int(rich.sum()),
        f"n_found_rich{RICH}": int(m.found[rich].sum()), "n_candidates": int(len(m.cand_matched)),
        "n_matched_candidates": int(m.cand_matched.sum())}


def match_radius_px(spec: EncoderSpec, match_radius: float | None) -> float:
    return MATCH_RADIUS_TILES * spec.tile if match_radius is None else float(match_radius)


def evaluate_fields(model: TileEncoder, spec: EncoderSpec, images: np.ndarray, labels: np.ndarray,
                    calibration: Calibration | float, *, truth=None, match_radius: float | None = None,
                    red_sequence: RedSequence | None = None, device=None) -> dict:
    """Scores of the model (probability >= spec.threshold) and of the baseline (count >= the calibrated
    count; a float is taken as that count with no candidate cut).

    ``truth`` (the fields table of the data set) adds the per-cluster scores; the model's candidates
    are centred on the ``red_sequence`` member density (:mod:`psfax.clusters.centres`) and cut at
    ``spec.candidate_cut`` members.
    """
    cal = calibration if isinstance(calibration, Calibration) else Calibration(float(calibration))
    radius = match_radius_px(spec, match_radius)
    probs = predict_fields(model, images, device=device)
    counts = counts_in_tile(images, spec.tile)
    model_scores = _scores(labels, probs, spec.threshold, spec.tile, truth, radius, spec.candidate_cut,
                           images, red_sequence)
    base_scores = _scores(labels, counts, cal.baseline_count, spec.tile, truth, radius, cal.baseline_min_score)
    return {"n_fields": int(len(images)), "n_tiles": int(labels.size), "positive_fraction": float(labels.mean()),
            "model": model_scores, "baseline": base_scores,
            "f1_gain": model_scores["tiles"]["f1"] - base_scores["tiles"]["f1"]}


def load_truth(data_dir: str | Path, split: str):
    """The field-level truth table of ``split`` (one row per field, shards concatenated)."""
    import pyarrow as pa

    paths = sorted(Path(data_dir).glob(f"{split}-*.fields.parquet"))
    if not paths:
        raise MissingFileError(f"{data_dir}: no '{split}' truth ({split}-*.fields.parquet)")
    return pa.concat_tables([pq.read_table(p) for p in paths])


def evaluate_model(model: TileEncoder, spec: EncoderSpec, data_dir: str | Path, prior: ClusterFieldConfig, *,
                   split: str = "test", match_radius: float | None = None, device=None) -> dict:
    """Score ``split`` of a simulated data set: the model with its stored threshold and candidate cut,
    the baseline with its threshold and cut from the data set's ``val`` split.

    ``prior``: the config the model was trained under, whose red sequence centres the candidates
    (the detector's population model, not the scored fields' truth)."""
    fields = load_split(data_dir, split)
    val = load_split(data_dir, "val")
    cal = calibrate(val.images, val.labels, load_truth(data_dir, "val"), spec.tile, match_radius_px(spec, match_radius))
    report = evaluate_fields(model, spec, fields.images, fields.labels, cal, truth=load_truth(data_dir, split),
                             match_radius=match_radius, red_sequence=RedSequence.from_config(prior), device=device)
    report["split"] = split
    report["calibration"] = {"split": "val", "n_fields": len(val), **dataclasses.asdict(cal),
                             "model_threshold": spec.threshold, "model_candidate_cut": spec.candidate_cut}
    return report


def _simulation_settings(cfg: ClusterFieldConfig) -> dict:
    """The parts of a config that make the fields (all but the training settings)."""
    return {k: v for k, v in cfg.to_dict().items() if k != "train"}


def _has_fields(data_dir: Path, cfg: ClusterFieldConfig, split: str, n: int) -> bool:
    """Whether ``data_dir`` already holds ``n`` fields of ``split`` simulated with ``cfg``'s prior and seed."""
    try:
        same = _simulation_settings(read_dataset_config(data_dir)) == _simulation_settings(cfg)
        return same and len(load_truth(data_dir, split)) == n
    except MissingFileError:
        return False


def fresh_fields(cfg: ClusterFieldConfig, seed: int, n_fields: int, out_dir: str | Path, *, device=None) -> Path:
    """Simulate (or reuse) ``n_fields`` test fields and ``max(16, n_fields // 4)`` val fields of ``seed``."""
    n_val = max(16, n_fields // 4)
    cfg = dataclasses.replace(cfg, seed=int(seed), dataset=dataclasses.replace(
        cfg.dataset, n_train=0, n_val=n_val, n_test=n_fields))
    out_dir = Path(out_dir) / f"seed-{seed}"
    for split, n in (("val", n_val), ("test", n_fields)):
        if not _has_fields(out_dir, cfg, split, n):
            for old in out_dir.glob(f"{split}-*"):
                old.unlink()
            simulate_split(cfg, out_dir, split, n, device=device)
    return out_dir


SUMMARY_KEYS = {"tiles": TILE_KEYS, "clusters": ("completeness", "completeness_rich50", "purity")}


def json_ready(value):
    """``value`` with NaN and infinities (empty bins, undefined SEs) replaced by None, for strict JSON."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def summarise(reports: list[dict]) -> dict:
    """Mean, standard error (std / sqrt(k), ddof 1) and minimum over k reports of the headline scores."""
    out = {}
    for who in ("model", "baseline"):
        for level, keys in SUMMARY_KEYS.items():
            for key in keys:
                v = np.asarray([r[who][level][key] for r in reports if level in r[who]], float)
                if len(v):
                    se = float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
                    out[f"{who}.{level}.{key}"] = {"mean": float(np.mean(v)), "se": se, "min": float(np.min(v))}
    return out


def evaluate_seeds(model: TileEncoder, spec: EncoderSpec, cfg: ClusterFieldConfig, seeds, n_fields: int,
                   work_dir: str | Path, *, match_radius: float | None = None, device=None) -> dict:
    """Simulate and score one fresh data set per seed; the per-seed reports and their summary.

    ``cfg`` makes the fields and is the prior whose red sequence centres the candidates."""
    seeds = [int(s) for s in seeds]
    if not seeds or n_fields < 1:
        raise InputError(f"need at least one seed and n_fields >= 1 (got seeds={seeds}, n_fields={n_fields})")
    if cfg.field.tile != spec.tile or cfg.field.size % spec.tile:
        raise InputError(f"config '{cfg.name}' has {cfg.field.tile}-px tiles, the model {spec.tile}-px tiles")
    reports = {}
    for s in seeds:
        data = fresh_fields(cfg, s, n_fields, work_dir, device=device)
        reports[str(s)] = {**evaluate_model(model, spec, data, cfg, match_radius=match_radius, device=device),
                           "data": str(data)}
    return {"config": cfg.name, "seeds": seeds, "n_fields_per_seed": n_fields,
            "summary": summarise(list(reports.values())), "per_seed": reports}

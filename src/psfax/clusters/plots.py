"""Figure of per-cluster completeness against richness and redshift (model and counts baseline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from psfax.io.atomic import atomic_path


def pooled_bins(reports: list[dict], who: str, axis: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bin edges (lo, hi), true clusters n and completeness with its binomial standard error, pooled
    over ``reports`` (``evaluate_model`` reports; ``who`` = model or baseline, ``axis`` = richness or
    redshift)."""
    rows = [r[who]["clusters"]["bins"][axis] for r in reports]
    lo = np.asarray([b["lo"] for b in rows[0]], float)
    hi = np.asarray([b["hi"] for b in rows[0]], float)
    n = np.sum([[b["n"] for b in r] for r in rows], axis=0)
    found = np.sum([[b["found"] for b in r] for r in rows], axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = found / n
        se = np.sqrt(p * (1 - p) / n)
    return np.stack([lo, hi], axis=1), n, p, se


def plot_completeness(reports: list[dict], path: str | Path) -> Path:
    """Completeness vs richness (left) and redshift (right), pooled over ``reports``; write a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global state

    fig = Figure(figsize=(9, 3.6))
    radius = reports[0]["model"]["clusters"]["match_radius_px"]
    n_fields = sum(r["n_fields"] for r in reports)
    for ax, axis, label in zip(fig.subplots(1, 2), ("richness", "redshift"), ("richness $\\lambda$", "redshift z")):
        for who, style in (("model", "o-"), ("baseline", "s--")):
            edges, n, p, se = pooled_bins(reports, who, axis)
            centre = edges.mean(axis=1)
            ax.errorbar(centre, p, yerr=se, xerr=(edges[:, 1] - edges[:, 0]) / 2, fmt=style, capsize=2,
                        label="encoder" if who == "model" else "counts-in-tile baseline")
        for c, k in zip(centre, n):
            ax.annotate(f"{k}", (c, 0.02), ha="center", fontsize=7, color="0.4")
        ax.set_xlabel(label)
        ax.set_ylim(0, 1.05)
        ax.axhline(0.95, color="0.7", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    fig.axes[0].set_ylabel("completeness")
    fig.axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"{n_fields} fields, match radius {radius:g} px (numbers: true clusters per bin)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return path

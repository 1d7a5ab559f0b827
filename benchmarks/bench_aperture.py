"""The catalog's PSF fluxes against large-aperture sums on the real ZTF quadrant: linearity with magnitude.

Truth the PSF model did not make: sep's ``sum_circle`` of the sky-subtracted image (sep's background map), radius
``--radius`` px (default 14, the aperture ``psf.json``'s aperture correction refers to), around each isolated
unflagged catalog source (``flags == 0``, ``source_flags == 0``, no other catalog source within ``--isolation``
px, the aperture on the image and free of bad pixels).  The ratio ``flux_fit x aperture_correction / aperture``
per 0.5 mag bin (median, with its standard error 1.25 x 1.4826 MAD / sqrt(n)) is flat where the photometry is
linear; a PSF model whose shape is wrong for some brightness shows as a trend.

    .venv/bin/python benchmarks/bench_aperture.py [--radius 14] [--isolation 20]

Both ``--psf auto`` (the default) and ``--psf analytic`` are measured, in one run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ztf import sample_files  # noqa: E402


def isolated_clean(catalog, shape, radius: float, isolation: float) -> np.ndarray:
    """Unflagged sources with no other catalog source within ``isolation`` px and their aperture on the image."""
    from scipy.spatial import cKDTree

    x, y = np.asarray(catalog["x_fit"], float), np.asarray(catalog["y_fit"], float)
    finite = np.isfinite(x) & np.isfinite(y)
    tree = cKDTree(np.column_stack([x[finite], y[finite]]))
    alone = np.zeros(len(x), bool)
    alone[finite] = np.array([len(n) == 1 for n in tree.query_ball_point(np.column_stack([x[finite], y[finite]]),
                                                                           isolation)])
    ny, nx = shape
    inside = (x > radius + 1) & (y > radius + 1) & (x < nx - radius - 2) & (y < ny - radius - 2)
    return alone & inside & (np.asarray(catalog["flags"]) == 0) & (np.asarray(catalog["source_flags"]) == 0)


def ratios(fit, radius: float, isolation: float):
    """Per 0.5 mag bin: (bin, sources, median ratio, its standard error) of ``fit``'s catalog."""
    import sep

    exposure, catalog = fit.exposure, fit.catalog
    empirical = fit.psf_choice is not None and fit.psf_choice.psf is not None
    apcorr = fit.psf_choice.aperture_correction if empirical else 1.0  # the Moffat's flux is already its total
    use = isolated_clean(catalog, exposure.shape, radius, isolation)
    image = np.ascontiguousarray(exposure.data - fit.background.level, dtype=np.float64)
    x, y = np.asarray(catalog["x_fit"], float)[use], np.asarray(catalog["y_fit"], float)[use]
    aperture, _, sep_flag = sep.sum_circle(image, x, y, radius, mask=exposure.bad, subpix=5)
    ratio = np.asarray(catalog["flux_fit"], float)[use] * apcorr / aperture
    mag = np.asarray(catalog["mag"], float)[use]
    good = (sep_flag == 0) & (aperture > 0)
    out = {}
    for lo in np.arange(13.0, 19.0, 0.5):
        sel = good & (mag >= lo) & (mag < lo + 0.5)
        if sel.sum() >= 5:
            med = float(np.median(ratio[sel]))
            spread = 1.4826 * float(np.median(np.abs(ratio[sel] - med)))
            out[f"{lo:.1f}-{lo + 0.5:.1f}"] = (int(sel.sum()), med, 1.25 * spread / np.sqrt(sel.sum()))
    return out, apcorr


def main(argv=None) -> None:
    from _common import markdown_table, write_section

    from psfax.stars.exposure import read_exposure
    from psfax.stars.pipeline import fit_exposure

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--radius", type=float, default=14.0)
    parser.add_argument("--isolation", type=float, default=20.0)
    args = parser.parse_args(argv)
    exposure = read_exposure(*sample_files())
    fits = {psf: fit_exposure(exposure, psf=psf) for psf in ("auto", "analytic")}
    columns = {psf: ratios(fit, args.radius, args.isolation) for psf, fit in fits.items()}
    chosen = fits["auto"].psf_choice.chosen
    bins = [b for b in columns["auto"][0] if b in columns["analytic"][0]]
    rows = [[b] + [f"{columns[p][0][b][1]:.4f} +- {columns[p][0][b][2]:.4f} ({columns[p][0][b][0]})"
                   for p in ("auto", "analytic")] for b in bins]
    body = (f"Real ZTF quadrant, `fit_exposure` defaults.  Isolated unflagged catalog sources (no other source within "
            f"{args.isolation:g} px): PSF flux x the aperture correction over sep's `sum_circle` of the sky-subtracted "
            f"image within {args.radius:g} px, median +- standard error (sources) per magnitude bin.  `--psf auto` "
            f"chose the {chosen} PSF (aperture correction {columns['auto'][1]:.4f}: its fluxes are the light within "
            "7 px); the Moffat's fluxes are its total light, beyond 14 px too, hence its level above 1.  Flat is "
            "linear.\n\n" + markdown_table(["mag", f"--psf auto ({chosen})", "--psf analytic (Moffat)"], rows))
    write_section("aperture", "PSF fluxes against 14-px apertures (issue #16: linearity on the image's own sources)",
                  body, ".venv/bin/python benchmarks/bench_aperture.py")


if __name__ == "__main__":
    main()

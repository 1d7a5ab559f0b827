"""Empirical PSF on the real ZTF quadrant: psfax's batched build against photutils' EPSFBuilder.

Same run, same stars: the stars ``psfax.fit_image`` builds its empirical PSF on (every star the selection
cuts passed; no photometry), split into build (80 %) and reserve (20 %) stars with the build's own seed;
psfax's :func:`psfax.psf.build_psf` (the pipeline's options unless asked otherwise: sky held at sep's background
map; timed ``--repeats`` times, the minimum reported) and photutils'
``EPSFBuilder`` (oversampling matched, the same sky subtracted, timed once) each build from the build stars;
both models then fit the reserve stars with the same fitter and noise model
(:func:`psfax.psf.fit_psf_photometry`, the stamps' CCD variance, sky held), so the reserve-star median reduced
chi2 compares the models alone: over every reserve star, and over those the pipeline's Moffat fit kept (its
chi2 clip removes the stars it cannot describe), beside the Moffat's own figure for them; and, like for like
with that Moffat fit (which fits a background per star, as the catalog's photometry fits one per group), the
same with a constant background fitted over the held sky.

    .venv/bin/python benchmarks/bench_epsf.py [--oversampling 2] [--degree 1] [--core]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ztf import sample_files  # noqa: E402


def photutils_epsf(stamps, sky, build, oversampling):
    """EPSFBuilder on the build stars' stamps minus the same sky map psfax holds (photutils' EPSFStars)."""
    from photutils.psf import EPSFBuilder, EPSFStar, EPSFStars

    stars = EPSFStars([EPSFStar(stamps.data[i] - sky[i], cutout_center=(stamps.x_init[i], stamps.y_init[i]))
                       for i in build])
    start = time.perf_counter()
    epsf, _ = EPSFBuilder(oversampling=oversampling, maxiters=10, progress_bar=False)(stars)
    return epsf, time.perf_counter() - start


def moffat_rows(image, stamps):
    """For each build stamp, the row of the pipeline's Moffat PSF stars with the same corner (-1: clipped)."""
    corners = {(int(a), int(b)): i for i, (a, b) in enumerate(zip(image.psf_stamps.x0, image.psf_stamps.y0))}
    return np.array([corners.get((int(a), int(b)), -1) for a, b in zip(stamps.x0, stamps.y0)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oversampling", type=int, default=2)
    parser.add_argument("--degree", type=int, default=1)
    parser.add_argument("--core", action="store_true", help="build on the Moffat core of the pipeline's fit")
    parser.add_argument("--repeats", type=int, default=3, help="psfax builds timed (the minimum is reported)")
    args = parser.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    from psfax.psf import BuildOptions, build_psf, fit_psf_photometry
    from psfax.psf.photutils_interop import from_photutils
    from psfax.stars.empirical import stamp_sky
    from psfax.stars.pipeline import fit_image

    image = fit_image(*(str(p) for p in sample_files()), photometry=False, psf="empirical")
    stamps = image.psf_choice.stamps
    shape = image.exposure.shape
    centre = image.psf_at(shape[1] / 2, shape[0] / 2)
    core = (float(centre["fwhm"][0]), float(centre["beta"][0])) if args.core else None
    options = BuildOptions(oversampling=args.oversampling, degree=args.degree, core=core,
                           saturation=image.exposure.saturate)
    sky = stamp_sky(image.background, stamps)
    times = []
    for _ in range(args.repeats):  # the first one compiles (or reads the persistent cache)
        start = time.perf_counter()
        built = build_psf(stamps.data, stamps.variance, stamps.mask, stamps.x_init, stamps.y_init, stamps.x0,
                          stamps.y0, options=options, sky=sky, image_shape=shape)
        times.append(time.perf_counter() - start)
    build_s = min(times)
    role = np.asarray(built.table["role"])
    reserve, build = np.flatnonzero(role == "reserve"), np.flatnonzero(role != "reserve")
    epsf, photutils_s = photutils_epsf(stamps, sky, build, args.oversampling)
    theirs = from_photutils(epsf, stamp_size=stamps.size)
    fit = fit_psf_photometry(theirs, stamps.data[reserve] - sky[reserve], stamps.variance[reserve],
                             stamps.mask[reserve], stamps.x_init[reserve], stamps.y_init[reserve], stamps.x0[reserve],
                             stamps.y0[reserve], fit_bkg=False)
    with_bkg = {label: np.asarray(fit_psf_photometry(
        model, stamps.data[reserve] - sky[reserve], stamps.variance[reserve], stamps.mask[reserve],
        stamps.x_init[reserve], stamps.y_init[reserve], stamps.x0[reserve], stamps.y0[reserve],
        fit_bkg=True)["reduced_chi2"], float) for label, model in (("psfax_empirical", built.psf),
                                                                   ("photutils_epsf", theirs))}
    rows = moffat_rows(image, stamps)[reserve]
    kept = rows >= 0
    moffat = np.asarray(image.psf_stars["reduced_chi2"], float)[rows[kept]]
    ours = np.asarray(built.table["reduced_chi2"], float)[reserve]
    theirs_chi2 = np.asarray(fit["reduced_chi2"], float)

    def medians(sel):
        return {"psfax_empirical": float(np.nanmedian(ours[sel])),
                "photutils_epsf": float(np.nanmedian(theirs_chi2[sel]))}

    out = {
        "stars": int(len(stamps.data)), "build_stars": int(len(build)), "reserve_stars": int(len(reserve)),
        "oversampling": args.oversampling, "degree": args.degree, "core": core,
        "psfax_build_s": build_s, "psfax_build_s_each": times, "photutils_build_s": photutils_s,
        "speedup": photutils_s / build_s, "load_average_1min_at_end": os.getloadavg()[0],
        "reserve_median_reduced_chi2": medians(np.ones(len(reserve), bool)),
        "reserve_moffat_kept": {"stars": int(kept.sum()), **medians(kept),
                                "moffat_pipeline": float(np.nanmedian(moffat))},
        "reserve_moffat_kept_background_fitted": {k: float(np.nanmedian(v[kept])) for k, v in with_bkg.items()},
        "rounds": built.rounds,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

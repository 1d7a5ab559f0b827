"""Empirical PSF on the real ZTF quadrant: psfax's batched build against photutils' EPSFBuilder.

Same run, same stars: the pipeline's PSF stars (selection and Moffat fit of ``psfax.fit_image``, no
photometry) are split into build (80 %) and reserve (20 %) stars with the build's own seed; psfax's
:func:`psfax.psf.build_psf` and photutils' ``EPSFBuilder`` (oversampling matched) each build from the build
stars; both models then fit the reserve stars with the same fitter and noise model
(:func:`psfax.psf.fit_psf_photometry`, the stamps' CCD variance), so the reserve-star median reduced chi2
compares the models alone.  The Moffat's figure is the pipeline's own fit of the same reserve stars.

    PYTHONPATH=src python benchmarks/bench_epsf.py [--oversampling 4] [--degree 1] [--core]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = Path("/work/shared/data")
SCI = DATA / "ztf_20200924431759_000655_zr_c13_o_q3_sciimg.fits.gz"
MSK = DATA / "ztf_20200924431759_000655_zr_c13_o_q3_mskimg.fits.gz"


def photutils_epsf(stamps, build, oversampling):
    """EPSFBuilder on the build stars' background-subtracted stamps (photutils' EPSFStars)."""
    from photutils.psf import EPSFBuilder, EPSFStar, EPSFStars

    stars = EPSFStars([EPSFStar(stamps.data[i] - np.median(stamps.data[i][[0, -1]]),
                                cutout_center=(stamps.x_init[i], stamps.y_init[i])) for i in build])
    start = time.perf_counter()
    epsf, _ = EPSFBuilder(oversampling=oversampling, maxiters=10, progress_bar=False)(stars)
    return epsf, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oversampling", type=int, default=4)
    parser.add_argument("--degree", type=int, default=1)
    parser.add_argument("--core", action="store_true", help="build on the Moffat core of the pipeline's fit")
    args = parser.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    from psfax.psf import BuildOptions, build_psf, fit_psf_photometry
    from psfax.psf.photutils_interop import from_photutils
    from psfax.stars.pipeline import fit_image

    image = fit_image(str(SCI), str(MSK), photometry=False)
    stamps = image.psf_stamps
    shape = image.exposure.shape
    centre = image.psf_at(shape[1] / 2, shape[0] / 2)
    core = (float(centre["fwhm"][0]), float(centre["beta"][0])) if args.core else None
    options = BuildOptions(oversampling=args.oversampling, degree=args.degree, core=core)
    start = time.perf_counter()
    built = build_psf(stamps.data, stamps.variance, stamps.mask, stamps.x_init, stamps.y_init, stamps.x0, stamps.y0,
                      options=options, image_shape=shape)
    build_s = time.perf_counter() - start
    role = np.asarray(built.table["role"])
    reserve, build = np.flatnonzero(role == "reserve"), np.flatnonzero(role != "reserve")
    epsf, photutils_s = photutils_epsf(stamps, build, args.oversampling)
    theirs = from_photutils(epsf, stamp_size=stamps.size)
    fit = fit_psf_photometry(theirs, stamps.data[reserve], stamps.variance[reserve], stamps.mask[reserve],
                             stamps.x_init[reserve], stamps.y_init[reserve], stamps.x0[reserve], stamps.y0[reserve])
    moffat = np.asarray(image.psf_stars["reduced_chi2"], float)[reserve]  # psf_stars are psf_stamps' rows
    out = {
        "stars": int(len(stamps)), "build_stars": int(len(build)), "reserve_stars": int(len(reserve)),
        "oversampling": args.oversampling, "degree": args.degree, "core": core,
        "psfax_build_s": build_s, "photutils_build_s": photutils_s, "speedup": photutils_s / build_s,
        "reserve_median_reduced_chi2": {
            "psfax_empirical": float(np.nanmedian(np.asarray(built.table["reduced_chi2"], float)[reserve])),
            "photutils_epsf": float(np.nanmedian(np.asarray(fit["reduced_chi2"], float))),
            "moffat_pipeline": float(np.nanmedian(moffat)),
        },
        "rounds": built.rounds,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

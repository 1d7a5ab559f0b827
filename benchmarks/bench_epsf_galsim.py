"""Empirical PSF build against GalSim truth (non-Moffat PSF varying over a field; benchmarks/galsim_field.py).

Reports the build's rounds, the fluxes (within the normalisation radius) against the truth's light within
that radius, position and flux pulls of the reserve stars, and the model's error against the noise-free
truth relative to the peak (model rendered at the true positions plus the median fitted-minus-true shift,
which removes the arbitrary centring of an empirical model).

    PYTHONPATH=src python benchmarks/bench_epsf_galsim.py --fwhm 2.5 --stars 200 --oversampling 2 --degree 0
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from galsim_field import FIELD, SKY, make_field


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fwhm", type=float, default=2.5)
    parser.add_argument("--stars", type=int, default=200)
    parser.add_argument("--oversampling", type=int, default=2)
    parser.add_argument("--degree", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--fit-sky", action="store_true", help="fit each star's background (default: the known sky)")
    parser.add_argument("--core", type=float, nargs=2, metavar=("FWHM", "BETA"), help="Moffat core under the grid")
    args = parser.parse_args()
    from psfax.psf import BuildOptions, build_psf

    f = make_field(args.stars, args.fwhm, seed=args.seed)
    n = args.stars
    rng = np.random.default_rng(1)
    x0, y0 = f.x + 0.05 * rng.normal(size=n), f.y + 0.05 * rng.normal(size=n)  # detection-like starts
    start = time.perf_counter()
    res = build_psf(f.stamps, f.variance, np.zeros(f.stamps.shape, bool), x0, y0, f.x_image - f.x, f.y_image - f.y,
                    options=BuildOptions(oversampling=args.oversampling, degree=args.degree, max_rounds=args.rounds,
                                         core=None if args.core is None else tuple(args.core)),
                    sky=None if args.fit_sky else SKY, image_shape=(int(FIELD), int(FIELD)))
    print("build s", time.perf_counter() - start)
    for r in res.rounds:
        print(r)
    print(res.summary())
    tab, psf = res.table, res.psf
    role = np.asarray(tab["role"])
    size = f.stamps.shape[1]
    yy, xx = np.mgrid[:size, :size]
    inside = np.hypot(xx - (size - 1) / 2, yy - (size - 1) / 2) <= psf.norm_radius + 1e-9
    frac = (f.centred * inside).sum(axis=(1, 2))
    ratio = np.asarray(tab["flux_fit"]) / (f.flux * frac)
    for name in ("build", "reserve"):
        s = role == name
        print(name, "flux / truth within radius: mean", ratio[s].mean(), "+-", ratio[s].std() / np.sqrt(s.sum()))
    build = role == "build"
    dx = np.median(np.asarray(tab["x_fit"])[build] - f.x[build])
    dy = np.median(np.asarray(tab["y_fit"])[build] - f.y[build])
    reserve = role == "reserve"
    for name, truth in (("x", f.x + dx), ("y", f.y + dy), ("flux", f.flux * frac)):
        p = (np.asarray(tab[f"{name}_fit"]) - truth) / np.asarray(tab[f"{name}_err"])
        print(name, "reserve pulls mean, std", p[reserve].mean(), p[reserve].std())
    model = psf.render(f.x + dx, f.y + dy, f.x_image, f.y_image)
    truth = (f.truth_images - SKY) / f.flux[:, None, None]
    err = np.abs(model * frac[:, None, None] - truth).max(axis=(1, 2)) / truth.max(axis=(1, 2))
    print("model error / peak: median", np.median(err), "reserve median", np.median(err[reserve]))


if __name__ == "__main__":
    main()

"""Empirical PSF build against GalSim truth (non-Moffat PSF varying over a field; benchmarks/galsim_field.py).

Reports the build's rounds, the fluxes (within the normalisation radius) against the truth's light within
that radius, position and flux pulls of the reserve stars, and the model's error against the noise-free
truth relative to the peak (the model rendered at the true positions).  Positions are psfax's (the PSF's
windowed light centroid, stated for the truth by benchmarks/galsim_field.py).

    PYTHONPATH=src python benchmarks/bench_epsf_galsim.py --fwhm 2.5 --stars 2400 --oversampling 2 --degree 1
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
    parser.add_argument("--profile-error", type=float, nargs="+", default=[0.05],
                        help="the build's profile error: one build per value on the same stars (default 0.05)")
    parser.add_argument("--free-phases", action="store_true",
                        help="also build each without the phase constraints (the build before them)")
    args = parser.parse_args()
    f = make_field(args.stars, args.fwhm, seed=args.seed)
    for profile_error in args.profile_error:
        for tied in (True, False) if args.free_phases else (True,):
            print(f"== profile error {profile_error}, phase constraints {tied}")
            evaluate(f, args, profile_error, tied)


def evaluate(f, args, profile_error: float, tied: bool) -> None:
    """Build on the field's stars and print the figures of the module docstring."""
    from psfax.psf import BuildOptions, build_psf

    n = args.stars
    rng = np.random.default_rng(1)
    x0, y0 = f.x + 0.05 * rng.normal(size=n), f.y + 0.05 * rng.normal(size=n)  # detection-like starts
    start = time.perf_counter()
    res = build_psf(f.stamps, f.variance, np.zeros(f.stamps.shape, bool), x0, y0, f.x_image - f.x, f.y_image - f.y,
                    options=BuildOptions(oversampling=args.oversampling, degree=args.degree, max_rounds=args.rounds,
                                         core=None if args.core is None else tuple(args.core),
                                         profile_error=profile_error, phase_constraints=tied),
                    sky=None if args.fit_sky else SKY, image_shape=(int(FIELD), int(FIELD)))
    print("build s", time.perf_counter() - start)
    for r in res.rounds:
        print(r)
    print(res.summary())
    tab, psf = res.table, res.psf
    print({k: psf.meta[k] for k in ("phase_constraints", "centre_phases", "fwhm_px")})
    role = np.asarray(tab["role"])
    size = f.stamps.shape[1]
    yy, xx = np.mgrid[:size, :size]
    inside = np.hypot(xx - (size - 1) / 2, yy - (size - 1) / 2) <= psf.norm_radius + 1e-9
    frac = (f.centred * inside).sum(axis=(1, 2))
    ratio = np.asarray(tab["flux_fit"]) / (f.flux * frac)
    for name in ("build", "reserve"):
        s = role == name
        print(name, "flux / truth within radius: mean", ratio[s].mean(), "+-", ratio[s].std() / np.sqrt(s.sum()))
    reserve = role == "reserve"
    for name, truth in (("x", f.x), ("y", f.y), ("flux", f.flux * frac)):
        p = (np.asarray(tab[f"{name}_fit"]) - truth) / np.asarray(tab[f"{name}_err"])
        print(name, "reserve pulls mean, std", p[reserve].mean(), p[reserve].std())
    model = psf.render(f.x, f.y, f.x_image, f.y_image)
    truth = (f.truth_images - SKY) / f.flux[:, None, None]
    err = np.abs(model * frac[:, None, None] - truth).max(axis=(1, 2)) / truth.max(axis=(1, 2))
    print("model error / peak: median", np.median(err), "reserve median", np.median(err[reserve]))


if __name__ == "__main__":
    main()

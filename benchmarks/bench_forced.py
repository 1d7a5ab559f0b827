"""Benchmark of forced photometry (``psfax.stars.forced``) on the real ZTF quadrant.

1. 1,000 targets on one image: 500 at detected sources and 500 at random positions, the image's PSF
   fitted once by the stars pipeline (``fit_exposure``, photometry off) and its sep background reused.
   Timed: ``forced_exposure`` after the image is read and the PSF fitted (WCS projection, stamps, the
   batched fixed-position fit, flags, table); the first call (with compilation) and the best of
   ``--repeat`` warm calls; the kernel alone; and the sep background that a given-PSF run adds.
2. 100 targets on 100 epochs: the epochs are the real quadrant with its WCS shifted by random offsets
   (up to 150 px, sub-pixel parts included), so each epoch measures the targets on other pixels and at
   other sub-pixel phases; the PSF and background of the real image are reused (a real run fits each
   epoch's PSF: ~20 s per image with ``psfax stars fit``).  Stated as targets x epochs per second, for
   ``forced_photometry`` over the 100 exposures (their stamps fitted in one batch).

Wall times are best-of-N on a shared machine; the CPU time of the process is given beside them (2 cores:
wall can be ~half the CPU time when idle, much more when the machine is loaded).

3. With ``--pipeline``: the stars pipeline's photometry of every source (``fit_image``) and its fallback
   (issue #17 item 1): the fraction of sources with a finite ``flux_fit`` and ``flux_err``, with a usable
   flux (free fit without flag 1/8/16, or re-fitted at the detection position: source flag 16), converged.

Run: ``.venv/bin/python benchmarks/bench_forced.py [--repeat N] [--pipeline]``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, markdown_table, write_section  # noqa: E402

COMMAND = ".venv/bin/python benchmarks/bench_forced.py"


def sample_files():
    from psfax.io.samples import fetch_sample

    paths = fetch_sample("ztf-sample")
    return paths["science"], paths["mask"]


def random_targets(exposure, detections, n, seed):
    from astropy.table import Table

    rng = np.random.default_rng(seed)
    ny, nx = exposure.shape
    pick = rng.choice(len(detections), n // 2, replace=False)
    x = np.concatenate([np.asarray(detections["x"])[pick], rng.uniform(0, nx - 1, n - n // 2)])
    y = np.concatenate([np.asarray(detections["y"])[pick], rng.uniform(0, ny - 1, n - n // 2)])
    ra, dec = exposure.wcs.pixel_to_world_values(x, y)
    return Table({"ra": ra, "dec": dec})


def shifted(exposure, rng):
    """The exposure with its WCS reference pixel moved by a random offset (< 150 px per axis)."""
    wcs = copy.deepcopy(exposure.wcs)
    wcs.wcs.crpix = wcs.wcs.crpix + rng.uniform(-150, 150, 2)
    return dataclasses.replace(exposure, wcs=wcs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pipeline", action="store_true", help="also measure the pipeline's fallback")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import jax

    jax.config.update("jax_enable_x64", True)
    from psfax.stars.detect import detect_sources, measure_background
    from psfax.stars.exposure import read_exposure
    from psfax.stars.forced import (cut_target_stamps, fit_at_positions, forced_exposure, forced_photometry,
                                    read_targets, ImagePSF)
    from psfax.stars.pipeline import fit_exposure

    science, mask = sample_files()
    t0 = time.perf_counter()
    exposure = read_exposure(science, mask)
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit = fit_exposure(exposure, photometry=False)
    t_psf = time.perf_counter() - t0
    t_bkg = best_time(lambda: measure_background(exposure), 3)
    targets = random_targets(exposure, detect_sources(exposure, fit.background), 1000, seed=1)

    t0 = time.perf_counter()
    table = forced_exposure(exposure, targets, psf=fit)
    t_first = time.perf_counter() - t0
    t_warm = best_time(lambda: forced_exposure(exposure, targets, psf=fit), args.repeat)
    cpu0 = time.process_time()
    forced_exposure(exposure, targets, psf=fit)
    cpu_warm = time.process_time() - cpu0
    on = np.asarray(table["flags"]) & 1 == 0
    # the kernel alone, on the same stamps
    psf = ImagePSF.from_fit(fit)
    x, y = exposure.wcs.world_to_pixel_values(targets["ra"], targets["dec"])
    x, y = np.asarray(x)[on], np.asarray(y)[on]
    data, usable, sky_var, _, _, x0, y0 = cut_target_stamps(exposure, fit.background, x, y, 15)
    value = psf.value_at(x, y)
    t_kernel = best_time(lambda: fit_at_positions(data, usable, sky_var, x - x0, y - y0, value, exposure.gain),
                         args.repeat)
    t_wcs = best_time(lambda: exposure.wcs.world_to_pixel_values(targets["ra"], targets["dec"]), args.repeat)

    few = read_targets(random_targets(exposure, detect_sources(exposure, fit.background), 100, seed=2))
    rng = np.random.default_rng(3)
    epochs = [shifted(exposure, rng) for _ in range(100)]
    forced_photometry(epochs, few, psf=fit)  # compiles the 10,240-row bucket
    t0, cpu0 = time.perf_counter(), time.process_time()
    many = forced_photometry(epochs, few, psf=fit)
    t_many, cpu_many = time.perf_counter() - t0, time.process_time() - cpu0
    measured = int(np.sum((np.asarray(many["flags"]) & 1) == 0))

    rows = [
        ["read the quadrant (FITS + mask)", f"{t_read:.2f} s", ""],
        ["PSF fit (stars pipeline, photometry off)", f"{t_psf:.1f} s", "once per image"],
        ["sep background (a given-PSF run adds it)", f"{t_bkg:.2f} s", "reused from the PSF fit here"],
        ["1,000 targets, first call (compiles)", f"{t_first:.2f} s", f"{int(on.sum())} on the image"],
        ["1,000 targets, warm (best of {})".format(args.repeat), f"{t_warm * 1e3:.0f} ms",
         f"target < 0.5 s; CPU time of one call {cpu_warm * 1e3:.0f} ms"],
        ["  of which the batched kernel", f"{t_kernel * 1e3:.0f} ms", "1,024-row bucket"],
        ["  of which the WCS projection (TPV)", f"{t_wcs * 1e3:.0f} ms", ""],
        ["100 targets x 100 epochs", f"{t_many:.2f} s", f"{measured} target-epochs on an image, one batched "
         f"fit; CPU time {cpu_many:.2f} s"],
        ["  rate", f"{100 * 100 / t_many:,.0f} target-epochs/s", ""],
    ]
    chosen = fit.psf_choice.chosen if fit.psf_choice is not None else fit.options.model
    psf_text = ("the image's empirical PSF (degree 1, its tables in float32)" if chosen == "empirical" else
                f"the image's pixel-integrated {chosen} varying over the image (degree 1)")
    body = (f"Forced photometry on the real ZTF quadrant (3072 x 3080), 15 x 15 stamps, {psf_text} as "
            "`psfax.fit_exposure` chose it, fits in float64 on the CPU. Epochs of the 100 x 100 case: the real "
            "quadrant with its WCS shifted (< 150 px, sub-pixel parts included), PSF and background reused.\n\n"
            + markdown_table(["step", "time", "note"], rows))
    if args.pipeline:
        body += "\n\n" + pipeline_fluxes(science, mask)
    write_section("forced", "Forced photometry (psfax stars forced)", body,
                  COMMAND + (" --pipeline" if args.pipeline else ""))


def pipeline_fluxes(science, mask) -> str:
    """Sources of ``fit_image`` with a finite / usable flux, converged, re-fitted at fixed position."""
    import psfax

    catalog = psfax.fit_image(science, mask).catalog
    flux, err = (np.asarray(catalog[c], float) for c in ("flux_fit", "flux_err"))
    failed = (np.asarray(catalog["flags"]) & (1 | 8 | 16)) != 0
    fixed = (np.asarray(catalog["source_flags"]) & 16) != 0
    finite = np.isfinite(flux) & np.isfinite(err)
    n = len(catalog)
    rows = [["finite flux_fit and flux_err", f"{100 * finite.mean():.2f} %"],
            ["usable flux (free fit ok, or fixed position)", f"{100 * np.mean(finite & (~failed | fixed)):.2f} %"],
            ["free fit ok (no fit flag 1/8/16)", f"{100 * np.mean(~failed):.2f} %"],
            ["re-fitted at the detection position (source flag 16)", f"{int(fixed.sum())}"]]
    return (f"Stars pipeline photometry of the real quadrant ({n} sources):\n\n"
            + markdown_table(["sources", "share"], rows))


if __name__ == "__main__":
    main()

"""Benchmark of ``psfax stars fit`` on the real ZTF quadrant, and photutils on the same stars.

1. ``psfax stars fit`` run twice as a fresh process (the first fills the JAX
   compilation cache): wall time of the second, and its per-stage times.
2. In one process: the default fit (shared-shape pixel-integrated Moffat,
   degree-1 spatial model); a shared-shape Gaussian fitted to the same final PSF
   stars; median reduced chi2 of both and the converged fraction (issue targets).
3. PSF photometry of those PSF stars with a fixed pixel-integrated circular
   Gaussian (FWHM from the Gaussian fit): psfax vs photutils ``PSFPhotometry``
   with ``CircularGaussianPRF`` (also pixel-integrated), same data, same
   variance, same 15 x 15 fit box and starting positions.  Time ratio and
   agreement of positions and fluxes in units of the errors.

Run: ``.venv/bin/python benchmarks/bench_ztf.py [--stars N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import best_time, markdown_table, write_section  # noqa: E402

COMMAND = ".venv/bin/python benchmarks/bench_ztf.py"


def sample_files() -> tuple[Path, Path]:
    from psfax.io.samples import fetch_sample

    paths = fetch_sample("ztf-sample")
    return paths["science"], paths["mask"]


def time_cli(science: Path, mask: Path, out: Path) -> tuple[float, dict]:
    """Wall time of ``psfax stars fit`` as a new process, and the stage times it recorded."""
    exe = Path(sys.executable).with_name("psfax")
    cmd = [str(exe), "stars", "fit", str(science), "--mask", str(mask), "--out", str(out)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - start
    return wall, json.loads((out / "psf.json").read_text())


def compare_models(fit) -> dict:
    """Median reduced chi2 of Moffat (the fit) and Gaussian on the same final PSF stars."""
    import dataclasses

    from psfax.stars.pipeline import _fit

    gauss_options = dataclasses.replace(fit.options, model="gaussian")
    gauss = _fit(fit.psf_stamps, fit.exposure, gauss_options)
    return {"moffat": float(np.median(fit.psf_stars["reduced_chi2"])),
            "gaussian": float(np.median(gauss.table["reduced_chi2"])),
            "gaussian_fwhm": float(gauss.psf_at(*np.array([[1535.5], [1539.5]]))["fwhm"][0]),
            "gaussian_converged": float(np.mean(gauss.table["converged"]))}


def psfax_fixed(stamps, model: str, shape: dict):
    """psfax PSF photometry of the stamps with ``shape`` held fixed."""
    import psfax

    return psfax.fit_stamps(stamps.data, variance=stamps.variance, mask=stamps.mask, model=model,
                            shape={k: np.asarray(v, float) for k, v in shape.items()})


def photometry_psfax(stamps, fwhm: float):
    return psfax_fixed(stamps, "gaussian", {"fwhm": fwhm})


def sky_excess(fit, table) -> np.ndarray:
    """Fitted local sky minus sep's sky map (mean over each stamp) [ADU], per PSF star."""
    stamps, level = fit.psf_stamps, fit.background.level
    sep_sky = np.array([level[y0:y0 + stamps.size, x0:x0 + stamps.size].mean()
                        for x0, y0 in zip(stamps.x0, stamps.y0)])
    return np.asarray(table["bkg_fit"]) - sep_sky


def photometry_photutils(fit, fwhm: float):
    """photutils PSFPhotometry on the sky-subtracted image, same stars and variance."""
    from astropy.table import Table
    from photutils.psf import CircularGaussianPRF, PSFPhotometry

    exp, stamps = fit.exposure, fit.psf_stamps
    image = exp.data - fit.background.level
    error = np.sqrt(np.maximum(image, 0) / exp.gain + fit.background.rms_map ** 2)
    init = Table({"x": stamps.x0 + stamps.x_init, "y": stamps.y0 + stamps.y_init,
                  "flux": np.asarray(fit.psf_stars["flux_fit"])})
    phot = PSFPhotometry(CircularGaussianPRF(fwhm=fwhm), (stamps.size, stamps.size))
    return phot(image, mask=exp.bad, error=error, init_params=init)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-cli", action="store_true", help="skip the two CLI runs")
    args = parser.parse_args()
    science, mask = sample_files()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_cli:
            warm_wall, _ = time_cli(science, mask, Path(tmp) / "warmup")
            wall, info = time_cli(science, mask, Path(tmp) / "run")
            rows.append(["`psfax stars fit` (new process, warm cache), total", f"{wall:.2f}", "< 10"])
            for stage, seconds in info["timings_s"].items():
                rows.append([f"  stage {stage}", f"{seconds:.2f}", "< 1" if stage == "fit" else ""])
            rows.append(["(first run, filling the compilation cache)", f"{warm_wall:.2f}", ""])

    from psfax.stars import fit_image

    fit = fit_image(science, mask)
    models = compare_models(fit)
    fwhm = models["gaussian_fwhm"]
    photometry_psfax(fit.psf_stamps, fwhm)  # compile
    t_psfax = best_time(lambda: photometry_psfax(fit.psf_stamps, fwhm), repeat=3)
    ours = photometry_psfax(fit.psf_stamps, fwhm).table
    start = time.perf_counter()
    theirs = photometry_photutils(fit, fwhm)
    t_photutils = time.perf_counter() - start

    x_ours = fit.psf_stamps.x0 + np.asarray(ours["x_fit"])
    y_ours = fit.psf_stamps.y0 + np.asarray(ours["y_fit"])
    ok = (np.asarray(ours["flags"]) == 0) & np.isfinite(np.asarray(theirs["flux_fit"], float))
    dx = (x_ours - np.asarray(theirs["x_fit"]))[ok]
    dy = (y_ours - np.asarray(theirs["y_fit"]))[ok]
    dflux = ((np.asarray(ours["flux_fit"]) - np.asarray(theirs["flux_fit"])) / np.asarray(ours["flux_err"]))[ok]
    rel_flux = (np.asarray(ours["flux_fit"]) / np.asarray(theirs["flux_fit"]) - 1)[ok]
    excess_gauss = sky_excess(fit, ours)
    moffat_shape = {k: fit.psf_stars[k] for k in ("fwhm", "beta")}
    excess_moffat = sky_excess(fit, psfax_fixed(fit.psf_stamps, "moffat", moffat_shape).table)

    n = len(fit.psf_stars)
    body = [
        f"Real ZTF quadrant `{science.name}` (3080 x 3072), default options "
        f"(shared-shape pixel-integrated Moffat, spatial degree 1, 15 x 15 stamps).",
        "",
        markdown_table(["what", "seconds", "target"], rows) if rows else "(CLI runs skipped)",
        "",
        f"Selection: {' -> '.join(f'{k} {v}' for k, v in fit.counts.items())}; "
        f"PSF stars per refit (chi2 clipping): {' -> '.join(map(str, fit.clipping))}.",
        "",
        markdown_table(["quantity", "value", "target"], [
            ["converged fraction, first fit of the selected stars",
             f"{100 * fit.converged_fraction:.1f} %", ">= 95 %"],
            [f"median reduced chi2, Moffat ({n} final PSF stars)", f"{models['moffat']:.3f}",
             "below Gaussian"],
            ["median reduced chi2, Gaussian (same stars)", f"{models['gaussian']:.3f}", ""],
            ["Moffat FWHM at centre [px] / beta",
             " / ".join(f"{v[0]:.3f}" for v in fit.psf_at(1535.5, 1539.5).values()), ""],
        ]),
        "",
        f"PSF photometry of the same {n} stars, fixed pixel-integrated Gaussian of FWHM {fwhm:.3f} px:",
        "",
        markdown_table(["", "psfax (`fit_stamps`, shape fixed)", "photutils `PSFPhotometry` + `CircularGaussianPRF`"], [
            ["wall time [s]", f"{t_psfax:.3f} (best of 3)", f"{t_photutils:.2f} (one run)"],
            ["speed-up", f"{t_photutils / t_psfax:.1f} x", "1 x"],
        ]),
        "",
        f"Agreement over {int(ok.sum())} stars fitted by both (psfax - photutils): "
        f"x median {np.median(dx):+.4f} px, 16-84 % [{np.percentile(dx, 16):+.4f}, {np.percentile(dx, 84):+.4f}]; "
        f"y median {np.median(dy):+.4f} px; flux median {np.median(rel_flux) * 100:+.3f} % "
        f"(16-84 % [{np.percentile(rel_flux, 16) * 100:+.3f}, {np.percentile(rel_flux, 84) * 100:+.3f}] %), "
        f"i.e. {np.median(dflux):+.3f} sigma.  The flux offset is systematic and model mismatch explains it: "
        f"psfax fits a local sky per stamp, photutils is given the sep sky map (same data-based weights). "
        f"The Gaussian cannot follow this PSF's Moffat wings (beta ~1.6), so psfax's local sky rises to take "
        f"the wing light: it sits {np.median(excess_gauss):+.2f} ADU above sep's sky (median; it grows with "
        f"the star's flux), against {np.median(excess_moffat):+.2f} ADU when the same stars are fitted with "
        f"the fitted Moffat held fixed.  With a fixed zero sky, photutils gives that light to the Gaussian's "
        f"flux instead.",
    ]
    write_section("ztf", "Stars: ZTF quadrant pipeline (`psfax stars fit`)", "\n".join(body), COMMAND)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()

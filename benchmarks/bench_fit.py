"""Benchmark of the batched fitter against photutils, astropy and a scipy loop, on bright and faint stars.

Populations (GalSim-rendered pixel-integrated Moffats, beta 2.5, on 15 x 15
stamps, Poisson + read noise: gain 6, read noise 9 e-, sky 150 ADU, centres
within +-0.5 px of the stamp centre):

* ``bright``: FWHM 1.8 px, fluxes log-uniform in 1e4 .. 3e5 ADU (S/N ~ 100-1000);
* ``faint FWHM f``: as a survey image has them (``tests/fitting/survey_stars.py``):
  fluxes from the count distribution ``N(>F) ~ F^-0.75`` between matched-filter
  S/N 5 and 1000 (65 % below S/N 20, median ~12), sky-dominated, at FWHM 0.9
  (undersampled, as ZTF), 1.8 and 3.0 px.

psfax runs are timed after a warm-up call (compilation cache warm), best of
``--repeat``; the per-star peers (photutils ``PSFPhotometry`` + ``MoffatPSF``,
astropy ``Moffat2D`` + ``LMLSQFitter``, psfax's scipy ``least_squares`` loop)
are timed once on ``--peer-stars`` stars of the same population, their rate
being per star.  ``n_iter`` is psfax's mean (and largest) LM iteration count;
``cost/iter`` is (time per star / mean n_iter) over the same quantity of the
bright population at the same N and fitter, the two timed alternately: 1.0 when
the batched loop costs what its mean star does, larger when a tail of slow stars
dominates.  ``rounds`` is the
same question without the clock (a shared machine moves timings by 2-3x): the
star-iterations the LM rounds execute (:func:`round_work`, from each star's
n_iter) over N x (mean n_iter + 1), the start's linearisation counted; 1.0 when
no star waits for another.

Quality: ``scatter/CRB`` is the RMS of (x_fit - x_true) / sigma_CR with
sigma_CR the Cramer-Rao bound from the Fisher matrix at the fit (1.00 is
optimal); ``err/scatter`` the median reported error over the measured
scatter; flux bias the mean of flux_fit / flux_true - 1.

    python benchmarks/bench_fit.py [--sizes 500 5000] [--survey-stars 2000] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fitting"))

from _common import best_time, markdown_table, write_section  # noqa: E402
from galsim_stars import GAIN, READ_NOISE, make_stars  # noqa: E402
from survey_stars import make_survey_stars  # noqa: E402

import psfax  # noqa: E402
from psfax.fitting.settings import DEFAULT_SETTINGS  # noqa: E402

SHAPE = {"fwhm": 1.8, "beta": 2.5}


def quality(table, truth):
    x_pull = (np.asarray(table["x_fit"]) - truth["x"]) / np.asarray(table["x_err"])
    scatter = np.std(np.asarray(table["x_fit"]) - truth["x"])
    # compare like with like: the scatter of pulls is scatter / CRB star by star
    return {"scatter/CRB": float(np.sqrt(np.mean(x_pull**2))),
            "err/scatter": float(1.0 / np.std(x_pull)) if scatter > 0 else float("nan"),
            "flux bias": float(np.mean(np.asarray(table["flux_fit"]) / truth["flux"] - 1)),
            "converged": float(np.mean(table["converged"]))}


def psfax_fit(stars, **kw):
    """A call of ``fit_stamps`` on ``stars`` with the populations' noise model."""
    return lambda: psfax.fit_stamps(stars.stamps, gain=GAIN, read_noise=READ_NOISE, model="moffat", **kw)


def time_psfax(stars, repeat, **kw):
    run = psfax_fit(stars, **kw)
    result = run()  # warm-up: compile (or load from the persistent cache)
    return best_time(run, repeat), result


def time_photutils(stars):
    from astropy.table import Table
    from photutils.psf import MoffatPSF, PSFPhotometry

    n, s = len(stars.stamps), stars.stamps.shape[1]
    side = int(np.ceil(np.sqrt(n)))
    image = np.zeros((side * s, side * s))
    init = {"x": [], "y": [], "flux": []}
    for i in range(n):
        r, c = divmod(i, side)
        image[r * s:(r + 1) * s, c * s:(c + 1) * s] = stars.stamps[i] - 150.0
        init["x"].append(c * s + (s - 1) / 2)
        init["y"].append(r * s + (s - 1) / 2)
        init["flux"].append(stars.stamps[i].sum() - 150.0 * s * s)
    error = np.sqrt(np.maximum(image + 150.0, 1.0) / GAIN + (READ_NOISE / GAIN) ** 2)
    fwhm, beta = stars.truth["fwhm"], stars.truth["beta"]
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    phot = PSFPhotometry(MoffatPSF(alpha=alpha, beta=beta), (s, s), aperture_radius=3)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = phot(image, error=error, init_params=Table(init))
    elapsed = time.perf_counter() - t0
    offsets_x = np.array([divmod(i, side)[1] * s for i in range(n)])
    offsets_y = np.array([divmod(i, side)[0] * s for i in range(n)])
    table = {"x_fit": np.asarray(res["x_fit"]) - offsets_x, "y_fit": np.asarray(res["y_fit"]) - offsets_y,
             "flux_fit": np.asarray(res["flux_fit"]), "x_err": np.asarray(res["x_err"]),
             "converged": np.ones(n, bool)}
    return elapsed, table


def time_astropy(stars):
    from astropy.modeling import fitting, models

    fitter = fitting.LMLSQFitter() if hasattr(fitting, "LMLSQFitter") else fitting.LevMarLSQFitter()
    s = stars.stamps.shape[1]
    yy, xx = np.mgrid[0:s, 0:s]
    t0 = time.perf_counter()
    for stamp in stars.stamps:
        w = 1.0 / np.sqrt(np.maximum(stamp, 1.0) / GAIN + (READ_NOISE / GAIN) ** 2)
        init = models.Moffat2D(amplitude=stamp.max() - 150.0, x_0=(s - 1) / 2, y_0=(s - 1) / 2, gamma=1.5,
                               alpha=2.0) + models.Const2D(150.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fitter(init, xx, yy, stamp, weights=w)
    return time.perf_counter() - t0


def round_work(n_iter, free: bool):
    """Star-iterations of per-star LM's rounds (:func:`psfax.fitting.lm.solve`) for stars taking ``n_iter``:
    the first round runs every star, in CPU chunks of ``cpu_chunk``, each chunk as long as its slowest star
    (up to the round's count); later rounds run the unfinished stars, compacted, up to twice the count reached
    (a batch of at most one chunk counts at least 16 stars, the smallest padded batch); plus one start each."""
    s = DEFAULT_SETTINGS
    chunk = s.cpu_chunk
    reached, before, rows, total = s.free_shape_first_round if free else s.photometry_first_round, 0, n_iter, 0
    while rows.size:
        run = np.minimum(rows, reached) - before
        width = chunk if rows.size > chunk else max(16, rows.size)
        total += sum(width * run[c:c + chunk].max() for c in range(0, rows.size, chunk))
        rows = rows[rows > reached]
        if reached >= s.max_iter:
            break
        before, reached = reached, min(2 * reached, s.max_iter)
    return total + n_iter.size


def peer_rates(peers):
    """Stars/s of photutils, astropy and the scipy loop on ``peers``, and photutils' quality."""
    n = len(peers.stamps)
    t_phot, phot_table = time_photutils(peers)
    return {"photutils": n / t_phot, "astropy": n / time_astropy(peers),
            "scipy": n / time_psfax(peers, 1, optimizer="scipy", device="cpu")[0],
            "photutils quality": quality(phot_table, peers.truth)}


def peer_rows(population, n, rates):
    return [[population, "photutils PSFPhotometry (MoffatPSF, shape fixed)", n, f"{rates['photutils']:,.0f}", "1.0",
             "", "", "", *fmt_quality(rates["photutils quality"])],
            [population, "astropy Moffat2D + LMLSQFitter (free shape, point-sampled)", n,
             f"{rates['astropy']:,.0f}", *[""] * 8],
            [population, "psfax scipy least_squares loop (free shape)", n, f"{rates['scipy']:,.0f}", *[""] * 8]]


def time_alternately(runs, repeat):
    """Best wall time of each of ``runs`` (callables, called once first to compile), over ``repeat``
    rounds that call them in turn: a drift of the shared machine's speed moves them alike."""
    results = [run() for run in runs]
    times = [[] for _ in runs]
    for _ in range(repeat):
        for run, spent in zip(runs, times):
            t0 = time.perf_counter()
            run()
            spent.append(time.perf_counter() - t0)
    return [min(t) for t in times], results


def psfax_row(population, name, kw, kind, stars, repeat, rates, reference=None):
    """One table row of a psfax fit of ``stars``; ``reference``: the bright population's ``(stars, kw)``
    for the cost/iter column, timed alternately with this one."""
    n = len(stars.stamps)
    runs = [psfax_fit(s, device="cpu", **k) for s, k in [(stars, kw)] + ([] if reference is None else [reference])]
    seconds, results = time_alternately(runs, repeat)
    rate = n / seconds[0]
    peer = "photutils" if kind == "phot" else "astropy"
    n_iter = np.asarray(results[0].table["n_iter"])
    cost = ""
    if reference is not None:
        per_iter = seconds[0] / n / n_iter.mean()
        ref_per_iter = seconds[1] / len(reference[0].stamps) / np.mean(results[1].table["n_iter"])
        cost = f"{per_iter / ref_per_iter:.2f}"
    rounds = "" if kw.get("shared_shape") or kw.get("optimizer", "lm") != "lm" else \
        f"{round_work(n_iter, kind == 'free') / (n * (n_iter.mean() + 1)):.2f}"
    row = [population, f"psfax {name}", n, f"{rate:,.0f}", f"{rate / rates[peer]:.1f}x {peer}",
           f"{n_iter.mean():.2f} / {n_iter.max()}", cost, rounds, *fmt_quality(quality(results[0].table, stars.truth))]
    print(row, flush=True)
    return row


BRIGHT_CASES = [("photometry lm float64", dict(shape=SHAPE), "phot"),
                ("photometry lm float32", dict(shape=SHAPE, dtype=np.float32), "phot"),
                ("free shape lm (per star)", dict(), "free"),
                ("free shape tncg (per star)", dict(optimizer="tncg"), "free"),
                ("free shape adam (per star)", dict(optimizer="adam"), "free"),
                ("shared shape lm", dict(shared_shape=True), "free"),
                ("shared shape tncg", dict(shared_shape=True, optimizer="tncg"), "free"),
                ("shared shape adam", dict(shared_shape=True, optimizer="adam"), "free")]
SURVEY_CASES = [("photometry lm float64", "phot", dict()), ("photometry lm float32", "phot", dict(dtype=np.float32)),
                ("free shape lm (per star)", "free", dict()), ("shared shape lm", "free", dict(shared_shape=True))]
SURVEY_FWHM = (0.9, 1.8, 3.0)
HEADER = ["population", "fitter", "stars", "stars/s", "speed-up", "n_iter mean / max", "cost/iter", "rounds",
          "scatter/CRB", "err/scatter", "flux bias", "converged"]


def bright_rows(sizes, peer_stars, repeat):
    """The bright population at each size, every optimizer."""
    rates = peer_rates(make_stars("moffat", SHAPE, n=peer_stars, seed=99))
    rows = peer_rows("bright", peer_stars, rates)
    for n in sizes:
        stars = make_stars("moffat", SHAPE, n=n, seed=7)
        for name, kw, kind in BRIGHT_CASES:
            if kw.get("optimizer") == "adam" and n > 1000:
                continue  # 1500 Adam steps per star: minutes at this size, and the ranking is already clear
            rows.append(psfax_row("bright", name, kw, kind, stars, 1 if kw.get("optimizer") == "adam" else repeat,
                                  rates))
    return rows


def survey_rows(n, peer_stars, repeat):
    """Bright (FWHM 1.8) and faint survey populations (each FWHM) of n stars, LM fitters; peers on each."""
    populations = [("bright", lambda seed, size: make_stars("moffat", SHAPE, n=size, seed=seed))]
    populations += [(f"faint FWHM {f}", lambda seed, size, f=f: make_survey_stars(
        "moffat", {"fwhm": f, "beta": SHAPE["beta"]}, size, seed=seed)) for f in SURVEY_FWHM]
    rows, reference = [], {}
    for population, draw in populations:
        rates = peer_rates(draw(99, peer_stars))
        rows += peer_rows(population, peer_stars, rates)
        stars = draw(11, n)
        shape = {"fwhm": float(stars.truth["fwhm"]), "beta": float(stars.truth["beta"])}
        for name, kind, kw in SURVEY_CASES:
            kw = {**kw, "shape": shape} if kind == "phot" else kw
            rows.append(psfax_row(population, name, kw, kind, stars, repeat, rates, reference.get(name)))
            reference.setdefault(name, (stars, kw))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[500, 5000],
                        help="bright population sizes, every optimizer (none: skip)")
    parser.add_argument("--survey-stars", type=int, default=2000, help="stars per survey population (0: none)")
    parser.add_argument("--peer-stars", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="sizes 200, survey 200, peers on 100 stars, one repeat")
    parser.add_argument("--gpu-stars", type=int, default=0, help="also time N stars on the default (GPU) device")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.survey_stars, args.peer_stars, args.repeat = [200], 200, 100, 1

    rows = bright_rows(args.sizes, args.peer_stars, args.repeat) if args.sizes else []
    survey = survey_rows(args.survey_stars, args.peer_stars, args.repeat) if args.survey_stars else []
    if args.gpu_stars:
        rows += gpu_rows(args.gpu_stars, args.repeat)
    body = "### Bright stars, every optimizer\n\n" + markdown_table(HEADER, rows) if rows else ""
    if survey:
        body += ("\n\n### Survey populations: bright and faint (S/N 5-1000, power-law counts), LM\n\n"
                 + markdown_table(HEADER, survey))
    body += ("\n\nTargets: on the faint survey populations, PSF photometry >= 50x photutils and free-shape per-star "
             ">= 20x astropy Moffat2D (psfax integrates over pixels, astropy and photutils' MoffatPSF do not); "
             "cost/iter and rounds <= 1.5 x the bright population's; on the bright one scatter/CRB and err/scatter "
             "within 5 % of 1.  Peers are per-star "
             "loops timed on each population's own --peer-stars stars; their rate does not depend on N.  Adam is "
             "timed at N <= 1000 only (1500 steps per fit).")
    command = "python benchmarks/bench_fit.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_section("fit", "Fitting engine (bench_fit.py)", body, command.strip())


def fmt_quality(q):
    return [f"{q['scatter/CRB']:.3f}", f"{q['err/scatter']:.3f}", f"{q['flux bias']:+.4%}", f"{q['converged']:.3f}"]


def gpu_rows(n, repeat):
    """PSF photometry and shared-shape fits of n stars on the default device (a GPU when present)."""
    import jax

    if jax.devices()[0].platform == "cpu":
        print("no GPU: --gpu-stars skipped", file=sys.stderr)
        return []
    stars = make_stars("moffat", SHAPE, n=n, seed=8)
    rows = []
    for name, kw in [("GPU photometry lm float32", dict(shape=SHAPE)), ("GPU shared shape lm float32",
                                                                       dict(shared_shape=True))]:
        seconds, result = time_psfax(stars, repeat, device="gpu", dtype=np.float32, **kw)
        n_iter = np.asarray(result.table["n_iter"])
        rows.append(["bright", f"psfax {name}", n, f"{n / seconds:,.0f}", "", f"{n_iter.mean():.2f} / {n_iter.max()}",
                     "", "", *fmt_quality(quality(result.table, stars.truth))])
        print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    main()

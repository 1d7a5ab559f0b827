"""Throughput of ``psfax run stars-fit``: local executor versus Dask with 2 workers, same run.

The inputs are the real ZTF quadrant (3072 x 3080) linked under 16 names
(its mask beside each), so both executors see 16 ZTF-size images.  Each
executor writes into its own fresh output folder; the rate is images per
minute of wall time including the Dask LocalCluster start-up, and every
image must come out ``done``.  ``--quick`` uses 4 images.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml
from _common import markdown_table, write_section

def link_quadrants(folder: Path, n: int) -> list[Path]:
    """``n`` symlinked copies of the real quadrant and its mask (the ztf-sample, fetched when missing),
    under distinct names."""
    from psfax.io.samples import fetch_sample, find_sample_file

    if find_sample_file("ztf-sample", "science") is None:
        fetch_sample("ztf-sample")
    science_file, mask_file = (find_sample_file("ztf-sample", role) for role in ("science", "mask"))
    paths = []
    for i in range(n):
        science = folder / science_file.name.replace("_q3_", f"_q3_copy{i:02d}_")
        science.symlink_to(science_file)
        Path(str(science).replace("_sciimg", "_mskimg")).symlink_to(mask_file)
        paths.append(science)
    return paths


def measure(executor: str, inputs: list[Path], out: Path, options: dict, **kwargs):
    from psfax.runner import run_jobs

    summary = run_jobs("stars-fit", inputs, out_dir=out, executor=executor, plots=False, **options, **kwargs)
    if not summary.ok:
        raise SystemExit(f"{executor}: {summary.n_failed} images failed: {summary.failures[0]}")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 images instead of 16")
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                        help="a stars-fit option (YAML value), e.g. --option spatial_degree=0")
    args = parser.parse_args()
    n = 4 if args.quick else 16
    options = {k: yaml.safe_load(v) for k, _, v in (o.partition("=") for o in args.option)}
    with tempfile.TemporaryDirectory(prefix="psfax-bench-run-") as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        inputs = link_quadrants(tmp / "in", n)
        results = [("local (1 process, read-ahead thread)", measure("local", inputs, tmp / "local", options)),
                   ("dask LocalCluster, 2 workers x 1 thread", measure("dask", inputs, tmp / "dask", options, workers=2))]
    rows = []
    for label, s in results:
        shares = s.stage_shares()
        rows.append([label, n, f"{s.wall_s:.1f}", f"{s.images_per_min:.2f}",
                     f"{100 * shares['read']:.0f} / {100 * shares['compute']:.0f} / {100 * shares['write']:.0f}"])
    speedup = results[1][1].images_per_min / results[0][1].images_per_min
    body = (markdown_table(["executor", "images", "wall s", "images/min", "read / compute / write %"], rows)
            + f"\n\nDask with 2 workers / local: {speedup:.2f}x.  Job `stars-fit` (options {options or 'defaults'}, "
              "`plots=False`) on the real ZTF quadrant linked under distinct names; wall time includes "
              "JAX compilation (persistent cache warm after the first run) and the LocalCluster start.\n")
    command = " ".join(["python benchmarks/bench_run.py", *sys.argv[1:]])
    write_section("run", "psfax run: images/min, local vs Dask (stars-fit, ZTF quadrants)", body, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())

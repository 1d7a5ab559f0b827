"""Streaming cluster inference over a survey-size 4-band image: peak memory and throughput.

Builds a (4, N, N) float32 FITS cube on disk (N = 10000 by default, ~1.6 GB;
``--quick``: N = 2048) by tiling simulated CI fields, then runs
``psfax.clusters.infer.infer_file`` with the shipped model (or ``--model``) in a fresh
subprocess per setting and records its wall time and peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), after a warm-up call on a
small cube that compiles the network.  The peer in the same run is the same
inference in float32 against the CPU default float64.  The cubes are deleted at
the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, write_section  # noqa: E402

CHILD = r"""
import json, resource, sys, time
from psfax.clusters.infer import infer_file
path, warm, out, dtype, batch = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
model = sys.argv[6] or None
t0 = time.perf_counter()
infer_file(warm, model, out_dir=out, dtype=dtype, batch_size=batch, device="cpu")  # compiles
t1 = time.perf_counter()
infer_file(path, model, out_dir=out, dtype=dtype, batch_size=batch, device="cpu")
t2 = time.perf_counter()
print(json.dumps({"warmup_s": t1 - t0, "wall_s": t2 - t1,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def write_cube(path: Path, n: int, n_fields: int = 8) -> None:
    """A (4, n, n) float32 FITS cube with a TAN WCS, tiled from simulated CI fields, written strip by strip."""
    from astropy.io import fits
    from astropy.wcs import WCS

    from psfax.clusters.config import load_config
    from psfax.clusters.dataset import field_rng, simulate_field
    from psfax.device import compute_context, resolve_device

    cfg = load_config("ci")
    with compute_context(np.float64, resolve_device("cpu")):
        fields = np.stack([simulate_field(cfg, field_rng(cfg, 200, i))[1] for i in range(n_fields)])
    size = cfg.field.size
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [30.0, -20.0]
    w.wcs.crpix = [n / 2 + 0.5, n / 2 + 0.5]
    w.wcs.cdelt = [-cfg.field.pixel_scale / 3600, cfg.field.pixel_scale / 3600]
    header = fits.Header({"SIMPLE": True, "BITPIX": -32, "NAXIS": 3, "NAXIS1": n, "NAXIS2": n, "NAXIS3": 4})
    header.update(w.to_header())
    hdu = fits.StreamingHDU(path, header)
    reps = -(-n // size)
    for band in range(4):
        for row in range(reps):
            rows = min(size, n - row * size)
            strip = np.concatenate([fields[(row * reps + col) % n_fields, band] for col in range(reps)], axis=1)
            hdu.write(np.ascontiguousarray(strip[:rows, :n], dtype=">f4"))
    hdu.close()


def run_child(path: Path, warm: Path, out: Path, dtype: str, batch: int, model: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(warm), str(out), dtype, str(batch), model],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2048 x 2048 instead of 10000 x 10000")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=8, help="windows per batch")
    parser.add_argument("--model", default="", help="model stem (default: the shipped CI model)")
    parser.add_argument("--dtypes", default="float64,float32", help="comma-separated inference dtypes")
    args = parser.parse_args()
    n = args.size or (2048 if args.quick else 10000)
    from psfax.clusters.infer import resolve_model

    spec = resolve_model(args.model or None)[1]
    rows = []
    with tempfile.TemporaryDirectory(prefix="psfax-bench-clusters-") as tmp:
        cube = Path(tmp) / "big.fits"
        t0 = time.perf_counter()
        write_cube(cube, n)
        warm = Path(tmp) / "warm.fits"
        write_cube(warm, max(512, spec.field_size))
        print(f"wrote {cube} ({cube.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s", flush=True)
        for dtype in args.dtypes.split(","):
            r = run_child(cube, warm, Path(tmp) / f"out-{dtype}", dtype, args.batch, args.model)
            mpx = n * n / r["wall_s"] / 1e6
            print(dtype, r, f"{mpx:.2f} Mpx/s", flush=True)
            rows.append([f"psfax streaming, {dtype}", f"{n} x {n} x 4", f"{r['wall_s']:.1f}", f"{mpx:.2f}",
                         f"{r['peak_rss_gb']:.2f}", f"{r['warmup_s']:.1f}"])
    body = (markdown_table(["inference (CPU)", "image", "wall s", "Mpx/s", "peak RSS GiB",
                            "warm-up s (import excluded, compile on a small cube)"], rows) +
            f"\n\n{'Model ' + args.model if args.model else 'Shipped CI model'} ({spec.tile}-px tiles), windows of "
            f"{spec.field_size} px with a {spec.tile}-px margin ({spec.field_size // spec.tile - 2} x "
            f"{spec.field_size // spec.tile - 2} tiles kept per window), {args.batch} windows per batch; "
            f"Mpx/s counts image positions (4 bands each). "
            f"Wall time and Mpx/s exclude the one-off compilation (the warm-up column, timed on a small cube in the same process). Peak RSS is the whole child process (Python, JAX, the model, strips and batches); "
            f"the input cube is {4 * n * n * 4 / 2**30:.2f} GiB on disk. Target: peak < 4 GB.")
    name = "clusters" if not args.model else "clusters-" + Path(args.model).name
    write_section(name, "Clusters: streaming tile inference" + (f" ({Path(args.model).name})" if args.model else ""),
                  body, "python " + " ".join(["benchmarks/bench_clusters.py"] + sys.argv[1:]))


if __name__ == "__main__":
    main()

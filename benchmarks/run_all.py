"""Run every benchmark (``make bench``) and join their sections into docs/benchmarks.md.

``--assemble-only`` joins the existing sections without running anything.
"""

from __future__ import annotations

import subprocess
import sys

from _common import REPO

SCRIPTS = ["bench_fit.py", "bench_ztf.py", "bench_groups.py", "bench_injection.py", "bench_forced.py", "bench_epsf.py", "bench_aperture.py",
           "bench_aia.py", "bench_clusters.py", "bench_run.py"]


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    failed = []
    for script in [] if "--assemble-only" in args else SCRIPTS:
        print(f"=== {script}", flush=True)
        if subprocess.run([sys.executable, str(REPO / "benchmarks" / script)]).returncode:
            failed.append(script)
    parts = sorted((REPO / "docs" / "bench").glob("*.md"))
    header = ("# Benchmarks\n\nWritten by `make bench` (`benchmarks/run_all.py`) from the sections in "
              "`docs/bench/`; each section names the machine and the command that measured it. "
              "Peers are measured in the same run. GPU rows appear only where a GPU machine was lent to the "
              "session that ran them (`--gpu-stars`, `--gpu-stack`).\n\n")
    (REPO / "docs" / "benchmarks.md").write_text(header + "\n".join(p.read_text() for p in parts))
    if failed:
        print("failed:", ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

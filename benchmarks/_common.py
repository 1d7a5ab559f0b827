"""Helpers shared by the benchmark scripts: timing, machine description, output.

Each ``bench_<name>.py`` prints its results and writes a Markdown section to
``docs/bench/<name>.md``; ``run_all.py`` runs them all and joins the sections
into ``docs/benchmarks.md``.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    """One line naming the machine: CPU model, cores, memory, accelerator, JAX, and the load average now
    (1 and 15 min: the machine may be shared, which slows every timing of the run alike)."""
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cores = len(os.sched_getaffinity(0))
    dev = jax.devices()[0]
    accel = "no accelerator" if dev.platform == "cpu" else f"{dev.device_kind}"
    load1, _, load15 = os.getloadavg()
    return (f"{cpu}, {cores} cores, {mem_gb:.0f} GiB, {accel}; "
            f"Python {platform.python_version()}, JAX {jax.__version__} ({dev.platform}); "
            f"load average {load1:.1f} (1 min), {load15:.1f} (15 min) at the end of the run")


def best_time(fn, repeat: int = 3) -> float:
    """Best wall time in seconds of ``fn()`` over ``repeat`` calls (``fn`` blocks until done)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, title: str, body: str, command: str) -> Path:
    """Write ``docs/bench/<name>.md`` (title, machine, command, body) and print it."""
    text = (f"## {title}\n\nMachine: {machine()}  \nDate: {time.strftime('%Y-%m-%d')}  \n"
            f"Command: `{command}`\n\n{body.strip()}\n")
    out = REPO / "docs" / "bench" / f"{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return out

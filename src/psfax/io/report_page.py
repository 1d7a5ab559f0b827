"""``report.html``: one self-contained page beside a command's outputs.

:func:`write_report` writes a summary table, further tables (e.g. the
selection cuts), the figures embedded as ``data:`` URIs and relative links to
the output files, with inline CSS and no external asset, so the page works
offline and keeps its figures when moved.  A two-line inline script records on
``<body data-figures-loaded="k/n">`` how many figures the browser decoded (the
test reads it from headless Chromium).  Every stage command writes one:
``stars fit``, ``aia prep``, ``clusters evaluate`` and ``psfax run``.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Iterable
from pathlib import Path

from psfax.io.atomic import atomic_path

STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%;border:1px solid #ddd}
figure{margin:1em 0}figcaption{color:#555;font-size:90%}"""

SCRIPT = """window.addEventListener('load',function(){var f=document.querySelectorAll('img.figure'),k=0;
f.forEach(function(i){if(i.complete&&i.naturalWidth>0)k++;});document.body.dataset.figuresLoaded=k+'/'+f.length;});"""


def _table(rows: Iterable[tuple], header: tuple[str, ...] | None = None) -> str:
    head = "" if header is None else "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img class="figure" alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(path.name)}</figcaption></figure>")


def write_report(out_dir: str | os.PathLike, title: str, summary: Iterable[tuple[str, str]], *,
                 tables: dict[str, tuple[tuple[str, ...], Iterable[tuple]]] | None = None,
                 figures: Iterable[Path] = (), files: Iterable[Path] = (), name: str = "report.html") -> Path:
    """Write ``out_dir/name`` (atomically) and return its path.

    ``summary``: (label, value) rows; ``tables``: heading -> (column names, rows); ``figures``: PNG
    files, embedded; ``files``: outputs, linked relative to the page (skipped when absent).
    """
    out_dir = Path(out_dir)
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Summary</h2>", _table(summary)]
    for heading, (header, rows) in (tables or {}).items():
        parts += [f"<h2>{html.escape(heading)}</h2>", _table(rows, header)]
    figures = [Path(p) for p in figures]
    if figures:
        parts += ["<h2>Figures</h2>"] + [_figure(p) for p in figures]
    links = [Path(p) for p in files if Path(p).exists()]
    if links:
        items = "".join(f'<li><a href="{html.escape(os.path.relpath(p, out_dir))}">'
                        f"{html.escape(os.path.relpath(p, out_dir))}</a> ({p.stat().st_size:,} bytes)</li>"
                        for p in links)
        parts += ["<h2>Files</h2>", f"<ul>{items}</ul>"]
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body>{''.join(parts)}</body></html>\n")
    path = out_dir / name
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def _flat(prefix: str, value) -> list[tuple[str, str]]:
    """Nested dict -> (dotted key, value) rows; floats to 4 significant digits."""
    if isinstance(value, dict):
        return [row for k, v in value.items() for row in _flat(f"{prefix}.{k}" if prefix else str(k), v)]
    return [(prefix, f"{value:.4g}" if isinstance(value, float) else str(value))]


def write_files_report(out_dir, title: str, outcomes: list[tuple[str, str]], options: dict,
                       seconds: float) -> Path:
    """Page of a command over many files (``aia prep``): options, time, and per input its output or
    the reason it failed; ``outcomes`` are (input, output path or error text)."""
    failed = [o for o in outcomes if not Path(o[1]).exists()]
    summary = [("inputs", str(len(outcomes))), ("written", str(len(outcomes) - len(failed))),
               ("failed", str(len(failed))), ("time [s]", f"{seconds:.1f}")] + _flat("option", options)
    return write_report(out_dir, title, summary, tables={"Inputs": (("input", "output or error"), outcomes)},
                        files=[Path(o[1]) for o in outcomes if o not in failed])


def write_metrics_report(out_dir, title: str, metrics: dict, files=()) -> Path:
    """Page of a nested metrics dict (``clusters evaluate``), one row per leaf."""
    return write_report(out_dir, title, _flat("", metrics), files=files)


def write_run_report(summary) -> Path:
    """Page of a ``psfax run`` (a :class:`~psfax.runner.driver.RunSummary`): counts, rate, stage
    times, every manifest record, links to the manifest and to each input's own report or outputs."""
    from psfax.runner.manifest import Manifest

    manifest = Manifest(summary.out_dir)
    records = manifest.records()
    rows = [("job", summary.job), ("inputs", str(summary.n_inputs)), ("done", str(summary.n_done)),
            ("failed", str(summary.n_failed)), ("skipped (done before)", str(summary.n_skipped)),
            ("wall time [s]", f"{summary.wall_s:.1f}"), ("inputs per minute", f"{summary.images_per_min:.2f}")]
    rows += _flat("stage time [s]", dict(vars(summary.stage_s)))
    table = [(r["input"], r["status"], str(r["attempt"]), r["error"] or "",
              f"{r['timings']['read']:.1f} / {r['timings']['compute']:.1f} / {r['timings']['write']:.1f}")
             for r in records]
    links = [manifest.path, manifest.path.with_suffix(".parquet")]
    for r in records:
        outputs = [Path(p) for p in r["outputs"]]
        pages = [p for p in outputs if p.name == "report.html"]
        links += pages or outputs
    return write_report(summary.out_dir, f"psfax run {summary.job}: {summary.out_dir}", rows,
                        tables={"Inputs (manifest)": (("input", "status", "attempt", "error",
                                                       "read / compute / write [s]"), table)},
                        files=links)

"""The run manifest: one JSON line per finished attempt, appended, flushed and fsynced.

Fields of a line: ``input`` (the path as given), ``status`` (``done`` or
``failed``), ``outputs`` (paths), ``timings`` (``{"read", "compute",
"write"}`` in seconds), ``error`` (one line, empty when done), ``worker``,
``attempt`` (1 for the first run of an input, counting earlier runs in the
same manifest), ``psfax_version``, ``finished`` (UTC, ISO 8601).

Because every line is written and synced before the next input is reported,
a killed run loses at most the attempts that were still running.  A last line
cut short by a crash is ignored when the manifest is read back.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from pathlib import Path

from psfax.io.atomic import atomic_path
from psfax.runner.jobs import Outcome
from psfax.version import psfax_version

MANIFEST_NAME = "manifest.jsonl"


def record_of(outcome: Outcome) -> dict:
    """The manifest line (a dict) of one outcome."""
    record = dataclasses.asdict(outcome)
    record["outputs"] = list(outcome.outputs)
    record["psfax_version"] = psfax_version()
    record["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return record


class Manifest:
    """Append-only JSON-lines manifest at ``<out>/manifest.jsonl``."""

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir) / MANIFEST_NAME

    def records(self) -> list[dict]:
        """Every complete line, oldest first (a line cut short by a crash is skipped)."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def append(self, outcome: Outcome) -> dict:
        """Append one outcome as a line, flushed and fsynced before returning."""
        record = record_of(outcome)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return record

    def write_parquet(self) -> Path:
        """Write every record to ``manifest.parquet`` beside the JSON lines (timings as columns)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = self.records()
        columns = {key: [r[key] for r in rows] for key in
                   ("input", "status", "outputs", "error", "worker", "attempt", "psfax_version", "finished")}
        for stage in ("read", "compute", "write"):
            columns[f"{stage}_s"] = [float(r["timings"][stage]) for r in rows]
        table = pa.table(columns, schema=pa.schema([
            ("input", pa.string()), ("status", pa.string()), ("outputs", pa.list_(pa.string())),
            ("error", pa.string()), ("worker", pa.string()), ("attempt", pa.int64()),
            ("psfax_version", pa.string()), ("finished", pa.string()),
            ("read_s", pa.float64()), ("compute_s", pa.float64()), ("write_s", pa.float64())]))
        final = self.path.with_suffix(".parquet")
        with atomic_path(final) as tmp:
            pq.write_table(table, tmp)
        return final


def is_done(record: dict | None) -> bool:
    """True when ``record`` says done and every output it lists exists."""
    return (record is not None and record["status"] == "done"
            and all(Path(p).exists() for p in record["outputs"]))

"""Small helpers for AIA map headers."""

from __future__ import annotations


def add_history(meta, text: str) -> None:
    """Append one line ``psfax <text>`` to the HISTORY of a map's metadata (in place)."""
    old = str(meta.get("history", "")).rstrip("\n")
    meta["history"] = (old + "\n" if old else "") + f"psfax {text}"

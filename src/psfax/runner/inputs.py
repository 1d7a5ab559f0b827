"""Input lists and output folder names.

Inputs are paths, glob patterns (``data/*.fits.gz``) or text files of paths
(suffix ``.txt``, ``.lst`` or ``.list``; one path a line, blank lines and
``#`` comments skipped, relative paths taken from the list's folder).  A plain
path is kept even when it does not exist: the run records it as a failed
input instead of stopping.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from psfax.errors import InputError, MissingFileError

LIST_SUFFIXES = (".txt", ".lst", ".list")
COMPRESSION_SUFFIXES = (".gz", ".fz", ".bz2", ".xz")
IMAGE_SUFFIXES = (".fits", ".fit", ".fts", ".h5", ".hdf5", ".npz")


def paths_in_list(list_file: Path) -> list[str]:
    """The paths named in a text file, relative ones taken from the file's folder."""
    if not list_file.is_file():
        raise MissingFileError(f"{list_file}: input list not found")
    paths = []
    for line in list_file.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            paths.append(str(list_file.parent / line))
    return paths


def expand_input(item: str | os.PathLike) -> list[str]:
    """One INPUTS argument as paths: a glob's sorted matches, a list file's lines, or the path."""
    text = os.fspath(item)
    if glob.has_magic(text):
        matches = sorted(glob.glob(text))
        if not matches:
            raise InputError(f"inputs: no file matches {text!r}")
        return matches
    if Path(text).suffix.lower() in LIST_SUFFIXES:
        return paths_in_list(Path(text))
    return [text]


def resolve_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Absolute input paths in the order given, each once (symlinks are not followed)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = [os.path.abspath(p) for item in inputs for p in expand_input(item)]
    if not paths:
        raise InputError("inputs: no input given")
    return list(dict.fromkeys(paths))


def stem_of(path: str) -> str:
    """The file name without compression and image suffixes, in safe characters."""
    name = os.path.basename(path)
    for suffixes in (COMPRESSION_SUFFIXES, IMAGE_SUFFIXES):
        for suffix in suffixes:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                break
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", name)
    return "_" + name if name.startswith(".") else name


def output_names(paths: list[str]) -> list[str]:
    """A unique output folder name per input: its stem, plus ``-<hash of the path>`` when stems collide."""
    stems = [stem_of(p) for p in paths]
    counts = Counter(stems)
    return [s if counts[s] == 1 else f"{s}-{hashlib.sha1(p.encode()).hexdigest()[:8]}"
            for s, p in zip(stems, paths)]

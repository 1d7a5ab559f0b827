"""Output locations: checked before any work, and a set of files committed all or nothing.

Every command checks where it will write before it reads or computes anything
(:func:`check_output_dir`, :func:`check_output_file`), so a bad ``--out``
costs one line and no computing.  A command writing several files into a
folder the user names writes them into a hidden staging folder inside it and
moves them with :func:`commit_files` only when all are written, after checking
that every one can replace what is there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from psfax.errors import InputError


def _writable_folder(path: Path, what: str) -> None:
    """Raise InputError unless ``path`` is, or could be created as, a folder this process can write."""
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            raise InputError(f"{what} {path}: {probe} is a broken link")
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{what} {path}: {probe} exists and is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{what} {path}: {probe} is not writable")


def check_output_dir(path: str | os.PathLike, what: str = "--out", files: Iterable[str] = ()) -> Path:
    """``path`` as a Path after checking it is (or can become) a writable folder in which none of
    ``files`` (names) is a folder; InputError naming ``what`` otherwise."""
    path = Path(path)
    _writable_folder(path, what)
    for name in files:
        if (path / name).is_dir():
            raise InputError(f"{what} {path}: {path / name} is a folder, where the file {name} goes")
    return path


def check_output_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """``path`` as a Path after checking it is not a folder and its folder is writable."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path}: is a folder; give a file name")
    _writable_folder(path.parent if str(path.parent) else Path("."), what)
    return path


@contextlib.contextmanager
def staging_folder(out_dir: str | os.PathLike):
    """A fresh hidden folder inside ``out_dir`` (same file system: renames are atomic); removed after."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".psfax-staging-", dir=out_dir))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def commit_files(staging: Path, final: Path) -> list[Path]:
    """Move every file of ``staging`` to the same place under ``final``; return the final paths.

    Every target is checked first (none may be a folder), so a commit that
    cannot finish moves nothing; each move is an atomic rename.
    """
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    targets = [final / p.relative_to(staging) for p in files]
    for target in targets:
        if target.is_dir():
            raise InputError(f"{target} is a folder; nothing was written over the outputs in {final}")
    for path, target in zip(files, targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    return targets

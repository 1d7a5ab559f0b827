"""Sample data in the user cache: where to find it, how to fetch it, checked by sha256.

``ztf-sample`` is a real ZTF science quadrant and its mask, the ZTF team's
test image shipped in the ``ztfimg==0.19.0`` source distribution.  It is
copied from a local shared-data folder when one holds it (``$PSFAX_SHARED_DATA``,
then ``../shared/data`` beside the repository), otherwise downloaded with
``pip download --no-deps`` and unpacked from the sdist.

The cache holds the FITS files uncompressed (the sdist ships them so; the
shared folder holds them gzipped and is decompressed on copy): reading is
faster, and the cached bytes are checked against one sha256 whatever the
source.  A gzipped shared copy is checked against its own sha256 first.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from psfax.device import cache_dir
from psfax.errors import BadFileError, InputError, MissingFileError
from psfax.io.atomic import atomic_path

REPO = Path(__file__).resolve().parents[3]


@dataclasses.dataclass(frozen=True)
class SampleFile:
    """A FITS file of a sample: its name, the sha256 of its bytes and of its gzipped shared copy."""

    name: str
    sha256: str
    gz_sha256: str


@dataclasses.dataclass(frozen=True)
class Sample:
    """A named set of files, role -> :class:`SampleFile`, and the sdist that ships them."""

    name: str
    folder: str
    files: dict[str, SampleFile]
    pip_requirement: str


SAMPLES = {
    "ztf-sample": Sample(
        name="ztf-sample", folder="ztf",
        files={
            "science": SampleFile(
                "ztf_20200924431759_000655_zr_c13_o_q3_sciimg.fits",
                "0884728fcf98cb81c95961987c940069b00fe496552030f7610f6d6390b4dee4",
                "99a0fdae7e164ab68536be9d5ac09532c1f89170bda377238660022f7ee859a3"),
            "mask": SampleFile(
                "ztf_20200924431759_000655_zr_c13_o_q3_mskimg.fits",
                "dd636f16779a9aaadfab035243dadbed686ebaae8ffac157a60f5e30916ba8f2",
                "2892ee847d6ccb6b191b4a3b539093f771172d618d932c925f7f60d69c8f3a04"),
        },
        pip_requirement="ztfimg==0.19.0"),
}


def get_sample(name: str) -> Sample:
    try:
        return SAMPLES[name]
    except KeyError:
        raise InputError(f"unknown sample {name!r}; known: {', '.join(SAMPLES)}") from None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shared_data_dirs() -> list[Path]:
    """Local folders that may hold the samples, in order of preference."""
    dirs = [Path(os.environ["PSFAX_SHARED_DATA"])] if os.environ.get("PSFAX_SHARED_DATA") else []
    return dirs + [REPO.parent / "shared" / "data"]


def sample_dir(name: str) -> Path:
    return cache_dir() / "samples" / get_sample(name).folder


def sample_path(name: str, role: str) -> Path:
    """Path of a fetched sample file; raises if it has not been fetched."""
    sample = get_sample(name)
    if role not in sample.files:
        raise InputError(f"sample {name!r} has no file {role!r}; it has {', '.join(sample.files)}")
    path = sample_dir(name) / sample.files[role].name
    if not path.exists():
        raise MissingFileError(f"{path} not found: run `psfax data fetch {name}` first")
    return path


def fetch_sample(name: str, *, use_shared: bool = True) -> dict[str, Path]:
    """Put the sample's files in the cache (if not already there, intact); return role -> path.

    Sources: the shared-data folders (when ``use_shared``), else the package index.
    Every file's sha256 is checked; a mismatch raises :class:`~psfax.errors.BadFileError`.
    """
    sample = get_sample(name)
    target = sample_dir(name)
    missing = {role: f for role, f in sample.files.items() if not _intact(target / f.name, f.sha256)}
    if use_shared:
        for role, f in list(missing.items()):
            for folder in shared_data_dirs():
                if _intact(folder / f"{f.name}.gz", f.gz_sha256):
                    _gunzip(folder / f"{f.name}.gz", target / f.name, f.sha256)
                    del missing[role]
                    break
    if missing:
        _fetch_from_index(sample, list(missing.values()), target)
    return {role: target / f.name for role, f in sample.files.items()}


def _intact(path: Path, digest: str) -> bool:
    return path.is_file() and sha256(path) == digest


def _store(source, final: Path, digest: str, origin: str) -> None:
    """Copy the binary stream ``source`` to ``final`` atomically if its sha256 is ``digest``."""
    with atomic_path(final) as part:
        with open(part, "wb") as dst:
            shutil.copyfileobj(source, dst, 1 << 22)
        if sha256(part) != digest:
            raise BadFileError(f"{final.name} from {origin}: sha256 mismatch")


def _gunzip(source: Path, final: Path, digest: str) -> None:
    with gzip.open(source, "rb") as src:
        _store(src, final, digest, str(source))


def _fetch_from_index(sample: Sample, missing: list[SampleFile], target: Path) -> None:
    """``pip download --no-deps`` the sdist and unpack the missing files from it."""
    with tempfile.TemporaryDirectory(prefix="psfax-sample-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
               sample.pip_requirement]
        run = subprocess.run(cmd, capture_output=True, text=True)
        archives = sorted(Path(tmp).glob("*.tar.gz"))
        if run.returncode != 0 or not archives:
            last = (run.stderr or run.stdout or "no sdist downloaded").strip().splitlines()[-1]
            raise MissingFileError(f"sample {sample.name!r}: `pip download --no-deps "
                                   f"{sample.pip_requirement}` failed: {last}")
        with tarfile.open(archives[0]) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for f in missing:
                if f.name not in members:
                    raise BadFileError(f"{archives[0].name} holds no file {f.name}")
                with tar.extractfile(members[f.name]) as src:
                    _store(src, target / f.name, f.sha256, archives[0].name)

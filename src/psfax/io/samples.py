"""Sample data for every instrument: where to find it, how to fetch it, checked by sha256.

* ``ztf-sample``: a real ZTF science quadrant and its mask, the ZTF team's test
  image shipped in the ``ztfimg==0.19.0`` source distribution;
* ``aia-sample``: two real SDO/AIA 171 A level-1 images, a 128 x 128 full-disk
  one from the ``sunpy==7.0.5`` wheel and a full-resolution 769 x 705 cutout
  from ``sunkit-image==0.6.1``;
* ``clusters-sample``: a 512 x 512 g, r, i, z field simulated by psfax's own
  cluster simulator (shipped ``ci`` prior, one cluster, fixed seed), written as
  the FITS cube ``psfax clusters infer`` reads, its true tile labels in a
  second HDU ``LABELS``.

One resolver, :func:`find_sample_file`, serves the CLI and the tests: a local
shared-data folder (``$PSFAX_SHARED_DATA``, then ``../shared/data`` beside the
repository) holding the file as ``NAME`` or ``NAME.gz``, else the sample cache
(``$PSFAX_SAMPLE_DIR``, default ``cache_dir()/samples``).  :func:`fetch_sample`
fills the cache: from a shared folder when one holds the file, otherwise with
``pip download --no-deps`` of the package that ships it (wheel or sdist, both
are unpacked), or, for the simulated sample, by running the simulator.

The cache holds the FITS files uncompressed (the packages ship them so; a
gzipped shared copy is decompressed on copy): reading is faster, and the
cached bytes are checked against one sha256 whatever the source.  A gzipped
shared copy is checked against its own sha256 first.  The simulated sample has
no sha256 (its bytes depend on the platform's floating point); its header
records the simulator's configuration and seed.
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
import zipfile
from collections.abc import Callable
from pathlib import Path

from psfax.device import cache_dir
from psfax.errors import BadFileError, InputError, MissingFileError
from psfax.io.atomic import atomic_path

REPO = Path(__file__).resolve().parents[3]


@dataclasses.dataclass(frozen=True)
class SampleFile:
    """A FITS file of a sample: its name, the sha256 of its bytes (and of a gzipped shared copy), and
    the pip requirement of the package that ships it (None: made by :attr:`Sample.make`)."""

    name: str
    sha256: str | None = None
    gz_sha256: str | None = None
    requirement: str | None = None


@dataclasses.dataclass(frozen=True)
class Sample:
    """A named set of files, role -> :class:`SampleFile`; ``make(folder)`` writes the simulated ones."""

    name: str
    folder: str
    files: dict[str, SampleFile]
    make: Callable[[Path], None] | None = None


def _make_clusters_sample(folder: Path) -> None:
    from psfax.io.simulated import write_clusters_sample

    write_clusters_sample(folder / SAMPLES["clusters-sample"].files["cube"].name)


SAMPLES = {
    "ztf-sample": Sample(
        name="ztf-sample", folder="ztf",
        files={
            "science": SampleFile(
                "ztf_20200924431759_000655_zr_c13_o_q3_sciimg.fits",
                "0884728fcf98cb81c95961987c940069b00fe496552030f7610f6d6390b4dee4",
                "99a0fdae7e164ab68536be9d5ac09532c1f89170bda377238660022f7ee859a3", "ztfimg==0.19.0"),
            "mask": SampleFile(
                "ztf_20200924431759_000655_zr_c13_o_q3_mskimg.fits",
                "dd636f16779a9aaadfab035243dadbed686ebaae8ffac157a60f5e30916ba8f2",
                "2892ee847d6ccb6b191b4a3b539093f771172d618d932c925f7f60d69c8f3a04", "ztfimg==0.19.0"),
        }),
    "aia-sample": Sample(
        name="aia-sample", folder="aia",
        files={
            "level1": SampleFile(
                "aia_171_level1.fits",
                "71d7f9f56908bd22d5dcac015884117c57c45f30951131bf4abdc06c55cb0280",
                requirement="sunpy==7.0.5"),
            "cutout": SampleFile(
                "aia_171_cutout.fits",
                "29f518c539354b8246a19cf94c0348212d7f676b08459ecbb9fde783e5d02907",
                requirement="sunkit-image==0.6.1"),
        }),
    "clusters-sample": Sample(
        name="clusters-sample", folder="clusters",
        files={"cube": SampleFile("clusters_sample_griz.fits")},
        make=_make_clusters_sample),
}


def get_sample(name: str) -> Sample:
    try:
        return SAMPLES[name]
    except KeyError:
        raise InputError(f"unknown sample {name!r}; known: {', '.join(SAMPLES)}") from None


def _get_file(name: str, role: str) -> SampleFile:
    sample = get_sample(name)
    if role not in sample.files:
        raise InputError(f"sample {name!r} has no file {role!r}; it has {', '.join(sample.files)}")
    return sample.files[role]


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


def sample_root() -> Path:
    """Folder of the fetched samples: ``$PSFAX_SAMPLE_DIR``, else ``cache_dir()/samples``."""
    return Path(os.environ.get("PSFAX_SAMPLE_DIR") or cache_dir() / "samples")


def sample_dir(name: str) -> Path:
    return sample_root() / get_sample(name).folder


def find_sample_file(name: str, role: str) -> Path | None:
    """Where a sample file is: a shared-data folder (as ``NAME`` or ``NAME.gz``), else the sample
    cache; None when neither holds it.  Existence only: :func:`fetch_sample` checks the bytes."""
    f = _get_file(name, role)
    for folder in shared_data_dirs():
        for candidate in (folder / f.name, folder / f"{f.name}.gz"):
            if candidate.is_file():
                return candidate
    cached = sample_dir(name) / f.name
    return cached if cached.is_file() else None


def sample_path(name: str, role: str) -> Path:
    """Path of a sample file (see :func:`find_sample_file`); raises if it is nowhere yet."""
    path = find_sample_file(name, role)
    if path is None:
        raise MissingFileError(f"{_get_file(name, role).name} of sample {name!r} not found in "
                               f"{sample_dir(name)} or a shared-data folder: run `psfax data fetch {name}` first")
    return path


def fetch_sample(name: str, *, use_shared: bool = True) -> dict[str, Path]:
    """Put the sample's files in the cache (if not already there, intact); return role -> path.

    Sources: the shared-data folders (when ``use_shared``), else the package index, else (simulated
    samples) the simulator.  Every file with a sha256 is checked; a mismatch raises
    :class:`~psfax.errors.BadFileError`.
    """
    sample = get_sample(name)
    target = sample_dir(name)
    missing = {role: f for role, f in sample.files.items() if not _intact(target / f.name, f.sha256)}
    if use_shared:
        for role, f in list(missing.items()):
            if f.sha256 is not None and _copy_from_shared(f, target):
                del missing[role]
    from_index = [f for f in missing.values() if f.requirement is not None]
    if from_index:
        _fetch_from_index(sample, from_index, target)
    if len(from_index) < len(missing):
        sample.make(target)
    return {role: target / f.name for role, f in sample.files.items()}


def _intact(path: Path, digest: str | None) -> bool:
    return path.is_file() and (digest is None or sha256(path) == digest)


def _copy_from_shared(f: SampleFile, target: Path) -> bool:
    for folder in shared_data_dirs():
        if _intact(folder / f.name, f.sha256):
            with open(folder / f.name, "rb") as src:
                _store(src, target / f.name, f.sha256, str(folder))
            return True
        if f.gz_sha256 is not None and _intact(folder / f"{f.name}.gz", f.gz_sha256):
            with gzip.open(folder / f"{f.name}.gz", "rb") as src:
                _store(src, target / f.name, f.sha256, str(folder / f"{f.name}.gz"))
            return True
    return False


def _store(source, final: Path, digest: str, origin: str) -> None:
    """Copy the binary stream ``source`` to ``final`` atomically if its sha256 is ``digest``."""
    with atomic_path(final) as part:
        with open(part, "wb") as dst:
            shutil.copyfileobj(source, dst, 1 << 22)
        if sha256(part) != digest:
            raise BadFileError(f"{final.name} from {origin}: sha256 mismatch")


def _archive_members(archive: Path) -> dict[str, Callable]:
    """File name -> opener of a wheel (zip) or sdist (tar.gz) member."""
    if archive.suffix in (".whl", ".zip"):
        zf = zipfile.ZipFile(archive)
        return {Path(n).name: (lambda n=n: zf.open(n)) for n in zf.namelist() if not n.endswith("/")}
    tar = tarfile.open(archive)
    return {Path(m.name).name: (lambda m=m: tar.extractfile(m)) for m in tar.getmembers() if m.isfile()}


def _fetch_from_index(sample: Sample, missing: list[SampleFile], target: Path) -> None:
    """``pip download --no-deps`` the packages that ship the missing files and unpack those files."""
    requirements = sorted({f.requirement for f in missing})
    with tempfile.TemporaryDirectory(prefix="psfax-sample-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, *requirements]
        run = subprocess.run(cmd, capture_output=True, text=True)
        archives = sorted(p for p in Path(tmp).iterdir() if p.suffix in (".whl", ".zip", ".gz"))
        if run.returncode != 0 or not archives:
            last = (run.stderr or run.stdout or "nothing downloaded").strip().splitlines()[-1]
            raise MissingFileError(f"sample {sample.name!r}: `pip download --no-deps "
                                   f"{' '.join(requirements)}` failed: {last}")
        members = {}
        for archive in archives:
            members.update({name: (archive, opener) for name, opener in _archive_members(archive).items()})
        for f in missing:
            if f.name not in members:
                raise BadFileError(f"{', '.join(a.name for a in archives)} hold no file {f.name}")
            archive, opener = members[f.name]
            with opener() as src:
                _store(src, target / f.name, f.sha256, archive.name)

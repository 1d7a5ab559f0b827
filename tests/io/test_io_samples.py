"""``psfax data``: the ZTF sample from the shared folder or the package index, sha256-checked."""

from __future__ import annotations

import io

import pytest

from psfax.cli import main
from psfax.errors import BadFileError, InputError, MissingFileError
from psfax.io import samples


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PSFAX_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_path_before_fetch_says_what_to_do(empty_cache):
    with pytest.raises(MissingFileError, match=r"run `psfax data fetch ztf-sample` first"):
        samples.sample_path("ztf-sample", "science")


def test_unknown_sample_and_role(empty_cache):
    with pytest.raises(InputError, match=r"unknown sample 'hst'; known: ztf-sample"):
        samples.fetch_sample("hst")
    with pytest.raises(InputError, match=r"sample 'ztf-sample' has no file 'flat'"):
        samples.sample_path("ztf-sample", "flat")


def test_fetch_from_shared_folder_and_cli(shared_data, empty_cache, monkeypatch, capsys):
    monkeypatch.setenv("PSFAX_SHARED_DATA", str(shared_data))
    assert main(["data", "fetch", "ztf-sample"]) == 0
    out = capsys.readouterr().out
    science = samples.sample_path("ztf-sample", "science")
    assert f"science: {science}" in out
    # the cached bytes are the FITS inside the shared .fits.gz, checked by sha256
    for role, spec in samples.get_sample("ztf-sample").files.items():
        assert samples.sha256(samples.sample_path("ztf-sample", role)) == spec.sha256
    assert main(["data", "path", "ztf-sample", "mask"]) == 0
    assert capsys.readouterr().out.strip().endswith("mskimg.fits")


def test_corrupt_copy_is_refused(tmp_path):
    with pytest.raises(BadFileError, match=r"x.fits from somewhere: sha256 mismatch"):
        samples._store(io.BytesIO(b"not the sample"), tmp_path / "x.fits", "0" * 64, "somewhere")
    assert not (tmp_path / "x.fits").exists()  # nothing half-written is left


@pytest.mark.slow
def test_fetch_from_package_index(empty_cache):
    """Downloads the ztfimg==0.19.0 sdist (~31 MB) with pip; needs the package index."""
    try:
        paths = samples.fetch_sample("ztf-sample", use_shared=False)
    except MissingFileError as exc:
        pytest.skip(f"package index not reachable: {exc}")
    for role, spec in samples.get_sample("ztf-sample").files.items():
        assert samples.sha256(paths[role]) == spec.sha256


def test_usage_error_is_one_message_not_a_traceback(capsys):
    """A missing argument exits 2 with click's usage message (typer may bundle its own click)."""
    assert main(["data", "path", "ztf-sample"]) == 2
    err = capsys.readouterr().err
    assert "Missing argument" in err and "Traceback" not in err

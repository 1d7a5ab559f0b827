"""``psfax data``: the samples from a shared folder, the package index or the simulator, sha256-checked;
one resolver for the CLI and the tests."""

from __future__ import annotations

import gzip
import io
import shutil

import pytest
from astropy.io import fits

from psfax.cli import main
from psfax.errors import BadFileError, InputError, MissingFileError
from psfax.io import samples


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty sample cache and no shared-data folder."""
    monkeypatch.setenv("PSFAX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PSFAX_SAMPLE_DIR", str(tmp_path / "cache" / "samples"))
    monkeypatch.setattr(samples, "shared_data_dirs", lambda: [])
    return tmp_path / "cache" / "samples"


def test_path_before_fetch_says_what_to_do(empty_cache):
    with pytest.raises(MissingFileError, match=r"run `psfax data fetch ztf-sample` first"):
        samples.sample_path("ztf-sample", "science")
    assert samples.find_sample_file("aia-sample", "cutout") is None


def test_unknown_sample_and_role(empty_cache):
    with pytest.raises(InputError, match=r"unknown sample 'hst'; known: ztf-sample, aia-sample, clusters-sample"):
        samples.fetch_sample("hst")
    with pytest.raises(InputError, match=r"sample 'ztf-sample' has no file 'flat'"):
        samples.sample_path("ztf-sample", "flat")


def test_resolver_finds_both_name_forms(tmp_path, empty_cache, monkeypatch):
    """A shared folder may hold a file as NAME or NAME.gz; the cache (NAME) is the fallback."""
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setattr(samples, "shared_data_dirs", lambda: [shared])
    name = samples.get_sample("aia-sample").files["level1"].name
    cached = empty_cache / "aia" / name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert samples.find_sample_file("aia-sample", "level1") == cached
    (shared / f"{name}.gz").write_bytes(b"x")
    assert samples.find_sample_file("aia-sample", "level1") == shared / f"{name}.gz"
    (shared / name).write_bytes(b"x")
    assert samples.find_sample_file("aia-sample", "level1") == shared / name


def test_fetch_from_shared_folder_and_cli(ztf_files, aia_level1_file, empty_cache, monkeypatch, capsys):
    """Copies (and un-gzips) the shared files into the cache; the cached bytes pass the sha256."""
    monkeypatch.setattr(samples, "shared_data_dirs", lambda: [ztf_files[0].parent, aia_level1_file.parent])
    assert main(["data", "fetch", "ztf-sample"]) == 0
    out = capsys.readouterr().out
    science = empty_cache / "ztf" / samples.get_sample("ztf-sample").files["science"].name
    assert f"ztf-sample science: {science}" in out
    for role, spec in samples.get_sample("ztf-sample").files.items():
        assert samples.sha256(empty_cache / "ztf" / spec.name) == spec.sha256
    assert main(["data", "path", "ztf-sample", "mask"]) == 0
    assert capsys.readouterr().out.strip().endswith(("mskimg.fits", "mskimg.fits.gz"))


def test_aia_sample_from_a_wheel(aia_level1_file, empty_cache, tmp_path, monkeypatch):
    """The unpacking path of the package index, without the network: a wheel (zip) and a gzipped copy
    are read like the sunpy wheel would be; a file under another sha256 is refused."""
    import zipfile

    fake_pip = tmp_path / "pip"
    fake_pip.mkdir()
    with zipfile.ZipFile(fake_pip / "sunpy-7.0.5-py3-none-any.whl", "w") as zf:
        zf.write(aia_level1_file if aia_level1_file.suffix == ".fits" else _gunzipped(aia_level1_file, tmp_path),
                 "sunpy/data/test/aia_171_level1.fits")
        zf.writestr("sunkit_image/data/test/aia_171_cutout.fits", b"not the cutout")

    def download(cmd, **kwargs):
        assert cmd[3:5] == ["download", "--no-deps"] and "sunpy==7.0.5" in cmd
        for archive in fake_pip.iterdir():
            shutil.copy(archive, cmd[cmd.index("-d") + 1])
        return type("Run", (), {"returncode": 0, "stdout": "", "stderr": ""})()

    monkeypatch.setattr(samples.subprocess, "run", download)
    with pytest.raises(BadFileError, match=r"aia_171_cutout.fits from sunpy-7.0.5-py3-none-any.whl: sha256"):
        samples.fetch_sample("aia-sample")
    level1 = empty_cache / "aia" / "aia_171_level1.fits"
    assert samples.sha256(level1) == samples.get_sample("aia-sample").files["level1"].sha256
    assert not (empty_cache / "aia" / "aia_171_cutout.fits").exists()


def _gunzipped(path, tmp_path):
    out = tmp_path / path.name.removesuffix(".gz")
    with gzip.open(path) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return out


def test_clusters_sample_is_the_cube_infer_reads(sample_file):
    """The simulated field: a (4, 512, 512) float32 cube with a celestial WCS, and its true labels
    (a richness-20+ cluster covers at least a few of the 16 x 16 tiles, 1 to 255 by construction)."""
    path = sample_file("clusters-sample", "cube")
    with fits.open(path) as hdul:
        assert hdul[0].data.shape == (4, 512, 512) and hdul[0].data.dtype == ">f4"
        assert hdul[0].header["CTYPE1"] == "RA---TAN" and hdul[0].header["CLUSTER"]
        labels = hdul["LABELS"].data
        assert labels.shape == (16, 16) and 0 < labels.sum() < labels.size


def test_corrupt_copy_is_refused(tmp_path):
    with pytest.raises(BadFileError, match=r"x.fits from somewhere: sha256 mismatch"):
        samples._store(io.BytesIO(b"not the sample"), tmp_path / "x.fits", "0" * 64, "somewhere")
    assert not (tmp_path / "x.fits").exists()  # nothing half-written is left


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ztf-sample", "aia-sample"])
def test_fetch_from_package_index(empty_cache, name):
    """Downloads the packages (ztfimg sdist ~31 MB; sunpy and sunkit-image wheels ~10 MB) with pip."""
    paths = samples.fetch_sample(name, use_shared=False)
    for role, spec in samples.get_sample(name).files.items():
        assert samples.sha256(paths[role]) == spec.sha256


def test_usage_error_is_one_message_not_a_traceback(capsys):
    """A missing argument exits 2 with click's usage message (typer may bundle its own click)."""
    assert main(["data", "path", "ztf-sample"]) == 2
    err = capsys.readouterr().err
    assert "Missing argument" in err and "Traceback" not in err

"""Fixtures of the bad-input suite: one tiny file per class of bad input, and guarded output folders."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from bad_input_helpers import ZTF_HEADER

@pytest.fixture(scope="session")
def files(tmp_path_factory) -> dict[str, Path]:
    """One small file per class of bad input (and a good 64 x 64 image to pair with bad options)."""
    folder = tmp_path_factory.mktemp("bad-inputs")
    rng = np.random.default_rng(1)
    good = (150 + rng.normal(0, 3, (64, 64))).astype(np.float32)
    paths = {}

    def image(name, data, header=ZTF_HEADER):
        paths[name] = folder / f"{name}.fits"
        fits.PrimaryHDU(data, header=fits.Header(header)).writeto(paths[name])

    image("good", good)
    image("all_nan", np.full((64, 64), np.nan, np.float32))
    image("all_zero", np.zeros((64, 64), np.float32))
    image("cube", np.zeros((3, 64, 64), np.float32))
    image("no_gain", good, {k: v for k, v in ZTF_HEADER.items() if k != "GAIN"})
    image("no_read_noise", good, {k: v for k, v in ZTF_HEADER.items() if k != "READNOI"})
    image("mask_small", np.zeros((32, 32), np.int16), {})
    paths["not_fits"] = folder / "notes.fits"
    paths["not_fits"].write_text("not a FITS file\n" * 200)
    paths["empty"] = folder / "empty.fits"
    paths["empty"].write_bytes(b"")
    paths["truncated"] = folder / "cut.fits.gz"
    paths["truncated"].write_bytes(gzip.compress(paths["good"].read_bytes())[:3000])
    paths["missing"] = folder / "absent.fits"
    paths["a_file"] = folder / "a_file.txt"
    paths["a_file"].write_text("I am a file, not a folder\n")
    paths["table_not"] = folder / "pointing.ecsv"
    paths["table_not"].write_bytes(b"\x00\x01binary junk" * 50)
    return paths


@pytest.fixture
def guarded_out(tmp_path) -> Path:
    """An output folder holding earlier results, which a failing command must leave as they are."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "psf.json").write_text('{"old": true}\n')
    return out


@pytest.fixture(scope="session")
def aia_file(shared_data, tmp_path_factory) -> Path:
    """The 128 x 128 AIA 171 level-1 sample (from the sunpy wheel)."""
    path = shared_data / "aia_171_level1.fits"
    if not path.exists():
        pytest.skip(f"AIA sample not found in {shared_data}")
    return path


@pytest.fixture(scope="session")
def aia_variants(aia_file, tmp_path_factory) -> dict[str, Path]:
    """The AIA sample with one header defect each, and a second copy of the same observation."""
    folder = tmp_path_factory.mktemp("aia-bad")
    out = {"copy": folder / "copy_of_sample.fits"}
    shutil.copy(aia_file, out["copy"])
    for name, change in {"wavelength_9999": {"WAVELNTH": 9999},
                         "hmi": {"INSTRUME": "HMI_FRONT2", "TELESCOP": "SDO/HMI"}}.items():
        with fits.open(aia_file) as hdul:
            hdu = next(h for h in hdul if h.data is not None)
            header = hdu.header.copy()
            header.update(change)
            out[name] = folder / f"{name}.fits"
            fits.PrimaryHDU(np.asarray(hdu.data), header).writeto(out[name])
    return out

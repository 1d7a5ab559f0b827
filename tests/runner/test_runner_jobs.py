"""The registered jobs through the runner give what their functions give when called directly.

Each test skips, with the reason, while the instrument function it needs has
not landed in this checkout.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from psfax.runner import run_jobs
from psfax.runner.jobs import ztf_mask_path



def require(module: str, *names: str):
    """The module, or a skip naming what is missing."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        pytest.skip(f"{module} not importable yet ({exc})")
    missing = [n for n in names if not hasattr(mod, n)]
    if missing:
        pytest.skip(f"{module} has no {', '.join(missing)} yet")
    return mod


def manifest_outputs(out: Path) -> list[Path]:
    (record,) = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert record["status"] == "done", record["error"]
    return [Path(p) for p in record["outputs"]]


def test_ztf_mask_is_found_beside_the_science_image(tmp_path):
    science = tmp_path / "a_sciimg.fits.gz"
    assert ztf_mask_path(science) is None                 # no mask file yet
    (tmp_path / "a_mskimg.fits.gz").touch()
    assert ztf_mask_path(science) == tmp_path / "a_mskimg.fits.gz"
    assert ztf_mask_path(tmp_path / "other.fits") is None


@pytest.fixture(scope="module")
def ztf_cutout(tmp_path_factory, ztf_files) -> Path:
    """A 512 x 512 cut of the real ZTF quadrant, with its mask beside it under the ZTF names."""
    folder = tmp_path_factory.mktemp("ztf")
    rows, cols = slice(1200, 1712), slice(1200, 1712)
    for kind in ("sciimg", "mskimg"):
        with fits.open(ztf_files[kind == "mskimg"]) as hdul:
            fits.PrimaryHDU(hdul[0].data[rows, cols], hdul[0].header).writeto(folder / f"cut_{kind}.fits")
    return folder / "cut_sciimg.fits"


@pytest.mark.slow  # ~1 min: the first fit in a process compiles the pipeline's JAX programs
def test_stars_fit_job_matches_the_pipeline_called_directly(tmp_path, ztf_cutout):
    require("psfax", "fit_stamps")  # the pipeline's fitting engine
    pipeline = require("psfax.stars.pipeline", "read_exposure", "fit_exposure", "ImageFit")
    out = tmp_path / "out"
    options = dict(spatial_degree=0, photometry=False)
    summary = run_jobs("stars-fit", [ztf_cutout], out_dir=out, plots=False, show_progress=False, **options)
    assert summary.n_done == 1, summary.failures
    outputs = {p.name: p for p in manifest_outputs(out)}
    exposure = pipeline.read_exposure(ztf_cutout, ztf_cutout.with_name("cut_mskimg.fits"))
    direct = pipeline.fit_exposure(exposure, **options).write(tmp_path / "direct", plots=False)
    assert sorted(outputs) == sorted(p.name for p in direct)
    import pyarrow.parquet as pq

    for path in direct:
        if path.suffix == ".parquet":
            ours, theirs = pq.read_table(outputs[path.name]), pq.read_table(path)
            assert ours.column_names == theirs.column_names and ours.num_rows == theirs.num_rows
            for name in ours.column_names:
                a, b = ours.column(name).to_numpy(), theirs.column(name).to_numpy()
                if a.dtype.kind == "f":
                    # same code, same process, same data: identical up to the last bits of XLA's reductions
                    np.testing.assert_allclose(a, b, rtol=1e-10, atol=0, err_msg=name)


@pytest.mark.slow
def test_stars_fit_job_on_the_full_quadrant(tmp_path, ztf_files):
    require("psfax", "fit_stamps")
    require("psfax.stars.pipeline", "read_exposure", "fit_exposure")
    summary = run_jobs("stars-fit", [ztf_files[0]], out_dir=tmp_path, plots=False, show_progress=False)
    assert summary.n_done == 1, summary.failures
    psf = json.loads(next(p for p in manifest_outputs(tmp_path) if p.name == "psf.json").read_text())
    assert psf  # the pipeline's own tests check its numbers; here: the full-size run completes and writes


def test_aia_prep_job_matches_prep_called_directly(tmp_path, aia_level1_file):
    prep = require("psfax.solar.prep", "read_level1", "prep_map", "write_level16")
    source = aia_level1_file
    summary = run_jobs("aia-prep", [source], out_dir=tmp_path / "out", register=True, show_progress=False)
    assert summary.n_done == 1, summary.failures
    (ours,) = manifest_outputs(tmp_path / "out")
    theirs = prep.write_level16(prep.prep_map(prep.read_level1(source), register=True), tmp_path / "direct")
    # same code on the same data: bit-identical pixels expected
    np.testing.assert_array_equal(fits.getdata(ours), fits.getdata(theirs))


def test_clusters_infer_job_matches_infer_file_called_directly(tmp_path):
    infer = require("psfax.clusters.infer", "infer_file")
    encoder = require("psfax.clusters.encoder", "TileEncoder", "EncoderSpec", "save_model")
    import jax

    # a small untrained encoder: the test is about the plumbing, not the model's skill
    spec = encoder.EncoderSpec(tile=4, widths=(8, 8), context_layers=1, groups=1, field_size=32)
    net = encoder.TileEncoder(spec, np.zeros(4), np.ones(4), jax.random.PRNGKey(0))
    encoder.save_model(net, spec, tmp_path / "tiny")
    cube = tmp_path / "field.fits"
    fits.PrimaryHDU(np.random.default_rng(0).normal(size=(4, 64, 96)).astype(np.float32)).writeto(cube)
    options = dict(model=str(tmp_path / "tiny"), window=32, margin=4)
    summary = run_jobs("clusters-infer", [cube], out_dir=tmp_path / "out", show_progress=False, **options)
    assert summary.n_done == 1, summary.failures
    ours = {p.name: p for p in manifest_outputs(tmp_path / "out")}
    theirs = infer.infer_file(cube, out_dir=tmp_path / "direct", **options)
    assert sorted(ours) == sorted(p.name for p in theirs)
    fits_name = next(n for n in ours if n.endswith(".fits"))
    # same code, same model, same data: bit-identical probabilities expected
    np.testing.assert_array_equal(fits.getdata(ours[fits_name]), fits.getdata(tmp_path / "direct" / fits_name))

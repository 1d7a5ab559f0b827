"""``psfax stars forced``, ``psfax run stars-forced`` (local and Dask) and ``psfax stars lightcurves`` on a
small GalSim image whose PSF the stars pipeline fits (slow: one PSF fit per image), and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from psfax.cli import main


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory, galsim_field):
    """The GalSim field written twice (two 'epochs', MJD 1 and 2) and a targets table: 20 of its stars and
    one position off the image."""
    folder = tmp_path_factory.mktemp("forced")
    paths = []
    for k in (1, 2):
        head = galsim_field.header.copy()
        head["MJD-OBS"] = float(k)
        path = folder / f"epoch{k}_sciimg.fits"
        fits.PrimaryHDU(galsim_field.image, header=head).writeto(path)
        paths.append(path)
    from astropy.wcs import WCS

    ra, dec = WCS(galsim_field.header).pixel_to_world_values(np.r_[galsim_field.x[:20], -500.0],
                                                             np.r_[galsim_field.y[:20], 10.0])
    targets = folder / "targets.csv"
    Table({"name": [f"t{i}" for i in range(21)], "RA": ra, "Dec": dec}).write(targets)
    return paths, targets, galsim_field


@pytest.mark.slow
def test_forced_cli_writes_light_curves_and_stacks(two_epochs, tmp_path, capsys):
    paths, targets, field = two_epochs
    out = tmp_path / "out"
    assert main(["stars", "forced", *map(str, paths), "--targets", str(targets), "--out", str(out)]) == 0
    assert "21 targets x 2 images" in capsys.readouterr().err
    stack = Table.read(out / "stack.parquet")
    assert list(stack["flags"]) == [0] * 20 + [1]  # the off-image target keeps its row
    curve = Table.read(out / "lightcurves" / "t0.parquet")
    assert list(curve["mjd"]) == [1.0, 2.0]
    epochs = Table.read(out / "epochs.parquet")
    on = epochs[epochs["flags"] == 0]
    # the PSF is fitted by the pipeline here (not given): bright stars within 2 % of GalSim's flux
    ratio = np.asarray(on["flux"]) / np.tile(field.flux[:20], 2)
    assert abs(np.median(ratio) - 1) < 0.02


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "dask"])
def test_run_stars_forced_then_lightcurves(two_epochs, tmp_path, executor):
    paths, targets, _ = two_epochs
    run = tmp_path / "run"
    args = ["run", "stars-forced", *map(str, paths), "--out", str(run), "--targets", str(targets),
            "--executor", executor] + (["--workers", "1"] if executor == "dask" else [])
    assert main(args) == 0
    tables = sorted(run.glob("*/forced.parquet"))
    assert len(tables) == 2
    out = tmp_path / "gathered"
    assert main(["stars", "lightcurves", *map(str, tables), "--out", str(out), "--no-curves"]) == 0
    stack = Table.read(out / "stack.parquet")
    assert list(stack["n_good"][:20]) == [2] * 20 and stack["n_epochs"][20] == 0


def test_forced_cli_bad_targets_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    Table({"x": [1.0], "y": [2.0]}).write(bad)  # the targets are read first: no image is needed
    code = main(["stars", "forced", str(tmp_path / "a_sciimg.fits"), "--targets", str(bad), "--out",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"targets table {bad}: needs ra and dec columns" in err[0]

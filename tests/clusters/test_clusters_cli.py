"""The ``psfax clusters`` commands end to end on a tiny data set."""

import json

import numpy as np
import pyarrow.parquet as pq
from astropy.io import fits

from psfax.cli import main
from psfax.clusters.dataset import load_split


def test_simulate_evaluate_infer(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["clusters", "simulate", str(data), "--n-train", "2", "--n-val", "3", "--n-test", "3", "--seed", "5"]) == 0
    test = load_split(data, "test")
    assert test.images.shape == (3, 4, 256, 256)
    report_path = tmp_path / "report.json"
    assert main(["clusters", "evaluate", str(data), "--out", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["n_tiles"] == 3 * 64 and report["split"] == "test"
    # the confusion counts of both scorers add up to the number of tiles
    for who in ("model", "baseline"):
        assert sum(report[who][k] for k in ("tp", "fp", "tn", "fn")) == 192
    assert abs(report["model"]["f1"] - report["baseline"]["f1"] - report["f1_gain"]) < 1e-12
    assert 'href="report.json"' in (tmp_path / "report.html").read_text()  # the page beside it

    cube = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.concatenate([test.images[0], test.images[1]], axis=2)).writeto(cube)  # 256 x 512
    out = tmp_path / "out"
    assert main(["clusters", "infer", str(cube), "--out-dir", str(out), "--dtype", "float32"]) == 0
    probs = fits.getdata(out / "cube.clusterprob.fits")
    assert probs.shape == (8, 16) and np.isfinite(probs).all()
    assert pq.read_table(out / "cube.candidates.parquet").num_rows >= 0


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["clusters", "evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("psfax: error: ") and "no 'test' shards" in err and "\n" not in err
    assert main(["clusters", "simulate", str(tmp_path / "d"), "--config", "missing.yaml"]) == 2
    assert "config missing.yaml: no such file" in capsys.readouterr().err

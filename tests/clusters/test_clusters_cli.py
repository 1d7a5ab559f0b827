"""The ``psfax clusters`` commands end to end on a tiny data set."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
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
        assert sum(report[who]["tiles"][k] for k in ("tp", "fp", "tn", "fn")) == 192
        assert set(report[who]["tiles"]["se"]) == {"accuracy", "precision", "recall", "f1", "pr_auc"}
        clusters = report[who]["clusters"]
        assert clusters["match_radius_px"] == 64.0  # the default: 2 tiles of 32 px
        n_true = int(pq.read_table(data / "test-000.fields.parquet")["is_cluster"].to_numpy().sum())
        assert clusters["n_clusters"] == n_true and 0 <= clusters["n_found"] <= n_true
    assert abs(report["model"]["tiles"]["f1"] - report["baseline"]["tiles"]["f1"] - report["f1_gain"]) < 1e-12

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


def test_summary_across_seeds_by_hand():
    from psfax.clusters.evaluate import summarise

    def report(f1, purity):
        tiles = {k: f1 for k in ("accuracy", "precision", "recall", "f1", "pr_auc")}
        clusters = {"completeness": 1.0, "completeness_rich50": 1.0, "purity": purity}
        return {"model": {"tiles": tiles, "clusters": clusters}, "baseline": {"tiles": tiles, "clusters": clusters}}

    s = summarise([report(0.90, 0.8), report(0.94, 1.0), report(0.92, 0.9)])
    f1 = s["model.tiles.f1"]
    # mean 0.92, sample std 0.02, SE = 0.02 / sqrt(3)
    assert f1["mean"] == pytest.approx(0.92, abs=1e-12) and f1["min"] == pytest.approx(0.90, abs=1e-12)
    assert f1["se"] == pytest.approx(0.02 / np.sqrt(3), abs=1e-12)
    assert s["baseline.clusters.purity"]["mean"] == pytest.approx(0.9, abs=1e-12)


def test_bad_seeds_option_is_one_line(tmp_path, capsys):
    assert main(["clusters", "evaluate", str(tmp_path), "--seeds", "1,x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--seeds '1,x': expected comma-separated integers" in err and "\n" not in err


@pytest.mark.slow
def test_evaluate_seeds_simulates_fresh_fields_and_reuses_them(tmp_path, capsys):
    work = tmp_path / "fresh"
    args = ["clusters", "evaluate", str(work), "--seeds", "7,8", "--n-fields", "2", "--config", "ci",
            "--out", str(tmp_path / "r.json"), "--figure", str(tmp_path / "c.png")]
    assert main(args) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["seeds"] == [7, 8] and set(report["per_seed"]) == {"7", "8"}
    assert all(r["n_fields"] == 2 and r["calibration"]["n_fields"] == 16 for r in report["per_seed"].values())
    assert (tmp_path / "c.png").stat().st_size > 1000
    stamp = (work / "seed-7" / "test-000.images.npy").stat().st_mtime_ns
    assert main(args) == 0  # the second run scores the same fields without simulating them again
    assert (work / "seed-7" / "test-000.images.npy").stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "r.json").read_text())["summary"] == report["summary"]

"""The runner on Dask: a LocalCluster of 2 worker processes, a bad input, a worker killed mid-task."""

from __future__ import annotations

import json

import numpy as np
import pytest
from astropy.io import fits
from runner_testjobs import SMOOTH_JOB, expected_smooth, make_images

from psfax.runner import run_jobs

# float64 smoothing agrees with scipy to rounding: 1e-12 is ~1e4 ulps of slack.
ATOL = 1e-12


@pytest.fixture(scope="module")
def cluster():
    """One LocalCluster of 2 single-thread worker processes for the tests that pass scheduler=."""
    import logging

    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster:
        yield cluster


def test_local_cluster_runs_all_and_isolates_a_bad_input(tmp_path):
    images = make_images(tmp_path / "in", 4)
    bad = tmp_path / "in" / "bad.fits"
    bad.write_text("not a FITS file at all\n" * 200)
    summary = run_jobs(SMOOTH_JOB, [*images, bad], out_dir=tmp_path / "out", executor="dask", workers=2,
                       scale=3.0, show_progress=False)
    assert (summary.n_done, summary.n_failed) == (4, 1)
    assert summary.failures[0][0] == str(bad)
    for image in images:
        np.testing.assert_allclose(fits.getdata(tmp_path / "out" / image.stem / "smooth.fits"),
                                   expected_smooth(image, 3.0), rtol=0, atol=ATOL)
    records = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 5 and all(r["worker"].startswith("tcp://") for r in records)


@pytest.mark.slow
def test_killed_worker_task_runs_again_elsewhere(tmp_path, cluster):
    images = make_images(tmp_path / "in", 4)
    marker = tmp_path / "kill-once"
    marker.touch()
    workers_before = set(cluster.scheduler_info["workers"])
    summary = run_jobs(SMOOTH_JOB, images, out_dir=tmp_path / "out", executor="dask",
                       scheduler=cluster.scheduler_address, kill_marker=str(marker), show_progress=False)
    assert not marker.exists()            # a worker did reach os._exit ...
    assert summary.n_done == 4 and summary.n_failed == 0   # ... and its task completed on retry
    records = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["input"] for r in records) == sorted(str(p) for p in images)   # one record each
    for image in images:
        assert [p.name for p in (tmp_path / "out" / image.stem).iterdir()] == ["smooth.fits"]
        np.testing.assert_allclose(fits.getdata(tmp_path / "out" / image.stem / "smooth.fits"),
                                   expected_smooth(image), rtol=0, atol=ATOL)
    # the nanny restarted the dead worker under a new address
    assert set(cluster.scheduler_info["workers"]) != workers_before

"""The runner with the local executor: outputs, manifest, faults, resume, interruption, prefetch."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from runner_testjobs import SMOOTH_JOB, box_smooth, expected_smooth, make_images, read_image, write_smoothed

from psfax.errors import InputError
from psfax.runner import Job, run_jobs
from psfax.runner.manifest import Manifest

# float64 smoothing of N(0,1) pixels agrees with scipy to rounding: 1e-12 is ~1e4 ulps of slack.
ATOL = 1e-12


def manifest_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_outputs_match_reference_and_manifest_is_complete(tmp_path):
    images = make_images(tmp_path / "in", 3)
    summary = run_jobs(SMOOTH_JOB, [str(p) for p in images], out_dir=tmp_path / "out", scale=2.0,
                       show_progress=False)
    assert (summary.n_done, summary.n_failed, summary.n_skipped) == (3, 0, 0)
    for image in images:
        out = tmp_path / "out" / image.stem / "smooth.fits"
        np.testing.assert_allclose(fits.getdata(out), expected_smooth(image, 2.0), rtol=0, atol=ATOL)
    lines = manifest_lines(tmp_path / "out")
    assert [r["status"] for r in lines] == ["done"] * 3
    assert [r["attempt"] for r in lines] == [1, 1, 1]
    assert all(r["timings"]["compute"] >= 0 and r["psfax_version"] for r in lines)
    table = pq.read_table(tmp_path / "out" / "manifest.parquet")
    assert table.num_rows == 3 and table.column("status").to_pylist() == ["done"] * 3
    # stage times are measured, so the shares add up to one (to rounding)
    assert sum(summary.stage_shares().values()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_bad_inputs_fail_alone_with_one_line_reasons(tmp_path):
    good = make_images(tmp_path / "in", 2)
    corrupted = tmp_path / "in" / "corrupted.fits"
    corrupted.write_bytes(np.random.default_rng(1).bytes(5000))
    truncated = tmp_path / "in" / "truncated.fits"
    truncated.write_bytes(good[0].read_bytes()[:4000])
    missing = tmp_path / "in" / "missing.fits"
    inputs = [good[0], corrupted, truncated, missing, good[1]]
    summary = run_jobs(SMOOTH_JOB, inputs, out_dir=tmp_path / "out", show_progress=False)
    assert (summary.n_done, summary.n_failed) == (2, 3)
    reasons = dict(summary.failures)
    assert set(reasons) == {str(corrupted), str(truncated), str(missing)}
    assert "MissingFileError" in reasons[str(missing)] and "no such input file" in reasons[str(missing)]
    assert all("\n" not in r and r for r in reasons.values())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "img0", "img1", "manifest.jsonl", "manifest.parquet"]


def test_resume_reruns_only_failed_and_lost(tmp_path):
    images = make_images(tmp_path / "in", 3)
    late = tmp_path / "in" / "late.fits"
    inputs = [*images, late]
    first = run_jobs(SMOOTH_JOB, inputs, out_dir=tmp_path / "out", show_progress=False)
    assert (first.n_done, first.n_failed) == (3, 1)
    fits.PrimaryHDU(np.ones((8, 8))).writeto(late)          # the missing input appears
    (tmp_path / "out" / "img1" / "smooth.fits").unlink()      # an output is lost
    second = run_jobs(SMOOTH_JOB, inputs, out_dir=tmp_path / "out", resume=True, show_progress=False)
    assert (second.n_done, second.n_failed, second.n_skipped) == (2, 0, 2)
    lines = manifest_lines(tmp_path / "out")
    rerun = {Path(r["input"]).name: r["attempt"] for r in lines[4:]}
    assert rerun == {"img1.fits": 2, "late.fits": 2}
    np.testing.assert_allclose(fits.getdata(tmp_path / "out" / "late" / "smooth.fits"), np.ones((8, 8)), atol=ATOL)


def test_killed_run_resumes_without_loss_or_duplicates(tmp_path):
    images = make_images(tmp_path / "in", 6)
    out = tmp_path / "out"
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})
        from runner_testjobs import SMOOTH_JOB
        from psfax.runner import run_jobs
        run_jobs(SMOOTH_JOB, {[str(p) for p in images]!r}, out_dir={str(out)!r}, sleep=0.5, show_progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while not ((out / "manifest.jsonl").exists() and len(manifest_lines(out)) >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it was killed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done_before = {r["input"] for r in manifest_lines(out)}
    assert 2 <= len(done_before) < 6

    summary = run_jobs(SMOOTH_JOB, images, out_dir=out, resume=True, show_progress=False)
    assert summary.n_failed == 0 and summary.n_skipped == len(done_before)
    assert summary.n_done + summary.n_skipped == 6
    lines = manifest_lines(out)
    for image in images:   # exactly one done record per input: nothing lost, nothing run twice
        assert sum(r["input"] == str(image) and r["status"] == "done" for r in lines) == 1
        assert [p.name for p in (out / image.stem).iterdir()] == ["smooth.fits"]
        np.testing.assert_allclose(fits.getdata(out / image.stem / "smooth.fits"), expected_smooth(image),
                                   rtol=0, atol=ATOL)
    assert not (out / ".staging").exists()


def write_half_then_fail(image, out_dir: Path) -> list[Path]:
    write_smoothed(image, out_dir)
    raise OSError("disk full (simulated) after the first file")


def write_elsewhere(image, out_dir: Path) -> list[Path]:
    return write_smoothed(image, Path(out_dir).parents[2] / "elsewhere")


@pytest.mark.parametrize(("write", "reason"), [
    (write_half_then_fail, r"OSError: disk full \(simulated\) after the first file"),
    (write_elsewhere, r"RuntimeError: the job wrote .*elsewhere/smooth.fits outside its output folder .*"),
])
def test_a_failed_write_leaves_no_output(tmp_path, write, reason):
    images = make_images(tmp_path / "in", 1)
    job = Job("half", read_image, lambda image: image, write)
    summary = run_jobs(job, images, out_dir=tmp_path / "out", show_progress=False)
    assert summary.n_failed == 1 and re.fullmatch(reason, summary.failures[0][1])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.jsonl", "manifest.parquet"]


def test_same_shape_inputs_compile_once(tmp_path):
    images = make_images(tmp_path / "in", 3, shape=(24, 40))
    before = box_smooth._cache_size()
    summary = run_jobs(SMOOTH_JOB, images, out_dir=tmp_path / "out", show_progress=False)
    assert summary.n_done == 3
    assert box_smooth._cache_size() - before == 1


EVENTS: list[tuple[str, str, float]] = []
_LOCK = threading.Lock()


def _event(kind: str, path: str) -> None:
    with _LOCK:
        EVENTS.append((kind, Path(path).stem, time.monotonic()))


def slow_read(path: str):
    _event("read-start", path)
    time.sleep(0.05)
    return path, read_image(path)


def slow_compute(data):
    path, image = data
    _event("compute-start", path)
    time.sleep(0.3)
    _event("compute-end", path)
    return image


SLOW_JOB = Job("slow", slow_read, slow_compute, write_smoothed)


def test_next_input_is_read_while_current_computes(tmp_path):
    images = make_images(tmp_path / "in", 3)
    EVENTS.clear()
    run_jobs(SLOW_JOB, images, out_dir=tmp_path / "out", show_progress=False)
    at = {(kind, name): t for kind, name, t in EVENTS}
    # the read of img1 starts during the 0.3 s compute of img0, not after it
    assert at[("read-start", "img1")] < at[("compute-end", "img0")]
    assert at[("read-start", "img2")] < at[("compute-end", "img1")]


def test_inputs_from_glob_and_list_file_with_unique_names(tmp_path):
    make_images(tmp_path / "a", 2)
    make_images(tmp_path / "b", 1)            # b/img0.fits collides with a/img0.fits
    listing = tmp_path / "inputs.txt"
    listing.write_text("# one path a line\nb/img0.fits\n\n")
    summary = run_jobs(SMOOTH_JOB, [str(tmp_path / "a" / "*.fits"), listing], out_dir=tmp_path / "out",
                       show_progress=False)
    assert summary.n_done == 3
    folders = sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(folders) == 3 and "img1" in folders
    assert sum(f.startswith("img0-") for f in folders) == 2


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"executor": "spark"}, "executor must be one of local, dask, got 'spark'"),
    ({"workers": 2}, "scheduler and workers are options of executor='dask'"),
    ({"executor": "dask", "profile_dir": "p"}, "profile_dir works with executor='local' only"),
    ({"colour": "red"}, r"job 'smooth' has no option colour \(its options: hdu, kill_marker, scale, sleep\)"),
])
def test_bad_arguments_are_named(tmp_path, kwargs, message):
    images = make_images(tmp_path / "in", 1)
    with pytest.raises(InputError, match=message):
        run_jobs(SMOOTH_JOB, images, out_dir=tmp_path / "out", show_progress=False, **kwargs)


def test_bad_inputs_argument_is_named(tmp_path):
    with pytest.raises(InputError, match=r"inputs: no file matches '.*nothing\*\.fits'"):
        run_jobs(SMOOTH_JOB, [str(tmp_path / "nothing*.fits")], out_dir=tmp_path / "out", show_progress=False)
    with pytest.raises(FileNotFoundError, match="inputs.lst: input list not found"):
        run_jobs(SMOOTH_JOB, [tmp_path / "inputs.lst"], out_dir=tmp_path / "out", show_progress=False)
    with pytest.raises(InputError, match="job must be one of stars-fit, stars-forced, aia-prep, clusters-infer, got 'fit'"):
        run_jobs("fit", [tmp_path / "x.fits"], out_dir=tmp_path / "out", show_progress=False)


def test_truncated_last_manifest_line_is_ignored(tmp_path):
    images = make_images(tmp_path / "in", 2)
    run_jobs(SMOOTH_JOB, images, out_dir=tmp_path / "out", show_progress=False)
    with open(tmp_path / "out" / "manifest.jsonl", "a") as f:
        f.write('{"input": "cut sho')
    assert len(Manifest(tmp_path / "out").records()) == 2
    summary = run_jobs(SMOOTH_JOB, images, out_dir=tmp_path / "out", resume=True, show_progress=False)
    assert (summary.n_done, summary.n_skipped) == (0, 2)


def test_profile_writes_a_perfetto_trace_with_the_stages(tmp_path):
    import gzip

    images = make_images(tmp_path / "in", 2)
    summary = run_jobs(SMOOTH_JOB, images, out_dir=tmp_path / "out", profile_dir=tmp_path / "prof",
                       show_progress=False)
    assert summary.profile_trace is not None and summary.profile_trace.name == "perfetto_trace.json.gz"
    events = json.loads(gzip.decompress(summary.profile_trace.read_bytes()))["traceEvents"]
    names = {e.get("name") for e in events}
    assert {"read img0", "compute img0", "write img0", "read img1", "compute img1", "write img1"} <= names

"""Shared test fixtures.

Real data come from the same resolver as ``psfax data path``
(:func:`psfax.io.samples.find_sample_file`): a shared-data folder
(``$PSFAX_SHARED_DATA``, or ``../shared/data`` beside the repository) holding
the file as ``NAME`` or ``NAME.gz``, else the user's sample cache, which
``make test`` fills first (``psfax data fetch ztf-sample aia-sample
clusters-sample``).  A test whose file is nowhere skips, saying which command
fetches it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from psfax.io import samples

REPO = Path(__file__).resolve().parents[1]

# the samples stay where `psfax data fetch` put them although the test run gets its own cache (below)
os.environ.setdefault("PSFAX_SAMPLE_DIR", str(samples.sample_root()))


def find_sample(name: str, role: str) -> Path:
    """Path of a real sample file, or skip saying how to fetch it."""
    path = samples.find_sample_file(name, role)
    if path is None:
        pytest.skip(f"{samples.get_sample(name).files[role].name} not in a shared-data folder nor in "
                    f"{samples.sample_dir(name)}: run `psfax data fetch {name}` (make test does)")
    return path


@pytest.fixture(scope="session")
def sample_file():
    """``sample_file(name, role)``: the path of a real sample file (skips when it is nowhere)."""
    return find_sample


@pytest.fixture(scope="session")
def ztf_files() -> tuple[Path, Path]:
    """The real ZTF quadrant and its mask (``.fits.gz`` from a shared folder or ``.fits`` from the cache)."""
    return find_sample("ztf-sample", "science"), find_sample("ztf-sample", "mask")


@pytest.fixture(scope="session")
def aia_level1_file() -> Path:
    """The real full-disk AIA 171 level-1 image, binned to 128 x 128."""
    return find_sample("aia-sample", "level1")


@pytest.fixture(scope="session")
def aia_cutout_file() -> Path:
    """A real full-resolution (0.6"/px) AIA 171 level-1 cut-out, 705 x 769."""
    return find_sample("aia-sample", "cutout")


@pytest.fixture(scope="session")
def render_dom():
    """``render_dom(page)``: the DOM of an HTML file after load, from headless Chromium, which the test
    starts itself (skips where Debian's ``chromium`` is not installed)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed: `apt-get install chromium` (make test-all installs it, as root)")

    def render(page: Path) -> str:
        return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                               "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout

    return render


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep the PSF and compiled-program caches of the test run out of the user's cache (so a run
    starts from an empty JAX compilation cache unless ``PSFAX_CACHE_DIR`` is set).  The pytest-xdist
    workers of one run share it (their temporary folders sit side by side), so a program one worker
    compiled is read by the other, as the processes of a Dask cluster on one machine read it."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.getbasetemp().parent / "psfax-cache"
        folder.mkdir(exist_ok=True)
    else:
        folder = tmp_path_factory.mktemp("psfax-cache")
    os.environ.setdefault("PSFAX_CACHE_DIR", str(folder))
    yield

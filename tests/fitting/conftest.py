import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from galsim_stars import make_stars  # noqa: E402

MOFFAT = {"fwhm": 1.8, "beta": 2.5}
GAUSSIAN = {"fwhm": 1.6}


@pytest.fixture(scope="session")
def moffat_stars():
    return make_stars("moffat", MOFFAT, n=500, seed=11)


@pytest.fixture(scope="session")
def gaussian_stars():
    return make_stars("gaussian", GAUSSIAN, n=500, seed=12)


@pytest.fixture(scope="session")
def undersampled_stars():
    """The real ZTF sample's regime: intrinsic FWHM ~0.9 px (~1.2 px once pixelised).

    1000 stars: the pull means' standard error is 0.032, so the +-0.1 bound is
    3 sigma (with 500 stars one seed in ~30 trips it by chance; 8 x 500 stars
    gave x, y, flux pull means of 0.008, 0.000, -0.002 +- 0.016).
    """
    return make_stars("moffat", {"fwhm": 0.9, "beta": 2.0}, n=1000, seed=13)

"""Stars rendered by GalSim (the independent reference) with Poisson and read noise, known truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GAIN, READ_NOISE, SKY = 6.0, 9.0, 150.0  # e-/ADU, e-, ADU per pixel (ZTF-like)
SIZE = 15


@dataclass
class StarSet:
    stamps: np.ndarray  # (N, S, S) ADU
    truth: dict  # x, y, flux, bkg and shape in psfax's parameterisation
    model: str


def galsim_profile(model: str, shape: dict, flux: float):
    import galsim

    if model.endswith("moffat"):
        obj = galsim.Moffat(beta=shape["beta"], fwhm=shape["fwhm"])
    else:
        obj = galsim.Gaussian(fwhm=shape["fwhm"])
    if model.startswith("elliptical"):
        obj = obj.shear(g1=shape["g1"], g2=shape["g2"])
    return obj.withFlux(flux)


def make_stars(model: str, shape: dict, n: int = 500, seed: int = 0, flux_range=(1e4, 3e5), flux=None) -> StarSet:
    """n stamps of SIZE x SIZE: centres uniform within +-0.5 px of the stamp centre, log-uniform fluxes
    in ``flux_range`` (or the (n,) ``flux`` given).

    GalSim draws the profile convolved with the pixel (``method="auto"``);
    its image pixel (1, 1) is psfax's (0, 0), so the centre offset from the
    stamp's true centre (7, 7) is the position minus 7.
    """
    import galsim

    rng = np.random.default_rng(seed)
    centre = (SIZE - 1) / 2
    x = centre + rng.uniform(-0.5, 0.5, n)
    y = centre + rng.uniform(-0.5, 0.5, n)
    flux = np.exp(rng.uniform(*np.log(flux_range), n)) if flux is None else np.asarray(flux, float)
    stamps = np.empty((n, SIZE, SIZE))
    for i in range(n):
        img = galsim.ImageD(SIZE, SIZE, scale=1.0)
        galsim_profile(model, shape, flux[i]).drawImage(img, offset=(x[i] - centre, y[i] - centre))
        electrons = rng.poisson((img.array + SKY) * GAIN) + rng.normal(0.0, READ_NOISE, img.array.shape)
        stamps[i] = electrons / GAIN
    return StarSet(stamps, {"x": x, "y": y, "flux": flux, "bkg": np.full(n, SKY), **shape}, model)


def pulls(table, truth, name):
    """(fit - truth) / err for parameter ``name`` (x, y or flux)."""
    return (np.asarray(table[f"{name}_fit"]) - truth[name]) / np.asarray(table[f"{name}_err"])

"""The simulated sample of the clusters instrument: one field as the FITS cube ``psfax clusters infer`` reads.

:func:`write_clusters_sample` draws one field from the shipped ``ci`` prior, enlarged to
:data:`SIZE` pixels (2 x 2 of the encoder's 256-pixel training windows, so inference streams
overlapping windows) and with a cluster certain (``clusters.fraction = 1``), renders it with
psfax's JAX renderer (float64 on the CPU) and writes

* primary HDU: float32 (4, SIZE, SIZE) g, r, i, z counts, a TAN WCS at the prior's pixel scale
  (DECam 0.263 arcsec/px) and the simulator's configuration name, seed and cluster truth;
* HDU ``LABELS``: uint8 (SIZE/32, SIZE/32) true tile labels (1: a member's centroid in the tile).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from psfax.io.atomic import atomic_path

SIZE = 512
SEED = 20241201
CENTRE_RA_DEC = (150.0, 2.0)  # deg: an arbitrary point; the simulator knows no sky


def write_clusters_sample(path: Path) -> Path:
    """Simulate the sample field and write it to ``path`` (atomically); return ``path``."""
    from astropy.io import fits
    from astropy.wcs import WCS

    from psfax.clusters.config import load_config
    from psfax.clusters.dataset import simulate_field
    from psfax.device import compute_context, resolve_device

    cfg = load_config("ci")
    cfg = dataclasses.replace(cfg, seed=SEED, field=dataclasses.replace(cfg.field, size=SIZE),
                              clusters=dataclasses.replace(cfg.clusters, fraction=1.0))
    device = resolve_device("cpu")
    with compute_context(np.float64, device):
        catalog, image, labels = simulate_field(cfg, np.random.default_rng(SEED))
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = list(CENTRE_RA_DEC)
    wcs.wcs.crpix = [(SIZE + 1) / 2, (SIZE + 1) / 2]
    wcs.wcs.cdelt = [-cfg.field.pixel_scale / 3600, cfg.field.pixel_scale / 3600]
    header = wcs.to_header()
    truth = catalog.truth
    header["BUNIT"] = ("count", "g, r, i, z counts, zero point 30 (AB)")
    header["SIMCONF"] = (cfg.name, "psfax clusters prior (shipped config)")
    header["SIMSEED"] = (SEED, "seed of the field's generator")
    header["CLUSTER"] = (truth.is_cluster, "the field holds a cluster")
    header["CLRICH"] = (truth.richness, "cluster richness (members)")
    header["CLREDSH"] = (truth.redshift, "cluster redshift")
    header["CLX"], header["CLY"] = (truth.x_center, "cluster centre x [px]"), (truth.y_center, "cluster centre y [px]")
    with atomic_path(path) as tmp:
        fits.HDUList([fits.PrimaryHDU(image, header=header),
                      fits.ImageHDU(labels, name="LABELS")]).writeto(tmp, overwrite=True)
    return path

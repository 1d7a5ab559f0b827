"""psfax: fast, statistically exact PSF work on astronomical survey images.

Public API (importing psfax changes no global JAX setting):

* :func:`fit_stamps`, :func:`render_stamps`, :class:`FitResult`, :class:`FitSettings`, :class:`PSF` (PSF models
  as values, :mod:`psfax.fitting.psf`): the batched PSF fitter;
* :func:`fit_image`, :class:`ImageFit`: the ZTF-style pipeline (image -> PSF model + catalog);
* :func:`forced_photometry`: PSF fluxes at given sky positions on many images (:mod:`psfax.stars.forced`);
* :mod:`psfax.solar`: SDO/AIA PSF, deconvolution, registration;
* :mod:`psfax.clusters`: galaxy-cluster field simulation, encoder, inference;
* :func:`run`: any per-image job over many files, locally or on Dask.
"""

from psfax.errors import PsfaxError
from psfax.fitting import PSF, FitSettings
from psfax.fitting.api import fit_stamps, render_stamps
from psfax.fitting.result import FitResult
from psfax.profiles import Accuracy
from psfax.runner import run_jobs as run
from psfax.stars import ImageFit, fit_image
from psfax.stars.forced import forced_photometry
from psfax.version import __version__

__all__ = ["PSF", "Accuracy", "FitResult", "FitSettings", "ImageFit", "PsfaxError", "fit_image", "fit_stamps",
           "forced_photometry", "render_stamps", "run", "__version__"]

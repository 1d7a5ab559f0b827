"""Empirical PSF models: an oversampled grid (optionally on an analytic core) varying over the image.

* :class:`EmpiricalPSF` (:mod:`psfax.psf.empirical`): the model and its evaluation;
* :func:`build_psf` (:mod:`psfax.psf.build`): the batched build from star stamps, with reserve stars;
* :func:`fit_psf_photometry` (:mod:`psfax.psf.photometry`): per-star (x, y, flux, bkg) with the model;
* :func:`write_psf_fits`, :func:`read_psf_fits` (:mod:`psfax.psf.io`): the FITS file;
* :func:`to_photutils`, :func:`from_photutils` (:mod:`psfax.psf.photutils_interop`);
* :class:`~psfax.psf.kind.Empirical` (:mod:`psfax.psf.kind`): the engine PSF kind, ``fit_stamps(psf=empirical_kind(model, x, y))``.
"""

from psfax.psf.build import BuildOptions, BuildResult, DegreeFallbackWarning, TooFewStarsError, build_psf
from psfax.psf.empirical import EmpiricalPSF
from psfax.psf.photometry import fit_psf_photometry

__all__ = ["BuildOptions", "BuildResult", "DegreeFallbackWarning", "EmpiricalPSF", "TooFewStarsError", "build_psf",
           "fit_psf_photometry"]

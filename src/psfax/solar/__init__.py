"""SDO/AIA: instrument PSF, Richardson-Lucy deconvolution, level-1.5 registration, pipeline.

Public functions: :func:`aia_psf`, :func:`deconvolve`, :func:`register`,
:func:`update_pointing`; the per-file pipeline stages live in
:mod:`psfax.solar.prep` (``read_level1``, ``prep_map``, ``write_level16``).
"""

from psfax.solar.deconvolve import deconvolve
from psfax.solar.pointing import update_pointing
from psfax.solar.psf import aia_psf
from psfax.solar.register import register

__all__ = ["aia_psf", "deconvolve", "register", "update_pointing"]

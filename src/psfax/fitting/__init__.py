"""The fitting engine: batched PSF fits of many stamps (see :func:`psfax.fit_stamps`).

PSF models are values (:mod:`psfax.fitting.psf`): :class:`Free`, :class:`Fixed` (analytic profiles),
:class:`Table`, :class:`Cells` (tabulated), or a kind of your own registered with :func:`register_psf`.
"""

from psfax.fitting.analytic import Fixed, Free
from psfax.fitting.api import fit_stamps, render_stamps
from psfax.fitting.psf import PSF, register_psf
from psfax.fitting.result import FitResult
from psfax.fitting.settings import FitSettings
from psfax.fitting.table import Table
from psfax.fitting.taylor import Cells

__all__ = ["PSF", "Cells", "FitResult", "FitSettings", "Fixed", "Free", "Table", "fit_stamps", "register_psf",
           "render_stamps"]

"""The fitting engine: batched PSF fits of many stamps (see :func:`psfax.fit_stamps`)."""

from psfax.fitting.api import fit_stamps
from psfax.fitting.result import FitResult

__all__ = ["fit_stamps", "FitResult"]

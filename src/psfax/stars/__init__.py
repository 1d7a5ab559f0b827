"""Stars: PSF model and PSF photometry of CCD images (ZTF-like quadrants).

``fit_image(science, mask=None, **options)`` runs the whole pipeline and returns
an :class:`ImageFit`; ``read_exposure`` reads an image for :func:`fit_exposure`.
"""

from psfax.stars.exposure import Exposure, read_exposure
from psfax.stars.pipeline import FitOptions, ImageFit, fit_exposure, fit_image

__all__ = ["Exposure", "FitOptions", "ImageFit", "fit_exposure", "fit_image", "read_exposure"]

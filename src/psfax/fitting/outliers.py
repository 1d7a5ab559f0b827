"""Chi2-outlier rejection shared by the PSF fits (:mod:`psfax.stars.pipeline`, :mod:`psfax.psf.build`)."""

from __future__ import annotations

import numpy as np


def chi2_outliers(reduced_chi2: np.ndarray, k: float) -> np.ndarray:
    """True where ``reduced_chi2 > median + k * 1.4826 * MAD`` (or is not finite)."""
    finite = np.isfinite(reduced_chi2)
    med = np.median(reduced_chi2[finite])
    mad = 1.4826 * np.median(np.abs(reduced_chi2[finite] - med))
    return ~finite | (reduced_chi2 > med + k * mad)

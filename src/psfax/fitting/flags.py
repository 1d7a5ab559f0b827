"""Per-star fit flags: one table of bit definitions (``FitResult.table["flags"]``).

A star with ``flags != 0`` has something to look at; its numbers are still
reported where they exist (NaN only where nothing could be computed, and then
the flag says why).
"""

NOT_CONVERGED = 1
"""The optimizer hit its iteration limit or could not decrease chi2 further."""
TOO_FEW_PIXELS = 2
"""Fewer usable pixels than free parameters: not fitted, values are NaN."""
BAD_PIXELS = 4
"""Some pixels were non-finite or had variance <= 0; they were masked and the star fitted without them."""
OFF_STAMP = 8
"""The centre moved more than :data:`MAX_OFFSET` px from the stamp centre; the fit stopped there."""
MAX_OFFSET = 3.0
"""px: stamps are cut around a detection, so a centre further than this from the stamp centre has
left its star (and the PSF table's range, see :class:`psfax.fitting.table.TableGrid`)."""
SINGULAR = 16
"""The Fisher matrix is singular or not positive: errors are NaN."""
EXCLUDED = 32
"""Left out of the shared-shape solve (by the caller or as an outlier); its row holds its own photometry."""

FLAG_DEFINITIONS = {
    NOT_CONVERGED: "not converged",
    TOO_FEW_PIXELS: "too few usable pixels (not fitted)",
    BAD_PIXELS: "non-finite or non-positive-variance pixels masked",
    OFF_STAMP: "centre moved > 3 px from the stamp centre (fit stopped)",
    SINGULAR: "singular Fisher matrix (no errors)",
    EXCLUDED: "excluded from the shared-shape solve",
}


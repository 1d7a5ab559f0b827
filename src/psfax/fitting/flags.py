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
SHAPE_UNCONSTRAINED = 64
"""A free shape ran past :data:`MIN_FWHM`, :data:`MIN_BETA` or :data:`MAX_BETA`; the fit stopped there
(also NOT_CONVERGED unless it had converged): the data do not constrain the shape, which keeps falling in chi2 towards the
parametrisation's boundary.  Position and flux are still the fit's."""
MIN_FWHM = 0.1
"""px: a fitted FWHM below this is a noise spike, not a star (the fit runs on towards fwhm -> 0, beta -> 1)."""
MIN_BETA = 1.5
"""A fitted Moffat index below this has wings a stamp cannot measure (at FWHM 1.8 px and beta 1.5, 16 % of
the flux lies beyond 7 px; at 1.2, 46 %): the fit's flux keeps growing with them (faint stars that ran to
the iteration limit ended at beta 1.01-1.05 with 7-40 x their true flux).  Seeing profiles have beta ~ 2-5."""
MAX_BETA = 51.0
"""A fitted Moffat index above this is the Gaussian limit (beta -> inf), which no finite beta fits better:
at equal FWHM and flux the profile at beta = 51 differs from its Gaussian limit by at most 1.3 % of the
peak.  Faint stars (S/N 5-20) with a free shape often run there, or to beta -> 1 or fwhm -> 0: of 1,000
faint survey stars (FWHM 1.8 px) 7.8 % ran to the 100-iteration limit before this stop, none after it."""

FLAG_DEFINITIONS = {
    NOT_CONVERGED: "not converged",
    TOO_FEW_PIXELS: "too few usable pixels (not fitted)",
    BAD_PIXELS: "non-finite or non-positive-variance pixels masked",
    OFF_STAMP: "centre moved > 3 px from the stamp centre (fit stopped)",
    SINGULAR: "singular Fisher matrix (no errors)",
    EXCLUDED: "excluded from the shared-shape solve",
    SHAPE_UNCONSTRAINED: "free shape beyond fwhm 0.1 px or beta 1.5-51 (fit stopped)",
}


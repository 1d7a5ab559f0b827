"""Every tolerance and limit of the fitting engine, in one immutable object (``fit_stamps(settings=...)``).

The pixel integration's own accuracy is :class:`psfax.profiles.Accuracy`; this object holds what the
optimizers and the choice of fast paths use.  It is hashable: it keys the compiled programs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FitSettings:
    """Solver settings (immutable; change one with ``dataclasses.replace``).

    Stop test (Levenberg-Marquardt, per star, shared shape and TNCG; :mod:`psfax.fitting.damping`):
    converged after an accepted step smaller than ``xtol`` of every parameter's standard error, a
    relative chi2 decrease below ``ftol``, or a step (or the undamped Gauss-Newton step of the point
    reached) predicting a chi2 decrease below ``dchi2``.  A change of 1e-4 in chi2 moves parameters by
    ~1e-2 of their errors.  In float32 both chi2 thresholds are raised to 8 float eps of chi2 (it cannot
    resolve a change of 1e-6 in a chi2 of 200).  Per-star LM measures the errors of ``xtol`` and ``dchi2``
    scaled by the star's misfit, ``max(1, chi2 / dof)`` (:func:`psfax.fitting.damping.misfit_scale`).
    """

    max_iter: int = 100
    """Iterations (LM, TNCG) at most; a star that reaches it is flagged NOT_CONVERGED."""
    xtol: float = 1e-4
    """Step small enough to stop, in standard errors of each parameter."""
    ftol: float = 1e-10
    """Relative chi2 decrease small enough to stop."""
    dchi2: float = 1e-4
    """Predicted chi2 decrease small enough to stop, per star (independent fits): every parameter is then
    within ``sqrt(1e-4) = 0.01`` of its standard error of the quadratic model's optimum.  Faint stars
    converge only linearly (see :func:`psfax.fitting.damping.overshoot_damping`), so 1e-6 cost them some
    5 more iterations for 1e-3 sigma: on 2,000 faint GalSim stars (S/N 5-1000) PSF photometry took 4.05
    iterations on average at 1e-6 and 2.92 at 1e-4, with the same pull widths (x 1.076, flux 0.997)."""
    shared_dchi2: float = 1e-3
    """The same for the total chi2 of a shared shape: by Cauchy-Schwarz every parameter is then within
    ``sqrt(1e-3) = 0.03`` of its standard error of the quadratic model's optimum.  On ZTF, before the
    outliers are clipped, the iteration converges only linearly (large residuals: the curvature
    Gauss-Newton neglects), so 1e-6 would cost some 7 more passes over all stars for nothing."""
    lam0: float = 1e-3
    """Starting LM damping (photometry, shared shape, TNCG)."""
    free_shape_lam0: float = 1e-2
    """Starting LM damping of per-star fits with a free shape, whose start (moment FWHM, beta = 2.5) is
    rougher than the positions and fluxes of PSF photometry.  On 500 GalSim stars each of FWHM 0.9, 1.8
    and 3.0 px, 1e-3 let one star in five or more overshoot and take 7-17 iterations at FWHM 0.9 and
    1.8; 1e-2 brought nearly all to 4-6 (1e-1 was slower at 3.0 px and in photometry)."""
    max_shift: float = 1.0
    """px: a step moves a star's centre at most this far (the stamp model is trusted near its centre)."""
    max_damping: float = 1e12
    """A rejected step at a damping above this ends the fit (the step is then ~1e-12 of the Gauss-Newton
    one: no decrease is resolvable in float64)."""
    photometry_first_round: int = 2
    free_shape_first_round: int = 3
    """LM iterations of the first round over all stars, for a known PSF and for a free shape: what most
    stars take from psfax's start (GalSim Moffats of FWHM 1.8 px: 94 % of PSF photometry fits in 2, 98 %
    of free-shape fits in 3).  A batched loop runs as long as its slowest star, so the stars still going
    continue in compacted batches, each resumed from its LM state, each round doubling the iterations
    reached (real sources have long tails: ZTF photometry of 7,770 sources, 49 % take 3 iterations,
    2 % 8 to 23)."""
    pilot_stars: int = 128
    """Shared LM fits of more than 8 x this many stars start from a fit of the brightest ones: the pilot
    costs about 8 iterations over these stars, so that one iteration saved over all stars pays for it
    (ZTF, 1,232 stars: 8 passes over all stars from the moment start, 3 from the pilot's shape)."""
    pilot_dchi2: float = 1.0
    """A pilot fit only seeds the shape: it stops at a predicted decrease of 1."""
    start_fwhm_range: tuple[float, float] = (0.6, 8.0)
    """px: the moment-based starting FWHM is kept within this range (beyond it the moments of a
    15 x 15 stamp say more about noise or a neighbour than about the star)."""
    cell_radius: float = 0.03
    """Half-width of a shape cell in unconstrained units (log FWHM, log(beta - 1), shear), see
    :mod:`psfax.fitting.taylor`: keeps the second-order expansion within 1e-4 of the peak pixel."""
    max_shape_cells: int = 32
    """Known per-star shapes spanning more shape cells than this (each ~29 MB of tables in float64 for
    15 x 15 stamps: six Taylor terms of four Hermite fields) are integrated directly instead."""
    min_stars_per_cell: int = 1024
    """Known per-star shapes are integrated directly unless there are at least this many stars per shape
    cell: a cell's tables cost as much as ~900 stars' direct fits (CPU, the ZTF PSF stars' Moffat shapes, 16
    cells: 2.2 s to build and fit on the tables, 0.15 ms per star fitted directly)."""
    cpu_chunk: int = 128
    """On the CPU, stars are processed this many at a time (cache-sized); 0: all at once."""
    cg_iterations: int = 10
    cg_rtol: float = 1e-6
    """TNCG: conjugate-gradient steps per outer iteration, and the relative residual that ends them."""
    adam_learning_rate: float = 5.0
    adam_final_rate: float = 1e-3
    adam_steps: int = 500
    adam_rounds: int = 3
    adam_window: int = 50
    adam_dchi2: float = 1e-3
    """Adam: cosine-decayed rate (in standard errors) from ``learning_rate`` to ``final_rate`` over
    ``steps`` per round, ``rounds`` re-whitenings; converged when the last ``window`` steps changed chi2
    by less than ``dchi2`` per free parameter."""
    reweight_rounds: int = 3
    """scipy reference with model variance: weights refreshed from the model between this many calls."""


DEFAULT_SETTINGS = FitSettings()

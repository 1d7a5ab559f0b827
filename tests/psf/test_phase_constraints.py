"""The empirical grid's sub-pixel phases held together (psfax.psf.normal.phase_constraints)."""

from __future__ import annotations

import numpy as np
from scipy.special import erf

from psfax.fitting.table import TableGrid
from psfax.psf import BuildOptions, build_psf
from psfax.psf.normal import node_offsets, phase_constraints, phase_window

SIZE = 15


def pixel_gaussian(dx, dy, sigma, cx=0.0, cy=0.0):
    """A unit-flux circular Gaussian centred at (cx, cy) integrated over the 1-px pixels centred at (dx, dy)."""
    def axis(d, c):
        return 0.5 * (erf((d - c + 0.5) / (np.sqrt(2) * sigma)) - erf((d - c - 0.5) / (np.sqrt(2) * sigma)))
    return axis(dx, cx) * axis(dy, cy)


def test_a_pixel_integrated_psf_obeys_the_phase_constraints():
    # A well-sampled pixel-integrated Gaussian (sigma 1.4 px) 0.3 px off the node origin, sampled at the box's
    # nodes: each class of sub-pixel phase holds the same windowed light and the same windowed centroid (the
    # lattice sum of a pixel-integrated profile is its total at any phase).  Measured: equal light to 1.4e-7 -
    # 7.3e-7 of a class's light at K = 2-4 (the window's leak; 1e-6 is the docstring's bound), centroids equal to
    # 1.6e-7.  An undersampled sigma = 0.6 px keeps
    # the equal light (4e-8) but its class centroids differ by 5e-4 px: its power at 1 cycle/px, which is why
    # centre_phases is for well-sampled PSFs.
    for k in (2, 3, 4):
        grid = TableGrid((SIZE, SIZE), k)
        a, e = phase_constraints(grid, 1, centre_phases=True)
        off = node_offsets(grid)
        values = pixel_gaussian(off[None, :], off[:, None], 1.4, 0.3, -0.2)
        rows = np.tensordot(a[:, 0], values, axes=2)
        n_light = k * k - 1
        light = (phase_window(grid) * values).sum() / k**2  # one class's windowed light
        assert np.abs(rows[:n_light]).max() < 1e-6 * light
        moments = rows[n_light:].reshape(k * k, 2)  # x and y per class
        assert np.abs(moments - moments[0]).max() < 1e-6
        whole = np.tensordot(phase_constraints(grid, 1, centre_phases=False)[0][n_light:, 0], values, axes=2)
        np.testing.assert_allclose(moments.sum(axis=0), whole, rtol=1e-12)  # the classes make up the window
        assert np.all(e == 0)  # no core


def test_the_build_recovers_fluxes_and_positions_at_every_phase():
    # Noise-free pixel-integrated Gaussian stars (sigma 1.3 px: pixel-convolved FWHM 3.2 px, so the phases are
    # centred too), started 0.05 px off as detections are.  With the phases tied the fluxes within the
    # normalisation radius come back to 1e-4 at every sub-pixel phase and the positions to 1e-3 px (measured
    # 1.4e-5 and 3e-5 px); with them free the start offsets and the aperture start's phase-dependent fluxes stay
    # in the grid (measured 9e-3 and 0.015 px at worst).
    rng = np.random.default_rng(3)
    n = 160
    c = (SIZE - 1) / 2
    x, y = c + rng.uniform(-0.5, 0.5, n), c + rng.uniform(-0.5, 0.5, n)
    flux = rng.uniform(2e4, 2e5, n)
    pix = np.arange(SIZE)
    stamps = flux[:, None, None] * pixel_gaussian(pix[None, None, :] - x[:, None, None],
                                                  pix[None, :, None] - y[:, None, None], 1.3)
    variance = stamps / 6.0 + 25.0
    yy, xx = np.mgrid[:SIZE, :SIZE]
    inside = np.hypot(xx - c, yy - c) <= c
    within = (pixel_gaussian(xx - c, yy - c, 1.3) * inside).sum()
    x0, y0 = x + 0.05 * rng.normal(size=n), y + 0.05 * rng.normal(size=n)
    errors = {}
    for tied in (True, False):
        res = build_psf(stamps, variance, np.zeros(stamps.shape, bool), x0, y0, np.zeros(n), np.zeros(n),
                        options=BuildOptions(oversampling=2, degree=0, reserve_fraction=0.25, profile_error=0.0,
                                             phase_constraints=tied),
                        sky=0.0)
        ratio = np.asarray(res.table["flux_fit"]) / (flux * within) - 1
        errors[tied] = (np.abs(ratio).max(), np.abs(np.asarray(res.table["x_fit"]) - x).max())
        if tied:
            assert res.psf.meta["centre_phases"] and res.psf.meta["fwhm_px"] > 3.0
    assert errors[True][0] < 1e-4 and errors[True][1] < 1e-3
    assert errors[False][0] > 1e-3 and errors[False][1] > 5e-3  # what the constraints remove, seen without them


def test_the_constrained_solve_meets_its_rows_and_keeps_a_grid_that_already_does():
    # Noise-free stamps of a known degree-1 grid (an off-centre Gaussian and a gradient of width), solved under
    # the phase rows with targets e = A g_true (which the truth meets) and with e shifted by 1e-4: the first gives
    # the truth back inside the constrained box (measured 7e-10 of the peak: the multipliers' system amplifies
    # rounding; 1e-7 allows for it, while targets of the wrong sign move the grid by 0.14 of the peak), the
    # second meets its rows exactly (measured 6e-16; an error in the multipliers misses them by ~the shift).
    import jax
    import jax.numpy as jnp

    from psfax.psf.empirical import grid_stamps
    from psfax.psf.normal import constrained_nodes, solve_box, solve_grid

    grid = TableGrid((SIZE, SIZE), 2)
    first, nodes = solve_box(grid)
    off = (np.arange(grid.length) - (grid.length - 1) / 2) / 2
    g0 = pixel_gaussian(off[None, :], off[:, None], 1.3, 0.2, -0.1)
    truth = np.stack([g0, 0.05 * pixel_gaussian(off[None, :], off[:, None], 1.5) - 0.05 * g0, 0.02 * g0])
    box = (slice(None), slice(first, first + nodes), slice(first, first + nodes))
    rng = np.random.default_rng(2)
    n = 90
    x, y = 7 + rng.uniform(-0.5, 0.5, n), 7 + rng.uniform(-0.5, 0.5, n)
    coef = np.column_stack([np.ones(n), rng.uniform(-1, 1, (n, 2))]) * rng.uniform(0.5, 2.0, (n, 1))
    a, _ = phase_constraints(grid, 3, centre_phases=True)
    e = np.einsum("ckpq,kpq->c", a, truth[box])
    with jax.enable_x64(True):
        stamps = np.asarray(jax.jit(grid_stamps, static_argnums=0)(grid, jnp.asarray(truth),
                                                                    *(jnp.asarray(v) for v in (coef, x, y))))
        w = rng.uniform(0.5, 1.5, stamps.shape)
        args = [jnp.asarray(v) for v in (w, coef, stamps, x, y)]
        kept = solve_grid(grid, *args, constraints=(a, e))
        shifted = solve_grid(grid, *args, constraints=(a, e + 1e-4))
    near = constrained_nodes(grid)
    assert np.abs(kept[box] - truth[box])[:, near].max() < 1e-7 * truth.max()
    assert np.abs(np.einsum("ckpq,kpq->c", a, shifted[box]) - (e + 1e-4)).max() < 1e-10

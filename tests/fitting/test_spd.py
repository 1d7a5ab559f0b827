"""The unrolled Cholesky solves of the per-star systems against numpy's LU solves."""

import jax
import numpy as np

from psfax.fitting.spd import spd_inverse, spd_solve


def fisher_like(rng, n, p):
    """Batch of J^T J with columns scaled over 12 decades (positions ~1e3, flux ~1e-6 ... as in a fit)."""
    jac = rng.normal(size=(n, 225, p)) * np.logspace(-3, 3, p)
    return np.einsum("nij,nik->njk", jac, jac)


def test_solve_and_inverse_match_numpy():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        for p in (4, 6, 8):
            a, b = fisher_like(rng, 64, p), rng.normal(size=(64, p))
            x = np.asarray(spd_solve(a, b))
            # condition ~1e13 after the column scaling, but Cholesky's error is scale-invariant:
            # 1e-9 relative is far below any statistical use of the result
            np.testing.assert_allclose(x, np.linalg.solve(a, b[..., None])[..., 0], rtol=1e-9)
            np.testing.assert_allclose(np.asarray(spd_inverse(a)), np.linalg.inv(a), rtol=1e-9)
            rhs = rng.normal(size=(64, p, 3))
            np.testing.assert_allclose(np.asarray(spd_solve(a, rhs)), np.linalg.solve(a, rhs), rtol=1e-9)


def test_not_positive_definite_gives_nan():
    with jax.enable_x64(True):
        indefinite = np.array([[1.0, 2.0], [2.0, 1.0]])
        singular = np.array([[1.0, 1.0], [1.0, 1.0]])
        assert np.all(np.isnan(np.asarray(spd_solve(indefinite, np.ones(2)))))
        assert not np.all(np.isfinite(np.asarray(spd_inverse(singular))))

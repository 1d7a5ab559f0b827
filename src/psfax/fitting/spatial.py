"""Shape parameters that vary across the image as a polynomial in (x, y).

``shape_u(x, y) = sum_{i + j <= degree} c_ij X^i Y^j`` for each unconstrained
shape parameter, with ``X = (x - x_mid) / x_half`` and ``Y`` likewise, scaled
to [-1, 1] over the stars used; degree 0 is one shape for every star.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from psfax.errors import InputError


@dataclass(frozen=True)
class PolynomialBasis:
    """Monomials of total degree <= ``degree`` in scaled image coordinates."""

    degree: int
    x_mid: float = 0.0
    x_half: float = 1.0
    y_mid: float = 0.0
    y_half: float = 1.0

    @classmethod
    def fit_to(cls, positions, degree: int) -> "PolynomialBasis":
        """Basis scaled to the bounding box of ``positions`` (N, 2) image (x, y)."""
        if degree not in (0, 1, 2):
            raise InputError(f"spatial_degree must be 0, 1 or 2, got {degree!r}")
        if degree == 0:
            return cls(0)
        p = np.asarray(positions, dtype=float)
        if p.ndim != 2 or p.shape[1] != 2 or not np.all(np.isfinite(p)):
            raise InputError(f"positions must be a finite (N, 2) array of image (x, y), got shape {p.shape}")
        lo, hi = p.min(axis=0), p.max(axis=0)
        half = np.maximum((hi - lo) / 2, 1.0)
        return cls(degree, float((hi[0] + lo[0]) / 2), float(half[0]), float((hi[1] + lo[1]) / 2), float(half[1]))

    @property
    def powers(self) -> list[tuple[int, int]]:
        return [(i, t - i) for t in range(self.degree + 1) for i in range(t, -1, -1)]

    @property
    def size(self) -> int:
        return len(self.powers)

    def __call__(self, x, y):
        """Basis values (..., size) at image positions (numpy, on the host)."""
        xs = (np.asarray(x, float) - self.x_mid) / self.x_half
        ys = (np.asarray(y, float) - self.y_mid) / self.y_half
        return np.stack([xs**i * ys**j for i, j in self.powers], axis=-1)

    def names(self) -> list[str]:
        return [f"x^{i} y^{j}" for i, j in self.powers]

"""The empirical PSF as an engine PSF kind: ``psfax.fit_stamps(stamps, psf=empirical_kind(model, x, y))``.

:class:`Empirical` holds the model's device arrays (shared by every star) and each star's mixture weights
(``coef`` (N, terms) and ``core_w`` (N,), :meth:`EmpiricalPSF.weights_at` at the star's image position),
and linearises one star through :func:`psfax.psf.empirical.star_psf` (one table gather gives P, dP/dx0,
dP/dy0) on the model's own stamp centred on the star's nearest pixel, placed into the stamp or footprint of
any size asked (:func:`psfax.fitting.table.shift_into`: zero beyond the model's stamp, so its sources can be
fitted in groups and rendered on wider windows).  It fits x, y, flux and bkg; fluxes are the light within
``normalisation_radius``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from psfax.fitting.psf import PSF, register_psf, static
from psfax.fitting.table import TableGrid, shift_into, table_linearise
from psfax.psf.empirical import EmpiricalPSF, PSFArrays, star_psf


@register_psf
@dataclasses.dataclass(frozen=True)
class Empirical(PSF):
    """Engine kind of an :class:`~psfax.psf.empirical.EmpiricalPSF` (see the module docstring)."""

    name = "empirical"
    star_fields = ("coef", "core_w")
    tables: jnp.ndarray = None
    core: jnp.ndarray | None = None
    coef: jnp.ndarray = None
    core_w: jnp.ndarray = None
    grid: TableGrid = static(None)
    core_grid: TableGrid = static(None)
    radius: float = static(7.0)

    @property
    def normalisation_radius(self) -> float:  # an instance's, not the class default
        return self.radius

    def linearise(self, v, size):
        return table_linearise(v, self._window(v, size, derivatives=True))

    def evaluate(self, v, size):
        return v[2] * self._window(v, size, derivatives=False)[0].ravel() + v[3]

    def _window(self, v, size, derivatives: bool):
        """P (and dP/dx0, dP/dy0) of the star at ``v[:2]`` on a ``size`` window."""
        arrays = PSFArrays(self.tables, self.core, self.grid, self.core_grid)
        centre = (self.grid.size[0] - 1) // 2
        ox, oy = jnp.round(v[0]) - centre, jnp.round(v[1]) - centre
        window = star_psf(arrays, self.coef, self.core_w, v[0] - ox, v[1] - oy, derivatives)
        return shift_into(window, ox, oy, size)


def empirical_kind(psf: EmpiricalPSF, x_image, y_image, dtype=np.float64) -> Empirical:
    """The kind for stars at image positions ``(x_image, y_image)`` (each (N,)): their mixture weights."""
    coef, core_w = psf.weights_at(x_image, y_image)
    arrays = psf.arrays(dtype)
    return Empirical(arrays.tables, arrays.core, jnp.asarray(coef, dtype), jnp.asarray(core_w, dtype),
                     arrays.grid, arrays.core_grid, float(psf.norm_radius))

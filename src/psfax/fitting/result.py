"""The outcome of a fit: a per-star table, covariances and the shared PSF model."""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from astropy.table import Table

from psfax.fitting.flags import (FLAG_DEFINITIONS, NOT_CONVERGED, OFF_STAMP, SHAPE_UNCONSTRAINED, SINGULAR,
                                 TOO_FEW_PIXELS)
from psfax.fitting.params import N_STAR, beyond_shape_limits, shape_from_u
from psfax.fitting.problem import Solution, bucket_size, off_centre
from psfax.fitting.psf import PSF, STAR_NAMES
from psfax.fitting.spatial import PolynomialBasis
from psfax.profiles import Profile, shear_to_ellipticity
from psfax.programs import persistent_jit


@dataclass(frozen=True)
class SharedShape:
    """A shape model shared by the stars: unconstrained coefficients ``coef`` (size, k) and their covariance."""

    profile: Profile
    basis: PolynomialBasis
    coef: np.ndarray
    covariance: np.ndarray

    def shape_at(self, x, y) -> tuple[dict, dict]:
        """Physical shape and its standard errors at image positions (x, y)."""
        with jax.enable_x64(self.coef.dtype == np.float64):
            reported = self._reported(x, y)
            c = jnp.asarray(self.coef.ravel())
            jac = jax.jacfwd(reported)(c)  # (names, n, K)
            var = jnp.einsum("inK,KL,inL->in", jac, jnp.asarray(self.covariance), jac)
            names = shape_column_names(self.profile)
            return ({n: np.asarray(v) for n, v in zip(names, reported(c))},
                    {n: np.sqrt(np.maximum(np.asarray(v), 0.0)) for n, v in zip(names, var)})

    def values_at(self, x, y) -> dict:
        """Physical shape at image positions (x, y), without errors (cheaper than :meth:`shape_at`)."""
        b = np.atleast_2d(np.asarray(self.basis(np.atleast_1d(x), np.atleast_1d(y))))
        n = len(b)
        b = np.pad(b, ((0, bucket_size(n) - n), (0, 0)))  # one compiled program serves many n
        with jax.enable_x64(self.coef.dtype == np.float64):
            values = _reported_shape(self.profile, jnp.asarray(b), jnp.asarray(self.coef))
            return {n_: np.asarray(v)[:n] for n_, v in zip(shape_column_names(self.profile), values)}

    def shape_u_at(self, x, y) -> np.ndarray:
        """Unconstrained shapes (n, k) at image positions (x, y): ``B(x, y) c``
        (e.g. for :class:`psfax.fitting.Fixed`)."""
        b = np.atleast_2d(np.asarray(self.basis(np.atleast_1d(x), np.atleast_1d(y))))
        return b @ np.asarray(self.coef)

    def _reported(self, x, y):
        """The function: coefficients -> stacked reported shape parameters (names, n) at (x, y)."""
        b = jnp.atleast_2d(jnp.asarray(self.basis(np.atleast_1d(x), np.atleast_1d(y))))
        return lambda c: _reported_shape(self.profile, b, c.reshape(self.basis.size, -1))


@persistent_jit(static_argnames=("profile",))
def _reported_shape(profile: Profile, basis_values, coef):
    """Reported shape parameters (names, n) from basis values (n, size) and coefficients (size, k)."""
    return reported_shape(profile, basis_values @ coef)


@persistent_jit(static_argnames=("profile",))
def reported_shape(profile: Profile, shape_u):
    """Reported shape parameters (names, n) (:func:`shape_column_names`) of unconstrained shapes (n, k)."""
    s = shape_from_u(profile, shape_u)
    out = [s["fwhm"]] + ([s["beta"]] if "beta" in s else [])
    if profile.elliptical:
        out += list(shear_to_ellipticity(s["g1"], s["g2"]))
    return jnp.stack(out)


def shape_column_names(profile: Profile) -> list[str]:
    names = ["fwhm"] + (["beta"] if "beta" in profile.shape_names else [])
    return names + (["ellipticity", "theta"] if profile.elliptical else [])


@dataclass(frozen=True)
class FitResult:
    """Result of :func:`psfax.fit_stamps`.

    ``table``: one row per stamp (see ``fit_stamps``); ``covariance``: (N, P, P)
    inverse-Fisher covariance of ``param_names`` per star (NaN for stars that
    could not be fitted); ``shared``: the shared shape model (shared mode).
    """

    table: Table
    covariance: np.ndarray
    param_names: list[str]
    model: str
    pixel_integrated: bool
    optimizer: str
    shared: SharedShape | None = None
    options: dict = field(default_factory=dict)

    def _shape_at_centre(self) -> tuple[dict, dict]:
        vals, errs = self.shared.shape_at(self.shared.basis.x_mid, self.shared.basis.y_mid)
        return {k: float(v[0]) for k, v in vals.items()}, {k: float(v[0]) for k, v in errs.items()}

    @property
    def shape(self) -> dict | None:
        """Shared shape at the centre of the basis (degree 0: the shape), physical values."""
        return None if self.shared is None else self._shape_at_centre()[0]

    @property
    def shape_err(self) -> dict | None:
        """Standard errors of :attr:`shape`."""
        return None if self.shared is None else self._shape_at_centre()[1]

    def psf_at(self, x, y) -> dict:
        """Shared PSF shape (physical parameters) at image positions ``x, y``."""
        if self.shared is None:
            raise ValueError("psf_at needs a shared-shape fit (shared_shape=True)")
        return self.shared.values_at(x, y)

    def to_dict(self) -> dict:
        """JSON-ready summary of the fit (shared model when there is one)."""
        out = {"model": self.model, "pixel_integrated": self.pixel_integrated, "optimizer": self.optimizer,
               "n_stars": len(self.table), "n_converged": int(np.sum(self.table["converged"])),
               "median_reduced_chi2": float(np.nanmedian(self.table["reduced_chi2"])),
               "options": self.options, "flags": {str(k): v for k, v in FLAG_DEFINITIONS.items()}}
        if self.shared is not None:
            out["shape"], out["shape_err"] = self.shape, self.shape_err
            b = self.shared.basis
            out["spatial"] = {"degree": b.degree, "terms": b.names(), "x_mid": b.x_mid, "x_half": b.x_half,
                              "y_mid": b.y_mid, "y_half": b.y_half,
                              "parameters": list(self.shared.profile.shape_names),
                              "transform": "fwhm=exp(u), beta=1+exp(u), g=s*tanh|s|/|s|",
                              "coefficients": np.asarray(self.shared.coef).tolist(),
                              "covariance": np.asarray(self.shared.covariance).tolist()}
        return out


def reported(psf: PSF | None, sol: Solution):
    """Reported values (N, P), their covariance (N, P, P) and names from the solution of the kind ``psf``
    (None: a held shape, whose fitted vector ``[x0, y0, flux, bkg]`` is reported as it is)."""
    if psf is None:
        return np.asarray(sol.v), np.asarray(sol.covariance), list(STAR_NAMES)
    values, cov = _report(psf, sol.v, sol.covariance)
    return np.asarray(values), np.asarray(cov), list(psf.names)


@persistent_jit
def _report(psf: PSF, v, cov):
    return jax.vmap(lambda vi, ci, part: psf.with_star(part).report(vi, ci))(v, cov, psf.star_part())


def fit_table(names, values, cov, sol: Solution, n: int, size, flags, dof, held=None):
    """The per-star table and the covariance (NaN where unknown), flags completed: SINGULAR (Fisher matrix
    not positive), OFF_STAMP (:func:`psfax.fitting.problem.off_centre`), SHAPE_UNCONSTRAINED
    (:func:`psfax.fitting.params.beyond_shape_limits`), NOT_CONVERGED.  ``held``:
    ``(profile, shape_u (N, k))`` of a held shape, reported as value columns without errors."""
    chi2, conv, n_iter = (np.asarray(a)[:n] for a in (sol.chi2, sol.converged, sol.n_iter))
    fitted = (flags & TOO_FEW_PIXELS) == 0
    variances = np.diagonal(cov, axis1=1, axis2=2)
    n_check = N_STAR if sol.shared is not None else variances.shape[1]  # a shared shape's errors are global
    singular = fitted & ~np.all(np.isfinite(variances[:, :n_check]) & (variances[:, :n_check] > 0), axis=1)
    ok = fitted & ~singular
    values = np.where(fitted[:, None], values, np.nan)
    errors = np.where(ok[:, None], np.sqrt(np.abs(variances)), np.nan)
    cov = np.where(ok[:, None, None], cov, np.nan)
    off = fitted & off_centre(size, values[:, 0], values[:, 1])
    lost = np.zeros(n, bool)
    if sol.shared is None and "fwhm" in names:  # a free shape per star, which its LM stops there
        with np.errstate(invalid="ignore"):
            lost = fitted & beyond_shape_limits({k: values[:, names.index(k)] for k in ("fwhm", "beta") if k in names})
    flags = (flags | np.where(singular, SINGULAR, 0) | np.where(off, OFF_STAMP, 0)
             | np.where(lost, SHAPE_UNCONSTRAINED, 0)
             | np.where(fitted & ~conv, NOT_CONVERGED, 0)).astype(np.int32)
    table = results_table(names, values, errors, np.where(fitted, chi2, np.nan), dof.astype(np.int64),
                          fitted & conv, n_iter.astype(np.int32), flags)
    if held is not None:
        profile, shape_u = held
        for name, column in zip(shape_column_names(profile), np.asarray(reported_shape(profile, shape_u))):
            table.add_column(np.where(fitted, column, np.nan), name=name, index=table.colnames.index("chi2"))
    return table, cov


def results_table(names, values, errors, chi2, dof, converged, n_iter, flags) -> Table:
    """Per-star table: ``<name>`` and ``<name>_err`` columns (photutils-style names)."""
    columns = {}
    for i, name in enumerate(names):
        columns[name] = values[:, i]
        columns[name.replace("_fit", "") + "_err"] = errors[:, i]
    with np.errstate(divide="ignore", invalid="ignore"):
        reduced = np.where(dof > 0, chi2 / np.maximum(dof, 1), np.nan)
    columns.update(chi2=chi2, dof=dof, reduced_chi2=reduced, converged=converged, n_iter=n_iter, flags=flags)
    return Table(columns)

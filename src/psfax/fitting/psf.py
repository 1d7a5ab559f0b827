"""PSF models as values: the protocol every PSF kind follows, and its registration.

A PSF kind is a frozen dataclass deriving from :class:`PSF`, registered with :func:`register_psf`
(which makes it a JAX pytree): its array fields are the pytree's leaves, fields declared with
``static()`` are hashable settings (part of the compiled program's key), and the fields named in
``star_fields`` hold one row per star (leading axis N; e.g. each star's fixed shape).  The loops never
ask which kind they hold: they call its methods on **one star** (``vmap`` over the rows):

* ``linearise(v, size)``: model pixels ``m = flux P(x - x0, y - y0) + bkg`` (M,) of a stamp of
  ``size = (ny, nx)`` and the Jacobian (M, P) with respect to ``v = [x0, y0, flux, bkg, *free]``
  (``free``: the kind's own fitted parameters, :attr:`PSF.free_names`; none for a known PSF);
* ``evaluate(v, size)``: the model alone (default: from ``linearise``);
* ``report(v, cov)``: the reported parameters (:attr:`PSF.names`) and their covariance from the
  fitted vector (default: as they are);
* ``unconstrained(v)``: True where ``v``'s own parameters have run to where the data cannot hold them
  (the per-star fit stops there, flagged SHAPE_UNCONSTRAINED; default: never).

Positions are stamp pixels, (0, 0) the centre of the first pixel, x the column.  ``P`` sums to one
within :attr:`PSF.normalisation_radius` px of its centre (infinite for the analytic profiles).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

STAR_NAMES = ("x_fit", "y_fit", "flux_fit", "bkg_fit")
"""Reported names of ``v[:4] = [x0, y0, flux, bkg]``, fitted by every kind."""

KINDS: dict[str, type] = {}
"""Registered PSF kinds by name (:func:`register_psf`)."""


def static(default=dataclasses.MISSING):
    """A dataclass field that is a hashable setting of the kind, not an array (a pytree's metadata)."""
    return dataclasses.field(default=default, metadata={"static": True})


@dataclasses.dataclass(frozen=True)
class PSF:
    """Base of the PSF kinds (see the module docstring for the protocol)."""

    name: ClassVar[str] = "psf"
    star_fields: ClassVar[tuple[str, ...]] = ()
    normalisation_radius: ClassVar[float] = math.inf
    free_names: ClassVar[tuple[str, ...]] = ()

    @property
    def n_params(self) -> int:
        """Length of the fitted vector ``v``."""
        return len(STAR_NAMES) + len(self.free_names)

    @property
    def names(self) -> list[str]:
        """Names of the reported parameters, in covariance order."""
        return list(STAR_NAMES) + list(self.free_names)

    def linearise(self, v, size):
        raise NotImplementedError(f"{type(self).__name__}.linearise")

    def evaluate(self, v, size):
        return self.linearise(v, size)[0]

    def report(self, v, cov):
        return v, cov

    def unconstrained(self, v):
        return jnp.asarray(False)

    def star_part(self) -> dict:
        """The per-star fields, each with a leading star axis (mapped by the loops)."""
        return {f: getattr(self, f) for f in self.star_fields}

    def with_star(self, part: dict) -> "PSF":
        """This PSF with its per-star fields replaced by ``part`` (one star's rows inside a ``vmap``)."""
        return dataclasses.replace(self, **part) if part else self

    def rows(self, index) -> "PSF":
        """The PSF of the stars at ``index`` (shared fields kept whole).  Concrete arrays are indexed on the
        host (NumPy): an eager JAX gather would trace and compile a program for every new ``index`` length."""
        return self.with_star({f: jax.tree.map(lambda a: _take_rows(a, index), a)
                               for f, a in self.star_part().items()})


def _take_rows(a, index):
    if isinstance(a, jax.core.Tracer) or isinstance(index, jax.core.Tracer):
        return a[index]
    return np.asarray(a)[np.asarray(index)]


def register_psf(cls):
    """Register a :class:`PSF` subclass (a frozen dataclass) as a pytree and as a kind called ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, PSF) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"register_psf needs a frozen dataclass deriving from PSF, got {cls!r}")
    fields = dataclasses.fields(cls)
    meta = [f.name for f in fields if f.metadata.get("static")]
    jax.tree_util.register_dataclass(cls, data_fields=[f.name for f in fields if f.name not in meta],
                                     meta_fields=meta)
    KINDS[cls.name] = cls
    return cls


def model_batch(psf: PSF, v, size):
    """Model stamps (N, M) of N stars with parameters ``v`` (N, P) (one row of the per-star fields each)."""
    return jax.vmap(lambda vi, part: psf.with_star(part).evaluate(vi, size))(v, psf.star_part())


def unit_stamps(psf: PSF, x0, y0, size):
    """Unit-flux PSF stamps (N, ny, nx) of N stars centred at stamp pixels ``(x0, y0)`` (each (N,)),
    e.g. for forced photometry, where only flux and background are fitted."""
    x0 = jnp.asarray(x0)
    v = jnp.stack([x0, jnp.asarray(y0, x0.dtype), jnp.ones_like(x0), jnp.zeros_like(x0)], axis=1)
    return model_batch(psf, v, size).reshape((-1,) + tuple(size))

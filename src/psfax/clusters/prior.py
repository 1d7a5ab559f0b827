"""The prior: random catalogs of DES-like g, r, i, z fields, with or without a cluster.

Drawn with a seeded ``numpy.random.Generator`` (a catalog is a few hundred rows;
the heavy work is the JAX renderer).  Per field:

* a cluster with probability ``clusters.fraction``; its richness lambda (members
  brighter than ``lum_min`` L*) from dN/dlambda ~ lambda^-slope, its redshift
  uniform, its radius ``radius_scale * R_lambda`` with
  R_lambda = (lambda / 100)^0.2 h^-1 Mpc (h = 0.7), converted to pixels with the
  angular-diameter distance of flat LambdaCDM (H0 = 70, Omega_m = 0.3);
* Poisson(lambda) members placed by a sphere-truncated NFW profile (scale
  radius R / c) or a uniform sphere, projected; luminosities from a Schechter
  function L/L* in [lum_min, lum_max]; i = m*_i(z) - 2.5 log10(L/L*) with
  m*_i(z) = 22.44 + 3.36 ln z + 0.273 ln^2 z - 0.0618 ln^3 z - 0.0227 ln^4 z;
  red-sequence colours interpolated from the configured table plus Gaussian
  scatter;
* Poisson background galaxies with dN/dm ~ 10^(slope m) and broad Gaussian
  colours; stars (a fraction of all non-member sources) with a simple stellar
  locus; exponential-disc sizes from a size-magnitude relation, intrinsic
  ellipticities (Rayleigh), and one constant shear per field.

Positions are 0-based pixel coordinates (x column, y row) over the field plus
``field.margin`` on each side.  Fluxes are counts at ``field.zero_point``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from psfax.clusters.config import ClusterFieldConfig

STAR, GALAXY, MEMBER = 0, 1, 2
"""Values of :attr:`Catalog.kind`."""

HLR_PER_SCALE_RADIUS = 1.6783469900166605
"""Half-light radius of an exponential disc in units of its scale radius."""


@dataclasses.dataclass(frozen=True)
class FieldTruth:
    """Field-level truth: the cluster (if any) and the constant shear."""

    is_cluster: bool
    redshift: float
    richness: int
    x_center: float
    y_center: float
    radius_px: float
    shear_g1: float
    shear_g2: float


@dataclasses.dataclass(frozen=True)
class Catalog:
    """One field's sources (length-n arrays; ``mag`` and ``flux`` are (n, 4) in g, r, i, z)."""

    x: np.ndarray
    y: np.ndarray
    mag: np.ndarray
    flux: np.ndarray
    hlr: np.ndarray          # half-light radius, arcsec (0 for stars)
    g1: np.ndarray           # intrinsic reduced shear (ellipticity) components
    g2: np.ndarray
    kind: np.ndarray         # STAR, GALAXY or MEMBER
    truth: FieldTruth

    def __len__(self) -> int:
        return len(self.x)


def mstar_i(z):
    """Characteristic i-band magnitude m*_i(z) of cluster galaxies (polynomial in ln z)."""
    lz = np.log(z)
    return 22.44 + 3.36 * lz + 0.273 * lz**2 - 0.0618 * lz**3 - 0.0227 * lz**4


def angular_diameter_distance_mpc(z: float) -> float:
    """D_A(z) in Mpc for flat LambdaCDM with H0 = 70 km/s/Mpc, Omega_m = 0.3."""
    zz = np.linspace(0.0, z, 513)
    inv_e = 1.0 / np.sqrt(0.3 * (1 + zz) ** 3 + 0.7)
    comoving = 299792.458 / 70.0 * np.trapezoid(inv_e, zz)
    return comoving / (1 + z)


def cluster_radius_px(richness: float, z: float, cfg: ClusterFieldConfig) -> float:
    """Member radius in pixels: radius_scale * (lambda/100)^0.2 h^-1 Mpc at redshift z."""
    r_mpc = cfg.clusters.radius_scale * (richness / 100.0) ** 0.2 / 0.7
    return r_mpc / angular_diameter_distance_mpc(z) * 206264.806 / cfg.field.pixel_scale


def red_sequence_colours(z: float, cfg: ClusterFieldConfig) -> np.ndarray:
    """Mean red-sequence colours (g-r, r-i, i-z) at redshift z (linear interpolation)."""
    rs = cfg.clusters.red_sequence
    return np.array([np.interp(z, rs.z, c) for c in (rs.g_r, rs.r_i, rs.i_z)])


def mags_from_colours(i_mag: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(n, 4) g, r, i, z magnitudes from i and the colours (g-r, r-i, i-z), each (n,)/(n, 3)."""
    r = i_mag + colours[:, 1]
    return np.stack([r + colours[:, 0], r, i_mag, i_mag - colours[:, 2]], axis=1)


def _power_law_mags(rng, n, lo, hi, slope):
    """n magnitudes with dN/dm ~ 10^(slope m) on [lo, hi) (inverse CDF)."""
    a, b = 10.0 ** (slope * lo), 10.0 ** (slope * hi)
    return np.log10(a + rng.uniform(size=n) * (b - a)) / slope


def _richness(rng, rc) -> int:
    """lambda from dN/dlambda ~ lambda^-slope on [min, max] (inverse CDF)."""
    e = 1.0 - rc.slope
    lo, hi = rc.min**e, rc.max**e
    return int(round((lo + rng.uniform() * (hi - lo)) ** (1.0 / e)))


def _schechter_luminosities(rng, n, lo, hi, alpha):
    """n values of L/L* with density ~ l^alpha exp(-l) on [lo, hi] (tabulated inverse CDF)."""
    grid = np.geomspace(lo, hi, 2048)
    cdf = np.concatenate([[0.0], np.cumsum(np.diff(grid) * (grid[1:] ** alpha * np.exp(-grid[1:])))])
    return np.interp(rng.uniform(size=n) * cdf[-1], cdf, grid)


def _member_radii(rng, n, radius, cfg):
    """Projected radii (px) of n members of a sphere of radius ``radius`` (NFW or uniform)."""
    if cfg.clusters.profile == "uniform":
        r3d = radius * rng.uniform(size=n) ** (1.0 / 3.0)
    else:
        c = cfg.clusters.concentration
        x = np.linspace(0.0, c, 2048)
        mass = np.log1p(x) - x / (1 + x)
        r3d = radius / c * np.interp(rng.uniform(size=n) * mass[-1], mass, x)
    cos_theta = rng.uniform(-1.0, 1.0, size=n)
    return r3d * np.sqrt(1.0 - cos_theta**2)


def _sizes_and_ellipticities(rng, i_mag, cfg):
    g = cfg.galaxies
    log_hlr = np.log10(g.hlr_at_21) + g.hlr_mag_slope * (i_mag - 21.0) + g.hlr_scatter_dex * rng.normal(size=len(i_mag))
    hlr = np.minimum(10.0**log_hlr, g.hlr_max)
    e = np.minimum(g.ellipticity_sigma * np.sqrt(-2.0 * np.log1p(-rng.uniform(size=len(i_mag)))), 0.7)
    angle = rng.uniform(0.0, np.pi, size=len(i_mag))
    return hlr, e * np.cos(2 * angle), e * np.sin(2 * angle)


def sample_catalog(cfg: ClusterFieldConfig, rng: np.random.Generator) -> Catalog:
    """Draw one field's catalog (members, background galaxies, stars) from the prior."""
    f, cc = cfg.field, cfg.clusters
    lo, hi = -f.margin, f.size - 1 + f.margin
    area_arcmin2 = ((hi - lo) * f.pixel_scale / 60.0) ** 2

    is_cluster = bool(rng.uniform() < cc.fraction)
    parts = []  # (x, y, i_mag, colours, kind)
    z = richness = cx = cy = radius = 0.0
    if is_cluster:
        richness = _richness(rng, cc.richness)
        z = float(rng.uniform(cc.redshift.min, cc.redshift.max))
        radius = cluster_radius_px(richness, z, cfg)
        cx, cy = rng.uniform(0, f.size - 1, size=2)
        n = rng.poisson(richness)
        rproj, phi = _member_radii(rng, n, radius, cfg), rng.uniform(0, 2 * np.pi, size=n)
        i_mag = mstar_i(z) - 2.5 * np.log10(_schechter_luminosities(rng, n, cc.lum_min, cc.lum_max, cc.schechter_alpha))
        colours = red_sequence_colours(z, cfg) + cc.red_sequence.scatter * rng.normal(size=(n, 3))
        parts.append((cx + rproj * np.cos(phi), cy + rproj * np.sin(phi), i_mag, colours, MEMBER))

    bg = cfg.background
    n_expected = bg.density * area_arcmin2
    n = rng.poisson(n_expected)
    colours = np.asarray(bg.colour_mean) + np.asarray(bg.colour_sigma) * rng.normal(size=(n, 3))
    parts.append((rng.uniform(lo, hi, n), rng.uniform(lo, hi, n),
                  _power_law_mags(rng, n, bg.mag_min, bg.mag_max, bg.slope), colours, GALAXY))

    st = cfg.stars
    n = rng.poisson(n_expected * st.fraction / (1.0 - st.fraction))
    g_r = rng.uniform(0.3, 1.5, n)
    r_i = 0.1 + 0.4 * (g_r - 0.3) + 0.05 * rng.normal(size=n)
    colours = np.stack([g_r, r_i, 0.05 + 0.3 * r_i + 0.03 * rng.normal(size=n)], axis=1)
    parts.append((rng.uniform(lo, hi, n), rng.uniform(lo, hi, n),
                  _power_law_mags(rng, n, st.mag_min, st.mag_max, st.slope), colours, STAR))

    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    i_mag = np.concatenate([p[2] for p in parts])
    mag = mags_from_colours(i_mag, np.concatenate([p[3] for p in parts]))
    kind = np.concatenate([np.full(len(p[0]), p[4], np.int8) for p in parts])
    keep = (x >= lo) & (x <= hi) & (y >= lo) & (y <= hi)
    hlr, g1, g2 = _sizes_and_ellipticities(rng, i_mag, cfg)
    star = kind == STAR
    hlr, g1, g2 = np.where(star, 0.0, hlr), np.where(star, 0.0, g1), np.where(star, 0.0, g2)
    shear = cfg.shear.sigma * rng.normal(size=2)
    truth = FieldTruth(is_cluster, float(z), int(richness), float(cx), float(cy), float(radius),
                       float(shear[0]), float(shear[1]))
    flux = 10.0 ** (-0.4 * (mag - f.zero_point))
    return Catalog(x[keep], y[keep], mag[keep], flux[keep], hlr[keep], g1[keep], g2[keep], kind[keep], truth)

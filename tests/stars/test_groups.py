"""Blends fitted together (psfax.stars.groups) against GalSim truth, and the residual pass of the pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from psfax.errors import InputError

GAIN, READ_NOISE, SKY = 6.0, 9.0, 150.0
FWHM, BETA = 2.0, 2.5  # intrinsic Moffat of the crowded field [px]


def test_friends_of_friends_groups():
    from psfax.stars.groups import group_sources

    # a chain a-b-c (each link 3 px < 3.5) is one group although a-c is 6 px; d is alone; e-f a pair
    x = np.array([10.0, 13.0, 16.0, 40.0, 70.0, 70.0])
    y = np.array([10.0, 10.0, 10.0, 10.0, 5.0, 8.4])
    group_id, group_size = group_sources(x, y, 3.5)
    assert group_id.tolist() == [1, 1, 1, 2, 3, 3]
    assert group_size.tolist() == [3, 3, 3, 1, 2, 2]


@pytest.mark.parametrize("radius", [0.0, -1.0, float("nan")])
def test_bad_group_radius(radius):
    from psfax.stars.groups import group_sources
    from psfax.stars.pipeline import FitOptions

    with pytest.raises(InputError, match="group_radius"):
        group_sources(np.zeros(2), np.zeros(2), radius)
    with pytest.raises(InputError, match="group_radius"):
        FitOptions(group_radius=radius)


def test_bad_passes():
    from psfax.stars.pipeline import FitOptions

    with pytest.raises(InputError, match="passes"):
        FitOptions(passes=0)


def _stars(shape, x, y, flux, fwhm):
    """GalSim Moffats (pixel-convolved by drawImage), no sky or noise [ADU]."""
    import galsim

    image = np.zeros(shape)
    for xi, yi, fi, wi in zip(x, y, flux, np.broadcast_to(fwhm, len(x))):
        ix, iy = int(np.rint(xi)), int(np.rint(yi))
        stamp = galsim.Moffat(beta=BETA, fwhm=float(wi), flux=float(fi)).drawImage(
            nx=31, ny=31, scale=1.0, offset=(xi - ix, yi - iy))
        image[iy - 15:iy + 16, ix - 15:ix + 16] += stamp.array
    return image


def _draw(shape, x, y, flux, fwhm, rng, sky=SKY, read_noise=READ_NOISE):
    """:func:`_stars` on a flat ``sky``, Poisson and read noise, in ADU."""
    image = _stars(shape, x, y, flux, fwhm)
    electrons = rng.poisson(np.maximum(image + sky, 0.0) * GAIN) + rng.normal(0.0, read_noise, shape)
    return electrons / GAIN


@pytest.fixture(scope="module")
def crowded():
    """Pairs (flux ratio 0.6) and triplets at 1-3 FWHM, one blend per 40 x 40 px cell, primaries of
    2,000-20,000 ADU (S/N ~ 60-400)."""
    rng = np.random.default_rng(11)
    xs, ys, fs, seps, kinds = [], [], [], [], []
    for cell in range(144):
        i, j = divmod(cell, 12)
        cx, cy = 30 + 40 * i + rng.uniform(-0.5, 0.5), 30 + 40 * j + rng.uniform(-0.5, 0.5)
        sep = (1.0, 1.5, 2.0, 3.0)[cell % 4] * FWHM
        angle = rng.uniform(0, 2 * np.pi)
        f = 10 ** rng.uniform(3.3, 4.3)
        members = [(cx, cy, f), (cx + sep * np.cos(angle), cy + sep * np.sin(angle), 0.6 * f)]
        if cell % 8 >= 4:  # a triplet: the third at the same separation, 90 degrees on
            members.append((cx + sep * np.cos(angle + np.pi / 2), cy + sep * np.sin(angle + np.pi / 2), 0.4 * f))
        for mx, my, mf in members:
            xs.append(mx), ys.append(my), fs.append(mf), seps.append(sep / FWHM), kinds.append(len(members))
    x, y, flux = np.array(xs), np.array(ys), np.array(fs)
    data = _draw((500, 500), x, y, flux, FWHM, rng)
    return {"data": data, "x": x, "y": y, "flux": flux, "sep": np.array(seps), "kind": np.array(kinds), "rng": rng}


def _fixed_psf(n):
    from psfax.fitting import Fixed
    from psfax.fitting.params import shape_to_u
    from psfax.profiles import get_profile

    profile = get_profile("moffat")
    return Fixed(profile, True, shape_u=shape_to_u(profile, {"fwhm": np.full(n, FWHM), "beta": np.full(n, BETA)}))


def _fit_crowded(crowded, psf, flux, render_size):
    """:func:`fit_groups` of every blend of ``crowded`` with ``psf`` (one row per source), started as a detection
    would start it: positions within ~0.3 px (seed 5), fluxes 30 % below ``flux``.  Returns the fit, the group
    sizes and the start positions."""
    from psfax.stars.groups import GroupImage, fit_groups, group_sources, render_model

    data, x, y = crowded["data"], crowded["x"], crowded["y"]
    rng = np.random.default_rng(5)
    x1, y1, f1 = x + rng.normal(0, 0.3, len(x)), y + rng.normal(0, 0.3, len(x)), 0.7 * flux
    sky_var = SKY / GAIN + (READ_NOISE / GAIN) ** 2
    image = GroupImage((data - SKY).astype(np.float32), np.ones(data.shape, bool),
                       np.full(data.shape, sky_var, np.float32), GAIN)
    radius = 4.0 * FWHM  # 2 px beyond the widest blend: start noise (0.3 px) never splits one
    group_id, group_size = group_sources(x1, y1, radius)
    grouped = fit_groups(image, render_model(psf, x1, y1, f1, data.shape, render_size), psf, x1, y1, f1, x1, y1,
                         group_id, radius=radius, stamp_size=15, dtype="float64")
    return grouped, group_size, x1, y1


@pytest.mark.slow
def test_grouped_fits_unbiased_where_single_star_fits_are_not(crowded):
    from psfax.fitting import fit_stamps

    data, flux = crowded["data"], crowded["flux"]
    psf = _fixed_psf(len(flux))
    grouped, group_size, x1, y1 = _fit_crowded(crowded, psf, flux, 31)
    # each star on its own: the engine's per-star fit on a 15 x 15 stamp (what the pipeline did before)
    col, row = np.rint(x1).astype(int), np.rint(y1).astype(int)
    offsets = np.arange(-7, 8)
    stamps = data[row[:, None, None] + offsets[None, :, None], col[:, None, None] + offsets[None, None, :]]
    single = fit_stamps(stamps, psf=psf, gain=GAIN, read_noise=READ_NOISE, dtype="float64",
                        positions=None).table
    single_flux = np.asarray(single["flux_fit"], float)
    assert np.all(group_size == crowded["kind"])  # every blend is one group
    ratio = np.asarray(grouped["flux_fit"]) / flux - 1
    pull = (np.asarray(grouped["flux_fit"]) - flux) / np.asarray(grouped["flux_err"])
    assert np.mean(grouped["converged"]) >= 0.99
    for sep in (1.0, 1.5, 2.0, 3.0):
        rows = crowded["sep"] == sep
        # ~90 sources a bin, flux errors 0.3-2 %: the median's own error is ~0.15 %; 1 % leaves room for the
        # float32 of nothing here (float64) and for the degeneracy of 1-FWHM pairs (members trade flux)
        assert abs(np.median(ratio[rows])) < 0.01, sep
        # pulls: the errors describe the scatter (the 1-FWHM pairs' strong correlations included)
        assert 0.8 < np.std(pull[rows]) < 1.3, sep
        # the single-star fit takes in the neighbours' light, into the flux when close (+8 % and more at
        # <= 2 FWHM) or into its sky when the neighbour sits at the stamp's edge (-6 % at 3 FWHM): biased by
        # 20 times and more the median's own error
        assert abs(np.median(single_flux[rows] / flux[rows] - 1)) > 0.03, sep


def _galsim_empirical_psf(k=4, size=15):
    """An :class:`~psfax.psf.EmpiricalPSF` (degree 0, no core) whose nodes are GalSim's pixel-integrated Moffat
    of the crowded field at offsets ``1 / k`` px apart (one drawImage per sub-pixel phase), per unit total flux."""
    import galsim

    from psfax.fitting.table import TableGrid
    from psfax.psf import EmpiricalPSF

    length = TableGrid((size, size), k).length
    half = (length - 1) // (2 * k) + 1
    moffat = galsim.Moffat(beta=BETA, fwhm=FWHM, flux=1.0)
    grid = np.zeros((length, length))
    offsets = (np.arange(length) - (length - 1) / 2) / k
    whole = np.floor(offsets).astype(int)
    phase = np.rint((offsets - whole) * k).astype(int)
    for py in range(k):
        for px in range(k):
            drawn = moffat.drawImage(nx=2 * half + 1, ny=2 * half + 1, scale=1.0, offset=(-px / k, -py / k)).array
            rows, cols = np.flatnonzero(phase == py), np.flatnonzero(phase == px)
            grid[np.ix_(rows, cols)] = drawn[np.ix_(whole[rows] + half, whole[cols] + half)]
    return EmpiricalPSF(grid[None], k, size)


@pytest.mark.slow
def test_grouped_fits_with_an_empirical_psf_are_unbiased(crowded):
    # The same blends fitted in groups with an empirical PSF (GalSim's own pixel-integrated Moffat on a 1/4-px
    # grid, served on footprints of 23-39 px as its 15-px stamp placed at each member): its fluxes are the
    # light within 7 px of a pixel-centred star, flux * s with s its normalisation sum, so flux_fit / (flux s)
    # must be 1.  The bounds are the Moffat test's (1 % on the median, pull std in [0.8, 1.3]); the model is zero
    # beyond its stamp, where this Moffat keeps 1.8 % of its light (it goes into the group's background).
    from psfax.psf.kind import empirical_kind

    model = _galsim_empirical_psf()
    s_c, s_k = model.norm_sums()
    within = crowded["flux"] * (s_c + s_k[0])
    psf = empirical_kind(model, crowded["x"], crowded["y"])  # degree 0: the same everywhere
    grouped, group_size, _, _ = _fit_crowded(crowded, psf, within, 23)
    assert np.all(group_size == crowded["kind"])
    assert np.mean(grouped["converged"]) >= 0.99
    ratio = np.asarray(grouped["flux_fit"]) / within - 1
    pull = (np.asarray(grouped["flux_fit"]) - within) / np.asarray(grouped["flux_err"])
    for sep in (1.0, 1.5, 2.0, 3.0):
        rows = crowded["sep"] == sep
        print(f"sep {sep}: median ratio - 1 {np.median(ratio[rows]):.4f}, pull std {np.std(pull[rows]):.3f}")
        assert abs(np.median(ratio[rows])) < 0.01, sep
        assert 0.8 < np.std(pull[rows]) < 1.3, sep


@pytest.mark.slow
@pytest.mark.parametrize("ratio, separation", [(0.35, 2.4), (1.0, 2.4)])
def test_residual_pass_finds_a_companion_missed_by_detection(ratio, separation):
    """Companions at 1.5 FWHM (pixel-convolved) of the 60 brightest stars, ``ratio`` of their flux.  For an equal
    pair the merged detection's centroid lies within 1 FWHM of the companion, so the residual pass measures that
    separation from the host's fitted position (measured from the detections, it added 6 of the 30 missed)."""
    from scipy.spatial import cKDTree

    from psfax.stars import fit_image
    from stars_synthetic import header, render_field

    field = render_field(shape=(1024, 1024), n_stars=150, seed=8)
    rng = np.random.default_rng(2)
    host = np.argsort(field.flux)[-60:]
    angle = rng.uniform(0, 2 * np.pi, len(host))
    cx, cy = field.x[host] + separation * np.cos(angle), field.y[host] + separation * np.sin(angle)
    cflux = ratio * field.flux[host]
    data = field.image + _draw(field.image.shape, cx, cy, cflux, field.fwhm(cx, cy), rng, sky=0.0, read_noise=0.0)
    result = fit_image(data.astype(np.float32), header=header(field.image.shape))
    catalog = result.catalog
    first = result.photometry_passes.added[0]
    found = np.column_stack([catalog["x_fit"], catalog["y_fit"]]).astype(float)
    first_pass = cKDTree(found[:first])
    dist_first = first_pass.query(np.column_stack([cx, cy]))[0]
    missed = dist_first > 1.0
    # precondition: sep merges at least 20 of these companions with their host (else the test proves nothing)
    assert missed.sum() >= 20
    dist_all, index = cKDTree(found).query(np.column_stack([cx, cy]))
    recovered = missed & (dist_all < 1.0) & (index >= first)
    # the residual pass (flag 32) adds >= 80 % of the missed companions, within 1 px (binomial: 30-50 of them)
    assert recovered.sum() >= 0.8 * missed.sum()
    assert np.all((np.asarray(catalog["source_flags"])[index[recovered]] & 32) != 0)
    # and their fluxes come back within 10 % (median; each companion is S/N > 50)
    assert abs(np.median(np.asarray(catalog["flux_fit"])[index[recovered]] / cflux[recovered] - 1)) < 0.1


@pytest.mark.parametrize("separation", [1.8, 2.1])  # FWHM (pixel-convolved, 2.26 px): merged by sep, a/b 1.57, 1.75
def test_residual_finds_the_companion_of_a_pair_detected_as_one_elongated_source(separation):
    """A pair that sep detects as one elongated source (which the selection calls extended): with the host's
    model subtracted, the companion is found in the residual.  Excluding every source near an extended one
    lost such companions (injected pairs of real-star copies on ZTF: both members found 23-76 % of the time)."""
    from psfax.profiles import pixel_convolved_fwhm
    from psfax.stars.detect import detect_sources, measure_background
    from psfax.stars.exposure import read_exposure
    from psfax.stars.groups import residual_sources
    from psfax.stars.pipeline import FitOptions
    from stars_synthetic import header

    rng = np.random.default_rng(4)
    fwhm = pixel_convolved_fwhm("moffat", {"fwhm": FWHM, "beta": BETA})
    host, companion = (64.3, 63.8, 20000.0), (64.3 + separation * fwhm * 0.8, 63.8 + separation * fwhm * 0.6, 8000.0)
    data = _draw((128, 128), *np.transpose([host, companion]), FWHM, rng)
    exposure = read_exposure(data.astype(np.float32), header=header(data.shape))
    background = measure_background(exposure)
    found = detect_sources(exposure, background)
    options = FitOptions()
    # precondition: one detection, failing the elongation cut (else the case tests nothing new)
    assert len(found) == 1 and found["a"][0] >= options.selection.max_elongation * found["b"][0]
    model = _stars((128, 128), [host[0]], [host[1]], [host[2]], FWHM)
    found["x"], found["y"] = host[0], host[1]  # the host as the first pass fits it
    new = residual_sources(exposure, background, model, found, fwhm, options)
    # the companion (S/N ~ 100: its centroid good to ~0.05 px), within 0.5 px
    assert len(new) == 1 and np.hypot(new["x"][0] - companion[0], new["y"][0] - companion[1]) < 0.5


def test_residual_keeps_an_elongated_companion_next_to_a_poor_fit():
    """A pair 1.3 FWHM apart (flux ratio 0.4) detected as one source and fitted as one: the fit spreads over
    both (reduced chi2 ~180) and the companion's residual merges with the fit's own into an elongated blob.
    It is kept because the fit next to it is poor (:data:`~psfax.stars.groups.POOR_FIT`), and dropped as an
    arc when the same fit is good.  On copies of real ZTF stars injected in pairs this took both members found
    from 93 % to 99 % (``benchmarks/bench_injection.py``, seeds 2-5)."""
    from psfax.profiles import pixel_convolved_fwhm
    from psfax.stars.detect import detect_sources, measure_background
    from psfax.stars.exposure import read_exposure
    from psfax.stars.groups import POOR_FIT, GroupImage, fit_groups, render_model, residual_sources
    from psfax.stars.pipeline import FitOptions
    from stars_synthetic import header

    rng = np.random.default_rng(4)
    fwhm = pixel_convolved_fwhm("moffat", {"fwhm": FWHM, "beta": BETA})
    host, companion = (64.3, 63.8, 20000.0), (64.3 + 1.3 * fwhm * 0.8, 63.8 + 1.3 * fwhm * 0.6, 8000.0)
    data = _draw((128, 128), *np.transpose([host, companion]), FWHM, rng)
    exposure = read_exposure(data.astype(np.float32), header=header(data.shape))
    background = measure_background(exposure)
    found = detect_sources(exposure, background)
    assert len(found) == 1  # precondition: the pair is one detection
    sky_var = SKY / GAIN + (READ_NOISE / GAIN) ** 2
    image = GroupImage((data - background.level).astype(np.float32), np.ones(data.shape, bool),
                       np.full(data.shape, sky_var, np.float32), GAIN)
    psf = _fixed_psf(1)
    x, y, flux = np.array(found["x"], float), np.array(found["y"], float), np.array(found["aper_flux"], float)
    fit = fit_groups(image, render_model(psf, x, y, flux, data.shape, 21), psf, x, y, flux, x, y, np.array([0]),
                     radius=3 * fwhm, stamp_size=15, dtype="float64")
    assert fit["reduced_chi2"][0] > POOR_FIT  # precondition: the fit spread over both
    model = render_model(psf, fit["x_fit"], fit["y_fit"], fit["flux_fit"], data.shape, 21)
    known = np.column_stack([fit["x_fit"], fit["y_fit"]])
    options = FitOptions()
    kept = residual_sources(exposure, background, model, found, fwhm, options, known, fit["reduced_chi2"])
    assert len(kept) == 1
    # precondition: it is elongated (else the case tests nothing new)
    assert kept["a"][0] >= options.selection.max_elongation * kept["b"][0]
    # its centroid is pulled towards the host by the fit's residual (0.96-0.99 px over seeds 4-8); the next
    # pass's grouped fit starts from it: within half a FWHM
    assert np.hypot(kept["x"][0] - companion[0], kept["y"][0] - companion[1]) < 0.5 * fwhm
    assert len(residual_sources(exposure, background, model, found, fwhm, options, known, np.array([1.0]))) == 0


def _sheared_pairs(shear, rng):
    """Single stars and pairs at 1.5 FWHM, each star sheared by |g| ~ ``shear`` with ``10 shear`` px of shift on
    3 % of its light (an asymmetric shape error), on the crowded field's sky and noise."""
    import galsim

    x, y, flux, pair = [], [], [], []
    for cell in range(400):
        cx, cy = 30 + 40 * (cell // 20) + rng.uniform(-0.5, 0.5), 30 + 40 * (cell % 20) + rng.uniform(-0.5, 0.5)
        f = 10 ** rng.uniform(3.6, 4.3)
        members = [(cx, cy, f)]
        if cell % 2:
            a = rng.uniform(0, 2 * np.pi)
            members.append((cx + 1.5 * FWHM * np.cos(a), cy + 1.5 * FWHM * np.sin(a), f * rng.uniform(0.3, 1.0)))
        for mx, my, mf in members:
            x.append(mx), y.append(my), flux.append(mf), pair.append(len(members) == 2)
    x, y, flux, pair = map(np.array, (x, y, flux, pair))
    image = np.zeros((840, 840))
    for xi, yi, fi in zip(x, y, flux):  # test set-up: one GalSim drawing per star
        g1, g2 = rng.normal(0, shear, 2)
        shape = galsim.Moffat(beta=BETA, fwhm=FWHM, flux=0.97 * fi).shear(g1=g1, g2=g2)
        shape += galsim.Moffat(beta=BETA, fwhm=FWHM, flux=0.03 * fi).shift(10 * g1, 10 * g2)
        ix, iy = int(np.rint(xi)), int(np.rint(yi))
        image[iy - 15:iy + 16, ix - 15:ix + 16] += shape.drawImage(nx=31, ny=31, scale=1.0,
                                                                    offset=(xi - ix, yi - iy)).array
    data = (rng.poisson(np.maximum(image + SKY, 0.0) * GAIN) + rng.normal(0.0, READ_NOISE, image.shape)) / GAIN
    return {"data": data, "x": x, "y": y, "flux": flux, "pair": pair}


@pytest.mark.slow
@pytest.mark.parametrize("shear", [0.0, 0.03])
def test_blend_variance_covers_what_a_neighbours_shape_error_does(shear):
    # An asymmetric shape error leaves a single star's flux alone (its fitted centre absorbs it, measured: no
    # scatter beyond the noise) but moves a blended neighbour's: pairs at 1.5 FWHM scatter 1.3 % beyond the noise
    # (pull std 2.0).  blend_variance, from the per-pixel floor measured on the single stars, must take the pairs'
    # pull std well toward 1 (measured 1.33: by more than 0.4) without going below 0.9; with no shape error the
    # floor is ~0 and the pulls must stay as they are (to 0.02).
    from psfax.stars.empirical import blend_variance, fraction_reaching_one
    from psfax.psf.kind import empirical_kind

    field = _sheared_pairs(shear, np.random.default_rng(21))
    model = _galsim_empirical_psf()
    s_c, s_k = model.norm_sums()
    within = field["flux"] * (s_c + s_k[0])
    grouped, group_size, x1, y1 = _fit_crowded(field, empirical_kind(model, field["x"], field["y"]), within, 23)
    flux, err = np.asarray(grouped["flux_fit"]), np.asarray(grouped["flux_err"])
    xf, yf = np.asarray(grouped["x_fit"]), np.asarray(grouped["y_fit"])
    sky_var = SKY / GAIN + (READ_NOISE / GAIN) ** 2
    single = np.flatnonzero(~field["pair"] & (group_size == 1))
    resid2, var, light = [], [], []
    for i in single:  # test set-up: each single star's stamp, data and fitted model
        ix, iy = int(np.rint(xf[i])), int(np.rint(yf[i]))
        stamp = field["data"][iy - 7:iy + 8, ix - 7:ix + 8] - SKY - grouped["bkg_fit"][i]
        m = flux[i] * model.render(xf[i:i + 1] - ix + 7, yf[i:i + 1] - iy + 7, xf[i:i + 1], yf[i:i + 1])[0]
        resid2.append((stamp - m) ** 2), var.append(sky_var + np.maximum(m, 0) / GAIN), light.append(m)
    resid2, var, light = map(np.array, (resid2, var, light))
    def median_chi2(f):  # 15 x 15 pixels, 4 parameters: as the pipeline's model_error_floor
        return np.median(np.sum(resid2 / (var + (f * light) ** 2), axis=(1, 2)) / 221)

    floor = fraction_reaching_one(median_chi2, 0.5)
    group_id = np.unique(np.round(np.column_stack([x1, y1]) / 40).astype(int), axis=0, return_inverse=True)[1]
    extra = blend_variance(model, xf, yf, flux, group_id.ravel(), np.full(field["data"].shape, sky_var),
                           np.zeros(field["data"].shape, bool), GAIN, 15, floor)
    pairs = field["pair"] & np.asarray(grouped["converged"], bool)
    before = np.std(((flux - within) / err)[pairs])
    after = np.std(((flux - within) / np.sqrt(err**2 + extra))[pairs])
    print(f"shear {shear}: floor {floor:.4f}, pair pull std {before:.3f} -> {after:.3f}")
    if shear:
        assert before - after > 0.4 and after > 0.9
    else:
        assert abs(after - before) < 0.02

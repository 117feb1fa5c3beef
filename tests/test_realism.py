"""Realism statistics (rbclib.physics.realism): each statistic on synthetic images with a known
answer, the twin's targets on a small simulated sample, and the real holograms of
../shared/data (skipped when absent)."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from scipy.special import erfc

matplotlib.use("Agg")

from rbclib.physics import realism as R  # noqa: E402
from rbclib.physics import image_statistics as S  # noqa: E402
from rbclib.core.config import Optics  # noqa: E402

OPT = Optics()
PX = OPT.pixel_size_m * 1e6
NM_PER_RAD = OPT.wavelength_m * 1e9 / (2 * math.pi)


def _radius(shape, centre):
    yy, xx = np.indices(shape)
    return np.hypot(yy - centre[0], xx - centre[1]), np.arctan2(yy - centre[0], xx - centre[1])


def _discs(shape, centres, radius, value=2.0):
    """Flat discs of ``value`` rad; returns (phase, instances)."""
    phase, inst = np.zeros(shape, np.float32), np.zeros(shape, np.int32)
    for k, c in enumerate(centres, start=1):
        inside = _radius(shape, c)[0] <= radius
        phase[inside], inst[inside] = value, k
    return phase, inst


# ----------------------------------------------------------------------------- small helpers
def test_robust_std_and_auc():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2.0, 20000)
    x[:500] = 1e3  # outliers barely move it
    assert S.robust_std(x) == pytest.approx(2.0, rel=0.05)
    assert R.rank_auc([3, 4, 5], [0, 1, 2]) == 1.0
    assert R.rank_auc([0, 1, 2], [3, 4, 5]) == 0.0
    assert R.rank_auc([1, 1], [1, 1]) == 0.5
    a, b = rng.normal(1, 1, 40), rng.normal(0, 1, 50)
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in a for n in b])
    assert R.rank_auc(a, b) == pytest.approx(brute)
    assert math.isnan(R.rank_auc([], b))


def test_cells_per_1000um2_counts_edge_cells_half():
    _, inst = _discs((400, 400), [(100, 100), (200, 250), (300, 120), (0, 200), (200, 399)], 20)
    area_um2 = 400 * 400 * PX ** 2
    assert S.cells_per_1000um2(inst, pixel_size_m=OPT.pixel_size_m) == pytest.approx(4 / area_um2 * 1000)


# ----------------------------------------------------------------------------- noise
def test_white_noise_level_spectrum_and_correlation():
    rng = np.random.default_rng(1)
    sigma = 0.05
    yy, xx = np.indices((512, 512)) / 512
    slow = 1.5 * (yy - 0.5) ** 2 - 0.8 * xx  # aberration residue: removed before measuring
    cells, _ = _discs((512, 512), [(120, 140), (300, 380), (400, 100)], 28)
    phase = rng.normal(0, sigma, (512, 512)) + slow + cells
    noise = S.background_noise(phase, cells > 0, pixel_size_m=OPT.pixel_size_m, wavelength_m=OPT.wavelength_m)
    assert noise.noise_rad == pytest.approx(sigma, rel=0.05)
    assert noise.noise_nm == pytest.approx(sigma * NM_PER_RAD, rel=0.05)
    # white: flat spectrum at sigma^2 dx^2 (OPD units), correlation below one pixel
    flat = noise.psd_nm2_um2[5:]
    assert np.median(flat) == pytest.approx((sigma * NM_PER_RAD) ** 2 * PX ** 2, rel=0.1)
    assert flat.max() / flat.min() < 2
    assert noise.corr_length_um < PX


def test_correlated_noise_length():
    rng = np.random.default_rng(2)
    s = 3.0  # Gaussian-filtered white noise: autocorrelation exp(-r^2 / 4 s^2), 1/e at r = 2 s
    field = ndi.gaussian_filter(rng.normal(size=(512, 512)), s, mode="wrap")
    field *= 0.1 / field.std()
    noise = S.background_noise(field, np.zeros(field.shape, bool), pixel_size_m=OPT.pixel_size_m,
                               wavelength_m=OPT.wavelength_m)
    assert noise.corr_length_um == pytest.approx(2 * s * PX, rel=0.1)
    assert noise.noise_rad == pytest.approx(0.1, rel=0.1)
    assert noise.psd_nm2_um2[2] > 20 * noise.psd_nm2_um2[-1]  # low-pass spectrum


def test_medium_mask_excludes_halo_and_border():
    cells, _ = _discs((200, 200), [(100, 100)], 20)
    med = S.medium_mask(cells > 0, pixel_size_m=OPT.pixel_size_m, halo_um=1.5, border_px=16)
    r = _radius((200, 200), (100, 100))[0]
    assert not med[r <= 20 + 1.5 / PX - 0.5].any() and med[(r > 20 + 1.5 / PX + 1) & (r < 70)].all()
    assert not med[:16].any() and not med[:, -16:].any()


# ----------------------------------------------------------------------------- per-cell statistics
def test_edge_width_of_a_gaussian_edge():
    s, radius = 3.0, 40.0  # an ideal disc blurred by a Gaussian of s px: 10-90 % = 2 x 1.2816 s
    r, _ = _radius((200, 200), (100, 100))
    phase = (2.0 * 0.5 * erfc((r - radius) / (math.sqrt(2) * s))).astype(np.float32)
    prof_r, prof = S.radial_profile(phase, (100, 100), r_max_px=70)
    assert S.edge_width(prof_r, prof, 0.0) == pytest.approx(2 * 1.2816 * s, rel=0.04)
    cells = S.cell_statistics(phase, (r <= radius).astype(np.int32), optics=OPT)
    assert cells.edge_width_um[0] == pytest.approx(2 * 1.2816 * s * PX, rel=0.04)
    sharper = (2.0 * 0.5 * erfc((r - radius) / (math.sqrt(2) * 1.0))).astype(np.float32)
    sharp_row = S.cell_statistics(sharper, (r <= radius).astype(np.int32), optics=OPT).iloc[0]
    assert sharp_row.edge_width_um < 0.5 * cells.edge_width_um[0]


def test_dip_ratio_dry_mass_and_peak():
    radius = 40.0
    r, _ = _radius((200, 200), (100.3, 99.6))
    inside = r <= radius
    bowl = np.where(inside, 1 + (r / radius) ** 2, 0).astype(np.float32)  # centre 1, rim 2
    cap = np.where(inside, np.sqrt(np.clip(1 - (r / radius) ** 2, 0, None)), 0).astype(np.float32)
    inst = inside.astype(np.int32)
    row = S.cell_statistics(bowl, inst, optics=OPT).iloc[0]
    # mean of 1 + (r/R)^2 within 0.15 R: 1 + 0.15^2 / 2; profile peak ~2 (last ring inside)
    assert row.dip_ratio == pytest.approx((1 + 0.15 ** 2 / 2) / 2, abs=0.02)
    assert S.cell_statistics(cap, inst, optics=OPT).dip_ratio[0] > 0.97
    pg_per_rad = OPT.pixel_size_m ** 2 * OPT.wavelength_m / (2 * math.pi * OPT.alpha_m3_per_kg) * 1e15
    assert row.dry_mass_pg == pytest.approx(float(bowl[inside].sum()) * pg_per_rad, rel=1e-6)
    assert row.peak_phase_rad == pytest.approx(np.percentile(bowl[inside], 99))
    assert row.peak_opd_nm == pytest.approx(row.peak_phase_rad * NM_PER_RAD)
    assert row.area_um2 == pytest.approx(inside.sum() * PX ** 2)
    assert row.isolated and not row.touches_edge


def test_outline_roughness_star_circle_ellipse():
    radius, amp = 40.0, 0.08
    r, theta = _radius((200, 200), (100, 100))
    star = ndi.gaussian_filter((r <= radius * (1 + amp * np.cos(12 * theta))).astype(float), 1.0)
    circle = ndi.gaussian_filter((r <= radius).astype(float), 1.0)
    yy, xx = np.indices((200, 200))
    ellipse = ndi.gaussian_filter((((yy - 100) / 42) ** 2 + ((xx - 100) / 38) ** 2 <= 1).astype(float), 1.0)
    # residual of r(theta) = R (1 + a cos 12 theta) after harmonics 0..3: a / sqrt(2)
    assert S.outline_roughness(star, 0.5, (100, 100)) == pytest.approx(amp / math.sqrt(2), rel=0.15)
    assert S.outline_roughness(circle, 0.5, (100, 100)) < 0.004
    assert S.outline_roughness(ellipse, 0.5, (100, 100)) < 0.005  # axis ratio 1.1: harmonic 4 is left
    inst = (star > 0.05).astype(np.int32)
    assert S.cell_statistics(star.astype(np.float32), inst, optics=OPT).roughness[0] == pytest.approx(
        amp / math.sqrt(2), rel=0.2)


def test_isolated_and_edge_flags_and_classes():
    phase, inst = _discs((300, 300), [(80, 80), (80, 80 + 41), (200, 200), (150, 5)], 20)
    cells = S.cell_statistics(phase, inst, optics=OPT, classes={3: "echinocyte"}).set_index("cell_id")
    assert list(cells.isolated) == [False, False, True, True]
    assert list(cells.touches_edge) == [False, False, False, True]
    assert cells.class_name[3] == "echinocyte" and cells.class_name[1] == ""


# ----------------------------------------------------------------------------- cell finder
def test_find_cells_splits_touching_and_drops_specks():
    rng = np.random.default_rng(3)
    centres = [(80, 80), (80, 80 + 52), (250, 90), (150, 300), (300, 300), (400, 180)]
    phase, truth = _discs((480, 420), centres, 27)
    speck, _ = _discs((480, 420), [(420, 380)], 3)
    phase = ndi.gaussian_filter(phase + speck, 2.0) + rng.normal(0, 0.05, phase.shape).astype(np.float32)
    found = S.find_cells(phase, pixel_size_m=OPT.pixel_size_m)
    assert found.dtype == np.int32 and found.max() == len(centres)
    mains = []
    for k in range(1, len(centres) + 1):  # one found cell per disc, of about its area
        ids, counts = np.unique(found[truth == k], return_counts=True)
        mains.append(ids[np.argmax(counts)])
        area, true_area = np.count_nonzero(found == mains[-1]), np.count_nonzero(truth == k)
        assert mains[-1] > 0 and area == pytest.approx(true_area, rel=0.25)
    assert len(set(mains)) == len(centres)  # the touching pair is split
    assert found[420, 380] == 0


# ----------------------------------------------------------------------------- tables and targets
def _fake(name, noise_nm, edge, rng, n_per_class=30, classes=True):
    """A PhaseStatistics with chosen per-field noise and per-cell edge widths."""
    names = list(R.EQUAL_MIXTURE) if classes else [""]
    rows = []
    for k, cls in enumerate(names * n_per_class):
        echino = cls == "echinocyte"
        rows.append({"cell_id": k + 1, "class_name": cls, "area_um2": 45.0, "edge_width_um": edge + rng.normal(0, 0.01),
                     "dip_ratio": rng.uniform(0.1, 0.6) if cls == "discocyte" else 0.9,
                     "roughness": rng.uniform(0.04, 0.08) if echino else rng.uniform(0.0, 0.02),
                     "peak_phase_rad": 1.7, "peak_opd_nm": 190.0, "dry_mass_pg": 29.0 * (1.03 if echino else 1.0),
                     "isolated": True, "touches_edge": False, "field": k % len(noise_nm)})
    fields = pd.DataFrame({"field": range(len(noise_nm)), "noise_nm": noise_nm, "noise_rad": np.array(noise_nm) / 100,
                           "corr_length_um": 1.0, "cells_per_1000um2": 5.0, "cells_per_1000um2_given": 5.0})
    freq = np.linspace(0.1, 3, 20)
    return R.PhaseStatistics(name=name, cells=pd.DataFrame(rows), fields=fields,
                             noise=[S.Noise(n / 100, n, freq, 1 / freq, 1.0) for n in noise_nm])


def test_comparison_table_and_targets_pass_and_fail():
    rng = np.random.default_rng(4)
    reals = [_fake("a.png", [10.0], 1.0, rng, 5, False), _fake("b.png", [20.0], 1.3, rng, 5, False)]
    good = _fake("twin", [5.0, 12.0, 25.0], 1.1, rng)
    table = R.comparison_table(good, reals)
    noise_row = table.loc["background noise [nm]", ["twin", "lo", "hi", "real lo", "real hi"]]
    assert noise_row.tolist() == [12, 5, 25, 10, 20]
    assert table.loc["edge width 10-90 % [um]", "a.png"] == pytest.approx(1.0, abs=0.02)
    summary = R.class_summary(good)
    assert summary.dry_mass_rel["echinocyte"] == pytest.approx(0.03)
    assert R.roughness_auc(good) == 1.0
    assert R.check_targets(good, reals).passed.tolist() == [True] * 7
    bad = _fake("twin", [12.0, 15.0], 1.5, rng)  # noise range too narrow, edges too wide
    assert R.check_targets(bad, reals).passed.tolist()[:2] == [False, False]
    no_real = R.check_targets(good, [])
    assert no_real.passed.tolist()[:2] == [None, None] and no_real.passed.tolist()[2:] == [True] * 5
    fig = R.plot_realism(good, reals)
    assert len(fig.axes) == 6


# ----------------------------------------------------------------------------- the twin
@pytest.fixture(scope="module")
def twin() -> R.PhaseStatistics:
    return R.twin_statistics(24, seed=0, field_px=512)   # as bench_realism.py


def test_twin_statistics_and_finder_count(twin):
    assert set(twin.clean.class_name) == set(R.EQUAL_MIXTURE)
    assert np.isfinite(twin.fields.noise_nm).all() and (twin.fields.noise_nm > 0).all()
    # the independent finder counts about the ground-truth cells
    found, truth = twin.fields.cells_per_1000um2.sum(), twin.fields.cells_per_1000um2_given.sum()
    assert found == pytest.approx(truth, rel=0.15)


def test_twin_targets(twin):
    """The twin-only realism targets (these depend on the simulator's cell models)."""
    targets = R.check_targets(twin, [])
    assert targets.passed[~targets.needs_real].all(), targets.to_string()


# ----------------------------------------------------------------------------- real holograms
@pytest.fixture(scope="module")
def reals(shared_data: Path) -> list[R.PhaseStatistics]:
    paths = R.real_hologram_paths(shared_data)
    if not paths:
        pytest.skip(f"no real RBC hologram in {shared_data / 'holograms'}")
    return [R.real_statistics(p) for p in paths]


@pytest.mark.realdata
def test_real_statistics_plausible(reals):
    for real in reals:
        f = real.fields.iloc[0]
        assert 2 <= f.noise_nm <= 40, (real.name, f.noise_nm)
        assert 0.2 <= f.corr_length_um <= 10, (real.name, f.corr_length_um)
        assert len(real.clean) >= 3, real.name
        clean = real.clean
        # these recordings hold 4-5 rad peaks (an independent qpretrieve reconstruction agrees)
        assert 0.5 <= clean.peak_phase_rad.median() <= 6, (real.name, clean.peak_phase_rad.median())
        finite = np.isfinite(clean[["edge_width_um", "dip_ratio", "roughness", "dry_mass_pg"]]).mean()
        assert (finite >= 0.9).all(), (real.name, finite)
        assert 0.3 <= clean.edge_width_um.median() <= 4, real.name


@pytest.mark.realdata
def test_twin_against_real_targets(twin, reals):
    """Noise range and edge width of the twin against the real holograms."""
    targets = R.check_targets(twin, reals)
    assert targets.passed[targets.needs_real].all(), targets.to_string()

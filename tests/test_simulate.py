"""Tests of the digital twin (rbclib.physics.simulate): values, not just shapes."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from rbclib.core import files, io
from rbclib.cli import main
from rbclib.core.config import Optics
from rbclib.core.labels import CLASS_IDS, DISCOCYTE, SPHEROCYTE
from rbclib.physics.cells import EVANS_FUNG_C, EVANS_FUNG_R0_UM, CellSpec, cell_thickness, draw_cell
from rbclib.physics.recording import CARRIER_CYCLES_PER_PX, HologramSettings
from rbclib.physics.simulate import STORAGE_DAYS, parse_mixture, simulate_field, storage_mixture, storage_reference
from rbclib.physics.simulated_datasets import simulate_dataset, simulate_storage_series

EQUAL = {"discocyte": 0.25, "spherocyte": 0.25, "echinocyte": 0.25, "stomatocyte": 0.25}


@pytest.fixture(scope="module")
def many_cells() -> pd.DataFrame:
    """About 240 cells of all classes (no holograms: fast)."""
    return pd.concat([simulate_field(s, mixture=EQUAL, holograms=False).cells for s in range(4)], ignore_index=True)


def test_deterministic_by_seed():
    a, b = simulate_field(7, field_px=192), simulate_field(7, field_px=192)
    c = simulate_field(8, field_px=192)
    for name in ("hologram", "background", "phase", "labels", "instances"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    pd.testing.assert_frame_equal(a.cells, b.cells)
    assert not np.array_equal(a.phase, c.phase)


CLEAN = {"overlap_fraction": 0.0, "platelets_per_cell": 0.0, "debris_per_1000um2": 0.0}


def test_field_consistency_and_no_overlap():
    f = simulate_field(3, field_px=512, n_cells=30, mixture=EQUAL, touching_fraction=0.3, holograms=False, **CLEAN)
    assert f.phase.dtype == np.float32 and f.labels.dtype == np.uint8 and f.instances.dtype == np.int32
    assert f.phase.min() == 0.0 and np.all((f.phase > 0) == (f.instances > 0)) and np.all((f.labels > 0) == (f.instances > 0))
    assert sorted(np.unique(f.instances)[1:]) == f.cells.cell_id.tolist()
    px2 = (f.optics.pixel_size_m * 1e6) ** 2
    for row in f.cells.itertuples():
        m = f.instances == row.cell_id
        assert np.unique(f.labels[m]).tolist() == [row.class_id]          # one class per instance
        assert ndi.label(m, np.ones((3, 3)))[1] == 1                       # one connected piece
        assert math.isclose(f.thickness[m].sum() * px2, row.volume_um3, rel_tol=1e-4)
        cy, cx = ndi.center_of_mass(m)
        assert abs(cy - row.centre_y_px) < 3 and abs(cx - row.centre_x_px) < 3
    # nothing was overwritten: the instance pixels add up to the rendered volumes
    assert math.isclose(f.thickness.sum() * px2, f.cells.volume_um3.sum(), rel_tol=1e-4)
    assert not f.cells.overlapping.any()


def test_overlaps_add_thickness_and_top_cell_owns_pixels():
    f = simulate_field(5, field_px=512, n_cells=40, mixture=EQUAL, touching_fraction=0.2, overlap_fraction=0.4,
                       platelets_per_cell=0.0, debris_per_1000um2=0.0, holograms=False)
    over = f.cells[f.cells.overlapping]
    assert len(over) >= 8 and len(over) % 2 == 0                         # pairs: one on top, one under
    px2 = (f.optics.pixel_size_m * 1e6) ** 2
    # every cell's own volume is in the thickness map: stacked cells add up, nothing lost
    assert math.isclose(f.thickness.sum() * px2, f.cells.volume_um3.sum(), rel_tol=1e-4)
    under = [r for r in over.itertuples() if f.thickness[f.instances == r.cell_id].sum() * px2 < 0.97 * r.volume_um3]
    assert len(over) // 2 - 1 <= len(under) <= len(over) // 2               # the lower cell of each pair is partly hidden
    gain = [f.phase[f.instances == r.cell_id].max() - r.peak_phase_rad for r in over.itertuples()]
    assert sum(g > 0.3 for g in gain) >= len(over) // 2 - 1                # thickness adds where they overlap


def test_background_objects_are_class_zero():
    f = simulate_field(2, field_px=512, n_cells=20, platelets_per_cell=1.0, debris_per_1000um2=10.0,
                       touching_fraction=0.0, overlap_fraction=0.0, holograms=False)
    junk = (f.phase > 0.02) & (f.instances == 0)
    n_objects = ndi.label(junk, np.ones((3, 3)))[1]
    assert f.conditions["n_platelets"] + f.conditions["n_debris"] >= 40
    assert n_objects >= 0.7 * (f.conditions["n_platelets"] + f.conditions["n_debris"])
    assert np.all(f.labels[junk] == 0)
    assert 0.05 < np.percentile(f.phase[junk], 95) < 1.5                  # platelets and specks: faint


@pytest.mark.parametrize("fraction", [0.0, 0.5])
def test_touching_fraction_honoured(fraction):
    f = simulate_field(11, field_px=900, n_cells=60, touching_fraction=fraction, holograms=False, **CLEAN)
    assert len(f.cells) == 60
    share = f.cells.touching.mean()
    assert abs(share - fraction) <= 0.12, share
    if fraction == 0.0:   # every pair at least 3 px apart
        for cid in f.cells.cell_id:
            grown = ndi.binary_dilation(f.instances == cid, np.ones((3, 3)), iterations=2)
            assert set(np.unique(f.instances[grown]).tolist()) <= {0, cid}


def test_density_drawn_per_field():
    densities = [simulate_field(s, field_px=512, holograms=False).conditions["density_per_1000um2"] for s in range(12)]
    assert 1.5 <= min(densities) and max(densities) <= 10.5 and np.ptp(densities) > 4    # sparse to dense
    area = (512 * Optics().pixel_size_m * 1e6) ** 2
    pinned = simulate_field(0, field_px=512, density_per_1000um2=8.0, holograms=False)
    assert abs(len(pinned.cells) - 8.0 * area / 1000) <= 2


def test_class_statistics(many_cells):
    g = many_cells.groupby("class_name")
    d, peak = g.diameter_um, g.peak_phase_rad
    assert 7.5 < d.mean()["discocyte"] < 8.1 and 0.3 < d.std()["discocyte"] < 0.7   # 7.8 +/- 0.5 um
    sph = many_cells[many_cells.class_name == "spherocyte"]
    assert sph.diameter_um.between(5.3, 7.0).all()
    assert peak.mean()["spherocyte"] > 1.15 * max(peak.mean()[c] for c in ("discocyte", "echinocyte", "stomatocyte"))
    assert peak.mean()["stomatocyte"] > peak.mean()["discocyte"]                      # thicker than a disc
    assert 1.2 < peak.median()["discocyte"] < 1.8
    assert many_cells.volume_um3.between(40, 160).all()
    assert 27 < g.dry_mass_pg.mean()["discocyte"] < 32                                # MCH 27-33 pg
    mass = g.dry_mass_pg.median()
    assert (abs(mass / mass["discocyte"] - 1) < 0.05).all(), mass                    # one Hb-per-cell distribution
    ech = many_cells[many_cells.class_name == "echinocyte"]
    early, late = ech[ech.echinocyte_stage < 0.3], ech[ech.echinocyte_stage > 0.7]
    assert early.n_spicules.between(8, 36).all() and late.n_spicules.between(24, 50).all()
    assert early.n_spicules.mean() < late.n_spicules.mean()


def test_discocyte_dip_and_stomatocyte_slit():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[-60:61, -60:61] * 0.1
    flat = 0
    for _ in range(40):
        disc = draw_cell(DISCOCYTE, rng, flat_fraction=0.4)
        h = cell_thickness(disc, y, x)
        centre, rim = h[60, 60], h.max()
        assert 2.0 <= rim <= 3.1, rim
        if "edge_power" in disc.params:   # flat top, narrow shallow dimple (the real fresh cells)
            flat += 1
            half_radius = h[60, 60 + int(round(5 * disc.a_um))]               # x = 0.5: on the plateau
            assert 0.5 < centre / rim < 0.93 and half_radius > 0.85 * rim, (centre, rim, half_radius)
        else:                             # Evans-Fung biconcave disc
            assert 0.15 <= centre <= 1.65 and 0.05 < centre / rim < 0.65
        stom = draw_cell(CLASS_IDS["stomatocyte"], rng)
        hs = cell_thickness(stom, y, x)
        assert hs.max() > 2.6 and hs[55:66, 55:66].min() < 0.6 * hs.max()          # slit in the middle
        sph = cell_thickness(draw_cell(SPHEROCYTE, rng), y, x)
        assert sph[60, 60] >= 0.95 * sph.max()                                         # no dip
    assert 0.2 * 40 <= flat <= 0.6 * 40    # flat_fraction = 0.4 of the discocytes
    assert all("edge_power" not in draw_cell(DISCOCYTE, rng).params for _ in range(20))   # opt-in: default 0


def _outline_radius(h: np.ndarray, step_um: float) -> np.ndarray:
    """Radius [um] of the h > 0 support at 360 angles (from the centre of the grid)."""
    c = h.shape[0] // 2
    r = np.arange(0, c) * step_um
    theta = np.linspace(0, 2 * np.pi, 360, endpoint=False)
    yy = np.clip(np.rint(c + np.outer(np.sin(theta), r / step_um)).astype(int), 0, h.shape[0] - 1)
    xx = np.clip(np.rint(c + np.outer(np.cos(theta), r / step_um)).astype(int), 0, h.shape[1] - 1)
    inside = h[yy, xx] > 0
    return np.array([r[np.nonzero(row)[0].max()] for row in inside])


def test_echinocyte_spicules_stick_out_and_invisible_crenation_is_discocyte():
    rng = np.random.default_rng(4)
    step = 0.05
    y, x = np.mgrid[-140:141, -140:141] * step
    def protrusion(cell: CellSpec) -> np.ndarray:
        plain = dataclasses.replace(cell, params={k: v for k, v in cell.params.items() if k != "rim_spicules"})
        return _outline_radius(cell_thickness(cell, y, x), step) - _outline_radius(cell_thickness(plain, y, x), step)

    for _ in range(10):
        cell = draw_cell(CLASS_IDS["echinocyte"], rng)
        out = protrusion(cell)
        assert 0.4 <= out.max() <= 1.3                                     # spicules 0.5-1 um beyond the disc
        assert np.std(out) / np.sqrt(cell.a_um * cell.b_um) > 0.03        # a scalloped outline
    discs = [draw_cell(DISCOCYTE, rng) for _ in range(200)]
    crenated = [d for d in discs if d.params.get("rim_spicules") is not None]
    assert 0.08 < len(crenated) / len(discs) < 0.25                         # the labelling rule's share
    for d in crenated[:5]:
        assert protrusion(d).max() < 0.3                                   # below the optics' resolution


def test_true_volume_of_analytic_cells():
    # half ellipsoid (spherocyte with power 1/2): V = 2/3*pi*a*b*H
    cell = CellSpec(SPHEROCYTE, 3.2, 2.9, 0.3, 33.0, {"height_um": 4.0, "power": 0.5, "tilt": (0.0, 0.0)})
    optics = Optics(pixel_size_m=0.02e-6)
    y, x = (np.mgrid[-200:201, -200:201] * 0.02)
    vol = cell_thickness(cell, y, x).sum() * 0.02**2
    assert vol == pytest.approx(2 / 3 * math.pi * 3.2 * 2.9 * 4.0, rel=0.005)
    # Evans-Fung's own cell: 94 um^3 (Evans & Fung 1972, Table 1: 94 +/- 14)
    c0, c2, c4 = EVANS_FUNG_C
    ef = CellSpec(DISCOCYTE, EVANS_FUNG_R0_UM, EVANS_FUNG_R0_UM, 0.0, 33.0,
                  {"h0_um": c0 * EVANS_FUNG_R0_UM, "s": 1.0, "tilt": (0.0, 0.0)})
    assert cell_thickness(ef, y, x).sum() * 0.02**2 == pytest.approx(94, abs=4)
    # table: dry mass = volume * (n_cell - n_medium) / alpha
    f = simulate_field(1, field_px=160, n_cells=3, holograms=False, optics=optics.replace(pixel_size_m=0.1441e-6))
    dn = f.cells.n_cell - f.optics.n_medium
    expect = f.cells.volume_um3 * 1e-18 * dn / f.optics.alpha_m3_per_kg * 1e15
    np.testing.assert_allclose(f.cells.dry_mass_pg, expect, rtol=1e-9)


def test_mixture_proportions(many_cells):
    n = len(many_cells)
    share = many_cells.class_name.value_counts(normalize=True)
    for name, p in EQUAL.items():
        assert abs(share[name] - p) < 4 * math.sqrt(p * (1 - p) / n), (name, share[name])
    cells = pd.concat([simulate_field(s, day=57, holograms=False).cells for s in range(3)])
    mix = storage_mixture(57)
    for name, p in mix.items():
        assert abs((cells.class_name == name).mean() - p) < 4 * math.sqrt(p * (1 - p) / len(cells)) + 0.01


def test_storage_model():
    table = storage_reference()
    assert tuple(table.storage_day) == STORAGE_DAYS
    for day in STORAGE_DAYS:
        mix = storage_mixture(day)
        assert sum(mix.values()) == pytest.approx(1.0)
    assert storage_mixture(8)["discocyte"] > 0.9 and storage_mixture(57)["discocyte"] < 0.3
    mid = storage_mixture(10)
    assert storage_mixture(13)["discocyte"] <= mid["discocyte"] <= storage_mixture(8)["discocyte"]
    w = table.cells_counted / table.cells_counted.sum()   # paper: 76 % / 10 % / 10 % / 4 % overall
    assert (w * table.discocyte).sum() == pytest.approx(0.76, abs=0.02)
    with pytest.raises(ValueError, match="outside the modelled range"):
        storage_mixture(80)
    assert parse_mixture("discocyte=3,spherocyte=1") == {"discocyte": 0.75, "spherocyte": 0.25, "echinocyte": 0.0,
                                                         "stomatocyte": 0.0}
    for bad, msg in [("discocyte=x", "not a number"), ("blob=1", "unknown cell class"), ("discocyte", "class=fraction"),
                     ("discocyte=-1,spherocyte=2", ">= 0")]:
        with pytest.raises(ValueError, match=msg):
            parse_mixture(bad)


@pytest.mark.parametrize("carrier", [None, CARRIER_CYCLES_PER_PX])
def test_hologram_carrier_and_sign(carrier):
    f = simulate_field(2, field_px=256, n_cells=6, bit_depth=12, defocus_um=0.0,
                       settings=HologramSettings(carrier=carrier, noise_nm=2.0, dust=(0, 0)), **CLEAN)
    assert f.hologram.dtype == np.uint16 and f.hologram.max() <= 4095 and f.background.shape == (256, 256)
    assert f.carrier == (carrier or f.conditions["carrier"])
    holo, bg = f.hologram.astype(float), f.background.astype(float)
    spec = np.fft.fft2(holo - holo.mean())
    fy, fx = np.fft.fftfreq(256)[:, None], np.fft.fftfreq(256)[None, :]
    search = (np.hypot(fy, fx) > 0.08) & (fx > 0)
    iy, ix = np.unravel_index(np.argmax(np.where(search, np.abs(spec), 0)), spec.shape)
    assert abs(fy[iy, 0] - f.carrier[0]) <= 2 / 256 and abs(fx[0, ix] - f.carrier[1]) <= 2 / 256
    # +1 order (fx > 0) over the background's +1 order: the true phase, cells positive
    window = np.hypot(fy - f.carrier[0], fx - f.carrier[1]) < 0.14

    def order(img):
        return np.fft.ifft2(np.fft.fft2(img - img.mean()) * window)

    phase = np.angle(order(holo) / order(bg))
    cells = ndi.binary_erosion(f.instances > 0, iterations=3)
    assert np.median(phase[cells]) > 0.5 and abs(np.median(phase[f.instances == 0])) < 0.1
    assert np.corrcoef(phase[5:-5, 5:-5].ravel(), f.phase[5:-5, 5:-5].ravel())[0, 1] > 0.9
    ratio = np.ptp(np.where(f.instances > 0, phase, 0)) / np.ptp(f.phase)
    assert 0.7 < ratio < 1.3
    assert simulate_field(2, field_px=256, n_cells=6).hologram.dtype == np.uint8


def test_noise_and_defocus_follow_their_settings():
    """Coherent noise raises the medium's phase scatter in proportion; defocus blurs edges."""
    from rbclib.physics.holography import reconstruct

    def scatter(noise_nm: float, defocus: float = 0.0) -> tuple[float, float]:
        f = simulate_field(9, field_px=256, n_cells=4, defocus_um=defocus, mixture={"spherocyte": 1.0},
                           settings=HologramSettings(noise_nm=noise_nm, noise_corr_um=0.8, dust=(0, 0)), **CLEAN)
        rec = reconstruct(f.hologram, background=f.background, optics=f.optics)
        medium = ~ndi.binary_dilation(f.instances > 0, iterations=15)
        err = rec.phase - f.phase
        return float(np.std(err[medium])), float(np.abs(err[f.instances > 0]).mean())

    quiet, loud = scatter(2.0), scatter(20.0)
    opd_nm = loud[0] * Optics().wavelength_m / (2 * np.pi) * 1e9
    assert loud[0] > 4 * quiet[0] and 8 < opd_nm < 25, (quiet, loud, opd_nm)
    assert scatter(2.0, defocus=3.0)[1] > 1.5 * quiet[1]                   # out of focus: a worse phase


def test_realism_settings_refused_out_of_range():
    for kwargs, msg in [({"noise_nm": -1.0}, "noise_nm"), ({"noise_corr_um": (2.0, 1.0)}, "noise_corr_um"),
                        ({"dust": (0, 1000)}, "dust")]:
        with pytest.raises(ValueError, match=msg):
            HologramSettings(**kwargs)


def test_bad_arguments():
    for kwargs, msg in [({"field_px": 8}, "field_px"), ({"touching_fraction": 1.5}, "touching_fraction"),
                        ({"density_per_1000um2": (5, 40)}, "density_per_1000um2"), ({"defocus_um": math.inf}, "defocus_um"),
                        ({"overlap_fraction": -0.1}, "overlap_fraction"), ({"debris_per_1000um2": 99}, "debris"),
                        ({"bit_depth": 10}, "bit_depth"), ({"mixture": EQUAL, "day": 8}, "not both"),
                        ({"cells_per_field": (5, 2)}, "cells_per_field"), ({"day": 3}, "outside")]:
        with pytest.raises(ValueError, match=msg):
            simulate_field(0, field_px=kwargs.pop("field_px", 64), **kwargs)
    with pytest.raises(ValueError, match="n_fields"):
        simulate_dataset("/nonexistent/never", n_fields=0, seed=0)
    with pytest.raises(ValueError, match=r"field_px=100000 is outside the allowed range 32\.\.8192"):
        simulate_dataset("/nonexistent/never", n_fields=1, seed=0, field_px=100_000)       # ~37 GiB otherwise
    with pytest.raises(ValueError, match="images_per_day=0 must be a positive integer"):
        simulate_storage_series("/nonexistent/never", seed=0, images_per_day=0)          # 11 empty days otherwise
    assert not Path("/nonexistent/never").exists()


def test_dataset_files(tmp_path):
    out = simulate_dataset(tmp_path / "ds", n_fields=3, seed=4, field_px=128, cells_per_field=(2, 4), progress=False)
    stems = {k: sorted(p.stem for p in io.list_images(out / k)) for k in ("holograms", "backgrounds", "phase", "labels", "instances")}
    assert all(v == ["field_0000", "field_0001", "field_0002"] for v in stems.values()), stems
    holo = io.read_image(out / "holograms" / "field_0001.png").data
    phase = io.read_phase(out / "phase" / "field_0001.tif")
    labels = io.read_labels(out / "labels" / "field_0001.png")
    inst = io.read_instances(out / "instances" / "field_0001.png")
    assert holo.dtype == np.uint8 and phase.data.dtype == np.float32 and labels.dtype == np.uint8
    def values(o):
        return {k: v for k, v in o.to_dict().items() if k != "provenance"}

    assert values(phase.optics()) == values(Optics())          # optics travel in the TIFF
    again = simulate_field(np.random.default_rng(np.random.SeedSequence(4).spawn(3)[1]), field_px=128, cells_per_field=(2, 4))
    np.testing.assert_array_equal(phase.data, again.phase)
    np.testing.assert_array_equal(inst, again.instances)
    cells = pd.read_csv(out / "cells.csv")
    assert set(cells.image) <= set(stems["phase"]) and cells.columns[0] == "image"
    assert len(cells[cells.image == "field_0001"]) == inst.max()
    splits = files.read_json(out / "splits.json")
    assert sorted(splits["train"] + splits["test"]) == stems["phase"] and len(splits["test"]) == 1
    assert Optics.from_json(out / "optics.json") == Optics()
    fields = pd.read_csv(out / "fields.csv")
    assert fields.image.tolist() == stems["phase"] and fields.defocus_um.between(-6, 6).all()
    assert fields.noise_nm.between(3, 25).all() and (np.hypot(fields.carrier_fy, fields.carrier_fx) > 0.27).all()


def test_storage_series(tmp_path):
    out = simulate_storage_series(tmp_path / "st", seed=1, images_per_day=1, days=(8, 57), field_px=128,
                                  cells_per_field=(3, 5), progress=False)
    assert (out / "day_08" / "phase" / "field_0000.tif").exists() and (out / "day_57" / "labels" / "field_0000.png").exists()
    cells = pd.read_csv(out / "cells.csv")
    assert set(cells.storage_day) == {8, 57} and set(cells.dataset) == {"day_08", "day_57"}


def test_cli(tmp_path, capsys):
    assert main(["simulate", "--n-fields", "2", "--seed", "3", "-o", str(tmp_path / "c"), "--field-px", "128",
                 "--mixture", "discocyte=0.5,spherocyte=0.5", "--quiet"]) == 0
    assert len(io.list_images(tmp_path / "c" / "holograms")) == 2
    assert set(pd.read_csv(tmp_path / "c" / "cells.csv").class_name) <= {"discocyte", "spherocyte"}
    with pytest.raises(SystemExit) as usage:             # a bad mixture is a usage error, found while parsing
        main(["simulate", "--n-fields", "1", "--seed", "3", "-o", str(tmp_path / "d"), "--mixture", "blob=1"])
    assert usage.value.code == 2 and "--mixture blob=1: unknown cell class" in capsys.readouterr().err
    assert main(["simulate", "--n-fields", "1", "--seed", "3", "-o", str(tmp_path / "d"), "--day", "8",
                 "--mixture", "discocyte=1"]) == 1
    assert "not both" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()
    with pytest.raises(SystemExit):
        main(["simulate", "--n-fields", "1", "--seed", "3", "-o", str(tmp_path / "e"), "--cells-per-field", "9"])
    assert "MIN,MAX" in capsys.readouterr().err
    assert main(["simulate", "--n-fields", "1", "--seed", "3", "-o", str(tmp_path / "f"), "--field-px", "128",
                 "--noise-nm", "7", "--defocus-um", "1,2", "--density-per-1000um2", "4", "--quiet"]) == 0
    fields = pd.read_csv(tmp_path / "f" / "fields.csv")
    assert fields.noise_nm.tolist() == [7.0] and fields.defocus_um.between(1, 2).all()
    for bad in (["--noise-nm", "-3"], ["--defocus-um", "inf"], ["--density-per-1000um2", "50"]):
        with pytest.raises(SystemExit):
            main(["simulate", "--n-fields", "1", "--seed", "3", "-o", str(tmp_path / "g"), *bad])
        err = capsys.readouterr().err
        assert bad[0] in err and "allowed range" in err, err
    assert not (tmp_path / "g").exists()


def test_simulating_into_an_earlier_simulation_is_refused_or_replaced(tmp_path, capsys):
    from rbclib.cli import main

    out = tmp_path / "sim"
    simulate_dataset(out, n_fields=3, seed=0, field_px=64, cells_per_field=(1, 2), progress=False)
    (out / "notes.txt").write_text("mine")
    before = sorted(p.name for p in (out / "holograms").iterdir())
    with pytest.raises(ValueError, match="already holds a simulation"):
        simulate_dataset(out, n_fields=1, seed=1, field_px=64, cells_per_field=(1, 2), progress=False)
    assert sorted(p.name for p in (out / "holograms").iterdir()) == before            # nothing touched
    assert main(["simulate", "-o", str(out), "--n-fields", "1", "--seed", "1", "--field-px", "64", "--quiet"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["simulate", "-o", str(out), "--n-fields", "1", "--seed", "1", "--field-px", "64", "--quiet",
                 "--overwrite"]) == 0
    assert [p.name for p in (out / "holograms").iterdir()] == ["field_0000.png"]      # no stale fields left
    assert set(pd.read_csv(out / "cells.csv")["image"]) <= {"field_0000"} and (out / "notes.txt").read_text() == "mine"
    series = tmp_path / "series"
    simulate_storage_series(series, seed=0, images_per_day=1, days=(8, 57), field_px=64, cells_per_field=(1, 2),
                            progress=False)
    with pytest.raises(ValueError, match="already holds a simulation"):
        simulate_storage_series(series, seed=0, images_per_day=1, days=(8,), field_px=64, progress=False)
    simulate_storage_series(series, seed=0, images_per_day=1, days=(8,), field_px=64, cells_per_field=(1, 2),
                            progress=False, overwrite=True)
    assert sorted(p.name for p in series.iterdir()) == ["cells.csv", "day_08"]

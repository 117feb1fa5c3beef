import importlib.util
import math

import numpy as np
import pytest

from rbclib.core.config import Optics
from rbclib.physics.measure import MEASUREMENT_COLUMNS, measure_cells

OPT = Optics()
PX = OPT.pixel_size_m * 1e6


def _sphere_phase(shape, centres_um, radius_um, optics=OPT):
    yy, xx = np.mgrid[: shape[0], : shape[1]] * PX
    phase = np.zeros(shape)
    inst = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres_um, start=1):
        h = 2 * np.sqrt(np.clip(radius_um ** 2 - (yy - cy) ** 2 - (xx - cx) ** 2, 0, None))
        phase += 2 * math.pi / optics.wavelength_m * optics.delta_n * h * 1e-6
        inst[h > 0] = k
    return phase.astype(np.float32), inst


@pytest.mark.parametrize("radius_um", [2.0, 3.5])
def test_sphere_volume_dry_mass_sphericity(radius_um):
    phase, inst = _sphere_phase((160, 160), [(11.5, 11.5)], radius_um)
    df = measure_cells(phase, inst, optics=OPT)
    assert list(df.columns) == list(MEASUREMENT_COLUMNS)
    row = df.iloc[0]
    v_true = 4 / 3 * math.pi * radius_um ** 3
    assert row.volume_um3 == pytest.approx(v_true, rel=0.01)
    # dry mass = OV / alpha; OV = V * dn (um^3 -> m^3 -> kg -> pg)
    assert row.dry_mass_pg == pytest.approx(v_true * OPT.delta_n * 1e-18 / OPT.alpha_m3_per_kg * 1e15, rel=0.01)
    assert row.thickness_max_um == pytest.approx(2 * radius_um, rel=0.01)
    assert row.sphericity == pytest.approx(1.0, abs=0.02)
    assert row.equivalent_diameter_um == pytest.approx(2 * radius_um, rel=0.03)
    assert row.central_dip_ratio > 0.95 and not row.touches_edge
    assert df.attrs["delta_n_assumed"] == pytest.approx(OPT.delta_n)


def test_flat_disc_exact_volume_and_low_sphericity_and_dip():
    yy, xx = np.mgrid[:120, :120]
    r2 = (yy - 60) ** 2 + (xx - 60) ** 2
    inst = (r2 <= 30 ** 2).astype(np.int32)
    h_um = np.where(r2 <= 12 ** 2, 1.0, 2.0) * inst  # biconcave-like: thin centre
    phase = 2 * math.pi / OPT.wavelength_m * OPT.delta_n * h_um * 1e-6
    row = measure_cells(phase, inst, optics=OPT).iloc[0]
    assert row.volume_um3 == pytest.approx(h_um.sum() * PX ** 2, rel=1e-9)
    assert row.area_px == inst.sum()
    assert row.central_dip_ratio == pytest.approx(0.5)
    assert row.sphericity < 0.9
    assert row.circularity == pytest.approx(1.0, abs=0.04)


def test_dn_changes_volume_not_dry_mass():
    phase, inst = _sphere_phase((100, 100), [(7.0, 7.0)], 2.5)
    a = measure_cells(phase, inst, optics=OPT).iloc[0]
    other = OPT.replace(n_cell=1.42)
    b = measure_cells(phase, inst, optics=other).iloc[0]
    assert a.dry_mass_pg == pytest.approx(b.dry_mass_pg)
    assert a.volume_um3 / b.volume_um3 == pytest.approx(other.delta_n / OPT.delta_n)


def test_edge_flag_labels_and_bad_input():
    phase, inst = _sphere_phase((100, 100), [(7.0, 7.0), (0.5, 7.0)], 2.0)
    labels = np.where(inst == 1, 2, np.where(inst == 2, 1, 0)).astype(np.uint8)
    df = measure_cells(phase, inst, optics=OPT, labels=labels)
    assert df.set_index("cell_id").loc[2, "touches_edge"] and not df.set_index("cell_id").loc[1, "touches_edge"]
    assert df.set_index("cell_id").loc[1, "class_name"] == "spherocyte"
    with pytest.raises(ValueError, match="differ in shape"):
        measure_cells(phase, inst[:-1], optics=OPT)
    with pytest.raises(ValueError, match="outside"):
        measure_cells(phase, inst, optics=OPT, labels=labels + 5)
    empty = measure_cells(phase, np.zeros_like(inst), optics=OPT)
    assert len(empty) == 0 and "dry_mass_pg" in empty.columns


@pytest.mark.skipif(importlib.util.find_spec("rbclib.physics.simulate") is None, reason="rbclib.physics.simulate not available")
def test_against_simulator_isolated_cells():
    """Dry mass needs no assumption; volume is exact when dn is the cell's true one."""
    from rbclib.physics.simulate import simulate_field

    field = simulate_field(3, field_px=384, n_cells=12, touching_fraction=0.0, holograms=False)
    truth = field.cells.set_index("cell_id")
    df = measure_cells(field.phase, field.instances, optics=field.optics, labels=field.labels).set_index("cell_id")
    isolated = [i for i in df.index if not truth.loc[i, "touching"] and not df.loc[i, "touches_edge"]]
    assert len(isolated) >= 5
    rel_m = (df.loc[isolated, "dry_mass_pg"] / truth.loc[isolated, "dry_mass_pg"] - 1).abs()
    assert rel_m.max() <= 0.05
    assert (df.loc[isolated, "class_id"] == truth.loc[isolated, "class_id"]).all()
    for i in isolated:
        own = measure_cells(field.phase, np.where(field.instances == i, i, 0),
                            optics=field.optics.replace(n_cell=float(truth.loc[i, "n_cell"]))).iloc[0]
        assert own.volume_um3 == pytest.approx(truth.loc[i, "volume_um3"], rel=0.05)

"""Optics dataclass and profiles."""
from __future__ import annotations

import json

import pytest

from rbclib.core.config import Optics
from rbclib.profile import PROFILE_NAMES, get_profile, load_profiles


def test_paper_defaults_and_units():
    o = Optics()
    assert o.pixel_size_m == pytest.approx(129.68e-6 / 900, rel=1e-3)  # paper: 900 px over 129.68 um
    assert o.alpha_m3_per_kg == pytest.approx(0.19e-6 / 1e-3)  # 0.19 mL/g in m^3/kg
    assert o.delta_n == pytest.approx(o.n_cell - o.n_medium)
    assert set(o.provenance) == {"wavelength_m", "pixel_size_m", "n_medium", "n_cell", "alpha_m3_per_kg",
                                 "numerical_aperture"}
    assert o.cutoff_cycles_per_px == pytest.approx(0.7 * 0.1441 / 0.6825, rel=1e-3)   # 0.148 cycles/px


def test_json_round_trip(tmp_path):
    o = Optics().replace(wavelength_m=633e-9)
    path = tmp_path / "optics.json"
    o.to_json(path)
    back = Optics.from_json(path)
    assert back == o
    assert back.provenance["wavelength_m"] == "given by the user"
    assert json.loads(path.read_text())["wavelength_m"] == 633e-9


@pytest.mark.parametrize("field,value", [("wavelength_m", 633.0), ("pixel_size_m", -1.0), ("n_medium", float("nan"))])
def test_rejects_unphysical_values(field, value):
    with pytest.raises(ValueError, match=field):
        Optics(**{field: value})


def test_from_json_names_file_on_bad_content(tmp_path):
    bad = tmp_path / "optics.json"
    bad.write_text('{"wavelength": 5e-7}')
    with pytest.raises(ValueError, match="optics.json.*unknown optics fields"):
        Optics.from_json(bad)


def test_profiles_have_every_stage_for_every_profile():
    profiles = load_profiles()
    assert set(profiles) == set(PROFILE_NAMES)
    stages = {name: set(p) for name, p in profiles.items()}
    assert stages["smoke"] == stages["quick"] == stages["paper"]
    assert get_profile("paper")["simulate"]["field_px"] == 900
    with pytest.raises(ValueError, match="unknown profile"):
        get_profile("huge")

"""Typed profiles: every key of rbclib/profiles/*.toml is known, typed and used."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pytest

from rbclib import profile
from rbclib.profile import STAGE_SCHEMAS, ProfileError, check_table

ROOT = Path(__file__).resolve().parents[1]


def _profile_copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "rbclib" / "profiles", tmp_path / "profiles")
    return tmp_path / "profiles"


@pytest.fixture
def profiles_in(tmp_path, monkeypatch):
    """Load profiles from a copy in tmp_path, so a test can break one file."""
    folder = _profile_copy(tmp_path)

    class _Files:
        @staticmethod
        def files(_package):
            return tmp_path

    monkeypatch.setattr(profile, "resources", _Files)
    return folder


def test_shipped_profiles_match_their_schemas():
    profiles = profile.load_profiles()
    for name, stages in profiles.items():
        assert set(stages) == set(STAGE_SCHEMAS), name


@pytest.mark.parametrize("edit,message", [
    (("segment.toml", "lr = 1e-3", "lrr = 1e-3"), r"segment\.toml \[smoke\]: unknown key 'lrr'"),
    (("segment.toml", "epochs = 1\n", "epochs = \"one\"\n"), r"segment\.toml \[smoke\]: key 'epochs' = 'one' should be int"),
    (("storage.toml", "target_pp = 3.0\n", "\n"), r"storage\.toml \[smoke\]: missing key 'target_pp'"),
    (("diffusion.toml", "[smoke.common]\n", "[smoke.common]\nbeta_mni = 0.1\n"), r"diffusion\.toml \[smoke\]\.common: unknown key 'beta_mni'"),
    (("ssl.toml", "steps = 3\n", "steps = 2.5\n"), r"ssl\.toml \[smoke\]\.ssl: key 'steps' = 2.5 should be int"),
    (("simulate.toml", "[paper]", "[papr]"), r"simulate\.toml: no table for profile\(s\) \['paper'\]"),
    (("simulate.toml", "[smoke]", "[quik]\nn_fields = 1\n[smoke]"), r"simulate\.toml: unknown table\(s\) \['quik'\]"),
    (("annotate.toml", "[smoke]", "[smoke"), r"annotate\.toml: not valid TOML"),
])
def test_a_broken_profile_is_an_error_naming_file_table_and_key(profiles_in, edit, message):
    name, old, new = edit
    path = profiles_in / name
    text = path.read_text()
    assert old in text, (name, old)
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(ProfileError, match=message):
        profile.load_profiles()
    with pytest.raises(ProfileError, match=message):   # what a notebook (and rbc run, first) calls
        profile.get_profile("quick")


def test_check_table_accepts_ints_for_floats_and_optional_keys():
    table = {"n_fields": 2, "field_px": 64, "mixture": "discocyte=1"}
    check_table("simulate", table, where="x")
    check_table("simulate", {**table, "density_per_1000um2": [2, 10.5]}, where="x")
    check_table("simulate", {**table, "flat_discocyte_fraction": 0.4}, where="x")
    with pytest.raises(ProfileError, match="'flat_discocyte_fraction' = 'many' should be"):
        check_table("simulate", {**table, "flat_discocyte_fraction": "many"}, where="x")
    with pytest.raises(ProfileError, match="'field_px' = 64.5 should be int"):
        check_table("simulate", {**table, "field_px": 64.5}, where="x")
    with pytest.raises(ProfileError, match="'n_fields' = True should be int"):
        check_table("simulate", {**table, "n_fields": True}, where="x")


def _notebook_sources() -> str:
    out = []
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        out += ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    return "\n".join(out)


def test_every_profile_key_is_read_somewhere():
    """A key nobody reads would be silently without effect: each one must be read by a
    notebook (P["key"]) or by the library (a keyword or a quoted key of that name)."""
    from rbclib.seg.config import DEFAULT_CONFIG

    notebooks = _notebook_sources()
    library = "\n".join(p.read_text() for p in (ROOT / "rbclib").rglob("*.py") if p.name != "profile.py")
    for stage, schema in STAGE_SCHEMAS.items():
        for f in dataclasses.fields(schema):
            if stage == "segment" and f.name in DEFAULT_CONFIG:
                continue                                  # rbclib.seg.train.config_from_profile passes these on
            read = (f'P["{f.name}"]' in notebooks
                    or re.search(rf"\b{f.name}\s*[:=]|[\"']{f.name}[\"']", library))
            assert read, f"profiles/{stage}.toml key {f.name!r} is read nowhere"

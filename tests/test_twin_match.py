"""rbclib.study.twin_match: the rehearsal twin matched to a microscope's annotated fields."""
from __future__ import annotations

import numpy as np
import pytest

from rbclib.core.config import Optics
from rbclib.physics.recording import HologramSettings
from rbclib.physics.simulate import simulate_field
from rbclib.study.default_model import reconstructed_pair
from rbclib.study.finetune import twin_rehearsal_fields
from rbclib.study.twin_match import FieldTraits, TwinMatch, field_traits, match_twin

GREEN = Optics().replace(wavelength_m=532e-9, pixel_size_m=0.2e-6)


def _microscope(seed, n, *, noise_nm, defocus_um, flat, field_px=369):
    """Reconstructed fields (phase, class map) of a twin microscope with pinned settings."""
    rngs = np.random.SeedSequence(seed).spawn(n)
    fields = [simulate_field(np.random.default_rng(ss), field_px=field_px, optics=GREEN,
                             settings=HologramSettings(noise_nm=noise_nm), defocus_um=defocus_um,
                             flat_discocyte_fraction=flat, density_per_1000um2=(4.0, 8.0)) for ss in rngs]
    return [reconstructed_pair(f, f"field_{i}", source=f"field {i}")[0] for i, f in enumerate(fields)]


def _traits(pairs):
    return field_traits([p.phase for p in pairs], [p.labels for p in pairs], GREEN)


def test_field_traits_read_the_noise_and_tell_flat_topped_from_biconcave_discocytes():
    flat = _traits(_microscope(1, 2, noise_nm=30.0, defocus_um=0.0, flat=1.0, field_px=256))
    biconcave = _traits(_microscope(1, 2, noise_nm=8.0, defocus_um=0.0, flat=0.0, field_px=256))
    assert flat.discocytes >= 5 and biconcave.discocytes >= 5
    # the medium's noise follows the recording's (within the reconstruction's losses)
    assert 0.7 * 30 < np.median(flat.noise_nm) < 1.1 * 30 and 0.7 * 8 < np.median(biconcave.noise_nm) < 1.1 * 8
    # flat-topped discocytes have no central dip: dip ratio near 0.8 against about 0.4
    assert flat.dip_ratio > biconcave.dip_ratio + 0.25, (flat.dip_ratio, biconcave.dip_ratio)


def test_match_twin_recovers_a_microscopes_noise_defocus_and_flat_topped_cells():
    fields = _microscope(2, 2, noise_nm=36.0, defocus_um=-7.0, flat=1.0)
    match = match_twin([p.phase for p in fields], [p.labels for p in fields], GREEN, seed=0)
    low, high = match.noise_nm
    assert low < 36.0 < high and high - low < 20, match.noise_nm
    assert match.flat_discocyte_fraction > 0.7, match
    # 7 um from focus, either sign; the edge width of 2 fields' discocytes pins it to about +-2 um
    assert abs(np.mean(match.defocus_um) - 7.0) < 2.5, match.defocus_um
    # the matched rehearsal twin now looks like the microscope by these statistics
    own = _traits(fields)
    twin = _traits(twin_rehearsal_fields(GREEN, 2, seed=0, match=match))
    plain = _traits(twin_rehearsal_fields(GREEN, 2, seed=0))
    assert abs(np.median(twin.noise_nm) / np.median(own.noise_nm) - 1) < 0.25, (twin, own)
    assert abs(twin.dip_ratio - own.dip_ratio) < abs(plain.dip_ratio - own.dip_ratio), (twin, plain, own)


def test_twin_tables_draw_the_matched_defocus_at_both_signs():
    traits = FieldTraits((30.0,), 1.8, 0.8, 40)
    twin = {"noise_nm": [4.0, 32.0], "flat_discocyte_fraction": 0.5, "field_px": 512}
    below, above = TwinMatch((27.0, 33.0), (6.0, 8.0), 1.0, traits).twin_tables(twin)
    assert below == {**twin, "noise_nm": [27.0, 33.0], "flat_discocyte_fraction": 1.0, "defocus_um": [-8.0, -6.0]}
    assert above["defocus_um"] == [6.0, 8.0]
    (only,) = TwinMatch((27.0, 33.0), None, None, traits).twin_tables(twin)
    assert only == {**twin, "noise_nm": [27.0, 33.0]} and "defocus_um" not in only


def test_fields_without_enough_discocytes_match_only_the_noise():
    fields = _microscope(3, 1, noise_nm=20.0, defocus_um=0.0, flat=1.0, field_px=256)
    labels = np.where(fields[0].labels == 1, 2, fields[0].labels)       # every cell a spherocyte
    match = match_twin([fields[0].phase], [labels], GREEN, seed=0)
    assert match.defocus_um is None and match.flat_discocyte_fraction is None and match.traits.discocytes == 0
    assert 0.75 * 20 < np.mean(match.noise_nm) < 1.25 * 20, match.noise_nm
    with pytest.raises(ValueError, match="no medium"):
        match_twin([fields[0].phase], [np.ones_like(labels)], GREEN)

"""The morphology score of generated pairs (rbclib.synth.morphology): real-looking cells pass,
blobs with mixed-class masks fail, and each per-cell number means what it says."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from rbclib.synth.morphology import TARGETS, _mask_agreement, cell_table, morphology_score

PX_M = 0.1441e-6
PX_UM = PX_M * 1e6


def _cells(n: int, seed: int, *, blob: bool = False, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """n patches of one centred cell: a biconcave disc (radius 3.6-4.2 um, peak 1.6-2.0 rad,
    class 1), or with ``blob`` an elongated dip-free blob a third the area whose mask mixes
    classes 1 and 3."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[:size, :size] - size / 2) * PX_UM
    phases, labels = [], []
    for _ in range(n):
        r, peak = rng.uniform(3.6, 4.2), rng.uniform(1.6, 2.0)
        if blob:
            rho = np.hypot(yy / (0.45 * r), xx / (1.3 * r / 1.8))
            profile = np.clip(1 - rho ** 2, 0, None) ** 0.5
        else:
            rho = np.hypot(yy, xx) / r
            profile = np.clip(1 - rho ** 2, 0, None) ** 0.5 * (1 - 0.7 * np.exp(-(rho / 0.45) ** 2))
            profile /= profile.max()
        phase = ndi.gaussian_filter(peak * profile, 1.5) + rng.normal(0, 0.02, yy.shape)
        mask = (rho < 1.05).astype(np.uint8)
        if blob:
            mask[(rho < 1.05) & (xx > 0)] = 3
        phases.append(phase.astype(np.float32))
        labels.append(mask)
    return np.stack(phases), np.stack(labels)


def test_mask_agreement_tells_touching_cells_apart():
    inst = np.zeros((20, 40), np.int32)
    inst[5:15, 5:19], inst[5:15, 21:35] = 1, 2
    labels = np.zeros_like(inst, np.uint8)
    labels[5:15, 5:20] = 1                  # one connected mask over both cells,
    labels[5:15, 20:35] = 4                 # the second cell in another class
    labels[5:15, 30:35] = 2                 # ... partly painted in a third one
    table = _mask_agreement(inst, labels, region_px=2).set_index("cell_id")
    assert table.loc[1, "class_name"] == "discocyte" and table.loc[1, "purity"] == 1.0
    assert table.loc[1, "iou"] == pytest.approx(140 / 150)      # its own mask pixels only, not the neighbour's
    assert table.loc[2, "class_name"] == "stomatocyte"
    assert table.loc[2, "purity"] == pytest.approx(90 / 140)
    empty = _mask_agreement(inst, np.zeros_like(labels), region_px=2)
    assert (empty["iou"] == 0).all() and (empty["class_name"] == "background").all()


def test_real_looking_cells_meet_the_targets_and_blobs_do_not():
    real = cell_table(*_cells(30, 0), pixel_size_m=PX_M)
    good = cell_table(*_cells(30, 1), pixel_size_m=PX_M)
    bad = cell_table(*_cells(30, 2, blob=True), pixel_size_m=PX_M)
    assert len(real) == len(good) == 30 and len(bad) == 30          # one whole cell per patch
    assert real["dip_ratio"].median() < 0.7 and bad["dip_ratio"].median() > 0.9
    assert real["eccentricity"].median() < 0.3 < bad["eccentricity"].median()
    ok = morphology_score(real, good).loc["overall"]
    assert ok["meets_targets"] and all(ok[k] >= v for k, v in TARGETS.items())
    score = morphology_score(real, bad)
    assert not score.loc["overall", "meets_targets"]
    assert score.loc["overall", "area_in_real_range"] < 0.2 and score.loc["overall", "pure_cells"] < 0.2
    assert score.loc["overall", "n_generated"] == 30 and score.loc["overall", "n_real"] == 30


def test_spread_ratio_sees_one_cell_drawn_again_and_again():
    real = cell_table(*_cells(30, 0), pixel_size_m=PX_M)
    varied = morphology_score(real, cell_table(*_cells(30, 1), pixel_size_m=PX_M)).loc["overall"]
    phase, labels = _cells(1, 1)
    same = morphology_score(real, cell_table(np.repeat(phase, 30, axis=0), np.repeat(labels, 30, axis=0),
                                             pixel_size_m=PX_M)).loc["overall"]
    assert 0.5 < varied["area_spread_ratio"] < 2 and 0.5 < varied["peak_spread_ratio"] < 2
    assert same["area_spread_ratio"] == 0 and same["peak_spread_ratio"] == 0
    assert same["meets_targets"]                     # the targets alone cannot tell: one good cell passes them


def test_cells_cut_by_the_border_and_specks_are_left_out():
    phase, labels = _cells(1, 0)
    shifted = np.roll(phase, 45, axis=1)                                    # the cell now straddles the border
    assert len(cell_table(shifted, np.roll(labels, 45, axis=1), pixel_size_m=PX_M)) == 0
    speck = np.zeros((1, 96, 96), np.float32)
    speck[0, 40:46, 40:46] = 1.0                                            # 0.75 um^2: a speck, not a cell
    assert len(cell_table(speck, (speck > 0).astype(np.uint8), pixel_size_m=PX_M)) == 0


def test_cell_quality_is_the_share_of_cells_that_look_real():
    from rbclib.synth.morphology import cell_passes, cell_quality, real_ranges

    ranges = real_ranges(cell_table(*_cells(30, 0), pixel_size_m=PX_M))
    assert set(ranges) == {"discocyte", "spherocyte", "echinocyte", "stomatocyte", "overall"}
    lo, hi = ranges["discocyte"]["area_um2"]
    assert 35 < lo < hi < 60                                            # discs of radius 3.6-4.2 um
    good = cell_table(*_cells(10, 1), pixel_size_m=PX_M)
    bad = cell_table(*_cells(10, 2, blob=True), pixel_size_m=PX_M)
    assert cell_quality(good, ranges) >= 0.8 and cell_quality(bad, ranges) == 0.0
    assert cell_quality(good.iloc[:0], ranges) == 0.0
    worse = good.assign(iou=0.5)                                         # a mask that misses its cell
    assert not cell_passes(worse, ranges).any()

"""Tests of rbclib.study.transfer: the other-optics twin and the Dice-drop table."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from rbclib.core.config import Optics
from rbclib.study.transfer import OTHER_OPTICS, OTHER_SETTINGS, dice_drop_ok, transfer_table, twin_dice

DISCS = {"mixture": {"discocyte": 1.0}, "density_per_1000um2": 4.0, "overlap_fraction": 0.0,
         "platelets_per_cell": 0.0, "debris_per_1000um2": 0.0, "defocus_um": 0.0}


def threshold_segmenter(phase: np.ndarray, pixel_size_m: float) -> np.ndarray:
    """Every smoothed pixel above 0.6 rad is a discocyte (an oracle for discocyte-only fields)."""
    smooth = ndi.gaussian_filter(phase, 0.4e-6 / pixel_size_m)
    return ndi.binary_fill_holes(smooth > 0.6).astype(np.uint8)


def test_twin_dice_scores_fields_of_any_optics_on_their_own_grid():
    same = twin_dice(threshold_segmenter, optics=Optics(), n_fields=2, seed=5, field_um=40.0, **DISCS)
    other = twin_dice(threshold_segmenter, optics=OTHER_OPTICS, settings=OTHER_SETTINGS, n_fields=2, seed=5,
                      field_um=40.0, **DISCS)
    assert list(same.field) == [0, 1]
    for table in (same, other):
        assert (table.discocyte > 0.8).all(), table           # the truth is found on either grid
        assert table.spherocyte.isna().all() and np.allclose(table.overall, table.discocyte)
    # a segmenter that sees nothing scores 0
    blind = twin_dice(lambda p, s: np.zeros(p.shape, np.uint8), optics=OTHER_OPTICS, n_fields=1, seed=5,
                      field_um=40.0, **DISCS)
    assert blind.discocyte.tolist() == [0.0]


def test_transfer_table_rows_and_drop():
    table = transfer_table(threshold_segmenter, n_fields=2, seed=5, field_um=40.0, **DISCS)
    assert list(table.index) == ["in-domain", "other optics", "drop"]
    assert np.isclose(table.loc["drop", "overall"], table.loc["in-domain", "overall"] - table.loc["other optics", "overall"])
    assert dice_drop_ok(table, limit=1.0) and not dice_drop_ok(table, limit=-1.0)

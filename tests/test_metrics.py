import math
import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from rbclib.core.labels import CELL_CLASSES, CLASS_NAMES, instances_from_labels
from rbclib.seg.metrics import (aji, aji_per_class, cell_confusion, confusion_accuracy, dice_per_class,
                            match_instances, mean_scores)


def _brute_aji(p_inst, t_inst):
    """Kumar's algorithm written with per-instance boolean masks."""
    t_ids = [i for i in np.unique(t_inst) if i]
    p_ids = [i for i in np.unique(p_inst) if i]
    num = den = 0
    used = set()
    for g in t_ids:
        gm = t_inst == g
        best, best_iou = None, 0.0
        for s in p_ids:
            sm = p_inst == s
            inter = np.logical_and(gm, sm).sum()
            iou = inter / np.logical_or(gm, sm).sum()
            if iou > best_iou:
                best, best_iou = s, iou
        if best is None:
            den += gm.sum()
        else:
            sm = p_inst == best
            num += np.logical_and(gm, sm).sum()
            den += np.logical_or(gm, sm).sum()
            used.add(best)
    den += sum((p_inst == s).sum() for s in p_ids if s not in used)
    return num / den if den else math.nan


def _blobs(rng, shape=(64, 64), n=12):
    lab = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(n):
        cy, cx, r = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(3, 9)
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(1, 5)
    return lab


@pytest.mark.parametrize("seed", range(6))
def test_aji_matches_brute_force_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    true, pred = _blobs(rng), _blobs(rng)
    pred[: 20] = true[: 20]  # some real overlap
    got = aji_per_class(pred, true)
    ti, pi = instances_from_labels(true), instances_from_labels(pred)
    for cls in CELL_CLASSES:
        ref = _brute_aji(np.where(pred == cls, pi, 0), np.where(true == cls, ti, 0))
        assert (math.isnan(ref) and math.isnan(got[CLASS_NAMES[cls]])) or got[CLASS_NAMES[cls]] == pytest.approx(ref)
    assert aji(pi, ti) == pytest.approx(_brute_aji(pi, ti))


@pytest.mark.parametrize("seed", range(4))
def test_dice_matches_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    true, pred = _blobs(rng), _blobs(rng)
    got = dice_per_class(pred, true)
    vals = []
    for cls in CELL_CLASSES:
        g, s = true == cls, pred == cls
        ref = 2 * (g & s).sum() / (g.sum() + s.sum()) if g.sum() + s.sum() else math.nan
        if math.isnan(ref):
            assert math.isnan(got[CLASS_NAMES[cls]])
        else:
            assert got[CLASS_NAMES[cls]] == pytest.approx(ref)
            vals.append(ref)
    assert got["overall"] == pytest.approx(np.mean(vals))


def test_hand_made_cases():
    true = np.zeros((10, 10), np.uint8)
    true[1:5, 1:5] = 1            # 16 px discocyte
    true[6:9, 6:9] = 2            # 9 px spherocyte
    pred = true.copy()
    pred[1:5, 1:3] = 0            # half the discocyte missed
    pred[0, 9] = 3                # spurious echinocyte pixel
    d = dice_per_class(pred, true)
    assert d["discocyte"] == pytest.approx(2 * 8 / (16 + 8))
    assert d["spherocyte"] == 1.0
    assert d["echinocyte"] == 0.0
    assert math.isnan(d["stomatocyte"])
    assert d["overall"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    a = aji_per_class(pred, true)
    assert a["discocyte"] == pytest.approx(8 / 16)
    assert a["spherocyte"] == 1.0 and a["echinocyte"] == 0.0 and math.isnan(a["stomatocyte"])


def test_aji_over_segmentation_penalised_by_unmatched_prediction():
    true = np.zeros((4, 8), np.uint8)
    true[:, :] = 1
    inst_p = np.zeros((4, 8), int)
    inst_p[:, :6] = 1
    inst_p[:, 6:] = 2
    # G (32 px) pairs with S1 (24 px): 24 / 32, then S2 (8 px) is unmatched: + 8.
    assert aji_per_class(true, true, pred_instances=inst_p)["discocyte"] == pytest.approx(24 / 40)


def test_aji_given_instances_split_touching_cells():
    true = np.zeros((5, 10), np.uint8)
    true[:, :] = 3
    t_inst = np.zeros((5, 10), int)
    t_inst[:, :5], t_inst[:, 5:] = 1, 2
    # one merged predicted blob: both G pair with it; S counted once per pairing.
    a = aji_per_class(true, true, true_instances=t_inst)["echinocyte"]
    assert a == pytest.approx((25 + 25) / (50 + 50))
    assert aji_per_class(true, true, pred_instances=t_inst, true_instances=t_inst)["echinocyte"] == 1.0


def test_mean_scores_nan_aware_and_overall_mean_of_class_means():
    rows = [{"discocyte": 1.0, "spherocyte": 0.5, "echinocyte": math.nan, "stomatocyte": math.nan, "overall": 0.75},
            {"discocyte": 0.5, "spherocyte": math.nan, "echinocyte": 1.0, "stomatocyte": 0.0, "overall": 0.5}]
    m = mean_scores(rows)
    assert m["discocyte"] == 0.75 and m["spherocyte"] == 0.5 and m["echinocyte"] == 1.0 and m["stomatocyte"] == 0.0
    assert m["overall"] == pytest.approx((0.75 + 0.5 + 1.0 + 0.0) / 4)
    with pytest.raises(ValueError):
        mean_scores([])


def test_cell_confusion_counts_and_accuracy():
    true = np.zeros((20, 20), np.uint8)
    true[1:5, 1:5] = 1
    true[1:5, 10:14] = 1
    true[10:14, 1:5] = 2
    true[10:14, 10:14] = 4
    pred = true.copy()
    pred[1:5, 10:14] = 3          # discocyte called echinocyte
    pred[10:14, 10:14] = 0        # stomatocyte missed
    pred[10:12, 1:5] = 1          # half spherocyte wrong, tie -> lower id wins (discocyte)
    pred[10:13, 1:5] = 2          # 3/4 spherocyte right
    conf, acc = cell_confusion(pred, true)
    assert conf.loc["discocyte", "discocyte"] == 1 and conf.loc["discocyte", "echinocyte"] == 1
    assert conf.loc["spherocyte", "spherocyte"] == 1
    assert conf.loc["stomatocyte", "missed"] == 1
    assert conf.to_numpy().sum() == 4
    assert acc["discocyte"] == 0.5 and acc["spherocyte"] == 1.0 and acc["stomatocyte"] == 0.0
    assert math.isnan(acc["echinocyte"]) and acc["overall"] == 0.5
    assert confusion_accuracy(conf + conf) == acc


def test_match_instances_rows():
    t = np.zeros((6, 6), int)
    t[0:3, 0:3], t[4:6, 4:6] = 5, 7
    p = np.zeros((6, 6), int)
    p[0:3, 0:2] = 9
    m = match_instances(p, t)
    assert m["true_id"].tolist() == [5, 7] and m["pred_id"].tolist() == [9, 0]
    assert m["iou"].tolist() == pytest.approx([6 / 9, 0.0])


def test_bad_input():
    with pytest.raises(ValueError, match="shape"):
        dice_per_class(np.zeros((3, 3), np.uint8), np.zeros((3, 4), np.uint8))
    with pytest.raises(ValueError, match="outside"):
        aji_per_class(np.full((3, 3), 7), np.zeros((3, 3), np.uint8))


def test_aji_fast_on_900px_maps():
    rng = np.random.default_rng(0)
    true = np.zeros((900, 900), np.uint8)
    yy, xx = np.mgrid[:900, :900]
    for _ in range(85):
        cy, cx = rng.integers(0, 900, 2)
        true[(yy - cy) ** 2 + (xx - cx) ** 2 <= 26 ** 2] = rng.integers(1, 5)
    pred = ndi.shift(true, (2, 3), order=0)
    t0 = time.perf_counter()
    a = aji_per_class(pred, true)
    assert time.perf_counter() - t0 < 2.0
    assert 0.5 < a["overall"] < 1.0

"""Tests of rbclib.synth.curate: candidates, balanced auto-selection, decisions, widget clicks, rotations."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddgan_toy import toy_field  # noqa: E402

from rbclib.synth import curate as cu  # noqa: E402
from rbclib.synth import curation_decisions as cdec  # noqa: E402
from rbclib.synth.curate_widget import CurationWidget  # noqa: E402
from rbclib.core.files import write_csv  # noqa: E402
from rbclib.core.io import read_labels, read_phase  # noqa: E402
from rbclib.core.labels import IGNORE, border_cut_cells, overlay_rgb  # noqa: E402


@pytest.fixture()
def candidates(tmp_path):
    rng = np.random.default_rng(0)
    pairs = [toy_field(rng, 32, 2) for _ in range(14)]
    phase = np.stack([p for p, _ in pairs])
    labels = np.stack([lab for _, lab in pairs])
    labels[3] = 0  # a broken pair: the mask's only cell lies where the phase is flat
    labels[3][:3, :3] = 1
    phase[3][:3, :3] = 0.0
    folder = tmp_path / "candidates"
    cu.write_candidates(phase, labels, np.ones_like(phase), folder, progress=False)
    return folder


def _table(counts, fragments=None):
    """Candidates with these whole cells per class (+ ``fragments``: cells cut by the border)."""
    fragments = np.zeros_like(counts) if fragments is None else fragments
    rows = [{"id": f"c{i}", "consistency": 0.9, **{c: n for c, n in zip(cu.WHOLE_COLS, row)},
             **{c: n + f for c, n, f in zip(cu.COUNT_COLS, row, cut)}}
            for i, (row, cut) in enumerate(zip(counts, fragments))]
    return pd.DataFrame(rows).set_index("id", drop=False)


def test_write_and_read_candidates(candidates):
    table = cu.read_candidates(candidates)
    assert len(table) == 14 and table.index[0] == "cand_00000"
    assert table.loc["cand_00003", "consistency"] < table.drop("cand_00003")["consistency"].min()
    phase, labels = cu.load_candidate(candidates, "cand_00001")
    assert phase.shape == labels.shape == (32, 32)
    filt = cu.filter_candidates(table, min_consistency=0.5)
    assert "cand_00003" not in filt.index


def test_old_candidates_get_their_cell_quality_and_keep_their_decisions(tmp_path):
    from rbclib.core.config import Optics
    from rbclib.synth.morphology import cell_table, real_ranges

    rng = np.random.default_rng(1)
    phase, labels = map(np.stack, zip(*[toy_field(rng, 64, 2) for _ in range(12)]))
    optics = Optics().replace(pixel_size_m=0.5e-6)          # toy cells of radius 8-11 px: 16-30 um^2
    folder = tmp_path / "cand"
    cu.write_candidates(phase, labels, np.ones_like(phase), folder, optics=optics, progress=False)
    assert (cu.read_candidates(folder)["cell_quality"] == 0).all()      # no real reference: unrated
    store = cdec.CurationDecisions(tmp_path / "d.json")
    store.record("cand_00001", "accept")
    ranges = real_ranges(cell_table(phase, labels, pixel_size_m=0.5e-6))
    written = cu.read_candidates(folder)
    write_csv(folder / "candidates.csv", written.drop(columns=list(cu.WHOLE_COLS)))   # as an earlier version wrote it
    scored = cu.rescore_candidates(folder, ranges, optics=optics, progress=False)
    assert scored["whole_cells"].sum() > 0 and scored["cell_quality"].max() == 1.0
    assert scored[list(cu.WHOLE_COLS)].equals(written[list(cu.WHOLE_COLS)])
    assert cu.read_candidates(folder)["cell_quality"].equals(scored["cell_quality"])
    assert cdec.CurationDecisions(tmp_path / "d.json").ids("accept") == ["cand_00001"]
    broken = labels.copy()
    broken[:] = 0                                            # masks that miss every cell
    cu.write_candidates(phase, broken, np.ones_like(phase), tmp_path / "bad", optics=optics, ranges=ranges,
                        progress=False)
    assert (cu.read_candidates(tmp_path / "bad")["cell_quality"] == 0).all()


def test_auto_select_meets_the_requested_balance_best_cells_first():
    # columns: discocyte, spherocyte, echinocyte, stomatocyte
    table = _table([[5, 0, 0, 0], [4, 0, 0, 0], [1, 0, 0, 1], [0, 2, 0, 0], [0, 0, 1, 0], [3, 0, 0, 0], [0, 0, 0, 0]])
    picked = cu.auto_select_balanced(table, 4)                     # equal shares requested
    assert set(picked) == {"c2", "c3", "c4", "c5"}                 # 4 D, 2 S, 1 E, 1 S: the closest four pairs
    assert "c6" not in cu.auto_select_balanced(table, 7)           # cell-free pairs are never picked
    more = cu.auto_select_balanced(table, 4, already=["c4"], exclude=["c3"])
    assert len(more) == 3 and "c3" not in more and "c4" not in more
    low = table.assign(consistency=[0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9])
    assert "c2" not in cu.auto_select_balanced(low, 6, min_consistency=0.5)
    # only discocytes requested: discocyte pairs, the best cells first among equally good balances
    rated = table.assign(cell_quality=[0.2, 0.9, 0.0, 0.0, 0.0, 0.5, 0.0])
    assert cu.auto_select_balanced(rated, 2, request={"discocyte": 1.0}) == ["c1", "c5"]
    assert cu.auto_select_balanced(table, 2, request={"discocyte": 1.0}) == ["c0", "c1"]   # unrated: consistency, id
    with pytest.raises(ValueError, match="unknown cell class"):
        cu.auto_select_balanced(table, 2, request={"platelet": 1.0})


def test_auto_select_finds_the_balanced_set_a_greedy_pick_misses():
    # c0 alone is perfectly balanced, so a greedy pick takes it first and then cannot balance
    # a second pair (4 : 1 either way); the exact set is c1 + c2 (3 : 3)
    table = _table([[1, 1, 0, 0], [3, 0, 0, 0], [0, 3, 0, 0]]).assign(cell_quality=[1.0, 0.0, 0.0])
    request = {"discocyte": 0.5, "spherocyte": 0.5}
    picked = cu.auto_select_balanced(table, 2, request=request)
    assert sorted(picked) == ["c1", "c2"] and cu.balance_deviation_pp(table, picked, request) == 0.0
    assert cu.auto_select_balanced(table, 1, request=request) == ["c0"]


def test_the_balance_counts_whole_cells_only():
    # c0: one whole spherocyte among three discocyte fragments; c1: one whole discocyte
    table = _table([[0, 1, 0, 0], [1, 0, 0, 0], [2, 0, 0, 0]], fragments=[[3, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    request = {"discocyte": 0.5, "spherocyte": 0.5}
    assert cu.class_balance(table, ["c0"])["cells"].tolist() == [0, 1, 0, 0]
    assert sorted(cu.auto_select_balanced(table, 2, request=request)) == ["c0", "c1"]
    assert cu.balance_deviation_pp(table, ["c0", "c1"], request) == 0.0


def test_auto_selection_lands_within_five_points_of_the_request():
    rng = np.random.default_rng(0)
    counts = rng.poisson([2.0, 0.6, 0.6, 0.5], size=(600, 4))          # generated pairs: mostly discocytes
    table = _table(counts.tolist()).assign(consistency=rng.uniform(0.5, 1.0, 600))
    for request in (None, {"discocyte": 0.4, "spherocyte": 0.3, "echinocyte": 0.2, "stomatocyte": 0.1}):
        picked = cu.auto_select_balanced(table, 60, request=request)
        assert len(picked) == 60 and cu.balance_deviation_pp(table, picked, request) <= 5.0
    everything = table["id"].tolist()
    assert cu.balance_deviation_pp(table, everything) > 25                   # what no curation would give


def test_decision_store_persists_undo_resume(tmp_path):
    path = tmp_path / "decisions.json"
    s = cdec.CurationDecisions(path)
    s.record("a", "accept")
    s.record("b", "reject")
    s.record("a", "reject")
    assert json.loads(path.read_text())["decisions"]["a"]["decision"] == "reject"
    again = cdec.CurationDecisions(path)
    assert again.ids("reject") == ["b", "a"] and again.undo() == "a"
    assert cdec.CurationDecisions(path).ids("reject") == ["b"] and "a" not in cdec.CurationDecisions(path).decisions
    backups = sorted(tmp_path.glob("decisions.*.bak.json"))     # one per distinct content seen on open
    assert len(backups) == 2 and json.loads(backups[0].read_text())["history"] == ["b", "a"]
    with pytest.raises(ValueError):
        s.record("c", "maybe")


def test_widget_clicks_persist_and_resume(candidates, tmp_path):
    pytest.importorskip("ipywidgets")
    path = tmp_path / "decisions.json"
    w = CurationWidget(candidates, path, n_target=5, page_size=4)
    assert len(w.gallery.children) == 4 and "page 1 / 4" in w.page_label.value
    assert "rbc-curate-accept-cand_00000" in w.accept_buttons["cand_00000"]._dom_classes
    w.accept_buttons["cand_00000"].click()
    w.reject_buttons["cand_00001"].click()
    saved = json.loads(path.read_text())["decisions"]
    assert saved["cand_00000"]["decision"] == "accept" and saved["cand_00001"]["by"] == "user"
    w.btn_next.click()
    assert "page 2 / 4" in w.page_label.value and "cand_00004" in w.accept_buttons
    w.btn_undo.click()
    assert "cand_00001" not in json.loads(path.read_text())["decisions"]
    w2 = CurationWidget(candidates, path, n_target=5)  # resume
    assert w2.store.ids("accept") == ["cand_00000"] and "accepted 1 / target 5" in w2.summary.value
    w2.f_consistency.value = 0.5
    w2.btn_auto.click()
    acc = w2.store.ids("accept")
    assert len(acc) == 5 and "cand_00003" not in acc
    assert {w2.store.decisions[c]["by"] for c in acc[1:]} == {"auto"}
    w2.f_hide_decided.value = True
    assert not set(acc) & set(w2.visible()["id"])
    w2.f_classes.value = ("discocyte",)
    assert (w2.visible()["n_discocyte"] > 0).all()


def test_selection_and_rotated_train_pairs(candidates, tmp_path):
    store = cdec.CurationDecisions(tmp_path / "d.json")
    store.record_many(["cand_00002", "cand_00005"], "accept", by="auto")
    sel = cdec.write_selection(tmp_path / "selection.json", store, mode="automatic", seed=0)
    assert sel["accepted"] == ["cand_00002", "cand_00005"] and sel["selected_by"]["cand_00002"] == "auto"
    assert "requested class balance" in json.loads((tmp_path / "selection.json").read_text())["rule"]
    written = cu.write_synthetic_train(candidates, sel["accepted"], tmp_path / "train", progress=False)
    assert len(written) == 8
    p0, l0 = cu.load_candidate(candidates, "cand_00002")
    p1 = read_phase(tmp_path / "train" / "phase" / "cand_00002_r1.tif").data
    l3 = read_labels(tmp_path / "train" / "labels" / "cand_00002_r3.png", allow_ignore=True)
    marked = np.where(border_cut_cells(l0), IGNORE, l0)
    assert np.array_equal(p1, np.rot90(p0, 1)) and np.array_equal(l3, np.rot90(marked, 3))


def test_train_pairs_leave_the_cells_cut_by_the_border_out(tmp_path):
    from rbclib.seg.datasets import load_pairs_folder

    labels = np.zeros((1, 32, 32), np.uint8)
    labels[0, 10:20, 10:20] = 2                                  # a whole spherocyte
    labels[0, 0:6, 20:30] = 1                                    # a discocyte cut by the top edge
    phase = np.where(labels > 0, 1.5, 0.0).astype(np.float32)
    cu.write_candidates(phase, labels, np.ones_like(phase), tmp_path / "cand", progress=False)
    row = cu.read_candidates(tmp_path / "cand").iloc[0]
    assert row["n_discocyte"] == 1 and row["n_whole_discocyte"] == 0 and row["n_whole_spherocyte"] == 1
    cu.write_synthetic_train(tmp_path / "cand", ["cand_00000"], tmp_path / "train", progress=False)
    l0 = read_labels(tmp_path / "train" / "labels" / "cand_00000_r0.png", allow_ignore=True)
    assert (l0[0:6, 20:30] == IGNORE).all() and (l0[10:20, 10:20] == 2).all() and (l0 == IGNORE).sum() == 60
    with pytest.raises(ValueError, match="cand_00000_r0.png: labels outside 0..4"):
        load_pairs_folder(tmp_path / "train")                    # real pairs may not hold IGNORE
    assert len(load_pairs_folder(tmp_path / "train", allow_ignore=True)) == 4


def test_overlay_colours():
    labels = np.array([[0, 1], [2, 4]], np.uint8)
    rgb = overlay_rgb(np.zeros((2, 2)), labels, alpha=1.0, phase_range=(0.0, 1.0))
    assert rgb.dtype == np.uint8 and tuple(rgb[0, 1]) == (255, 0, 0) and tuple(rgb[1, 0]) == (0, 0, 255)
    assert tuple(rgb[1, 1]) == (255, 255, 0) and rgb[0, 0, 0] == rgb[0, 0, 1]


def test_auto_curate_rejects_broken_keeps_hand_decisions_and_fills_to_n_select(tmp_path):
    ids = [f"c{i}" for i in range(6)]
    table = pd.DataFrame({"id": ids, "consistency": [0.9, 0.2, 0.8, 0.7, 0.95, 0.1],
                          "n_whole_discocyte": [3, 1, 0, 2, 1, 1], "n_whole_spherocyte": [0, 0, 2, 0, 0, 0],
                          "n_whole_echinocyte": [0, 0, 0, 1, 0, 0], "n_whole_stomatocyte": [0, 0, 0, 0, 1, 0]}
                         ).set_index("id", drop=False)
    store = cdec.CurationDecisions(tmp_path / "d.json")
    store.record("c4", "reject", by="user")                      # a hand rejection is respected
    store.record("c0", "accept", by="user")                      # and so is a hand acceptance
    picked = cdec.auto_curate(store, table, 3, request={"spherocyte": 0.5, "echinocyte": 0.5}, min_consistency=0.5)
    assert set(store.ids("reject")) == {"c1", "c4", "c5"}       # below 0.5 rejected automatically, c4 by hand
    assert len(picked) == 2 and set(picked) <= {"c2", "c3"} and set(store.ids("accept")) == {"c0", *picked}
    assert all(store.decisions[c]["by"] == "auto: balanced" for c in picked)
    assert cdec.auto_curate(store, table, 3, min_consistency=0.5) == []          # already complete: nothing more


@pytest.mark.parametrize("content,message", [
    ('{"decisions": {"../../evil": {"decision": "accept"}}, "history": ["../../evil"]}', "is not a candidate id"),
    ('{"decisions": {"c1": {"decision": "maybe"}}, "history": ["c1"]}', "expected accept or reject"),
    ('{"decisions": {"c1": {"decision": "accept"}}, "history": []}', "history and decisions"),
    ('[1, 2]', "not a curation decisions file"),
])
def test_decision_file_is_checked_before_its_ids_become_paths(tmp_path, content, message):
    path = tmp_path / "decisions.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        cdec.CurationDecisions(path)
    with pytest.raises(ValueError, match="is not a candidate id"):
        cu.load_candidate(tmp_path, "../outside")

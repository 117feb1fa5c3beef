import importlib.util
import json

import numpy as np
import pandas as pd
import pytest

from rbclib.annotate.decisions import DecisionsError, DecisionStore, apply_decisions
from rbclib.annotate.export import make_splits, write_annotations
from rbclib.annotate.proposals import merge_cells, propose_cells, proposal_quality, split_cell
from rbclib.annotate.session import AnnotationSession
from rbclib.annotate.widget import AnnotationWidget
from rbclib.core.config import Optics
from rbclib.core.io import read_instances, read_labels, write_phase
from rbclib.core.paths import RunPaths

R = 16  # cell radius [px] (2.3 um at 0.1441 um/px)


def _field(centres, shape=(128, 128), r=R):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    phase = np.zeros(shape, np.float32)
    inst = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        dome = np.sqrt(np.clip(1 - d2 / r ** 2, 0, None)).astype(np.float32)
        phase = np.maximum(phase, 1.5 * dome)
        inst[(d2 <= r * r) & (inst == 0)] = k
    return phase, inst


FIELDS = {
    "field_0000": [(30, 30), (30, 59), (90, 90)],   # touching pair + one isolated cell
    "field_0001": [(40, 40), (95, 40), (64, 100)],
    "field_0002": [(64, 64), (5, 110)],             # second cell cut by the image edge
}


@pytest.fixture()
def run(tmp_path):
    paths = RunPaths(tmp_path / "run")
    for stem, centres in FIELDS.items():
        write_phase(paths.phase / f"{stem}.tif", _field(centres)[0], Optics())
    return paths


def _actions(path):
    return json.loads(path.read_text())["actions"]


def test_proposals_split_touching_flag_edge_and_tiny():
    phase, inst = _field(FIELDS["field_0000"])
    phase[120:123, 5:8] = 1.0  # 9 px speck
    phase[60:64, 120:] = 1.0  # strip at the right edge
    p = propose_cells(phase)
    assert p.instances.max() == 5
    flags = p.flags.set_index("cell_id")
    assert flags["tiny"].sum() == 2 and flags["touches_edge"].sum() == 1
    q = proposal_quality(propose_cells(_field(FIELDS["field_0000"])[0]).instances, inst)
    assert q["aji"] > 0.9 and q["n_proposed"] == 3 and q["matched_iou50"] == 1.0
    high = propose_cells(phase, threshold_rad=1.6)
    assert high.instances.max() == 0 and high.threshold_rad == 1.6


def test_merge_and_split_round_trip():
    _, inst = _field(FIELDS["field_0000"])
    merged = merge_cells(inst, 2, 1)
    assert set(np.unique(merged)) == {0, 1, 3}
    split = split_cell(merged, 1)
    assert set(np.unique(split)) == {0, 1, 3, 4}
    assert proposal_quality(split, inst)["aji"] > 0.9
    single = split_cell(inst, 3)  # one round cell: split along its major axis
    assert abs((single == 3).sum() - (single == 4).sum()) < 0.2 * (inst == 3).sum()
    with pytest.raises(ValueError, match="no cell"):
        merge_cells(inst, 1, 9)


def test_widget_labels_undo_merge_split_resume_export(run):
    dec = run.annotations / "decisions.json"
    w = AnnotationWidget(AnnotationSession(sorted(run.phase.glob("*.tif")), dec), run_paths=run)
    assert dec.exists() and _actions(dec) == []
    assert w.position == ("field_0000", 1)
    for name in ("discocyte", "spherocyte", "echinocyte", "stomatocyte", "not-a-cell", "undo", "next", "prev",
                 "merge", "split", "export"):
        assert f"rbc-annotate-{name}" in w.buttons[name]._dom_classes
    assert w.buttons["discocyte"].description == "1 Discocyte"

    w.buttons["discocyte"].click()
    assert _actions(dec) == [{"op": "label", "image": "field_0000", "cell": 1, "label": 1}]
    assert w.position == ("field_0000", 2)
    assert json.loads(dec.read_text())["cursor"] == {"image": "field_0000", "cell": 2}

    w.buttons["spherocyte"].click()
    assert _actions(dec)[-1]["label"] == 2 and w.position == ("field_0000", 3)
    w.buttons["undo"].click()
    assert len(_actions(dec)) == 1 and w.position == ("field_0000", 2)

    # merge the touching pair (cells 1 and 2), then split it again
    w.buttons["prev"].click()
    assert w.position == ("field_0000", 1)
    assert 2 in w.merge_with.options[0] or w.merge_with.options[0][1] == 2
    w.merge_with.value = 2
    w.buttons["merge"].click()
    assert _actions(dec)[-1] == {"op": "merge", "image": "field_0000", "cells": [1, 2]}
    assert w.session.cells("field_0000") == [1, 3]
    assert w.session.state("field_0000")[1] == {}  # the merged cell lost its label
    w.buttons["split"].click()
    assert _actions(dec)[-1] == {"op": "split", "image": "field_0000", "cell": 1}
    assert w.session.cells("field_0000") == [1, 3, 4]

    # keys: digits label, letters navigate
    w.key_box.value = "1"
    assert _actions(dec)[-1] == {"op": "label", "image": "field_0000", "cell": 1, "label": 1}
    assert w.key_box.value == ""
    w.key_box.value = "3"
    w.key_box.value = "1"
    assert w.position == ("field_0001", 1)
    n_before = len(_actions(dec))

    # a fresh widget on the same file resumes at the cursor with the same state
    w2 = AnnotationWidget(AnnotationSession(sorted(run.phase.glob("*.tif")), dec), run_paths=run)
    assert w2.position == ("field_0001", 1) and len(_actions(dec)) == n_before
    assert w2.session.state("field_0000")[1] == {1: 1, 3: 3, 4: 1}
    backups = list(dec.parent.glob("decisions.*.bak.json"))
    assert len(backups) == 1 and backups[0].read_bytes() == dec.read_bytes()  # backup of the resumed file
    AnnotationWidget(AnnotationSession(sorted(run.phase.glob("*.tif")), dec), run_paths=run)
    assert list(dec.parent.glob("decisions.*.bak.json")) == backups              # unchanged file: no new copy
    assert "discocyte: 2" in w2.status.value

    # export writes only complete images
    w2.buttons["export"].click()
    assert (run.labels / "field_0000.png").exists() and not (run.labels / "field_0001.png").exists()
    assert "skipped" in w2.message.value
    labels = read_labels(run.labels / "field_0000.png")
    assert set(np.unique(labels)) == {0, 1, 3}
    assert read_instances(run.instances / "field_0000.png").max() == 3
    cells = pd.read_csv(run.cells_csv)
    assert cells["image"].tolist() == ["field_0000"] * 3 and sorted(cells["class_id"]) == [1, 1, 3]
    assert {"dry_mass_pg", "volume_um3", "touches_edge"} <= set(cells.columns)

    # finish the set, then re-export: the changed cells.csv is backed up first
    while w2.session.next_unlabelled() is not None:
        w2.buttons["not-a-cell" if w2.position[1] == 2 else "echinocyte"].click()
    w2.buttons["export"].click()
    assert sorted(p.stem for p in run.labels.glob("*.png")) == sorted(FIELDS)
    assert list((run.annotations / "backup").glob("*/cells.csv"))
    counts = w2.session.class_counts()
    assert counts["not a cell"] == 2 and sum(counts.values()) == 3 + 3 + 2


def test_apply_decisions_zero_removes_and_unlabelled_listed():
    _, inst = _field(FIELDS["field_0001"])
    acts = [{"op": "label", "image": "x", "cell": 1, "label": 4}, {"op": "label", "image": "x", "cell": 2, "label": 0}]
    ann = apply_decisions(inst, acts)
    assert ann.unlabelled == [3] and not ann.complete
    assert set(np.unique(ann.labels)) == {0, 4} and ann.instances.max() == 1


def test_bad_inputs(run, tmp_path):
    stems = sorted(run.phase.glob("*.tif"))
    dec = run.annotations / "decisions.json"
    s = AnnotationSession(stems, dec)
    with pytest.raises(DecisionsError, match="outside 0..4"):
        s.label("field_0000", 1, 7)
    with pytest.raises(ValueError, match="no cell"):
        s.label("field_0000", 99, 1)
    assert _actions(dec) == []
    table, skipped = s.export(run)  # nothing complete yet: header-only cells.csv
    assert len(table) == 0 and skipped == sorted(FIELDS) and "dry_mass_pg" in pd.read_csv(run.cells_csv).columns
    s.label("field_0000", 1, 1)
    # another image set
    with pytest.raises(DecisionsError, match="another image set"):
        AnnotationSession(stems[:2], dec)
    # same stems, other pixels
    write_phase(run.phase / "field_0002.tif", _field([(50, 50)])[0], Optics())
    with pytest.raises(DecisionsError, match="different pixel data"):
        AnnotationSession(stems, dec)
    # a hand-edited file with a label out of range
    bad = tmp_path / "bad.json"
    data = json.loads(dec.read_text())
    data["actions"][0]["label"] = 9
    bad.write_text(json.dumps(data))
    with pytest.raises(DecisionsError, match="outside 0..4"):
        DecisionStore(bad, data["images"], proposal_params=data["proposal_params"])
    with pytest.raises(DecisionsError, match="parameters"):
        DecisionStore(dec, json.loads(dec.read_text())["images"], proposal_params={"threshold_rad": 0.3})
    # phase / mask of different shapes
    with pytest.raises(ValueError, match="one shape"):
        write_annotations(run, {"field_0000": (np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.int32))},
                          {"field_0000": np.zeros((12, 12), np.float32)}, optics=Optics())


def test_write_annotations_backs_up_changed_masks(run):
    phase, inst = _field(FIELDS["field_0001"])
    labels = np.where(inst > 0, 1, 0).astype(np.uint8)
    write_annotations(run, {"field_0001": (labels, inst)}, {"field_0001": phase}, optics=Optics())
    write_annotations(run, {"field_0001": (labels, inst)}, {"field_0001": phase}, optics=Optics())
    assert not (run.annotations / "backup").exists()  # identical content: nothing to back up
    write_annotations(run, {"field_0001": (labels * 2, inst)}, {"field_0001": phase}, optics=Optics())
    backups = list((run.annotations / "backup").glob("*/labels/field_0001.png"))
    assert len(backups) == 1 and read_labels(backups[0]).max() == 1
    assert read_labels(run.labels / "field_0001.png").max() == 2


def test_make_splits_stratified_seeded():
    rng = np.random.default_rng(0)
    stems = [f"field_{i:04d}" for i in range(219)]
    present = {s: {1} | set(rng.choice([2, 3, 4], size=int(rng.integers(0, 3)), replace=False).tolist()) for s in stems}
    present[stems[7]] = {1, 4}
    for s in stems[8:]:
        present[s].discard(4)  # stomatocytes in only two images
    present[stems[3]].add(4)
    sp = make_splits(stems, present, test_fraction=40 / 219, seed=3)
    assert len(sp["test"]) == 40 and len(sp["train"]) == 179 and not set(sp["train"]) & set(sp["test"])
    for cls in (1, 2, 3, 4):
        assert any(cls in present[s] for s in sp["test"]) and any(cls in present[s] for s in sp["train"])
    assert sp["classes_not_in_both"] == [] and sp["seed"] == 3
    assert make_splits(stems, present, test_fraction=40 / 219, seed=3) == sp
    assert make_splits(stems, present, test_fraction=40 / 219, seed=4)["test"] != sp["test"]
    maps = {"a": np.array([[1, 2]]), "b": np.array([[1, 0]]), "c": np.array([[2, 1]])}
    small = make_splits(list(maps), maps, test_fraction=0.3, seed=0)
    assert len(small["test"]) == 1 and small["classes_not_in_both"] == []
    with pytest.raises(ValueError, match="at least 2"):
        make_splits(["a"], {"a": {1}}, test_fraction=0.2, seed=0)


@pytest.mark.skipif(importlib.util.find_spec("rbclib.physics.simulate") is None, reason="rbclib.physics.simulate not available")
def test_proposal_aji_on_simulated_field():
    from rbclib.physics.simulate import simulate_field

    f = simulate_field(1, field_px=384, n_cells=16, holograms=False)
    p = propose_cells(f.phase, pixel_size_m=f.optics.pixel_size_m)
    assert proposal_quality(p.instances, f.instances)["aji"] >= 0.9


@pytest.mark.slow
def test_notebook_real_data_path_applies_saved_decisions(run):
    """02 headless on 'real' data (no truth/): clear error without decisions, masks with them."""
    from rbclib.pipeline import NotebookFailed, kernel_available, run_notebooks

    if not kernel_available():
        pytest.skip("Jupyter kernel rbc-holo not registered")
    Optics().to_json(run.optics_json)
    with pytest.raises(NotebookFailed, match="no saved annotation decisions"):
        run_notebooks(profile="smoke", run_dir=run.root, only=["02"], progress=False)
    s = AnnotationSession(sorted(run.phase.glob("*.tif")), run.annotations / "decisions.json")
    for stem in s.stems:
        for k, cell in enumerate(s.cells(stem)):
            s.label(stem, cell, 1 + k % 2)
    run_notebooks(profile="smoke", run_dir=run.root, only=["02"], progress=False)
    assert sorted(p.stem for p in run.labels.glob("*.png")) == sorted(FIELDS)
    assert set(np.unique(read_labels(run.labels / "field_0000.png"))) == {0, 1, 2}
    splits = json.loads(run.splits_json.read_text())
    assert len(splits["train"]) + len(splits["test"]) == 3 and splits["classes_not_in_both"] == []
    assert len(pd.read_csv(run.cells_csv)) == 8
    assert (run.figures / "02_cell_measurements.png").exists()


def _fake_model(wrong_cell_centre=(90, 90)):
    """A stand-in model: every cell of a FIELDS image is a discocyte with confidence 0.95,
    except the cell at ``wrong_cell_centre``, called an echinocyte with confidence 0.6."""
    def suggest(phase, pixel_size_m):
        probs = np.zeros((5,) + phase.shape, np.float32)
        cells = phase > 0.05
        probs[0] = ~cells
        probs[1][cells], probs[2][cells] = 0.95, 0.05
        yy, xx = np.mgrid[: phase.shape[0], : phase.shape[1]]
        odd = cells & ((yy - wrong_cell_centre[0]) ** 2 + (xx - wrong_cell_centre[1]) ** 2 <= R * R)
        probs[:, odd] = 0.0
        probs[3][odd], probs[1][odd] = 0.6, 0.4
        return probs
    return suggest


def test_model_prefill_orders_by_uncertainty_accepts_a_page_and_undoes_it_whole(run):
    dec = run.annotations / "decisions.json"
    session = AnnotationSession(sorted(run.phase.glob("*.tif")), dec, suggest=_fake_model())
    hints = session.suggestions("field_0000")
    assert hints[3] == (3, pytest.approx(0.6)) and hints[1] == (1, pytest.approx(0.95))
    assert session.review_order("field_0000") == [3, 1, 2]           # least confident first
    assert session.confident_cells("field_0000", confidence=0.9) == [1, 2]
    assert session.next_unlabelled() == ("field_0000", 3)
    assert session.accept("field_0000", [1, 2]) == 2
    actions = _actions(dec)
    assert [(a["cell"], a["label"], a["suggested"]) for a in actions] == [(1, 1, True), (2, 1, True)]
    assert actions[0]["batch"] == actions[1]["batch"]
    session.label("field_0000", 3, 1)                                  # the person corrects the odd cell
    assert session.state("field_0000")[1] == {1: 1, 2: 1, 3: 1}
    session.undo()
    session.undo()                                                     # the whole page in one undo
    assert _actions(dec) == []
    plain = AnnotationSession(sorted(run.phase.glob("*.tif")), dec)
    assert plain.suggestions("field_0000") == {} and plain.review_order("field_0000") == [1, 2, 3]
    with pytest.raises(ValueError, match="no model suggestions"):
        plain.accept("field_0000", [1])


def test_widget_accepts_a_page_then_the_person_corrects_one_cell(run):
    dec = run.annotations / "decisions.json"
    w = AnnotationWidget(AnnotationSession(sorted(run.phase.glob("*.tif")), dec, suggest=_fake_model()),
                         run_paths=run)
    assert w.position == ("field_0000", 3)                             # the uncertain cell comes first
    assert "model: echinocyte (0.60)" in w.status.value
    assert w.buttons["accept-page"].description == "Accept 2 confident"
    assert "rbc-annotate-accept-page" in w.buttons["accept-page"]._dom_classes
    w.buttons["accept-page"].click()
    assert [a["cell"] for a in _actions(dec)] == [1, 2] and "Accepted" in w.message.value
    assert w.position == ("field_0000", 3)
    w.buttons["discocyte"].click()                                     # correct the model's echinocyte
    assert _actions(dec)[-1] == {"op": "label", "image": "field_0000", "cell": 3, "label": 1}
    assert w.position[0] == "field_0001"
    w.key_box.value = "a"                                              # take one suggestion by key
    assert _actions(dec)[-1]["label"] == 1 and _actions(dec)[-1]["image"] == "field_0001"
    assert w.session.annotation("field_0000").complete

"""`rbc assess`: input discovery, days, resampling, cell clean-up, model choice, the batch
(resumable, bad files skipped) and the CLI. Most tests segment with an oracle model that
thresholds the phase, so the expected counts are known exactly."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rbclib.core.files import ImageFileError
from rbclib.study import assess as A
from rbclib.study import image, inputs
from rbclib.study import segmenter as S
from rbclib.core.config import Optics
from rbclib.core.io import read_instances, write_camera_image, write_labels, write_phase
from rbclib.core.labels import instances_from_labels
from rbclib.seg.watershed import split_touching

PAPER_PX = 0.1441e-6


# ---------------------------------------------------------------- an oracle "model"


class _Pred:
    def __init__(self, labels, probs):
        self.labels, self.probs, self.instances = labels, probs, instances_from_labels(labels)


def _oracle_predict(model, phases, *, config, **kw):
    """Discocyte where 0.3 < phase <= 1.5 rad, spherocyte above; probabilities 0.9 / 0.025."""
    return [_oracle_one(phase) for phase in phases]


def _oracle_one(phase):
    labels = np.zeros(phase.shape, np.uint8)
    labels[phase > 0.3] = 1
    labels[phase > 1.5] = 2
    probs = np.full((5,) + phase.shape, 0.025, np.float32)
    np.put_along_axis(probs, labels[None].astype(np.intp), 0.9, axis=0)
    return _Pred(labels, probs)


@pytest.fixture(autouse=True)
def _close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


@pytest.fixture
def oracle(monkeypatch, tmp_path):
    import rbclib.seg.infer

    calls = []

    def read_model_config(model_dir):
        own = Path(model_dir) / "config.json"
        return {"pixel_size_m": PAPER_PX, "patch": 64, **(json.loads(own.read_text()) if own.is_file() else {})}

    def load_model(model_dir, **kw):
        calls.append(Path(model_dir))
        return object(), read_model_config(model_dir)

    monkeypatch.setattr(rbclib.seg.infer, "read_model_config", read_model_config)
    monkeypatch.setattr(rbclib.seg.infer, "load_model", load_model)
    monkeypatch.setattr(rbclib.seg.infer, "predict_images", _oracle_predict)
    model = tmp_path / "model"
    model.mkdir()
    (model / "best.pt").write_bytes(b"x")
    return model, calls


def _disk_field(centres, radius_um, px_m, shape_um=(26.0, 26.0)):
    """Phase map with disks (phase 1 rad discocytes, 2 rad spherocytes) and the true labels."""
    h, w = (int(round(s * 1e-6 / px_m)) for s in shape_um)
    yy, xx = np.mgrid[:h, :w] * px_m * 1e6
    phase = np.zeros((h, w), np.float32)
    labels = np.zeros((h, w), np.uint8)
    for (cy, cx), cls in centres:
        m = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius_um ** 2
        phase[m] = 1.0 if cls == 1 else 2.0
        labels[m] = cls
    return phase, labels


FIELD = [((6, 6), 1), ((6, 19), 1), ((19, 6), 1), ((19, 19), 2)]  # 3 discocytes, 1 spherocyte


def _write_series(root: Path, px_m=PAPER_PX, *, days=(8, 57), n_img=2):
    optics = Optics().replace(pixel_size_m=px_m)
    for d in days:
        for i in range(n_img):
            field = FIELD if d == days[0] else [(c, 2) for c, _ in FIELD]
            phase, labels = _disk_field(field, 3.0, px_m)
            write_phase(root / f"day_{d:02d}" / "phase" / f"f{i}.tif", phase, optics)
            write_labels(root / f"day_{d:02d}" / "labels" / f"f{i}.png", labels)
    return root


# ---------------------------------------------------------------- discovery


def test_parse_day():
    assert inputs.parse_day("day_08") == 8 and inputs.parse_day("Day 13") == 13 and inputs.parse_day("d16") == 16
    assert inputs.parse_day("day-2.5") == 2.5 and inputs.parse_day("day_40_unitB") == 40
    assert inputs.parse_day("holograms") is None and inputs.parse_day("today") is None and inputs.parse_day("dayx") is None


def test_discover_series_prefers_holograms_and_finds_truth(tmp_path):
    d = tmp_path / "day_13"
    img = np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8)
    for sub in ("holograms", "backgrounds"):
        write_camera_image(d / sub / "f0.png", img)
    write_phase(d / "phase" / "f0.tif", np.ones((16, 16), np.float32) * np.arange(16))
    write_labels(d / "labels" / "f0.png", np.zeros((16, 16), np.uint8))
    (d / "optics.json").write_text(json.dumps(Optics().to_dict()))
    write_phase(tmp_path / "day_8" / "p.tif", np.arange(256, dtype=np.float32).reshape(16, 16))
    jobs = inputs.discover_inputs(tmp_path)
    assert [(j.image, j.day) for j in jobs] == [("day_8/p", 8.0), ("day_13/f0", 13.0)]
    j = jobs[1]
    assert j.path.parent.name == "holograms" and j.background.parent.name == "backgrounds"
    assert j.truth_labels.name == "f0.png" and j.truth_instances is None and j.optics_json.name == "optics.json"
    assert jobs[0].truth_labels is None and jobs[0].background is None


def test_discover_day_map_and_errors(tmp_path):
    for name in ("a.tif", "b.tif"):
        write_phase(tmp_path / "unit" / name, np.arange(16, dtype=np.float32).reshape(4, 4))
    (tmp_path / "map.csv").write_text("file,day\na.tif,3\nb,10\n")
    jobs = inputs.discover_inputs(tmp_path / "unit", day_map=tmp_path / "map.csv")
    assert {j.image: j.day for j in jobs} == {"a": 3.0, "b": 10.0}
    (tmp_path / "typo.csv").write_text("file,day\nA.tif,3\nc.tif,10\n")
    with pytest.raises(ImageFileError, match=r"typo\.csv: no entry matches an image"):
        inputs.discover_inputs(tmp_path / "unit", day_map=tmp_path / "typo.csv")
    single = inputs.discover_inputs(tmp_path / "unit" / "a.tif")
    assert len(single) == 1 and math.isnan(single[0].day)
    (tmp_path / "bad.csv").write_text("name,when\na,3\n")
    with pytest.raises(ImageFileError, match="columns 'file' and 'day'"):
        inputs.read_day_map(tmp_path / "bad.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageFileError, match="no images found"):
        inputs.discover_inputs(tmp_path / "empty")
    with pytest.raises(ImageFileError, match="not found"):
        inputs.discover_inputs(tmp_path / "nothing")
    write_phase(tmp_path / "unit" / "a.tiff", np.arange(16, dtype=np.float32).reshape(4, 4))
    with pytest.raises(ImageFileError, match="share the image name"):
        inputs.discover_inputs(tmp_path / "unit")


# ---------------------------------------------------------------- resampling, clean-up, confidence


def test_resample_keeps_physical_area():
    # A 3 um radius disk seen by a 40x set-up (0.094 um/px), brought to the model's 0.1441 um/px.
    phase, _ = _disk_field([((13, 13), 1)], 3.0, 0.094e-6)
    small = S.resample(phase, 0.094 / 0.1441, order=1)
    area_um2 = (small > 0.5).sum() * 0.1441 ** 2
    assert area_um2 == pytest.approx(math.pi * 9, rel=0.05)
    assert S.resample(phase, 1.005, order=1) is phase
    lab = (small > 0.5).astype(np.uint8)
    assert S.resize_to(lab, phase.shape).shape == phase.shape


def test_clean_instances_merges_fragments_and_drops_specks():
    labels = np.zeros((60, 60), np.uint8)
    labels[10:40, 10:40] = 1          # a cell (900 px)
    labels[10:40, 40:44] = 3          # a rim fragment of another class touching it (120 px)
    labels[50:52, 50:52] = 2          # an isolated speck (4 px = 0.08 um^2)
    labels[45:60, 0:15] = 2           # a real isolated cell (225 px = 4.7 um^2 at 0.1441 um/px)
    inst = instances_from_labels(labels)
    lab2, inst2, dropped = S.clean_instances(labels, inst, pixel_size_m=PAPER_PX, min_area_um2=4.0)
    assert len(np.unique(inst2[inst2 > 0])) == 2 and dropped == 1
    assert (lab2[10:40, 40:44] == 1).all() and inst2[20, 42] == inst2[20, 20]
    assert lab2[51, 51] == 0 and inst2[51, 51] == 0
    assert lab2[50, 5] == 2
    # two touching cells of similar size stay two cells
    two = np.zeros((40, 80), np.uint8)
    two[5:35, 5:40], two[5:35, 40:75] = 1, 2
    _, i2, dropped = S.clean_instances(two, instances_from_labels(two), pixel_size_m=PAPER_PX)
    assert len(np.unique(i2[i2 > 0])) == 2 and dropped == 0
    # by default anything below a plausible cell (15 um^2) is a fragment: halo pieces go
    halo = np.zeros((80, 80), np.uint8)
    halo[5:45, 5:45] = 1              # a cell, 33 um^2
    halo[60:75, 60:75] = 1            # a halo piece, 4.7 um^2, apart from it
    halo[5:45, 45:70] = 2             # a piece of another class touching the cell, 21 um^2 (not merged: too big)
    lab3, i3, dropped = S.clean_instances(halo, instances_from_labels(halo), pixel_size_m=PAPER_PX)
    assert S.MIN_CELL_AREA_UM2 == 15.0 and dropped == 1 and lab3[67, 67] == 0
    assert len(np.unique(i3[i3 > 0])) == 2
    # a centre of another class inside its ring is the same cell, however large
    ring = np.zeros((60, 60), np.uint8)
    ring[5:55, 5:55] = 4              # ring, 1600 px
    ring[15:45, 15:45] = 3            # centre, 900 px: 56 % of the ring, enclosed by it
    lab4, i4, dropped = S.clean_instances(ring, instances_from_labels(ring), pixel_size_m=PAPER_PX)
    assert len(np.unique(i4[i4 > 0])) == 1 and (lab4[5:55, 5:55] == 4).all() and dropped == 0


def test_drop_faint_objects_keeps_cells_of_any_phase_scale():
    labels = np.zeros((40, 100), np.uint8)
    phase = np.zeros((40, 100), np.float32)
    for k, (x0, level) in enumerate([(2, 1.0), (22, 1.3), (42, 0.8), (62, 0.3), (82, 1.1)]):
        labels[5:20, x0:x0 + 15] = 1 + k % 4
        phase[5:20, x0:x0 + 15] = level                     # the 0.3 rad object is a faint halo piece
    inst = instances_from_labels(labels)
    for gain in (0.5, 1.0, 3.0):                            # the rule is relative: no absolute phase level
        lab2, inst2, n = S.drop_faint_objects(labels, inst, phase * gain)
        assert n == 1 and inst2.max() == 4 and lab2[10, 70] == 0 and lab2[10, 50] == labels[10, 50]
    few = np.where(inst <= 2, inst, 0)
    assert S.drop_faint_objects(labels, few, phase)[2] == 0  # fewer than three objects: no median to judge by


def test_trim_halo_cuts_painted_background_and_keeps_cells():
    px_um = 0.144
    yy, xx = np.mgrid[:240, :240]
    phase = np.zeros((240, 240))
    labels = np.zeros((240, 240), np.uint8)
    for cy, cx in [(50, 50), (50, 150), (150, 60), (170, 170)]:
        r_um = np.hypot(yy - cy, xx - cx) * px_um
        cell = np.clip(4 - 1.3 * np.maximum(r_um - 2.5, 0), 0, 4) * (1 - 0.6 * np.exp(-(r_um / 1.2) ** 2))
        phase += cell                                                  # flat top, deep dimple, 3 um edge ramp
        labels[r_um < 5.5] = 1                                         # the model's mask reaches the foot
    halo = (np.abs(yy - 110) < 12) & (xx > 60) & (xx < 170)           # painted background strip, 0.8 rad
    phase[halo] += 0.8
    labels[halo] = 1
    out = S.trim_halo(labels, phase, pixel_size_m=px_um * 1e-6)
    r_first = np.hypot(yy - 50, xx - 50) * px_um
    assert out[r_first < 4.0].all()                                    # body, dimple and edge (to 40 % + 1 um) kept
    assert out[110, 110] == 0                                          # the strip's middle goes
    assert (out[halo] > 0).mean() < 0.2
    assert (S.trim_halo(labels, phase * 3.0, pixel_size_m=px_um * 1e-6) == out).all()  # phase scale does not matter
    two = labels.copy()
    two[:, 120:] = 0
    assert (S.trim_halo(two, phase, pixel_size_m=px_um * 1e-6) == two).all()           # < 3 cells: untouched


def test_split_touching_cells():
    px = PAPER_PX
    yy, xx = np.mgrid[:80, :120] * px * 1e6
    two = ((yy - 5.8) ** 2 + (xx - 5.0) ** 2 <= 3.8 ** 2) | ((yy - 5.8) ** 2 + (xx - 12.0) ** 2 <= 3.8 ** 2)
    labels = two.astype(np.uint8)
    inst = split_touching(labels, instances_from_labels(labels), pixel_size_m=px)
    assert inst.max() == 2 and inst[40, 35] != inst[40, 83] and (inst > 0).sum() == two.sum()
    # one elongated, irregular cell stays one
    one = ((yy - 5.8) / 3.0) ** 2 + ((xx - 8.0) / 5.0) ** 2 <= 1
    one |= (np.abs(yy - 5.8) < 0.3) & (np.abs(xx - 13.5) < 0.6)  # a spicule
    labels = one.astype(np.uint8)
    assert split_touching(labels, instances_from_labels(labels), pixel_size_m=px).max() == 1
    # among other cells, a split that would leave a piece under half a typical cell is refused,
    # while a merged pair of typical cells is still split
    yy, xx = np.mgrid[:200, :280] * px * 1e6

    def disc(cy, cx, r):
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2

    field = disc(5, 5, 3.8) | disc(5, 14, 3.8) | disc(16, 5, 3.8)          # three separate cells
    lobed = disc(16, 16, 3.8) | disc(16, 21.5, 2.2)                           # a cell with a small lobe
    pair = disc(5, 23, 3.8) | disc(5, 30, 3.8)                                # two touching cells
    labels = (field | lobed | pair).astype(np.uint8)
    out = split_touching(labels, instances_from_labels(labels), pixel_size_m=px)
    assert out.max() == 6
    cell = lambda y, x: out[int(y / (px * 1e6)), int(x / (px * 1e6))]      # noqa: E731
    assert cell(16, 16) == cell(16, 21.5) and cell(5, 23) != cell(5, 30)
    # two cells pressed together along a flat contact (waist 0.4 um shallower than the cells,
    # 2.2x a typical cell) are split at the gentler depth; a single large round cell (1.9x) has
    # one maximum and stays one
    pressed = disc(16, 14, 3.8) | disc(16, 21.6, 3.8) | ((np.abs(yy - 16) < 3.4) & (xx > 14) & (xx < 21.6))
    big = disc(5, 26, 5.2)
    labels = (field | pressed | big).astype(np.uint8)
    out = split_touching(labels, instances_from_labels(labels), pixel_size_m=px)
    assert out.max() == 6 and cell(16, 13) != cell(16, 22.5) and cell(5, 23) == cell(5, 29)


def test_class_confidence_is_mean_prob_of_winning_class():
    labels = np.array([[1, 1, 0], [2, 2, 2]], np.uint8)
    inst = np.array([[1, 1, 0], [2, 2, 2]], np.int32)
    probs = np.zeros((5, 2, 3), np.float32)
    probs[1, 0, :2] = [0.6, 0.8]
    probs[2, 1, :] = [0.5, 0.7, 0.9]
    assert S.class_confidence(probs, labels, inst) == pytest.approx({1: 0.7, 2: 0.7})


def test_model_pixel_size_comes_from_the_model_folder_alone(tmp_path):
    assert S.model_pixel_size({"pixel_size_m": 1e-7})[0] == 1e-7
    assert S.model_pixel_size({"optics": {"pixel_size_m": 2e-7}})[0] == 2e-7
    (tmp_path / "run").mkdir()
    Optics().replace(pixel_size_m=0.3e-6).to_json(tmp_path / "run" / "optics.json")
    px, why = S.model_pixel_size({}, tmp_path / "run" / "models" / "seg_da")   # the run's optics are not read
    assert px == pytest.approx(PAPER_PX) and "assumed" in why


def test_a_twin_with_flat_discocytes_is_recorded(tmp_path):
    """train_from_run turns halo trimming on in the model's config when its run's twin drew
    flat-topped discocytes (issue 13), read from the twin's simulation record."""
    from rbclib.physics.simulated_datasets import drew_flat_discocytes

    record = tmp_path / "simulation.json"
    assert not drew_flat_discocytes(tmp_path)                          # no record: real data
    for flat, expected in ((0.4, True), (0.0, False), ([0.0, 0.3], True), (None, False)):
        record.write_text(json.dumps({"flat_discocyte_fraction": flat}))
        assert drew_flat_discocytes(tmp_path) is expected, flat
    record.write_text("{not json")
    assert not drew_flat_discocytes(tmp_path)


def test_halo_trimming_follows_the_model_config(tmp_path, oracle):
    """Everything inference needs comes from the model folder: trim_halo is on exactly when
    its config.json says so, whatever run the folder sits in; the flag overrides it."""
    model = tmp_path / "run" / "models" / "seg_backbone"
    model.mkdir(parents=True)
    (model / "best.pt").write_bytes(b"x")
    (model / "config.json").write_text(json.dumps({"trim_halo": True}))
    assert S.Segmenter(model).trim_halo and not S.Segmenter(model, trim_halo=False).trim_halo
    assert not S.Segmenter(oracle[0]).trim_halo                         # no trim_halo in its config
    phase, _ = _disk_field(FIELD, 3.0, PAPER_PX)
    write_phase(tmp_path / "in" / "a.tif", phase)
    A.assess(tmp_path / "in", tmp_path / "out", segmenter=S.Segmenter(model), n_boot=50, progress=False)
    assert "halo trimming on" in (tmp_path / "out" / "report.md").read_text()
    A.assess(tmp_path / "in", tmp_path / "out2", segmenter=S.Segmenter(model, trim_halo=False), n_boot=50, progress=False)
    assert "halo trimming" not in (tmp_path / "out2" / "report.md").read_text()


def test_a_changed_model_config_is_not_mistaken_for_a_finished_image(tmp_path, oracle):
    """The resume key holds the model's config: after its pixel size changes, images are
    segmented again, not reported as already done."""
    model = tmp_path / "model"
    (model / "config.json").write_text(json.dumps({"pixel_size_m": PAPER_PX}))
    phase, _ = _disk_field(FIELD, 3.0, PAPER_PX)
    write_phase(tmp_path / "in" / "a.tif", phase)
    first = A.assess(tmp_path / "in", tmp_path / "out", segmenter=S.Segmenter(model), n_boot=20, progress=False)
    again = A.assess(tmp_path / "in", tmp_path / "out", segmenter=S.Segmenter(model), n_boot=20, progress=False)
    assert first.processed == ["a"] and again.skipped == ["a"]
    (model / "config.json").write_text(json.dumps({"pixel_size_m": 2 * PAPER_PX}))
    changed = A.assess(tmp_path / "in", tmp_path / "out", segmenter=S.Segmenter(model), n_boot=20, progress=False)
    assert changed.processed == ["a"] and not changed.skipped


# ---------------------------------------------------------------- choosing a model


def test_best_and_latest_model(tmp_path):
    def make(run, arm, t, dice=(0.5, 0.5), epochs=2):
        d = tmp_path / "runs" / run / "models" / f"seg_{arm}"
        d.mkdir(parents=True)
        (d / "best.pt").write_bytes(b"x")
        os.utime(d / "best.pt", (t, t))
        (d / "config.json").write_text(json.dumps({"epochs": epochs}))
        (d / "log.csv").write_text("epoch,val_dice_overall\n" + "".join(f"{i},{v}\n" for i, v in enumerate(dice)))
        return d

    make("quick", "backbone", 1000)
    make("quick", "da", 1000)
    newest_ssl = make("smoke", "ssl", 2000)
    make("smoke", "backbone", 2000)
    (tmp_path / "runs" / "smoke" / "models" / "seg_da_ssl").mkdir()  # no best.pt: not finished
    make("training", "backbone", 3000, dice=(0.9,), epochs=10)        # newest, but still training
    model, why = inputs.find_latest_model([tmp_path / "runs"])
    assert model == newest_ssl and "most recent run" in why and str(newest_ssl) in why
    quick = tmp_path / "runs" / "quick" / "models"
    assert inputs.best_model_in(quick).name == "seg_da"  # equal Dice: preference order
    for arm, dice in (("backbone", [0.5, 0.71]), ("da", [0.6, 0.65])):
        (quick / f"seg_{arm}" / "log.csv").write_text("epoch,val_dice_overall\n" + "".join(
            f"{i},{d}\n" for i, d in enumerate(dice)))
    assert inputs.best_model_in(quick).name == "seg_backbone"  # the highest validation Dice wins
    with pytest.raises(FileNotFoundError, match="seg_backbone still training"):
        inputs.best_model_in(tmp_path / "runs" / "training" / "models")
    with pytest.raises(FileNotFoundError, match="make run"):
        inputs.find_latest_model([tmp_path / "nowhere"])


# ---------------------------------------------------------------- the batch


def test_assess_series_end_to_end_resumable(tmp_path, oracle):
    model, calls = oracle
    series = _write_series(tmp_path / "series", px_m=0.094e-6)  # a 40x set-up, model at 0.1441 um/px
    bad = tmp_path / "series" / "day_57" / "phase" / "f9.tif"
    bad.write_bytes(b"not a tiff")
    errors = []
    r = A.assess(series, tmp_path / "out", segmenter=S.Segmenter(model), n_boot=100, progress=False, on_error=errors.append)
    out = tmp_path / "out"
    assert len(r.processed) == 4 and r.skipped == [] and len(r.failures) == 1 and "f9.tif" in errors[0]
    ratios = pd.read_csv(out / "ratios.csv").set_index(["day", "class_name"])["ratio"]
    assert ratios[(8, "discocyte")] == pytest.approx(0.75) and ratios[(8, "spherocyte")] == pytest.approx(0.25)
    assert ratios[(57, "spherocyte")] == pytest.approx(1.0)
    cells = pd.read_csv(out / "cells.csv")
    assert len(cells) == 16 and set(cells["image"]) == {"day_08/f0", "day_08/f1", "day_57/f0", "day_57/f1"}
    # areas in um^2 survive the 0.094 -> 0.1441 um/px resampling and the way back
    assert cells["area_um2"].median() == pytest.approx(math.pi * 9, rel=0.06)
    # spherocytes keep a thin resampled rim predicted as discocyte, merged in, which lowers their confidence
    conf = cells.groupby("class_name")["class_confidence"]
    assert conf.min()["discocyte"] == pytest.approx(0.9) and 0.8 < conf.min()["spherocyte"] < 0.9
    acc = pd.read_csv(out / "confusion.csv", index_col=0)
    assert acc.loc["discocyte", "discocyte"] == 6 and acc.loc["spherocyte", "spherocyte"] == 10
    errs = pd.read_csv(out / "ratio_errors.csv")
    assert errs["abs_error_pp"].max() == pytest.approx(0.0, abs=1e-9)
    assert (out / "overlays" / "day_08" / "f0.png").is_file() and (out / "figures" / "ratios.png").is_file()
    assert read_instances(out / "instances" / "day_57" / "f1.png").max() == 4
    report = (out / "report.md").read_text()
    assert "f9.tif" in report and "75.0 (" in report and "rescaled by 0.652" in report
    assert "Fragments: 0 object(s) smaller than a plausible cell (15 um^2) or with less than 50%" in report
    # second run: nothing recomputed, same outputs, bad file reported again
    before = (out / "cells.csv").read_text()
    r2 = A.assess(series, out, segmenter=S.Segmenter(model), n_boot=100, progress=False, on_error=None)
    assert r2.processed == [] and len(r2.skipped) == 4 and len(r2.failures) == 1
    assert (out / "cells.csv").read_text() == before
    # a changed input is recomputed, the rest reused
    phase, _ = _disk_field([((6, 6), 1)], 3.0, 0.094e-6)
    write_phase(series / "day_08" / "phase" / "f1.tif", phase, Optics().replace(pixel_size_m=0.094e-6))
    r3 = A.assess(series, out, segmenter=S.Segmenter(model), n_boot=100, progress=False, on_error=None)
    assert r3.processed == ["day_08/f1"] and len(r3.skipped) == 3
    # another clean-up setting is another result: everything is recomputed
    r3b = A.assess(series, out, segmenter=S.Segmenter(model, trim_halo=True), n_boot=100, progress=False, on_error=None)
    assert len(r3b.processed) == 4 and r3b.skipped == []
    # a run without overlays, resumed with overlays: the missing overlays are made, not listed unmade
    out2 = tmp_path / "out2"
    A.assess(series, out2, segmenter=S.Segmenter(model), n_boot=100, progress=False, on_error=None, overlays=False)
    assert not (out2 / "overlays").exists()
    r4 = A.assess(series, out2, segmenter=S.Segmenter(model), n_boot=100, progress=False, on_error=None)
    assert len(r4.processed) == 4 and (out2 / "overlays" / "day_57" / "f1.png").is_file()


def test_assess_optics_override_and_no_temp_files(tmp_path, oracle):
    model, _ = oracle
    phase, _ = _disk_field(FIELD, 3.0, PAPER_PX)
    write_phase(tmp_path / "in" / "a.tif", phase)  # optics in the file: 0.1441 um/px
    r = A.assess(tmp_path / "in", tmp_path / "out", segmenter=S.Segmenter(model), optics=image.OpticsOptions(pixel_size_m=0.2e-6),
                 n_boot=50, progress=False)
    info = json.loads((tmp_path / "out" / "per_image" / "a.json").read_text())
    assert info["optics"]["pixel_size_m"] == 0.2e-6 and info["optics_provenance"]["pixel_size_m"] == "given by the user"
    assert r.cells["area_um2"].median() == pytest.approx(math.pi * 9 * (0.2 / 0.1441) ** 2, rel=0.08)
    assert not [p for p in (tmp_path / "out").rglob(".*")]


def test_assess_all_bad_writes_report(tmp_path, oracle):
    model, _ = oracle
    (tmp_path / "in").mkdir()
    np.savez(tmp_path / "in" / "nan.npz", data=np.full((8, 8), np.nan))
    r = A.assess(tmp_path / "in", tmp_path / "out", segmenter=S.Segmenter(model), progress=False, on_error=None)
    assert r.summary is None and len(r.failures) == 1
    text = (tmp_path / "out" / "report.md").read_text()
    assert "NaN" in text and "No image could be analysed" in text


def test_float_camera_image_is_not_taken_for_phase(tmp_path, oracle):
    model, _ = oracle
    phase, _ = _disk_field(FIELD, 3.0, PAPER_PX)
    write_phase(tmp_path / "in" / "ok.tif", phase)
    counts = np.random.default_rng(0).uniform(0, 255, phase.shape)         # camera counts as float, no fringes
    write_phase(tmp_path / "in" / "counts.tif", counts)
    yy, xx = np.mgrid[:phase.shape[0], :phase.shape[1]]
    write_phase(tmp_path / "in" / "holo.tif", 127 + 100 * np.cos(2 * np.pi * (0.1 * yy + 0.3 * xx) + phase))
    r = A.assess(tmp_path / "in", tmp_path / "out", segmenter=S.Segmenter(model), n_boot=10, progress=False, on_error=None)
    assert sorted(r.processed) == ["holo", "ok"] and len(r.failures) == 1            # a float hologram is a hologram
    assert "counts.tif" in r.failures[0][0] and "neither a phase map in radians" in r.failures[0][1]
    info = json.loads((tmp_path / "out" / "per_image" / "holo.json").read_text())
    assert info["kind"] == "hologram" and json.loads((tmp_path / "out" / "per_image" / "ok.json").read_text())["kind"] == "phase"


def test_a_file_name_with_a_newline_cannot_add_markdown(tmp_path, oracle):
    model, _ = oracle
    write_phase(tmp_path / "in" / "ok.tif", _disk_field(FIELD, 3.0, PAPER_PX)[0])
    (tmp_path / "in" / "bad\n# Injected heading.tif").write_bytes(b"not a tiff")
    A.assess(tmp_path / "in", tmp_path / "out", segmenter=S.Segmenter(model), n_boot=10, progress=False, on_error=None)
    lines = (tmp_path / "out" / "report.md").read_text().splitlines()
    assert not any(line.startswith("# Injected") for line in lines)
    assert any("bad # Injected heading.tif" in line for line in lines)


def test_cli_assess(tmp_path, oracle, capsys, monkeypatch):
    import rbclib.seg.infer
    from rbclib.cli import main

    model, _ = oracle
    calls_devices = []
    oracle_load = rbclib.seg.infer.load_model

    def load_model(model_dir, **kw):
        calls_devices.append(kw.get("device"))
        return oracle_load(model_dir, **kw)

    monkeypatch.setattr(rbclib.seg.infer, "load_model", load_model)
    _write_series(tmp_path / "series", days=(8,), n_img=1)
    (tmp_path / "schemes.toml").write_text(
        '[sph]\ndescription = "spherocytes only"\nweights = {discocyte = 0, spherocyte = 1, echinocyte = 0, stomatocyte = 0}\n')
    rc = main(["assess", str(tmp_path / "series"), "-o", str(tmp_path / "out"), "--model", str(model),
               "--schemes", str(tmp_path / "schemes.toml"), "--no-overlays", "--device", "cpu", "--batch-images", "3"])
    assert rc == 0 and calls_devices == ["cpu"]
    assert "1 image(s) analysed" in capsys.readouterr().out
    idx = pd.read_csv(tmp_path / "out" / "indices.csv")
    assert idx["scheme"].tolist() == ["sph"] and idx["value"].iloc[0] == pytest.approx(0.25)
    assert not (tmp_path / "out" / "overlays").exists()
    assert main(["assess", str(tmp_path / "missing"), "-o", str(tmp_path / "o2"), "--model", str(model)]) == 1
    with pytest.raises(SystemExit) as exit_info:
        main(["assess", str(tmp_path / "series"), "-o", str(tmp_path / "o3"), "--batch-images", "0"])
    assert exit_info.value.code == 2 and "at least 1" in capsys.readouterr().err


def test_assess_with_a_real_tiny_model(tmp_path):
    """The real load_model / predict_image path (random weights: plumbing only)."""
    import torch

    from rbclib.seg.models import build_model

    torch.manual_seed(0)
    model_dir = tmp_path / "seg_backbone"
    model_dir.mkdir()
    net = build_model("unet", encoder="resnet18", in_channels=1, classes=5)
    torch.save({"model": net.state_dict()}, model_dir / "best.pt")
    (model_dir / "config.json").write_text(json.dumps({"model_name": "unet", "encoder": "resnet18", "in_channels": 1,
                                                       "classes": 5, "patch": 64, "pixel_size_m": PAPER_PX}))
    phase, _ = _disk_field(FIELD, 3.0, PAPER_PX, shape_um=(12.0, 12.0))
    write_phase(tmp_path / "in" / "a.tif", phase)
    r = A.assess(tmp_path / "in", tmp_path / "out", segmenter=S.Segmenter(model_dir), n_boot=20, progress=False)
    assert r.failures == [] and r.processed == ["a"]
    assert (tmp_path / "out" / "report.md").is_file()
    if len(r.cells):
        assert r.cells["class_confidence"].between(0, 1).all()


@pytest.mark.realdata
@pytest.mark.slow
def test_assess_real_hologram(tmp_path, oracle, shared_data):
    """A real off-axis RBC hologram (pyDHM) goes through reconstruction and the batch: the 6-7
    cell bodies of this field (phase above 1.5 rad, the oracle's "spherocyte" core) each come
    out as one cell, the core merged with the "discocyte" ring that encloses it."""
    import shutil

    model, _ = oracle
    (tmp_path / "in").mkdir()
    shutil.copy(shared_data / "holograms" / "rbc_pydhm.jpg", tmp_path / "in")
    r = A.assess(tmp_path / "in", tmp_path / "out", segmenter=S.Segmenter(model), n_boot=50, progress=False)
    assert r.failures == [] and r.processed == ["rbc_pydhm"]
    info = json.loads((tmp_path / "out" / "per_image" / "rbc_pydhm.json").read_text())
    assert info["kind"] == "hologram" and info["compensation"] == "numerical"
    assert 5 <= (r.cells["phase_max_rad"] > 1.5).sum() <= 8
    assert "pixel size is the built-in default" in (tmp_path / "out" / "report.md").read_text()


def test_a_bad_image_in_a_segmentation_batch_fails_alone(tmp_path, oracle, monkeypatch):
    """Images are segmented batch_images at a time; an image the model refuses is skipped
    with its own name and problem while the others of its batch are analysed."""
    import rbclib.seg.infer

    def picky(model, phases, **kw):
        if any(float(p.max()) > 1.9 for p in phases):
            raise ValueError("phase too high for this test model")
        return _oracle_predict(model, phases, **kw)

    model, _ = oracle
    monkeypatch.setattr(rbclib.seg.infer, "predict_images", picky)
    disco, _ = _disk_field([(c, 1) for c, _ in FIELD], 3.0, PAPER_PX)
    sphero, _ = _disk_field(FIELD, 3.0, PAPER_PX)
    for name, phase in (("a", disco), ("b", sphero), ("c", disco), ("d", disco), ("e", disco)):
        write_phase(tmp_path / "in" / f"{name}.tif", phase)
    r = A.assess(tmp_path / "in", tmp_path / "out", segmenter=S.Segmenter(model), n_boot=50, progress=False, on_error=None,
                 batch_images=3)
    assert sorted(r.processed) == ["a", "c", "d", "e"]
    assert [(Path(f).name, p) for f, p in r.failures] == [("b.tif", "ValueError: phase too high for this test model")]
    assert len(r.cells) == 16 and set(r.cells["class_name"]) == {"discocyte"}
    assert not (tmp_path / "out" / "per_image" / "b.json").exists()


# ---------------------------------------------------------------- reliability: keys, locks, names, bounds


def test_resume_keys_hash_contents_not_size_and_time(tmp_path, oracle):
    """An input or weights file replaced by other bytes with the same size and mtime is
    analysed again; an unchanged one is reused."""
    model, _ = oracle
    phase, _ = _disk_field(FIELD, 3.0, PAPER_PX)
    src = tmp_path / "in" / "a.tif"
    write_phase(src, phase)
    first = A.assess(tmp_path / "in", tmp_path / "out", segmenter=S.Segmenter(model), n_boot=10, progress=False)
    assert first.processed == ["a"] and len(first.cells) == 4
    stat = src.stat()
    moved = np.roll(phase, 1, axis=1)
    moved[:, 0] = 0
    write_phase(src, moved[:, ::-1].copy())                      # other bytes, same size
    assert src.stat().st_size == stat.st_size
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = A.assess(tmp_path / "in", tmp_path / "out", segmenter=S.Segmenter(model), n_boot=10, progress=False)
    assert again.processed == ["a"] and not again.skipped
    weights = model / "best.pt"
    wstat = weights.stat()
    weights.write_bytes(b"y")
    os.utime(weights, ns=(wstat.st_atime_ns, wstat.st_mtime_ns))
    third = A.assess(tmp_path / "in", tmp_path / "out", segmenter=S.Segmenter(model), n_boot=10, progress=False)
    assert third.processed == ["a"]
    fourth = A.assess(tmp_path / "in", tmp_path / "out", segmenter=S.Segmenter(model), n_boot=10, progress=False)
    assert fourth.skipped == ["a"] and not fourth.processed


def test_results_of_another_run_are_never_gathered(tmp_path, oracle):
    """A per-image result written with other options (a concurrent or older run) is reported,
    not mixed into the tables."""
    model, _ = oracle
    for name in ("a", "b"):
        write_phase(tmp_path / "in" / f"{name}.tif", _disk_field(FIELD, 3.0, PAPER_PX)[0])
    A.assess(tmp_path / "in", tmp_path / "out", segmenter=S.Segmenter(model), n_boot=10, progress=False)
    rec = tmp_path / "out" / "per_image" / "b.json"
    data = json.loads(rec.read_text())
    data["key"]["split"] = "other run"
    rec.write_text(json.dumps(data))
    keys = {"a": json.loads((tmp_path / "out" / "per_image" / "a.json").read_text())["key"],
            "b": {**data["key"], "split": True}}
    jobs = inputs.discover_inputs(tmp_path / "in")
    res = A._finish(tmp_path / "out", jobs, keys, failures=[], skipped=[], processed=[], model_path=model,
                    model_note="m", input_path=tmp_path / "in", schemes=None, n_boot=10, seed=0)
    assert set(res.cells["image"]) == {"a"} and len(res.cells) == 4
    assert len(res.failures) == 1 and "written by another run" in res.failures[0][1]


def test_a_second_run_into_the_same_folder_is_refused_and_stale_locks_are_taken(tmp_path, oracle):
    import subprocess
    import sys

    from rbclib.core.files import LOCK_NAME

    model, _ = oracle
    write_phase(tmp_path / "in" / "a.tif", _disk_field(FIELD, 3.0, PAPER_PX)[0])
    out = tmp_path / "out"
    out.mkdir()
    import socket

    (out / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "tool": "rbc assess",
                                             "since": "now"}))
    with pytest.raises(ValueError, match=r"out: in use by rbc assess \(pid"):
        A.assess(tmp_path / "in", out, segmenter=S.Segmenter(model), n_boot=10, progress=False)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_NAME).write_text(json.dumps({"pid": int(gone.stdout), "host": socket.gethostname()}))
    r = A.assess(tmp_path / "in", out, segmenter=S.Segmenter(model), n_boot=10, progress=False)
    assert r.processed == ["a"] and not (out / LOCK_NAME).exists()


def test_formula_like_names_are_neutralised_in_csv_and_escaped_in_the_report(tmp_path, oracle):
    model, _ = oracle
    name = '=HYPERLINK("x","click")'
    write_phase(tmp_path / "in" / f"{name}.tif", _disk_field(FIELD, 3.0, PAPER_PX)[0])
    (tmp_path / "in" / "@<img src=x onerror=alert(1)>.tif").write_bytes(b"not a tiff")
    r = A.assess(tmp_path / "in", tmp_path / "out", segmenter=S.Segmenter(model), n_boot=10, progress=False, on_error=None)
    assert set(r.cells["image"]) == {name}                                   # in memory: the name as it is
    cells = pd.read_csv(tmp_path / "out" / "cells.csv")
    assert set(cells["image"]) == {"'" + name}
    assert (pd.read_csv(tmp_path / "out" / "per_image" / f"{name}.csv")["image"] == "'" + name).all()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "<img" not in report.replace("\\<img", "") and "\\<img src=x onerror=alert(1)\\>" in report
    assert r.cells["area_um2"].min() > 0                                    # numbers are left alone


def test_a_claimed_pixel_size_cannot_ask_for_unbounded_memory(tmp_path, oracle):
    model, _ = oracle
    write_phase(tmp_path / "in" / "a.tif", _disk_field(FIELD, 3.0, PAPER_PX, shape_um=(74.0, 74.0))[0])  # 514 px
    r = A.assess(tmp_path / "in", tmp_path / "out", segmenter=S.Segmenter(model), n_boot=10, progress=False, on_error=None,
                 optics=image.OpticsOptions(pixel_size_m=5e-6))
    assert not r.processed and len(r.failures) == 1
    assert "would be resampled to" in r.failures[0][1] and "--pixel-size" in r.failures[0][1]
    S.check_resampled_size((8000, 8000), 1.0, PAPER_PX, PAPER_PX)             # 64 MP: allowed
    with pytest.raises(ValueError, match="more than the"):
        S.check_resampled_size((512, 512), 34.7, 5e-6, PAPER_PX)


def test_day_maps_match_paths_and_refuse_ambiguity(tmp_path):
    root = tmp_path / "series"
    for day in (8, 13):
        write_phase(root / f"day_{day:02d}" / "field_0000.tif", np.arange(16, dtype=np.float32).reshape(4, 4))
    (tmp_path / "stem.csv").write_text("file,day\nfield_0000,20\n")
    with pytest.raises(ImageFileError, match=r"stem\.csv: 'field_0000' names 2 images .*day_08/field_0000"):
        inputs.discover_inputs(root, day_map=tmp_path / "stem.csv")
    (tmp_path / "paths.csv").write_text("file,day\nday_08/field_0000.tif,9\nday_13/field_0000,14\n")
    jobs = inputs.discover_inputs(root, day_map=tmp_path / "paths.csv")
    assert {j.image: j.day for j in jobs} == {"day_08/field_0000": 9.0, "day_13/field_0000": 14.0}
    (tmp_path / "conflict.csv").write_text("file,day\nday_08/field_0000.tif,9\nday_08/field_0000.tif,10\n")
    with pytest.raises(ImageFileError, match=r"conflict\.csv: 'day_08/field_0000.tif' has two days: 9 \(row 2\) "
                                             r"and 10 \(row 3\)"):
        inputs.read_day_map(tmp_path / "conflict.csv")
    for bad in ("inf", "-5", "nan", "x"):
        (tmp_path / "bad.csv").write_text(f"file,day\nday_08/field_0000.tif,{bad}\n")
        with pytest.raises(ImageFileError, match=r"bad\.csv: storage days must be finite numbers >= 0: row 2"):
            inputs.read_day_map(tmp_path / "bad.csv")
    (tmp_path / "latin1.csv").write_bytes("file,day\nday_08/fïeld.tif,9\n".encode("latin-1"))
    with pytest.raises(ImageFileError, match=r"latin1\.csv: the day map is not UTF-8"):
        inputs.read_day_map(tmp_path / "latin1.csv")
    (tmp_path / "partial.csv").write_text("file,day\nday_08/field_0000.tif,9\nDay_13/Field_0000.tif,14\n")
    with pytest.warns(UserWarning) as caught:
        jobs = inputs.discover_inputs(root, day_map=tmp_path / "partial.csv")
    text = " | ".join(str(w.message) for w in caught)
    assert "match no image" in text and "'Day_13/Field_0000.tif'" in text and "day_13/field_0000" in text
    assert {j.image: j.day for j in jobs} == {"day_08/field_0000": 9.0, "day_13/field_0000": 13.0}


def test_false_detections_are_scored(tmp_path, oracle):
    """An empty truth field with cells found in it: the confusion has them in row 'no cell' and
    the precision falls."""
    from rbclib.seg.metrics import NO_CELL

    model, _ = oracle
    phase, labels = _disk_field(FIELD, 3.0, PAPER_PX)
    write_phase(tmp_path / "in" / "phase" / "a.tif", phase)
    write_labels(tmp_path / "in" / "labels" / "a.png", np.zeros_like(labels))
    r = A.assess(tmp_path / "in", tmp_path / "out", segmenter=S.Segmenter(model), n_boot=10, progress=False)
    assert r.summary.confusion.loc[NO_CELL].sum() == 4
    assert r.summary.confusion.loc[NO_CELL, "discocyte"] == 3 and r.summary.precision["discocyte"] == 0.0
    assert "4 detection(s) on true background" in (tmp_path / "out" / "report.md").read_text()


def test_a_background_with_objects_falls_back_to_numerical_compensation(tmp_path, oracle):
    """A background hologram that holds cells (here: another field's hologram) is named in a
    warning and the field is compensated numerically, not refused."""
    import shutil

    from rbclib.physics.simulated_datasets import simulate_dataset

    model, _ = oracle
    data = simulate_dataset(tmp_path / "sim", n_fields=2, seed=4, field_px=256, progress=False)
    shutil.copyfile(data / "holograms" / "field_0001.png", data / "backgrounds" / "field_0000.png")
    with pytest.warns(UserWarning, match=r"backgrounds/field_0000.png: holds objects of its own.*field_0000.png is "
                                         r"compensated numerically instead"):
        r = A.assess(data, tmp_path / "out", segmenter=S.Segmenter(model), n_boot=10, progress=False, on_error=None)
    assert sorted(r.processed) == ["field_0000", "field_0001"] and not r.failures
    info = json.loads((tmp_path / "out" / "per_image" / "field_0000.json").read_text())
    assert info["compensation"] == "numerical (its background hologram was refused)"


def test_resize_to_is_scikit_images_nearest_neighbour_in_the_maps_dtype():
    from skimage.transform import resize

    rng = np.random.default_rng(0)
    for shape, out in (((450, 451), (900, 903)), ((300, 700), (911, 1999)), ((100, 100), (37, 41))):
        ids = rng.integers(0, 60000, shape).astype(np.int32)
        ref = resize(ids, out, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
        got = S.resize_to(ids, out)
        assert got.dtype == np.int32 and np.array_equal(got, ref)

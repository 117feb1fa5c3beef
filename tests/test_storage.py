"""Storage statistics: class ratios with CIs, morphology indices, trends, errors, figures, report."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from rbclib.study import storage, storage_report
from rbclib.core.labels import overlay_rgb
from rbclib.study.storage import CELL_CLASS_NAMES, IndexScheme


def _cells(counts_by_image: dict[tuple[float, str], dict[str, int]], **extra) -> pd.DataFrame:
    rows = []
    for (day, image), counts in counts_by_image.items():
        for cls, n in counts.items():
            rows += [{"day": day, "image": image, "class_name": cls, **extra}] * n
    return pd.DataFrame(rows)


def _random_series(seed=0, days=(8, 40, 57), n_img=6):
    rng = np.random.default_rng(seed)
    mix = {8: [0.9, 0.02, 0.04, 0.04], 40: [0.6, 0.15, 0.2, 0.05], 57: [0.2, 0.5, 0.25, 0.05]}
    rows = []
    for d in days:
        for i in range(n_img):
            for c in rng.choice(CELL_CLASS_NAMES, size=int(rng.integers(20, 40)), p=mix[d]):
                rows.append({"day": d, "image": f"day{d}/img{i}", "class_name": c,
                             "area_um2": rng.normal(45 - 0.2 * d, 3), "dry_mass_pg": rng.normal(29, 2),
                             "sphericity": rng.normal(0.7 + 0.004 * d, 0.02)})
    return pd.DataFrame(rows)


def test_ratios_are_pooled_counts_and_sum_to_one():
    cells = _cells({(8, "a"): {"discocyte": 9, "spherocyte": 1}, (8, "b"): {"discocyte": 5, "echinocyte": 5}})
    r = storage.class_ratios(cells, n_boot=500)
    day8 = r.set_index("class_name")
    assert day8.loc["discocyte", "ratio"] == pytest.approx(14 / 20)
    assert day8.loc["echinocyte", "count"] == 5 and day8.loc["stomatocyte", "ratio"] == 0
    assert r["ratio"].sum() == pytest.approx(1.0)
    assert (r["n_cells"] == 20).all() and (r["n_images"] == 2).all()
    assert (r["ci_low"] <= r["ratio"] + 1e-12).all() and (r["ratio"] <= r["ci_high"] + 1e-12).all()
    assert r["ci_method"].str.startswith("cluster bootstrap").all()


def test_single_image_day_uses_wilson():
    cells = _cells({(3, "only"): {"discocyte": 8, "spherocyte": 2}})
    r = storage.class_ratios(cells).set_index("class_name")
    lo, hi = storage.wilson_interval(8, 10)
    assert r.loc["discocyte", "ci_low"] == pytest.approx(lo) and r.loc["discocyte", "ci_high"] == pytest.approx(hi)
    # Wilson 95 % interval of 8/10 (textbook value 0.490-0.943)
    assert lo == pytest.approx(0.490, abs=1e-3) and hi == pytest.approx(0.943, abs=1e-3)
    assert "Wilson" in r["ci_method"].iloc[0]


def test_cluster_bootstrap_wider_than_wilson_when_images_disagree():
    # Two images with opposite mixes: between-image spread that cell-level Wilson ignores.
    cells = _cells({(1, f"i{k}"): ({"discocyte": 45, "spherocyte": 5} if k % 2 else {"discocyte": 5, "spherocyte": 45})
                    for k in range(6)})
    r = storage.class_ratios(cells, n_boot=2000, seed=1).set_index("class_name")
    lo, hi = storage.wilson_interval(150, 300)
    width_boot = r.loc["discocyte", "ci_high"] - r.loc["discocyte", "ci_low"]
    assert width_boot > 2 * (hi - lo)


def test_empty_images_count_as_clusters():
    cells = _cells({(8, "a"): {"discocyte": 10}})
    r = storage.class_ratios(cells, images_by_day={8: ["a", "empty1", "empty2"]}, n_boot=200)
    assert (r["n_images"] == 3).all() and r.set_index("class_name").loc["discocyte", "ratio"] == 1.0


def test_ratios_deterministic_and_reject_unknown_class():
    cells = _random_series()
    a = storage.class_ratios(cells, n_boot=300, seed=3)
    b = storage.class_ratios(cells, n_boot=300, seed=3)
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(ValueError, match="unknown class"):
        storage.class_ratios(cells.assign(class_name="platelet"))


def test_undated_unit_is_reported_as_unit():
    cells = _cells({(math.nan, "a"): {"discocyte": 3, "echinocyte": 1}, (math.nan, "b"): {"discocyte": 2}})
    r = storage.class_ratios(cells, n_boot=100)
    assert r["day"].isna().all() and r.set_index("class_name").loc["discocyte", "ratio"] == pytest.approx(5 / 6)
    assert storage.wide_ratio_table(r)["day"].tolist() == ["unit"]


def test_morphology_indices_are_weighted_shares():
    cells = _cells({(8, "a"): {"discocyte": 6, "spherocyte": 2, "echinocyte": 1, "stomatocyte": 1},
                    (8, "b"): {"discocyte": 6, "spherocyte": 2, "echinocyte": 1, "stomatocyte": 1}})
    idx = storage.morphology_indices(cells, n_boot=200).set_index("scheme")
    w = storage.MORPHOLOGY_SCHEMES["morphology_index"].weights
    expect = (0.6 * w["discocyte"] + 0.2 * w["spherocyte"] + 0.1 * w["echinocyte"] + 0.1 * w["stomatocyte"])
    assert idx.loc["morphology_index", "value"] == pytest.approx(expect)
    assert idx.loc["late_stage_share", "value"] == pytest.approx(0.3)
    # identical images: no between-image spread
    assert idx.loc["late_stage_share", "ci_low"] == pytest.approx(0.3)
    custom = {"sph": IndexScheme("sph", {"discocyte": 0, "spherocyte": 1, "echinocyte": 0, "stomatocyte": 0}, "x")}
    assert storage.morphology_indices(cells, schemes=custom, n_boot=50)["value"].iloc[0] == pytest.approx(0.2)


def test_index_scheme_validation_and_mapping():
    with pytest.raises(ValueError, match="exactly"):
        IndexScheme("bad", {"discocyte": 0}, "")
    with pytest.raises(ValueError, match="0..1"):
        IndexScheme("bad", {"discocyte": 0, "spherocyte": 2, "echinocyte": 0, "stomatocyte": 0}, "")
    s = storage.schemes_from_mapping({"a": {"weights": {"discocyte": 0, "spherocyte": 1, "echinocyte": 0.5,
                                                         "stomatocyte": 0.5}, "description": "d"}})
    assert s["a"].vector().tolist() == [0, 1, 0.5, 0.5]


def test_index_rises_with_storage():
    idx = storage.morphology_indices(_random_series(), n_boot=200)
    late = idx[idx["scheme"] == "late_stage_share"].set_index("day")["value"]
    assert late[8] < late[40] < late[57]


def test_measurement_trends():
    cells = _random_series()
    t = storage.measurement_trends(cells)
    allc = t[(t["class_name"] == "all") & (t["measurement"] == "area_um2")].set_index("day")
    assert allc.loc[8, "mean"] == pytest.approx(cells.loc[cells["day"] == 8, "area_um2"].mean())
    assert allc.loc[8, "n"] == (cells["day"] == 8).sum()
    assert set(t["measurement"]) == {"area_um2", "dry_mass_pg", "sphericity"}


def test_ratio_errors_in_percentage_points():
    truth = _cells({(8, "a"): {"discocyte": 90, "spherocyte": 10}})
    est = _cells({(8, "a"): {"discocyte": 85, "spherocyte": 15}})
    e = storage.ratio_errors(storage.class_ratios(est, n_boot=10), storage.class_ratios(truth, n_boot=10))
    e = e.set_index("class_name")
    assert e.loc["discocyte", "error_pp"] == pytest.approx(-5.0)
    assert e.loc["spherocyte", "error_pp"] == pytest.approx(5.0)
    assert not e.loc["discocyte", "within_target"] and e.loc["echinocyte", "within_target"]


def test_summary_figures_and_report():
    import matplotlib

    matplotlib.use("Agg")
    cells = _random_series()
    conf = pd.DataFrame([[0, 50, 2, 1, 3], [0, 1, 20, 1, 0], [1, 1, 2, 30, 0], [0, 3, 0, 0, 9]],
                        index=CELL_CLASS_NAMES, columns=["missed", *CELL_CLASS_NAMES])
    s = storage_report.summarise(cells, truth_cells=cells, confusion=conf, n_boot=100)
    assert s.accuracy["discocyte"] == pytest.approx(50 / 56)
    assert (s.errors["error_pp"] == 0).all()
    figs = storage_report.summary_figures(s)
    assert set(figs) == {"ratios", "indices", "measurements", "confusion"}
    assert all(hasattr(f, "savefig") for f in figs.values())
    ctx = storage_report.ReportContext(input="`x`", model="`m`", n_images=18, sources=["Images: 18 phase(s)"],
                                failures=[("bad.tif", "2 NaN pixel(s)")], figures={"ratios": "figures/ratios.png"},
                                files={"cells.csv": "cells"}, generated="today")
    text = storage_report.render_report(s, ctx)
    for needle in ("## Class ratios per storage day", "bad.tif", "2 NaN pixel(s)", "figures/ratios.png",
                   "cluster bootstrap", "late_stage_share", "## Accuracy against ground truth", "Ratio error"):
        assert needle in text
    day8 = s.ratios[(s.ratios["day"] == 8) & (s.ratios["class_name"] == "discocyte")].iloc[0]
    assert f"{100 * day8['ratio']:.1f} (" in text


def test_overlay_rgb():
    phase = np.zeros((20, 20), np.float32)
    phase[5:10, 5:10] = 2.0
    labels = np.zeros((20, 20), np.uint8)
    labels[5:10, 5:10] = 2  # spherocyte: blue
    inst = (labels > 0).astype(np.int32)
    rgb = overlay_rgb(phase, labels, instances=inst)
    assert rgb.shape == (20, 20, 3) and rgb.dtype == np.uint8
    assert rgb[7, 7, 2] > rgb[7, 7, 0]          # tinted blue inside
    assert tuple(rgb[5, 5]) == (255, 255, 255)  # outline
    assert rgb[0, 0].tolist() == [0, 0, 0]      # background stays grey (dark)


def test_accuracy_by_attribute_splits_one_class_by_a_truth_column(tmp_path):
    from rbclib.core.io import write_instances, write_labels

    series, labels_dir = tmp_path / "series", tmp_path / "out" / "labels"
    inst = np.zeros((40, 40), np.int32)
    inst[2:10, 2:10], inst[2:10, 20:28], inst[20:30, 2:12], inst[20:30, 20:30] = 1, 2, 3, 4
    pred = np.zeros((40, 40), np.uint8)
    pred[2:10, 2:10] = 1    # cell 1 (early echinocyte) called a discocyte
    pred[2:10, 20:28] = 3   # cell 2 (mid stage) right
    pred[20:30, 2:12] = 3   # cell 3 (late) right ...
    pred[20:24, 2:12] = 4   # ... by majority (6 of 10 rows), despite a stomatocyte part
    pred[20:30, 20:30] = 1  # cell 4 is a discocyte: not counted
    write_instances(series / "day_08" / "instances" / "f0.png", inst)
    write_labels(labels_dir / "day_08" / "f0.png", pred)
    pd.DataFrame({"dataset": "day_08", "image": "f0", "cell_id": [1, 2, 3, 4],
                  "class_name": ["echinocyte"] * 3 + ["discocyte"], "echinocyte_stage": [0.1, 0.5, 0.9, np.nan]}
                 ).to_csv(series / "cells.csv", index=False)
    out = storage.accuracy_by_attribute(series, labels_dir, bins=(0.0, 0.3, 0.7, 1.0))
    assert list(out["cells"]) == [1, 1, 1]
    assert list(out["accuracy"]) == [0.0, 1.0, 1.0]
    assert list(out["as_discocyte"]) == [1.0, 0.0, 0.0]
    assert "as_echinocyte" not in out and "as_background" in out
    with pytest.raises(ValueError, match="missing columns"):
        storage.accuracy_by_attribute(series, labels_dir, column="nope")


def test_ratio_error_target_is_the_callers():
    truth = _cells({(8, "a"): {"discocyte": 90, "spherocyte": 10}})
    est = _cells({(8, "a"): {"discocyte": 85, "spherocyte": 15}})          # 5 points off
    ctx = storage_report.ReportContext(input="`x`", model="`m`", n_images=1, sources=[], failures=[], figures={},
                                files={}, generated="today")
    for target, inside in ((3.0, 2), (6.0, 4)):
        s = storage_report.summarise(est, truth_cells=truth, n_boot=10, target_pp=target)
        assert int(s.errors["within_target"].sum()) == inside
        assert f"{inside} of 4 day/class pairs lie within {target:g} points" in storage_report.render_report(s, ctx)

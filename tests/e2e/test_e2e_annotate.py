"""02_annotate in JupyterLab on real-data-like input (phase images, no ground truth): a person
labels every cell with the buttons (and once with the key box), undoes a click, saves the
masks and runs the rest; the files must hold exactly the classes that were clicked."""
from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from rbclib.annotate.session import AnnotationSession
from rbclib.profile import get_profile
from rbclib.core.labels import CLASS_NAMES
from rbclib.physics.simulated_datasets import simulate_dataset

CSS = {1: "discocyte", 2: "spherocyte", 3: "echinocyte", 4: "stomatocyte", 0: "not-a-cell"}


def _actions(path: Path) -> list[dict]:
    return json.loads(path.read_text())["actions"]


@pytest.fixture
def phase_only_run(lab) -> Path:
    """Three small simulated fields with only phase/ and optics.json: the real-data path of 02."""
    run = lab.root / "run"
    simulate_dataset(run, n_fields=3, seed=3, field_px=256, cells_per_field=(3, 4), progress=False)
    for name in ("holograms", "backgrounds", "labels", "instances"):
        shutil.rmtree(run / name)
    for name in ("cells.csv", "splits.json", "simulation.json"):
        (run / name).unlink()
    return run


def test_annotate_in_jupyterlab(driver, lab, phase_only_run, prepare_notebook, tmp_path):
    run = phase_only_run
    prepare_notebook("02_annotate", lab.root, profile="smoke", run_dir=str(run), seed=0, interactive=True)
    decisions = run / "annotations" / "decisions.json"
    P = get_profile("smoke")["annotate"]
    session = AnnotationSession(sorted((run / "phase").glob("*.tif")), tmp_path / "scratch.json", threshold_rad=None,
                                edge_fraction=P["edge_fraction"], min_separation_um=P["min_separation_um"],
                                min_area_um2=P["min_area_um2"])
    all_cells = {(stem, cell) for stem in session.stems for cell in session.cells(stem)}
    assert 4 <= len(all_cells) <= 30, "fixture should give a handful of cells to click"

    driver.open("02_annotate.ipynb")
    # Run All stops, as designed, at the export cell: nothing is labelled yet.
    driver.run_all(timeout_s=300, expect_error="is fully annotated yet")
    page = driver.page
    page.wait_for_selector("button.rbc-annotate-discocyte")
    assert _actions(decisions) == []
    driver.screenshot("01_widget_before_labelling", show=".rbc-annotate")

    def label(cls: int, *, key: bool = False) -> None:
        n = len(_actions(decisions))
        if key:
            page.locator(".rbc-annotate-key input").fill(str(cls))
        else:
            driver.click(f"rbc-annotate-{CSS[cls]}")
        driver.wait_for_file(decisions, lambda p: len(_actions(p)) == n + 1 and _actions(p)[-1]["label"] == cls)

    label(1)
    label(3)
    driver.click("rbc-annotate-undo")
    driver.wait_for_file(decisions, lambda p: len(_actions(p)) == 1)
    page.get_by_text("Undid label").wait_for()
    driver.screenshot("02_after_undo", show=".rbc-annotate")
    label(4, key=True)
    clicked = [1, 4]
    for cls in itertools.islice(itertools.cycle([3, 2, 1, 0, 4]), len(all_cells) - 2):
        label(cls)
        clicked.append(cls)
    page.get_by_text("Every cell is decided").wait_for()
    driver.screenshot("03_every_cell_decided", show=".rbc-annotate")

    actions = _actions(decisions)
    assert [a["op"] for a in actions] == ["label"] * len(all_cells)
    assert {(a["image"], a["cell"]) for a in actions} == all_cells  # each cell once, none twice
    assert [a["label"] for a in actions] == clicked

    driver.click("rbc-annotate-export")
    page.get_by_text(f"Saved {len(session.stems)} image(s)").wait_for()
    cells = pd.read_csv(run / "cells.csv")
    expected = pd.Series([CLASS_NAMES[c] for c in clicked if c]).value_counts().sort_index()
    assert cells["class_name"].value_counts().sort_index().to_dict() == expected.to_dict()
    assert sorted(p.stem for p in (run / "labels").glob("*.png")) == session.stems

    # Done labelling: run the notebook on from the export cell, as its text says.
    driver.run_from("if widget is not None:", timeout_s=300)
    splits = json.loads((run / "splits.json").read_text())
    assert sorted(splits["train"] + splits["test"]) == session.stems and len(splits["test"]) == 1
    assert (run / "figures" / "02_annotations.png").exists()
    driver.screenshot("04_notebook_finished", show=".jp-CodeCell:last-child")


def test_annotate_with_the_shipped_model_prefilling_classes(driver, lab, phase_only_run, prepare_notebook):
    """02 with suggest_model="default": the shipped model pre-fills each cell; one click accepts a
    page of confident cells (saved as one decision), then the person corrects one cell."""
    run = phase_only_run
    prepare_notebook("02_annotate", lab.root, profile="smoke", run_dir=str(run), seed=0, interactive=True,
                     suggest_model="default")
    decisions = run / "annotations" / "decisions.json"
    driver.open("02_annotate.ipynb")
    driver.run_all(timeout_s=300, expect_error="is fully annotated yet")
    page = driver.page
    page.wait_for_selector("button.rbc-annotate-accept-page")
    page.get_by_text("model:").first.wait_for()
    driver.screenshot("05_prefilled_by_the_shipped_model", show=".rbc-annotate")
    assert _actions(decisions) == []

    driver.click("rbc-annotate-accept-page")
    driver.wait_for_file(decisions, lambda p: len(_actions(p)) > 0)
    page.get_by_text("Accepted the model's class").wait_for()
    accepted = _actions(decisions)
    assert all(a["suggested"] and a["batch"] == accepted[0]["batch"] for a in accepted)
    assert len({a["image"] for a in accepted}) == 1 and len(accepted) <= 12

    corrected = len(accepted)
    driver.click("rbc-annotate-stomatocyte")                 # the person overrules the model on one cell
    driver.wait_for_file(decisions, lambda p: len(_actions(p)) == corrected + 1)
    last = _actions(decisions)[-1]
    assert last["label"] == 4 and "suggested" not in last
    assert (last["image"], last["cell"]) not in {(a["image"], a["cell"]) for a in accepted}
    driver.screenshot("06_after_accepting_a_page_and_one_correction", show=".rbc-annotate")

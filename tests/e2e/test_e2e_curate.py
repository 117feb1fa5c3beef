"""04_curate_synthetic in JupyterLab: a person accepts, rejects, undoes, auto-fills, then
writes the selection; the files must say exactly what was clicked."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from rbclib.profile import get_profile


def _decisions(path: Path) -> dict:
    return json.loads(path.read_text())["decisions"]


def test_curate_in_jupyterlab(driver, lab, ddgan_run, prepare_notebook):
    run = lab.root / "run"
    shutil.copytree(ddgan_run, run)
    prepare_notebook("04_curate_synthetic", lab.root, profile="smoke", run_dir=str(run), seed=0, interactive=True)
    decisions = run / "synthetic" / "decisions.json"
    n_select = get_profile("smoke")["diffusion"]["n_select"]

    driver.open("04_curate_synthetic.ipynb")
    driver.run_all(timeout_s=300)
    page = driver.page
    page.wait_for_selector("button.rbc-curate-auto")
    assert page.locator("text=accepted 0 / target").count() == 1
    driver.screenshot("01_gallery_before_clicks", show="button.rbc-curate-auto")

    # The ids a person sees on the first page, from the buttons' CSS classes.
    classes = page.locator("button[class*='rbc-curate-accept-']").evaluate_all("els => els.map(e => e.className)")
    shown = [re.search(r"rbc-curate-accept-(\S+)", c).group(1) for c in classes]
    assert len(shown) >= 4
    a, b, c, d = shown[:4]

    def decide(cid: str, what: str) -> None:
        driver.click(f"rbc-curate-{what}-{cid}")
        driver.wait_for_file(decisions, lambda p: _decisions(p).get(cid, {}).get("decision") == what)
        page.wait_for_selector(f".rbc-curate-card-{what} button.rbc-curate-{what}-{cid}")

    decide(a, "accept")
    decide(b, "accept")
    decide(c, "reject")
    decide(d, "accept")
    driver.click("rbc-curate-undo")
    driver.wait_for_file(decisions, lambda p: d not in _decisions(p))
    page.wait_for_selector(f".rbc-curate-card-undecided button.rbc-curate-accept-{d}")
    assert page.locator("text=accepted 2 / target").count() == 1
    driver.screenshot("02_after_accept_reject_undo", show="button.rbc-curate-auto")

    driver.click("rbc-curate-auto")
    driver.wait_for_file(decisions, lambda p: sum(v["decision"] == "accept" for v in _decisions(p).values()) == n_select)
    page.wait_for_selector(f"text=accepted {n_select} / target {n_select}")
    driver.screenshot("03_after_auto_select", show="button.rbc-curate-auto")

    made = _decisions(decisions)
    assert {k: (v["decision"], v["by"]) for k, v in made.items() if k in (a, b, c)} == {
        a: ("accept", "user"), b: ("accept", "user"), c: ("reject", "user")}
    auto = {k: v for k, v in made.items() if k not in (a, b, c)}
    assert len(auto) == n_select - 2 and all(v["decision"] == "accept" and v["by"] == "auto" for v in auto.values())

    # The person is done: run the writing cells again from the selection cell.
    driver.run_from("selection = cdec.write_selection(", timeout_s=300)
    selection = json.loads((run / "synthetic" / "selection.json").read_text())
    assert selection["mode"] == "interactive"
    assert len(selection["accepted"]) == n_select and {a, b} <= set(selection["accepted"])
    assert selection["rejected"] == [c] and selection["selected_by"].get(d, "auto") == "auto"
    assert selection["selected_by"][a] == selection["selected_by"][b] == "user"
    phase_files = sorted(p.name for p in (run / "synthetic" / "train" / "phase").iterdir())
    assert len(phase_files) == 4 * n_select and f"{a}_r3.tif" in phase_files
    assert (run / "figures" / "04_class_balance.png").exists()
    driver.screenshot("04_selection_written", show=".jp-CodeCell:last-child")

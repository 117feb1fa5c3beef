"""The harness itself: JupyterLab + Chromium + a plain ipywidgets button that writes a file."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_probe_button_click_persists(driver, lab):
    shutil.copy(FIXTURES / "widget_probe.ipynb", lab.root / "widget_probe.ipynb")
    out = lab.root / "clicks.json"

    driver.open("widget_probe.ipynb")
    driver.run_all(timeout_s=120)
    driver.page.wait_for_selector("button.rbc-probe-button")
    driver.screenshot("01_probe_rendered")
    assert not out.exists()

    driver.click("rbc-probe-button")
    driver.wait_for_file(out, lambda p: json.loads(p.read_text())["clicks"] == [1])
    driver.click("rbc-probe-button")
    driver.wait_for_file(out, lambda p: json.loads(p.read_text())["clicks"] == [1, 2])
    driver.page.get_by_text("2 click(s) saved to clicks.json").wait_for()
    shot = driver.screenshot("02_probe_after_two_clicks")
    assert shot.stat().st_size > 10_000

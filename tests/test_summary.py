"""README numbers are generated: the measured block equals the committed results file."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rbclib.summary import readme_block, render_summary, run_summary, update_readme

ROOT = Path(__file__).resolve().parents[1]


def test_readme_block_matches_the_committed_results():
    results = ROOT / "docs" / "results" / "quick.json"
    summary = json.loads(results.read_text())
    assert readme_block((ROOT / "README.md").read_text(), "quick") == render_summary(summary), (
        "README's measured block differs from docs/results/quick.json: run "
        "`rbc report --run-dir runs/quick --results docs/results/quick.json --readme README.md`")


def test_summary_of_a_run_folder_and_readme_update(tmp_path):
    run = tmp_path / "run"
    (run / "tables").mkdir(parents=True)
    (run / "storage").mkdir()
    (run / "timings.json").write_text(json.dumps({
        "01_reconstruct": {"seconds": 60, "profile": "quick", "finished": "2026-12-01T10:00:00"},
        "06_finetune": {"seconds": 1800, "profile": "quick", "finished": "2026-12-01T10:31:00"}}))
    (run / "tables" / "dice.csv").write_text("Method,Discocyte,Overall\nResUnet,0.9,0.8123\nU-Net,0.8,0.7\n")
    (run / "storage" / "ratio_errors.csv").write_text(
        "day,class_name,abs_error_pp,within_target\n8,discocyte,1.0,True\n8,spherocyte,5.0,False\n")
    s = run_summary(run)
    assert s["minutes"] == {"01": 1.0, "06": 30.0} and s["minutes_total"] == 31.0 and s["profile"] == "quick"
    assert s["dice"] == {"ResUnet": 0.812, "U-Net": 0.7} and "aji" not in s
    assert s["storage"] == {"pairs": 2, "within_target": 1, "mean_error_pp": 3.0, "max_error_pp": 5.0}
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- measured:quick:start -->\nold\n<!-- measured:quick:end -->\n\nafter\n")
    update_readme(readme, s, "quick")
    text = readme.read_text()
    assert readme_block(text, "quick") == render_summary(s) and text.endswith("\n\nafter\n")
    assert "ResUnet 0.812, U-Net 0.700" in text and "1 of 2 day x class pairs" in text
    with pytest.raises(ValueError, match="no <!-- measured:paper:start -->"):
        readme_block(text, "paper")


def test_a_table_with_text_in_a_number_column_is_one_line_naming_it(tmp_path, capsys):
    from rbclib.cli import main

    tables = tmp_path / "run" / "tables"
    tables.mkdir(parents=True)
    (tables / "reconstruction_error.csv").write_text("field,rmse_cells_rad,rmse_background_rad\nf0,0.2,0.1\nf1,oops,0.1\n")
    assert main(["report", "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "reconstruction_error.csv: column 'rmse_cells_rad' holds 'oops' in row 3, not a number" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

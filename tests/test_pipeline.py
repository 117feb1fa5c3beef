"""The papermill harness on a tiny notebook fixture: order, parameters, selection, failure."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rbclib.cli import main
from rbclib.pipeline import NotebookFailed, discover, run_notebooks, select

FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"


def test_discover_orders_by_number():
    assert [s.number for s in discover(FIXTURES)] == ["01", "02", "03"]


def test_select_only_and_from():
    stages = discover(FIXTURES)
    assert [s.number for s in select(stages, only=["1", "03"])] == ["01", "03"]
    assert [s.number for s in select(stages, start_from="02")] == ["02", "03"]
    with pytest.raises(ValueError, match="no notebook numbered 07"):
        select(stages, only=["07"])


def test_run_injects_parameters_and_keeps_executed_copies(tmp_path):
    executed = run_notebooks(profile="smoke", run_dir=tmp_path, seed=21, notebooks_dir=FIXTURES, progress=False)
    assert [p.name for p in executed] == ["01_first.ipynb", "02_second.ipynb", "03_third.ipynb"]
    assert json.loads((tmp_path / "stage1.json").read_text()) == {"profile": "smoke", "seed": 21}
    assert (tmp_path / "stage2.txt").read_text() == "42"
    assert (tmp_path / "stage3.txt").read_text() == "smoke"
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert set(timings) == {"01_first", "02_second", "03_third"}
    assert all(t["seconds"] > 0 for t in timings.values())


def test_failure_names_notebook_and_cell_and_stops(tmp_path):
    with pytest.raises(NotebookFailed) as info:
        run_notebooks(profile="smoke", run_dir=tmp_path, notebooks_dir=FIXTURES, progress=False,
                      extra_parameters={"fail": True})
    msg = str(info.value)
    assert "02_second.ipynb" in msg and "failing on purpose" in msg
    assert info.value.cell_index == 2  # third cell of the committed notebook
    assert "cell 3 (counting from 1)" in msg
    assert not (tmp_path / "stage3.txt").exists()  # stopped at the first failure


def test_cli_run_only_and_unknown_profile(tmp_path, capsys):
    rc = main(["run", "--profile", "smoke", "--only", "01", "--run-dir", str(tmp_path), "--notebooks", str(FIXTURES)])
    assert rc == 0
    assert (tmp_path / "stage1.json").exists() and not (tmp_path / "stage3.txt").exists()
    with pytest.raises(SystemExit):
        main(["run", "--profile", "huge"])


def test_an_empty_or_unmatched_notebook_folder_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main(["run", "--profile", "smoke", "--run-dir", str(tmp_path / "run"), "--notebooks", str(empty)])
    assert rc == 1 and "no notebooks named NN_*.ipynb" in capsys.readouterr().err
    assert not (tmp_path / "run" / "notebooks").exists() and not (tmp_path / "run" / "report.md").exists()
    with pytest.raises(ValueError, match="--only abc: expected notebook numbers"):
        select(discover(FIXTURES), only=["abc"])
    with pytest.raises(ValueError, match="no notebook is both"):
        select(discover(FIXTURES), only=["01"], start_from="02")


def test_ctrl_c_leaves_one_line_and_a_copy_that_says_it_was_interrupted(tmp_path, capsys, monkeypatch):
    import nbformat
    import papermill

    def interrupted(source, target, **kw):
        nb = nbformat.read(source, as_version=4)
        nbformat.write(nb, target)                      # papermill writes its copy as it goes
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    rc = main(["run", "--profile", "smoke", "--run-dir", str(tmp_path), "--notebooks", str(FIXTURES)])
    err = capsys.readouterr().err
    assert rc == 130 and "interrupted during 01_first" in err and "Traceback" not in err
    copy = nbformat.read(tmp_path / "notebooks" / "01_first.ipynb", as_version=4)
    assert copy.metadata["rbc"]["interrupted"] is True and "Interrupted (Ctrl-C)" in copy.cells[0].source

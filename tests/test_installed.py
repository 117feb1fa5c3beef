"""rbclib installed as a wheel, away from its repository: model discovery, real-data and
notebook folders must not assume a source checkout (docs/ARCHITECTURE.md, "Package map")."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rbclib.core import paths

REPO = Path(__file__).resolve().parents[1]


def _fake_model(runs: Path, run: str) -> Path:
    d = runs / run / "models" / "seg_backbone"
    d.mkdir(parents=True)
    (d / "best.pt").write_bytes(b"x")
    (d / "config.json").write_text(json.dumps({"epochs": 1}))
    (d / "log.csv").write_text("epoch,val_dice_overall\n0,0.5\n")
    return d


def test_runs_roots_order_env_cwd_checkout(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.RUNS_ENV, str(tmp_path / "elsewhere"))
    assert paths.runs_roots() == [tmp_path / "elsewhere", Path("runs"), REPO / "runs"]
    monkeypatch.delenv(paths.RUNS_ENV)
    monkeypatch.setattr(paths, "source_checkout", lambda: None)
    assert paths.runs_roots() == [Path("runs")]


@pytest.mark.slow
def test_wheel_install_finds_models_in_cwd_and_rbc_runs(tmp_path):
    """Build and install the package (no dependencies) into a folder outside the repository,
    then ask the installed copy for the latest model from another working directory."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(REPO)], check=True, capture_output=True)
    assert (site / "rbclib" / "study" / "assess.py").is_file() and (site / "rbclib" / "profiles" / "segment.toml").is_file()
    shipped = site / "rbclib" / "models" / "default"
    assert {p.name for p in shipped.iterdir()} >= {"best.pt", "config.json", "card.json", "MODEL_CARD.md"}
    assert (site / "rbclib" / "models" / "recipe.toml").is_file()
    work = tmp_path / "work"
    in_cwd = _fake_model(work / "runs", "mine")
    elsewhere = _fake_model(tmp_path / "shared_runs", "lab")
    os.utime(elsewhere / "best.pt", (1, 1))        # older than the one in ./runs
    code = ("import rbclib.core.paths as p, rbclib.study.inputs as i, rbclib.pipeline as pl\n"
            "assert p.source_checkout() is None\n"
            f"assert i.resolve_model(None)[0].is_relative_to({str(site)!r})\n"
            "print(i.resolve_model('latest')[0])\n"
            "try:\n    pl.default_notebooks_dir()\nexcept ValueError as e:\n    print(e)\n")
    env = {**os.environ, "PYTHONPATH": str(site), paths.RUNS_ENV: str(tmp_path / "shared_runs")}
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, check=True)
    found, message = out.stdout.strip().splitlines()
    assert Path(found) == in_cwd.resolve()
    assert "--notebooks" in message
    os.utime(elsewhere / "best.pt")                 # now the lab's run is the most recent
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, check=True)
    assert Path(out.stdout.splitlines()[0]) == elsewhere.resolve()

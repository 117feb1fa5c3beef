"""The run report on fake run folders: full, empty, Markdown-only tables, bad files, pipeline hook."""
from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from rbclib.cli import main  # noqa: E402
from rbclib.core.config import Optics  # noqa: E402
from rbclib.profile import get_profile  # noqa: E402
from rbclib.pipeline import run_notebooks  # noqa: E402
from rbclib.report import STAGES, software_versions, write_run_report  # noqa: E402

PIPELINE_FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"


def _png(path: Path, value: float) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(1, 1), dpi=20)
    ax.imshow(np.full((4, 4), value), vmin=0, vmax=1)
    fig.savefig(path)
    plt.close(fig)
    return path.read_bytes()


def _csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


@pytest.fixture
def full_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    timings = {"01_reconstruct": {"seconds": 12.5, "profile": "smoke", "finished": "2026-11-25T10:00:00"},
               "03_train_diffusion": {"seconds": 30.25, "profile": "smoke", "finished": "2026-11-25T10:01:00"}}
    run.mkdir()
    (run / "timings.json").write_text(json.dumps(timings))
    Optics().replace(wavelength_m=633e-9).to_json(run / "optics.json")
    _csv(run / "tables" / "reconstruction_error.csv", [{"image": "field_0000", "rmse_rad": 0.0123456}])
    _csv(run / "tables" / "proposal_quality.csv", [{"precision": 0.91, "recall": 0.87}])
    _csv(run / "tables" / "measurement_errors.csv", [{"cell_id": i, "dry_mass_rel_err": 0.01 * i} for i in range(41)])
    _csv(run / "tables" / "ssl_probe.csv", [{"encoder": "ssl", "accuracy": 0.6543}])
    _csv(run / "tables" / "dice.csv", [{"method": "ResUnet (DA+SSL)", "discocyte": 0.9512, "overall": 0.88}])
    _csv(run / "tables" / "aji.csv", [{"method": "ResUnet (DA+SSL)", "overall": 0.7777}])
    _csv(run / "tables" / "compute.csv", [{"method": "ResUnet", "params": 73688197, "gmacs": 50.2}])
    _csv(run / "storage" / "ratios.csv", [{"storage_day": 8, "discocyte": 0.8}, {"storage_day": 57, "discocyte": 0.3}])
    _csv(run / "storage" / "ratio_errors.csv", [{"class": "discocyte", "mae": 0.0421}])
    _csv(run / "storage" / "indices.csv", [{"day": 57, "scheme": "MI", "value": 1.25}])
    (run / "storage" / "report.md").write_text("# storage report\n")
    _csv(run / "cells.csv", [{"image": "field_0000", "cell_id": i, "class_id": c, "class_name": n}
                             for i, (c, n) in enumerate([(1, "discocyte")] * 3 + [(3, "echinocyte")])])
    (run / "splits.json").write_text(json.dumps({"train": ["a", "b", "c"], "test": ["d"], "seed": 0,
                                                 "method": "stratified"}))
    (run / "synthetic").mkdir()
    (run / "synthetic" / "selection.json").write_text(json.dumps({
        "accepted": ["c1", "c2", "c3"], "rejected": ["c4"], "selected_by": {"c1": "user", "c2": "user", "c3": "auto"},
        "mode": "interactive", "rule": "balanced classes", "n_target": 3, "class_balance": {"discocyte": 0.5}}))
    _csv(run / "models" / "seg_backbone" / "log.csv", [{"epoch": 0, "val_dice": 0.5}, {"epoch": 1, "val_dice": 0.625}])
    (run / "models" / "seg_backbone" / "best.pt").write_bytes(b"x")
    _csv(run / "models" / "ddgan_phase" / "log.csv", [{"epoch": 3, "loss_g": 0.75}])
    _csv(run / "synthetic" / "class_balance.csv", [{"class": "spherocyte", "accepted_share": 0.3125}])
    _png(run / "figures" / "03_ddgan_samples.png", 0.2)
    _png(run / "figures" / "04_class_balance.png", 0.5)
    _png(run / "figures" / "08_storage_trends.png", 0.8)
    _png(run / "figures" / "09_extra.png", 0.1)
    return run


def _section(md: str, title: str) -> str:
    """The Markdown between the '## <title>' heading and the next '## ' heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", md, flags=re.S | re.M)
    assert match, f"no section {title!r} in the report"
    return match.group(1)


def test_full_run_report_gathers_every_stage(full_run: Path):
    md_path, html_path = write_run_report(full_run)
    assert (md_path, html_path) == (full_run / "report.md", full_run / "report.html")
    md, page = md_path.read_text(), html_path.read_text()

    assert "Profile: smoke." in md
    times = _section(md, "Time per stage")
    assert "| 01_reconstruct | 12.5 | smoke |" in times and "| total | 42.75 |" in times
    optics = _section(md, "Optics")
    assert "| wavelength_m | 6.33e-07 | m | given by the user |" in optics
    assert "| n_medium | 1.3334 |" in optics and "| alpha_m3_per_kg | 0.00019 | m^3/kg |" in optics
    profile = _section(md, "Profile")
    n_fields = get_profile("smoke")["simulate"]["n_fields"]
    assert f"| simulate | n_fields | {n_fields} |" in profile

    assert "| field_0000 | 0.01235 |" in _section(md, "01 Reconstruction")
    annot = _section(md, "02 Annotation")
    assert "| 0.91 | 0.87 |" in annot
    assert "41 rows, summarised; full table tables/measurement_errors.csv." in annot
    assert "| dry_mass_rel_err | 41 | 0.2 |" in annot  # column, count, mean: a summary, not 41 rows
    assert "| discocyte | 3 | 0.75 |" in annot and "| echinocyte | 1 | 0.25 |" in annot
    assert "3 train / 1 test images (method stratified, seed 0)" in annot
    curate = _section(md, "04 Synthetic pairs, curated")
    assert "3 accepted, 1 rejected (mode interactive; accepted 2 by user, 1 by auto)" in curate
    assert "| n_target | 3 |" in curate and "| discocyte | 0.5 |" in curate
    assert "![04_class_balance](figures/04_class_balance.png)" in curate and "| spherocyte | 0.3125 |" in curate
    assert "| ddgan_phase | no | 1 | 3 | 0.75 |" in _section(md, "03 Diffusion GAN (DDGAN)")
    assert "*Not run: no model folder of 05_ssl_pretrain under models/.*" in md
    assert "| ssl | 0.6543 |" in _section(md, "05 Self-supervised pretraining")
    finetune = _section(md, "06 Fine-tuning")
    assert "| seg_backbone | yes | 2 | 1 | 0.625 |" in finetune and "ddgan" not in finetune
    tables = _section(md, "07 Evaluation (Tables 1-3)")
    assert "**Table 1: Dice coefficient per class**" in tables and "| ResUnet (DA+SSL) | 0.9512 | 0.88 |" in tables
    assert "| ResUnet (DA+SSL) | 0.7777 |" in tables and "| ResUnet | 73688197 | 50.2 |" in tables
    storage = _section(md, "08 Storage study")
    assert "| 57 | 0.3 |" in storage and "| discocyte | 0.0421 |" in storage and "| 57 | MI | 1.25 |" in storage
    assert "storage/report.md" in storage
    assert "![08_storage_trends](figures/08_storage_trends.png)" in storage
    assert "![09_extra](figures/09_extra.png)" in _section(md, "Other figures")
    assert f"| numpy | {np.__version__} |" in _section(md, "Software")

    # Stages with all artefacts present have no "not run" line; 01/02/05/06/07 lack figures.
    for title in ("04 Synthetic pairs, curated", "08 Storage study", "Optics", "Time per stage"):
        assert "Not run" not in _section(md, title), title
    assert "01_reconstruct saved no figures/01_*.png." in md  # ran (timings.json), no figure
    assert "*Not run: no figures/02_*.png (02_annotate saves them).*" in md  # no timing, no figure

    # HTML: self-contained, every figure embedded byte for byte, tables as <table>.
    for name in ("03_ddgan_samples", "04_class_balance", "08_storage_trends", "09_extra"):
        encoded = base64.b64encode((full_run / "figures" / f"{name}.png").read_bytes()).decode()
        assert f'src="data:image/png;base64,{encoded}"' in page
    assert page.count("<img ") == 4 and "figures/03_ddgan_samples.png" in page
    assert "<caption>Table 2: aggregated Jaccard index (AJI) per class</caption>" in page
    assert "<td>0.7777</td>" in page and page.startswith("<!DOCTYPE html>")
    assert 'src="figures/' not in page  # nothing linked, all embedded


def test_empty_run_says_what_did_not_run(tmp_path: Path):
    md_path, html_path = write_run_report(tmp_path)
    md, page = md_path.read_text(), html_path.read_text()
    assert "Profile: unknown (no timings.json)." in md
    assert "*Not run: no stage recorded its time (timings.json absent; `rbc run` writes it).*" in md
    assert "*Not run: optics.json absent (01_reconstruct writes it).*" in md
    for stage in STAGES:
        section = _section(md, f"{stage.number} {stage.title}")
        assert f"*Not run: no figures/{stage.number}_*.png ({stage.notebook} saves them).*" in section
    assert "Table 1: Dice coefficient per class (tables/dice.csv absent; 07_evaluate writes it)" in md
    assert "selection of synthetic pairs (synthetic/selection.json absent; 04_curate_synthetic writes it)" in md
    assert "<img " not in page and page.count('class="not-run"') == md.count("*Not run:")
    assert "Software" in md  # versions are always there


def test_markdown_twin_used_when_csv_absent(tmp_path: Path):
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "dice.md").write_text("| method | overall |\n|---|---|\n| U-Net | 0.8123 |\n")
    md_path, html_path = write_run_report(tmp_path, profile="quick")
    tables = _section(md_path.read_text(), "07 Evaluation (Tables 1-3)")
    assert "| U-Net | 0.8123 |" in tables and "tables/dice.csv absent" not in tables
    assert "tables/aji.csv absent" in tables
    assert "| U-Net | 0.8123 |" in html_path.read_text()
    assert "Sizes of the 'quick' profile" in md_path.read_text()


def test_errors_name_the_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        write_run_report(tmp_path / "missing")
    (tmp_path / "optics.json").write_text("{not json")
    with pytest.raises(ValueError, match="optics.json"):
        write_run_report(tmp_path)


def test_cli_report(full_run: Path, capsys):
    assert main(["report", "--run-dir", str(full_run)]) == 0
    assert "report.md" in capsys.readouterr().out and (full_run / "report.html").exists()
    assert main(["report", "--run-dir", str(full_run / "absent")]) == 1
    assert "run folder not found" in capsys.readouterr().err


def test_software_versions_lists_the_stack():
    versions = software_versions()
    assert versions["numpy"] == np.__version__ and versions["pandas"] == pd.__version__
    assert re.fullmatch(r"3\.\d+\.\d+", versions["python"])


def test_pipeline_writes_the_report_only_after_a_full_run(tmp_path: Path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    shutil.copy(PIPELINE_FIXTURES / "01_first.ipynb", notebooks / "01_first.ipynb")
    partial = tmp_path / "partial"
    run_notebooks(profile="smoke", run_dir=partial, notebooks_dir=notebooks, only=["01"], progress=False)
    assert (partial / "timings.json").exists() and not (partial / "report.md").exists()
    full = tmp_path / "full"
    run_notebooks(profile="smoke", run_dir=full, notebooks_dir=notebooks, progress=False)
    md = (full / "report.md").read_text()
    assert "| 01_first |" in _section(md, "Time per stage") and "Profile: smoke." in md
    assert (full / "report.html").exists()


def test_markdown_table_escapes_pipes_and_newlines():
    import pandas as pd

    from rbclib.core.markdown import markdown_table

    md = markdown_table(pd.DataFrame({"file": ["a|b.tif", "evil\n## Heading.tif"], "n": [1.5, 2.0]}),
                        fmt=lambda v: f"{v:.1f}" if isinstance(v, float) else str(v), right_align=True)
    lines = md.splitlines()
    assert lines[1] == "|---|---:|" and len(lines) == 4                 # a name cannot add a line
    assert lines[2] == "| a\\|b.tif | 1.5 |" and lines[3] == "| evil ## Heading.tif | 2.0 |"


def test_one_line_flattens_line_breaks():
    from rbclib.core.markdown import one_line

    assert one_line("a\n# evil\r\nb.tif") == "a # evil b.tif" and one_line(3) == "3"

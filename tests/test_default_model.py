"""The shipped default model (rbclib/models/default): its card matches its files, it is what
``rbc assess`` and :func:`rbclib.analyse` use without a model, it needs no run folder, and
``rbc default-model`` rebuilds a carded model by the recipe."""
from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from rbclib.core.files import file_sha256
from rbclib.study import default_model as D
from rbclib.study import inputs

REPO = Path(__file__).resolve().parents[1]
SHIPPED = D.SHIPPED_MODEL_DIR


def test_the_card_matches_the_shipped_weights_and_config():
    card = json.loads((SHIPPED / "card.json").read_text())
    for name in D.CARD_FILES:
        assert file_sha256(SHIPPED / name) == card["sha256"][name], f"{name} changed without a new card"
    config = json.loads((SHIPPED / "config.json").read_text())
    recipe = D.read_recipe()
    assert card["recipe"] == recipe, "the recipe changed since the model was built: run `make default-model`"
    for key, value in recipe["train"].items():
        assert config[key] == value, key
    assert (SHIPPED / "MODEL_CARD.md").read_text() == D.render_card(card)
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) <= 20e6


def test_the_shipped_model_is_self_contained_and_loads():
    """Everything inference needs is in the folder's config: no run folder is read."""
    from rbclib.study.segmenter import Segmenter

    config = json.loads((SHIPPED / "config.json").read_text())
    for key in ("pixel_size_m", "phase_range", "trim_halo", "infer_tile", "postprocess", "classes", "in_channels"):
        assert key in config, key
    segmenter = Segmenter(SHIPPED, device="cpu")
    assert segmenter.pixel_size_source == "the model's config.json"
    assert segmenter.trim_halo == config["trim_halo"]
    assert next(segmenter.model.parameters()).dtype.is_floating_point


def test_which_model_is_used(tmp_path):
    model, note = inputs.resolve_model(None)
    assert model == SHIPPED and "shipped default model" in note and "MODEL_CARD.md" in note
    given, note = inputs.resolve_model(tmp_path / "m")
    assert given == tmp_path / "m" and "given with --model" in note
    with pytest.raises(FileNotFoundError, match="no trained model found"):
        inputs.resolve_model("latest", [tmp_path / "runs"])


@pytest.mark.realdata
def test_assess_without_a_model_uses_the_shipped_one_on_a_real_hologram(tmp_path, shared_data, capsys):
    """A fresh installation, no runs/ anywhere: `rbc assess` of a real hologram works and its
    report names the shipped model and its card."""
    from rbclib.cli import main

    (tmp_path / "in").mkdir()
    shutil.copy(shared_data / "holograms" / "rbc_pydhm_field_2021.png", tmp_path / "in")
    assert main(["assess", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--pixel-size", "1.465e-7",
                 "--wavelength", "5.32e-7"]) == 0
    assert "shipped default model" in capsys.readouterr().err
    report = (tmp_path / "out" / "report.md").read_text()
    assert "shipped default model" in report and "MODEL_CARD.md" in report
    cells = json.loads((tmp_path / "out" / "per_image" / "rbc_pydhm_field_2021.json").read_text())["n_cells"]
    assert 60 <= cells <= 130            # about 90 cells in this field (../shared/data/README.md)


def _quickstart_code() -> str:
    """The README's Python quickstart (the first ```python block)."""
    readme = (REPO / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", readme, re.S).group(1)


def test_the_readme_quickstart_runs_on_a_twin_hologram(tmp_path, monkeypatch):
    """The README's first Python example, on a twin hologram written as hologram.png: it
    returns a named result whose cells are the field's cells."""
    from rbclib.core.io import write_camera_image
    from rbclib.physics.simulate import simulate_field

    field = simulate_field(np.random.default_rng(11), field_px=512, mixture="discocyte=1", n_cells=14)
    write_camera_image(tmp_path / "hologram.png", field.hologram)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_quickstart_code(), "README.md quickstart", "exec"), scope)
    result = scope["result"]
    assert result.phase.shape == result.labels.shape == result.instances.shape == (512, 512)
    assert set(result.cells.columns) >= {"cell_id", "class_name", "class_confidence", "area_um2", "dry_mass_pg"}
    truth = len(np.unique(field.instances[field.instances > 0]))
    assert abs(len(result.cells) - truth) <= 0.25 * truth, (len(result.cells), truth)
    assert result.class_shares().get("discocyte", 0.0) >= 0.6, result.class_shares()


@pytest.mark.slow
def test_the_recipe_builds_ships_and_cards_a_model(tmp_path):
    """``build_default_model`` end to end with a tiny recipe: a trained model folder, shipped with
    compressed weights close to the trained ones, whose card hashes match and names the command."""
    import torch

    recipe = D.RECIPE.read_text()
    tiny = {"n_fields": 4, "val_fields": 1, "test_fields": 1, "epochs": 1, "max_steps_per_epoch": 2, "field_px": 256,
            "transfer_fields": 1, "speed_holograms": 1}
    for key, value in tiny.items():
        recipe, found = re.subn(rf"(?m)^{key} = \S+", f"{key} = {value}", recipe)
        assert found == 1, key
    (tmp_path / "recipe.toml").write_text(recipe)
    final = D.build_default_model(tmp_path / "work", recipe_path=tmp_path / "recipe.toml", ship=tmp_path / "shipped",
                                  command="test", progress=False)
    assert final == tmp_path / "shipped" and sorted(p.name for p in final.iterdir()) == [
        "MODEL_CARD.md", "best.pt", "card.json", "config.json"]
    card = json.loads((final / "card.json").read_text())
    assert card["sha256"] == {name: file_sha256(final / name) for name in D.CARD_FILES}
    assert card["command"] == "test" and card["checks"]["parameters"] > 1e6
    from rbclib.core.training import expand_weights

    packed = torch.load(final / "best.pt", weights_only=True)["compressed_model"]
    assert packed["int8"] and all(v.dtype == torch.int8 for v in packed["int8"].values())
    shipped = expand_weights(packed)
    trained = torch.load(tmp_path / "work" / "model" / "best.pt", weights_only=True)["model"]
    for key, value in trained.items():
        if value.is_floating_point():
            assert torch.allclose(shipped[key], value, atol=0.005 * float(value.abs().max()) + 1e-3), key
    assert "Made by `test`" in (final / "MODEL_CARD.md").read_text()

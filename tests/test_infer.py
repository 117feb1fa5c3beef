"""rbclib.seg.infer and rbclib.seg.evaluate: tiled inference of any size, the paper protocol,
model folders, clear errors, scoring and tables."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from rbclib.seg.datasets import normalise_phase
from rbclib.seg.evaluate import ModelEvaluation, find_model_folders, score_image, score_table, to_markdown
from rbclib.seg.infer import check_mask_classes, load_model, predict_batches, predict_image, predict_paper_protocol
from rbclib.seg.models import build_model

CENTRES = torch.tensor([-0.75, -0.25, 0.25, 0.5, 0.75])  # normalised phase of each class


class Pointwise(nn.Module):
    """Class = nearest centre of the normalised phase, pixel by pixel (tiling-invariant)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(50.0))

    def forward(self, x):
        return -self.scale * (x[:, :1] - CENTRES.view(1, -1, 1, 1)) ** 2


CFG = {"model_name": "pointwise", "encoder": "-", "in_channels": 3, "classes": 5, "patch": 64, "overlap": 16}


def _expected(phase):
    return np.abs(normalise_phase(phase)[..., None] - CENTRES.numpy()).argmin(-1).astype(np.uint8)


@pytest.mark.parametrize("shape", [(200, 200), (130, 97), (40, 50), (64, 64)])
def test_tiled_prediction_of_any_size_equals_the_pixelwise_answer(shape):
    phase = np.random.default_rng(1).uniform(-0.5, 3.5, shape).astype(np.float32)
    pred = predict_image(Pointwise(), phase, config=CFG, batch_size=3)
    assert pred.labels.shape == shape and pred.probs.shape == (5, *shape) and pred.covered.all()
    assert np.array_equal(pred.labels, _expected(phase))
    assert np.allclose(pred.probs.sum(0), 1, atol=1e-5)
    assert pred.instances.shape == shape and pred.instances.max() > 0


def test_fast_path_and_paper_protocol():
    phase = np.random.default_rng(2).uniform(-0.5, 3.5, (150, 150)).astype(np.float32)
    fast = predict_image(Pointwise(), phase, config=CFG, fast=True)
    exact = predict_image(Pointwise(), phase, config=CFG)
    assert (fast.labels == exact.labels).mean() > 0.95
    paper = predict_paper_protocol(Pointwise(), phase, config=CFG)
    assert paper.covered.sum() == 128 * 128
    assert np.array_equal(paper.labels[:128, :128], exact.labels[:128, :128])
    assert (paper.labels[128:] == 0).all() and (paper.labels[:, 128:] == 0).all()


def test_bad_images_are_clear_errors():
    with pytest.raises(ValueError, match="multiple of 32"):
        predict_image(Pointwise(), np.zeros((64, 64), np.float32), config=CFG, tile=48)
    with pytest.raises(ValueError, match="NaN"):
        predict_image(Pointwise(), np.full((64, 64), np.nan, np.float32), config=CFG)
    with pytest.raises(ValueError, match="2-D"):
        predict_image(Pointwise(), np.zeros((3, 64, 64), np.float32), config=CFG)
    with pytest.raises(ValueError, match="class 4"):
        check_mask_classes(np.array([[0, 4]]), 4, source="mask x")


def test_batched_inference_equals_patch_by_patch():
    torch.manual_seed(0)
    model = build_model("pspnet", encoder="resnet18").eval()
    x = np.random.default_rng(0).uniform(-1, 1, (3, 3, 64, 64)).astype(np.float32)
    together = predict_batches(model, x, batch_size=3)
    alone = np.concatenate([predict_batches(model, x[i:i + 1], batch_size=1) for i in range(3)])
    assert np.allclose(together, alone, atol=1e-5)


def _model_folder(tmp_path, name="pspnet", saved_as=None):
    torch.manual_seed(0)
    model = build_model(saved_as or name, encoder="resnet18")
    cfg = {"model_name": name, "encoder": "resnet18", "in_channels": 3, "classes": 5, "patch": 64, "overlap": 16}
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    torch.save({"model": model.state_dict(), "config": json.dumps(cfg)}, folder / "best.pt")
    return folder, model


def test_load_model_rebuilds_from_the_folder_and_refuses_bad_folders(tmp_path):
    folder, model = _model_folder(tmp_path)
    loaded, cfg = load_model(folder, device="cpu")
    assert cfg["model_name"] == "pspnet" and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path / "empty")
    other, _ = _model_folder(tmp_path, name="fcn", saved_as="pspnet")
    with pytest.raises(ValueError, match="another architecture"):
        load_model(other)


def test_scores_tables_and_model_folders(tmp_path):
    true = np.zeros((40, 40), np.uint8)
    true[5:15, 5:15], true[20:30, 20:30] = 1, 2
    dice, aji = score_image(true, true)
    assert dice["discocyte"] == 1 and aji["overall"] == 1
    covered = np.zeros_like(true, bool)
    covered[:16, :16] = True
    dice_c, _ = score_image(true, true, covered=covered)
    assert dice_c["discocyte"] == 1 and np.isnan(dice_c["spherocyte"])
    per_image = pd.DataFrame([{"image": "a", "metric": m, "discocyte": 0.5, "spherocyte": 1.0, "echinocyte": np.nan,
                               "stomatocyte": 0.9, "overall": 0.8} for m in ("dice", "aji")])
    evals = {"seg_backbone": ModelEvaluation("b", per_image, 1.0), "unet": ModelEvaluation("u", per_image, 1.0)}
    table = score_table(evals, "dice")
    assert list(table["Method"]) == ["U-Net", "ResUnet (backbone)"]
    assert np.isclose(table["Overall"].iloc[0], (0.5 + 1.0 + 0.9) / 3)
    md = to_markdown(table)
    assert md.splitlines()[0] == "| Method | Discocyte | Spherocyte | Echinocyte | Stomatocyte | Overall |"
    assert "| U-Net | 0.5000 | 1.0000 | - | 0.9000 | 0.8000 |" in md
    (tmp_path / "models").mkdir()
    _model_folder(tmp_path / "models", name="pspnet")
    assert list(find_model_folders(tmp_path)) == ["pspnet"]


def test_per_cell_table_of_a_prediction():
    from rbclib.core.config import Optics
    from rbclib.seg.infer import measure_prediction

    yy, xx = np.mgrid[:96, :96]
    phase = np.zeros((96, 96), np.float32)
    phase[(yy - 30) ** 2 + (xx - 30) ** 2 < 150] = 1.0   # normalised -0.25: class 1
    phase[(yy - 70) ** 2 + (xx - 65) ** 2 < 150] = 2.5   # normalised 0.5: class 3
    pred = predict_image(Pointwise(), phase, config=CFG)
    cells = measure_prediction(pred, phase, optics=Optics())
    assert len(cells) == 2
    assert sorted(cells["class_id"]) == [1, 3]


def test_images_batched_together_give_each_image_its_own_answer():
    """predict_images shares forward passes between images of different sizes; each image
    gets what predict_image gives it alone (a model with context: 3 x 3 convolutions)."""
    from rbclib.core.training import bf16_is_fast
    from rbclib.seg.infer import predict_images

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 5, 3, padding=1))
    rng = np.random.default_rng(3)
    phases = [rng.uniform(-0.5, 3.5, s).astype(np.float32) for s in ((150, 150), (64, 200), (40, 40))]
    together = predict_images(model, phases, config=CFG, batch_size=5)
    for phase, got in zip(phases, together):
        alone = predict_image(model, phase, config=CFG, batch_size=2)
        assert got.probs.shape == (5, *phase.shape)
        np.testing.assert_allclose(got.probs, alone.probs, atol=1e-5)
        assert np.array_equal(got.labels, alone.labels)
    assert isinstance(bf16_is_fast(torch.device("cpu")), bool) and bf16_is_fast(torch.device("meta")) is False

"""rbclib.seg.gan_watershed: the GAN + Watershed baseline (generator size, adversarial training
that learns and resumes, watershed instances at inference)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import rbclib.seg.config as seg_config
import rbclib.seg.train as train
from rbclib.profile import get_profile
from rbclib.seg.compute import count_parameters
from rbclib.seg.datasets import normalise_phase
from rbclib.seg.gan_watershed import Adversary, build_gan_watershed
from rbclib.seg.infer import load_model, predict_image, predict_paper_protocol
from rbclib.seg.metrics import dice_per_class
from tests.test_train import TINY, _disk_pairs, _state, interrupt_after_first_epoch

GAN_TINY = {**TINY, "patch": 64, "rotations": 4, "lr": 2e-3}


def test_generator_is_sized_like_kim_et_al_and_refuses_other_encoders():
    model = build_gan_watershed(in_channels=3, classes=5)
    assert abs(count_parameters(model) - 13_043_269) / 13_043_269 < 0.01  # Table 3 of the paper
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 96, 64)).shape == (1, 5, 96, 64)
    with pytest.raises(ValueError, match="pix2pix"):
        build_gan_watershed("resnet18")


def test_profile_config_names_the_generator_gan_loss_and_watershed():
    cfg = train.config_from_profile(get_profile("quick")["segment"], "gan_watershed")
    assert cfg["encoder"] == "pix2pix" and cfg["adversarial_weight"] > 0 and cfg["postprocess"] == "watershed"
    plain = train.config_from_profile(get_profile("quick")["segment"], "unet")
    assert plain["adversarial_weight"] == 0 and plain["postprocess"] == "none"
    with pytest.raises(ValueError, match="postprocess 'blur'"):
        seg_config.make_config({"postprocess": "blur"})


@pytest.mark.learning
def test_discriminator_learns_to_tell_one_hot_truth_from_a_blurred_guess(learning):
    adv = Adversary(1, 3, weight=1.0, device=torch.device("cpu"))
    y = torch.zeros(4, 32, 32, dtype=torch.long)
    y[:, 8:24, 8:24] = 1
    y[:, 12:20, 12:20] = 2
    x = torch.randn(4, 1, 32, 32)
    guess = torch.zeros(4, 3, 32, 32)  # uniform probabilities: an uncommitted generator
    losses = [adv.update(x, y, guess) for _ in range(30)]
    learning.below("discriminator loss, last / first step", losses[-1] / losses[0], 0.5, losses)
    # ... so the generator's adversarial loss is high for the guess and low for the truth
    truth = torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float() * 30
    learning.above("generator loss, guess / truth", adv.generator_loss(x, guess).item() / adv.generator_loss(x, truth).item(),
                   2.0)


def test_discriminator_sees_no_difference_where_labels_are_ignored():
    from rbclib.core.labels import IGNORE

    torch.manual_seed(0)
    adv = Adversary(1, 3, weight=1.0, device=torch.device("cpu"))
    x, logits = torch.randn(2, 1, 32, 32), torch.randn(2, 3, 32, 32)
    z = adv._logits(x, logits.softmax(1)).detach()        # D on the generator's probabilities
    loss = adv.update(x, torch.full((2, 32, 32), IGNORE, dtype=torch.long), logits)
    # real and fake inputs identical: half the BCE of z against 1 plus against 0
    expected = 0.5 * (torch.nn.functional.softplus(-z).mean() + torch.nn.functional.softplus(z).mean())
    assert np.isclose(loss, expected.item(), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.learning
def test_gan_training_learns_and_resumes_identically(tmp_path, monkeypatch, learning):
    """Learning happens: the generator's loss falls to a third and it segments its training
    fields (Dice >= 0.8); an interrupted run resumes (discriminator state included) to the
    same weights."""
    pairs = _disk_pairs(4, seed=3)
    cfg = seg_config.make_config({**GAN_TINY, "epochs": 12, "adversarial_weight": 0.1, "encoder": "pix2pix",
                             "postprocess": "watershed"}, model_name="gan_watershed")
    folder = train.train_segmenter(pairs, [], model_name="gan_watershed", out_dir=tmp_path / "m", config=cfg,
                                   seed=learning.seed, progress=False)
    log = pd.read_csv(folder / "log.csv")
    learning.below("training loss, last / first epoch", log["train_loss"].iloc[-1] / log["train_loss"].iloc[0], 1 / 3,
                   log["train_loss"].tolist())
    assert log["train_discriminator_loss"].between(0, 5).all()
    model, config = load_model(folder, checkpoint="last.pt")
    for cls in ("discocyte", "spherocyte"):
        dice = [dice_per_class(predict_image(model, p.phase, config=config).labels, p.labels)[cls] for p in pairs]
        learning.above(f"{cls} Dice on the training fields", np.mean(dice), 0.8, dice)

    short = {**cfg, "epochs": 2}
    full = train.train_segmenter(pairs, [], model_name="gan_watershed", out_dir=tmp_path / "full", config=short,
                                 seed=1, progress=False)
    interrupt_after_first_epoch(monkeypatch, pairs, [], model_name="gan_watershed", out_dir=tmp_path / "cut",
                                config=short, seed=1)
    assert "adversary" in _state(tmp_path / "cut" / "last.pt")
    train.train_segmenter(pairs, [], model_name="gan_watershed", out_dir=tmp_path / "cut", config=short, seed=1,
                          progress=False)
    done, resumed = _state(full / "last.pt"), _state(tmp_path / "cut" / "last.pt")
    for k, v in done["model"].items():
        assert torch.allclose(v.float(), resumed["model"][k].float(), atol=1e-6), k


class _Threshold(nn.Module):
    """Class 1 wherever the (normalised) phase is above ``level``, else background."""

    def __init__(self, level: float):
        super().__init__()
        self.level = level
        self.unused = nn.Parameter(torch.zeros(1))  # inference reads the device off a parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = (x[:, :1] > self.level).float()
        return torch.cat([1 - fg, fg, torch.zeros_like(fg).repeat(1, 3, 1, 1)], 1) * 10


def test_watershed_postprocess_splits_touching_cells_at_inference():
    yy, xx = np.mgrid[:128, :128]
    phase = np.zeros((128, 128), np.float32)
    for cx in (44, 84):  # two discs of radius 22 px whose centres are 40 px apart: one blob
        phase[(yy - 64) ** 2 + (xx - cx) ** 2 < 22 ** 2] = 2.0
    base = seg_config.make_config({**TINY, "patch": 64, "overlap": 16, "in_channels": 1})
    level = float(np.mean(normalise_phase(np.array([0.0, 2.0], np.float32), tuple(base["phase_range"]))))
    model = _Threshold(level)
    plain = predict_image(model, phase, config=base)
    split = predict_image(model, phase, config={**base, "postprocess": "watershed"})
    assert plain.instances.max() == 1 and split.instances.max() == 2
    np.testing.assert_array_equal(plain.labels, split.labels)  # the watershed splits instances, not classes
    paper = predict_paper_protocol(model, phase, config={**base, "postprocess": "watershed"})
    assert paper.instances.max() == 2

"""rbclib.seg.models and rbclib.seg.compute: the paper's ResUnet, the baselines, compute figures."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from rbclib.seg.compute import count_macs, count_parameters, time_images
from rbclib.seg.models import BASELINES, build_model, build_resunet


def test_resunet_resnet50_has_the_papers_parameter_count():
    model = build_resunet("resnet50")
    assert count_parameters(model) == 73_688_197
    head = model.segmentation_head
    assert isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1) and head.out_channels == 5


@pytest.mark.parametrize("name", ["resunet", *BASELINES])
def test_every_model_maps_phase_patches_to_class_logits(name):
    torch.manual_seed(0)
    model = build_model(name, encoder="pix2pix" if name == "gan_watershed" else "resnet18", in_channels=1,
                        classes=4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 4, 64, 64)
    assert torch.isfinite(out).all()


def test_unknown_model_or_encoder_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("segformer")
    with pytest.raises(ValueError, match="unsupported encoder"):
        build_model("unet", encoder="vgg16")


def test_macs_and_parameters_of_a_known_convolution():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    assert count_parameters(conv) == 3 * 4 * 9 + 4
    assert count_macs(conv, patch=256) == 3 * 4 * 9 * 256 * 256


def test_time_images_runs_warmup_then_every_image():
    calls = []
    seconds = time_images(lambda img: calls.append(img), [1, 2, 3], warmup=2)
    assert calls == [1, 1, 1, 2, 3]
    assert seconds >= 0
    with pytest.raises(ValueError):
        time_images(lambda img: None, [])

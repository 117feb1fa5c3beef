"""rbclib.study.finetune and rbc finetune / rbc adapt: a trained model fine-tuned on a few fields
of another microscope, or adapted without labels (BatchNorm statistics, pseudo-labels)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rbclib.cli import main
from rbclib.core.config import Optics
from rbclib.core.io import write_labels, write_phase
from rbclib.core.labels import IGNORE
from rbclib.seg.config import finetune_config, make_config
from rbclib.seg.datasets import Pair
from rbclib.seg.infer import load_model, read_model_config
from rbclib.seg.metrics import dice_per_class
from rbclib.seg.train import train_segmenter
from rbclib.study import finetune as F
from rbclib.study.segmenter import Segmenter

PX = 0.2e-6
TINY = {"encoder": "resnet18", "decoder_channels": [32, 16, 16, 8, 8], "patch": 32, "overlap": 8, "rotations": 1,
        "epochs": 15, "batch_size": 4, "lr": 3e-3, "val_batch_size": 4, "pixel_size_m": PX, "phase_range": [-0.5, 6.0]}


def _fields(n, *, gain, seed, size=64):
    """Disks of classes 1 and 2; a microscope's phase is ``gain`` x class id (another set-up, another gain)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    pairs = []
    for i in range(n):
        labels = np.zeros((size, size), np.uint8)
        phase = rng.normal(0, 0.03, (size, size)).astype(np.float32)
        for cls in (1, 2):
            cy, cx = rng.integers(12, size - 12, 2)
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 < 64
            labels[disk] = cls
            phase[disk] += gain * cls
        pairs.append(Pair(phase=phase, labels=labels, name=f"field_{seed}_{i:02d}"))
    return pairs


def _dice(model_dir, fields):
    segmenter = Segmenter(model_dir, split=False, min_area_um2=0.0)
    return float(np.mean([dice_per_class(segmenter(p.phase, PX)[0], p.labels)["overall"] for p in fields]))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on microscope A (phase = class id)."""
    out = tmp_path_factory.mktemp("a") / "model"
    fields = _fields(12, gain=1.0, seed=0)
    return train_segmenter(fields, fields[:2], model_name="resunet", out_dir=out, config=make_config(TINY), seed=0,
                           progress=False)


def test_finetune_config_keeps_what_the_weights_need():
    base = {**make_config(TINY), "seed": 3, "train_images": ["x"], "trim_halo": True}
    cfg = finetune_config(base, epochs=2, lr=1e-4)
    assert cfg["epochs"] == 2 and cfg["lr"] == 1e-4 and cfg["trim_halo"] is True
    assert cfg["decoder_channels"] == [32, 16, 16, 8, 8] and "seed" not in cfg
    with pytest.raises(ValueError, match="keeps the trained model's \\['encoder'\\]"):
        finetune_config(base, encoder="resnet34")


def test_finetuning_starts_from_the_trained_weights_and_learns_the_new_microscope(trained, tmp_path):
    other = _fields(4, gain=2.5, seed=1)                     # microscope B: 2.5x the phase
    test = _fields(4, gain=2.5, seed=2)
    # a near-zero learning rate leaves the trained weights: fine-tuning starts from them
    still = F.finetune_model(trained, other[:1], tmp_path / "still", pixel_size_m=PX, epochs=1, steps_per_epoch=1,
                             lr=1e-12, progress=False)
    before, _ = load_model(trained)
    after, _ = load_model(still)
    for (name, a), b in zip(before.state_dict().items(), after.state_dict().values()):
        if torch.is_floating_point(a) and "running" not in name:
            assert torch.allclose(a, b, atol=1e-6), name
    cfg = read_model_config(still)
    assert cfg["init_model"] == str(trained) and cfg["decoder_channels"] == [32, 16, 16, 8, 8]
    # two fields of B and a short budget: the fine-tuned model segments B better than it did
    tuned = F.finetune_model(trained, other[:2], tmp_path / "tuned", pixel_size_m=PX, epochs=6, steps_per_epoch=6,
                             lr=3e-3, progress=False)
    shipped_dice, tuned_dice = _dice(trained, test), _dice(tuned, test)
    assert tuned_dice > shipped_dice + 0.1 and tuned_dice > 0.6, (shipped_dice, tuned_dice)


def test_fields_at_another_pixel_size_are_resampled_to_the_models(trained):
    fields = _fields(1, gain=1.0, seed=3, size=64)
    half = F.at_model_pixel_size(fields, PX / 2, PX)
    assert half[0].phase.shape == (32, 32) and set(np.unique(half[0].labels)) <= {0, 1, 2}
    assert F.at_model_pixel_size(fields, PX, PX)[0] is fields[0]


def test_twin_rehearsal_fields_are_the_shipped_twin_recorded_by_the_microscopes_optics():
    green = Optics().replace(wavelength_m=532e-9, pixel_size_m=0.2e-6)
    fields = F.twin_rehearsal_fields(green, 4, seed=0)
    home = F.twin_rehearsal_fields(Optics(), 4, seed=0)
    side = round(512 * Optics().pixel_size_m / green.pixel_size_m)       # the recipe's 73.8 um square field
    assert [f.phase.shape for f in fields] == [(side, side)] * 4 and home[0].phase.shape == (512, 512)
    assert set(np.unique(np.concatenate([f.labels.ravel() for f in fields]))) == {0, 1, 2, 3, 4}
    # the same kind of cells, seen at 532 nm instead of 682.5 nm: 1.28 x the phase
    ratio = (np.mean(np.concatenate([f.phase[f.labels > 0] for f in fields]))
             / np.mean(np.concatenate([f.phase[f.labels > 0] for f in home])))
    assert 1.1 < ratio < 1.45, ratio


def test_rehearsal_fields_are_trained_on_but_never_choose_the_epoch(trained, tmp_path):
    own, other = _fields(2, gain=2.5, seed=7), _fields(3, gain=1.0, seed=8)
    tuned = F.finetune_model(trained, own, tmp_path / "ft", pixel_size_m=PX, rehearsal_fields=other, epochs=1,
                             steps_per_epoch=2, progress=False)
    cfg = read_model_config(tuned)
    assert cfg["train_images"] == [p.name for p in own + other] and cfg["val_images"] == [p.name for p in own]
    assert cfg["crops_per_epoch"] == 2 * cfg["batch_size"]   # the budget holds however few the fields


def test_batchnorm_adaptation_moves_the_statistics_to_the_new_microscope_only(trained, tmp_path):
    other = _fields(4, gain=2.5, seed=4)
    adapted = F.adapt_batchnorm(trained, [p.phase for p in other], tmp_path / "bn", pixel_size_m=PX, crops=32)
    before, cfg = load_model(trained)
    after, _ = load_model(adapted)
    assert read_model_config(adapted)["adaptation"] == "batchnorm"
    changed = []
    for (name, a), b in zip(before.state_dict().items(), after.state_dict().values()):
        if "running" in name:
            changed.append(not torch.allclose(a, b))
        elif torch.is_floating_point(a):
            assert torch.equal(a, b), name                  # only the statistics change
    assert all(changed) and changed

    from rbclib.seg.datasets import normalise_phase

    x = torch.from_numpy(np.stack([normalise_phase(p.phase, tuple(cfg["phase_range"])) for p in other]))
    x = x[:, None].repeat(1, 3, 1, 1).contiguous(memory_format=torch.channels_last)
    assert _statistics_mismatch(after, x) < 0.5 * _statistics_mismatch(before, x)


def _statistics_mismatch(model, x):
    """Sum over BatchNorm layers of |stored running mean - mean of the layer's input on ``x``|."""
    seen = []
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    hooks = [m.register_forward_pre_hook(lambda m, inp: seen.append((m, inp[0].mean(dim=(0, 2, 3))))) for m in norms]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return float(sum(torch.linalg.norm(m.running_mean - mean) for m, mean in seen))


def test_pseudo_labels_keep_only_confident_pixels(trained):
    fields = _fields(2, gain=1.0, seed=5)
    phases = [p.phase for p in fields]
    everything = F.pseudo_label_fields(trained, phases, pixel_size_m=PX, confidence=0.0)
    nothing = F.pseudo_label_fields(trained, phases, pixel_size_m=PX, confidence=1.01)
    some = F.pseudo_label_fields(trained, phases, pixel_size_m=PX, confidence=0.9)
    assert not any((p.labels == IGNORE).any() for p in everything)
    assert all((p.labels == IGNORE).all() for p in nothing)
    kept = np.concatenate([p.labels.ravel() for p in some])
    agree = np.concatenate([(p.labels == f.labels).ravel() for p, f in zip(some, fields)])
    assert 0 < np.mean(kept == IGNORE) < 1
    assert agree[kept != IGNORE].mean() > 0.9               # the trained model is right where it is sure


def _write_folder(root, fields):
    optics = Optics().replace(pixel_size_m=PX)
    for p in fields:
        write_phase(root / "phase" / f"{p.name}.tif", p.phase, optics)
        write_labels(root / "labels" / f"{p.name}.png", p.labels)
    return root


def test_cli_finetune_and_adapt_write_model_folders_rbc_assess_takes(trained, tmp_path, capsys):
    fields = _write_folder(tmp_path / "fields", _fields(2, gain=2.5, seed=6))
    pairs, optics = F.read_fields(fields)
    assert len(pairs) == 2 and optics.pixel_size_m == pytest.approx(PX)
    assert main(["finetune", str(fields), "-o", str(tmp_path / "ft"), "--model", str(trained), "--epochs", "1",
                 "--steps", "2", "--twin-fields", "1", "--quiet"]) == 0
    assert read_model_config(tmp_path / "ft")["train_images"] == ["field_6_00", "field_6_01", "twin_000"]
    assert (tmp_path / "ft" / "best.pt").is_file()
    assert main(["adapt", str(fields / "phase"), "-o", str(tmp_path / "bn"), "--model", str(trained)]) == 0
    assert json.loads((tmp_path / "bn" / "config.json").read_text())["adaptation"] == "batchnorm"
    assert main(["assess", str(fields / "phase"), "-o", str(tmp_path / "report"), "--model", str(tmp_path / "ft"),
                 "--no-overlays"]) == 0
    capsys.readouterr()
    assert main(["finetune", str(tmp_path / "missing"), "-o", str(tmp_path / "x"), "--model", str(trained)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rbc finetune: error:") and "phase/ and labels/" in err[0]
    with pytest.raises(SystemExit):
        main(["finetune", str(fields), "-o", str(tmp_path / "y"), "--lr", "-1"])


def test_model_suggestions_give_class_probabilities_on_the_images_grid(trained):
    from rbclib.study.suggest import model_suggestions

    field = _fields(1, gain=1.0, seed=7)[0]
    probs = model_suggestions(trained)(field.phase, PX / 2)          # an image at twice the model's resolution
    assert probs.shape == (5,) + field.phase.shape and np.allclose(probs.sum(0), 1.0, atol=1e-3)
    same = model_suggestions(trained)(field.phase, PX)
    assert (same.argmax(0) == field.labels).mean() > 0.9              # the trained model knows these disks


def test_ssl_adaptation_changes_encoder_and_decoder_under_the_trained_head(trained, tmp_path):
    other = _fields(4, gain=2.5, seed=8)
    adapted = F.adapt_ssl(trained, [p.phase for p in other], tmp_path / "ssl", pixel_size_m=PX, steps=3)
    assert read_model_config(adapted)["adaptation"] == "ssl"
    before, _ = load_model(trained)
    after, _ = load_model(adapted)
    head_b, head_a = before.segmentation_head.state_dict(), after.segmentation_head.state_dict()
    assert all(torch.equal(head_b[k], head_a[k]) for k in head_b)       # the trained head stays
    moved = [not torch.equal(a, b) for (name, a), b in zip(before.encoder.state_dict().items(),
                                                           after.encoder.state_dict().values())
             if torch.is_floating_point(a) and "running" not in name and "num_batches" not in name]
    assert any(moved)                                                  # the encoder learnt from the new images
    from rbclib.ssl.pretrain import SSLConfig, pretrain_ssl

    wrong = SSLConfig(encoder="resnet34", decoder_channels=(32, 16, 16, 8, 8), crop_px=32, batch_size=4, steps=1,
                      queue_size=8)
    with pytest.raises(ValueError, match="do not fit this SSL config"):
        pretrain_ssl(F._Tiles([torch.zeros(1, 32, 32)] * 16), out_dir=tmp_path / "wrong", config=wrong, seed=0,
                     progress=False, init_model=trained)

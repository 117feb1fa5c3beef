"""rbclib.seg.train: loss, config, seeded training with checkpoints, resume, extra pairs, DDP."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import rbclib.seg.config as seg_config
import rbclib.seg.train as train
from rbclib.seg.datasets import Pair
from rbclib.core.io import write_labels, write_phase
from rbclib.core.files import write_json

TINY = {"encoder": "resnet18", "patch": 32, "overlap": 8, "rotations": 1, "epochs": 2, "batch_size": 4,
        "lr": 1e-3, "val_batch_size": 4}


def _disk_pairs(n, size=64, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    pairs = []
    for i in range(n):
        labels = np.zeros((size, size), np.uint8)
        phase = rng.normal(0, 0.02, (size, size)).astype(np.float32)
        for cls in (1, 2):
            cy, cx = rng.integers(12, size - 12, 2)
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 < 64
            labels[disk] = cls
            phase[disk] += cls
        pairs.append(Pair(phase=phase, labels=labels, name=f"field_{i:04d}"))
    return pairs


def test_ce_dice_loss_is_small_for_confident_right_answers():
    target = torch.randint(0, 5, (2, 8, 8))
    good = torch.nn.functional.one_hot(target, 5).permute(0, 3, 1, 2).float() * 20
    loss_fn = train.CEDiceLoss()
    total, ce, dice = loss_fn(good, target)
    assert total < 1e-3 and ce < 1e-6
    bad_total, bad_ce, _ = loss_fn(torch.zeros(2, 5, 8, 8), target)
    assert np.isclose(bad_ce.item(), np.log(5), atol=1e-5)
    assert bad_total > 1


def test_ce_dice_loss_leaves_ignored_pixels_out():
    from rbclib.core.labels import IGNORE

    torch.manual_seed(0)
    target = torch.randint(0, 5, (2, 8, 8))
    logits = torch.randn(2, 5, 8, 8, requires_grad=True)
    ignored = target.clone()
    ignored[:, :, :3] = IGNORE
    total, ce, dice = train.CEDiceLoss()(logits, ignored)
    total.backward()
    assert torch.all(logits.grad[:, :, :, :3] == 0) and torch.any(logits.grad[:, :, :, 3:] != 0)
    # the same as the loss over the known pixels alone
    ref_total, ref_ce, ref_dice = train.CEDiceLoss()(logits[:, :, :, 3:], target[:, :, 3:])
    assert torch.isclose(ce, ref_ce) and torch.isclose(dice, ref_dice, atol=1e-6)


def test_seg_config_is_typed_and_its_dict_form_round_trips():
    """Values take their field's type, the baselines carry no ResUnet decoder, and the dict form
    (config.json) gives the same config back."""
    c = seg_config.SegConfig.from_dict({"lr": 1, "patch": 64.0, "phase_range": [0, 3], "autocast_bf16": 1})
    assert isinstance(c.lr, float) and c.lr == 1.0 and c.patch == 64 and isinstance(c.patch, int)
    assert c.phase_range == (0.0, 3.0) and c.autocast_bf16 is True
    assert seg_config.SegConfig.from_dict(c.to_dict()) == c
    assert c.to_dict()["phase_range"] == [0.0, 3.0] and c.to_dict()["decoder_channels"] == [1024, 512, 256, 128, 64]
    unet = seg_config.SegConfig(model_name="unet")
    assert unet.decoder_channels is None and "decoder_channels" not in unet.to_dict()
    assert set(seg_config.DEFAULT_CONFIG) == {f for f in seg_config.SegConfig.__dataclass_fields__}
    with pytest.raises(ValueError, match="postprocess 'blur'"):
        seg_config.SegConfig(postprocess="blur")


def test_config_and_validation_split():
    with pytest.raises(ValueError, match="unknown training config"):
        seg_config.make_config({"epochz": 3})
    with pytest.raises(ValueError, match="patch_mode 'grid'"):
        seg_config.make_config({"patch_mode": "grid"})
    tr, va = train.split_validation([f"s{i}" for i in range(20)], fraction=0.15, seed=1)
    assert len(va) == 3 and not set(tr) & set(va) and len(tr) == 17
    assert train.split_validation([f"s{i}" for i in range(20)], fraction=0.15, seed=1)[1] == va
    assert train.split_validation(["a", "b"], fraction=0, seed=0) == (["a", "b"], [])


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


BALANCED_BF16 = {**TINY, "patch_mode": "balanced", "autocast_bf16": True}


def interrupt_after_first_epoch(monkeypatch, train_pairs, val_pairs, **kwargs):
    """Run train_segmenter until the first epoch's checkpoint and log are written, then stop it."""
    real_write_log = train.write_log

    def crash(*args, **kw):
        real_write_log(*args, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "write_log", crash)
    with pytest.raises(KeyboardInterrupt):
        train.train_segmenter(train_pairs, val_pairs, progress=False, **kwargs)
    monkeypatch.setattr(train, "write_log", real_write_log)


@pytest.mark.slow
@pytest.mark.parametrize("config", [TINY, BALANCED_BF16], ids=["paper-grid", "balanced-bf16"])
def test_training_writes_a_model_folder_and_resumes_identically(tmp_path, monkeypatch, config):
    pairs, val = _disk_pairs(2), _disk_pairs(1, seed=9)
    full = train.train_segmenter(pairs, val, model_name="pspnet", out_dir=tmp_path / "full", config=config, seed=3,
                                 progress=False)
    assert sorted(p.name for p in full.iterdir()) == ["best.pt", "config.json", "last.pt", "log.csv"]
    log = train.read_log(full)
    assert list(log["epoch"]) == [0, 1] and "val_dice_overall" in log
    last = _state(full / "last.pt")
    cfg = json.loads((full / "config.json").read_text())
    assert json.loads(last["config"]) == cfg and cfg["model_name"] == "pspnet" and cfg["n_train_patches"] == 8
    assert set(_state(full / "best.pt")) == {"model", "epoch", "score", "config"}

    # interrupted after the first epoch's checkpoint, then resumed: same weights as uninterrupted
    interrupt_after_first_epoch(monkeypatch, pairs, val, model_name="pspnet", out_dir=tmp_path / "cut", config=config,
                                seed=3)
    assert _state(tmp_path / "cut" / "last.pt")["epoch"] == 0
    train.train_segmenter(pairs, val, model_name="pspnet", out_dir=tmp_path / "cut", config=config, seed=3, progress=False)
    resumed = _state(tmp_path / "cut" / "last.pt")
    assert resumed["epoch"] == 1 and list(train.read_log(tmp_path / "cut")["epoch"]) == [0, 1]
    for k, v in last["model"].items():
        assert torch.allclose(v.float(), resumed["model"][k].float(), atol=1e-6), k

    # a finished run is not retrained; another config in the same folder is refused
    mtime = (full / "last.pt").stat().st_mtime_ns
    train.train_segmenter(pairs, val, model_name="pspnet", out_dir=full, config=config, seed=3, progress=False)
    assert (full / "last.pt").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="different run"):
        train.train_segmenter(pairs, val, model_name="pspnet", out_dir=full, config={**config, "lr": 0.1}, seed=3,
                              progress=False)


def test_extra_pairs_are_added_and_bad_inputs_refused(tmp_path):
    extra = tmp_path / "synthetic"
    for i, p in enumerate(_disk_pairs(3, size=32, seed=5)):
        write_phase(extra / "phase" / f"s{i}.tif", p.phase)
        write_labels(extra / "labels" / f"s{i}.png", p.labels)
    out = train.train_segmenter(_disk_pairs(1), [], model_name="pspnet", out_dir=tmp_path / "m",
                                config={**TINY, "epochs": 1}, extra_pairs_dir=extra, seed=0, progress=False)
    assert json.loads((out / "config.json").read_text())["n_train_patches"] == 4 + 3
    from rbclib.core.labels import IGNORE

    fragment = _disk_pairs(1, size=32, seed=6)[0]
    write_phase(extra / "phase" / "s9.tif", fragment.phase)
    write_labels(extra / "labels" / "s9.png", np.where(fragment.labels > 0, IGNORE, 0), allow_ignore=True)
    out = train.train_segmenter(_disk_pairs(1), [], model_name="pspnet", out_dir=tmp_path / "m2",
                                config={**TINY, "epochs": 1}, extra_pairs_dir=extra, seed=0, progress=False)
    assert json.loads((out / "config.json").read_text())["n_train_patches"] == 4 + 4    # ignore labels accepted
    four = _disk_pairs(1)
    four[0].labels[:4, :4] = 4
    with pytest.raises(ValueError, match="only classes 0..2"):
        train.train_segmenter(four, [], model_name="pspnet", out_dir=tmp_path / "c3",
                              config={**TINY, "classes": 3},
                              seed=0, progress=False)
    with pytest.raises(ValueError, match="init_from"):
        train.train_segmenter(_disk_pairs(1), [], model_name="pspnet", out_dir=tmp_path / "x", config=TINY,
                              init_from=tmp_path, seed=0, progress=False)


def test_arm_inputs_follow_the_run_folder(tmp_path):
    assert list(train.arm_inputs(tmp_path)) == ["backbone"]
    write_phase(tmp_path / "synthetic" / "train" / "phase" / "a.tif", np.zeros((8, 8), np.float32))
    assert list(train.arm_inputs(tmp_path)) == ["backbone", "da"]
    write_json(tmp_path / "models" / "ssl" / "config.json", {})
    arms = train.arm_inputs(tmp_path)
    assert list(arms) == ["backbone", "da", "ssl", "da_ssl"]
    assert arms["da_ssl"]["init_from"] == tmp_path.resolve() / "models" / "ssl"
    assert arms["ssl"]["extra_pairs_dir"] is None


@pytest.mark.slow
def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed beside this python")
    run = tmp_path / "run"
    pairs = _disk_pairs(4)
    for p in pairs:
        write_phase(run / "phase" / f"{p.name}.tif", p.phase)
        write_labels(run / "labels" / f"{p.name}.png", p.labels)
    write_json(run / "splits.json", {"train": [p.name for p in pairs[:3]], "test": [pairs[3].name], "seed": 0, "method": "t"})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cfg = json.dumps({**TINY, "epochs": 1})
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29517", "-m", "rbclib.launch", "seg", str(run),
                           str(tmp_path / "m"), "--model", "pspnet", "--profile", "smoke", "--config", cfg],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sync = json.loads((tmp_path / "m" / "ddp_sync.json").read_text())
    assert sync == {"world_size": 2, "max_abs_weight_diff": 0.0}
    assert json.loads((tmp_path / "m" / "config.json").read_text())["world_size"] == 2


@pytest.mark.slow
@pytest.mark.learning
def test_a_small_resunet_overfits_a_few_fields(tmp_path, learning):
    """Learning happens: on four fields of two disc classes the training loss falls to a
    third of the first epoch's and the model then segments those fields (Dice >= 0.8)."""
    import pandas as pd

    from rbclib.seg.infer import load_model, predict_image
    from rbclib.seg.metrics import dice_per_class

    pairs = _disk_pairs(4, seed=3)
    cfg = seg_config.make_config({**TINY, "decoder_channels": [64, 32, 16, 16, 8], "patch": 64, "rotations": 4,
                             "epochs": 24, "lr": 1e-2, "autocast_bf16": False}, model_name="resunet")
    folder = train.train_segmenter(pairs, pairs[:1], model_name="resunet", out_dir=tmp_path / "m", config=cfg,
                                   seed=learning.seed, progress=False)
    log = pd.read_csv(folder / "log.csv")
    model, config = load_model(folder, checkpoint="last.pt")
    dice = [dice_per_class(predict_image(model, p.phase, config=config).labels, p.labels) for p in pairs]
    learning.below("training loss, last / first epoch", log["train_loss"].iloc[-1] / log["train_loss"].iloc[0], 1 / 3,
                   log["train_loss"].tolist())
    for cls in ("discocyte", "spherocyte"):
        learning.above(f"{cls} Dice on the training fields", np.mean([d[cls] for d in dice]), 0.8, dice)


def test_a_model_folder_of_an_earlier_version_still_resumes(tmp_path):
    """Checkpoints written before ``adversarial_weight``, ``postprocess``, ``pretrained_lr_scale``
    and ``warmup_steps`` existed count them as their defaults, so re-running 06 on an older run
    folder does not refuse its models."""
    pairs = _disk_pairs(1)
    cfg = {**TINY, "epochs": 1}
    out = train.train_segmenter(pairs, [], model_name="pspnet", out_dir=tmp_path / "m", config=cfg, seed=0,
                                progress=False)
    ckpt = _state(out / "last.pt")
    newer = ("adversarial_weight", "postprocess", "pretrained_lr_scale", "warmup_steps")
    old = {k: v for k, v in json.loads(ckpt["config"]).items() if k not in newer}
    torch.save({**ckpt, "config": json.dumps(old)}, out / "last.pt")
    mtime = (out / "last.pt").stat().st_mtime_ns
    train.train_segmenter(pairs, [], model_name="pspnet", out_dir=out, config=cfg, seed=0, progress=False)
    assert (out / "last.pt").stat().st_mtime_ns == mtime  # recognised as finished, not retrained or refused
    with pytest.raises(ValueError, match="different run"):
        train.train_segmenter(pairs, [], model_name="pspnet", out_dir=out, config={**cfg, "adversarial_weight": 0.1},
                              seed=0, progress=False)


def test_warm_up_then_cosine_and_a_lower_rate_for_pretrained_layers():
    """``warmup_steps``: the rate climbs linearly from 1 % to ``lr``, then decays by the cosine to
    0 at the last step; without it the schedule is the plain cosine. ``pretrained_lr_scale``:
    encoder and decoder (the layers SSL weights fill) train at the scaled rate, the head at
    ``lr``, every parameter in exactly one group; without SSL weights there is one group."""
    cfg = seg_config.make_config(TINY, model_name="resunet", decoder_channels=[32, 16, 16, 8, 8], pretrained_lr_scale=0.1)
    model = train.model_from_config(cfg)
    groups = train._parameter_groups(model, seg_config.SegConfig.from_dict(cfg), pretrained=True)
    optimiser = torch.optim.AdamW(groups, lr=1e-3)
    assert [g["lr"] for g in optimiser.param_groups] == pytest.approx([1e-4, 1e-3])
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in model.segmentation_head.parameters()} <= {id(p) for p in groups[1]["params"]}
    assert len(train._parameter_groups(model, seg_config.SegConfig.from_dict(cfg), pretrained=False)) == 1

    def rates(warmup):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = train._schedule(opt, 100, warmup)
        out = []
        for _ in range(100):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return np.array(out)

    plain, warm = rates(0), rates(10)
    assert plain[0] == 1.0 and np.all(np.diff(plain) <= 0) and plain[-1] < 0.01
    assert warm[0] == pytest.approx(0.01) and np.all(np.diff(warm[:11]) > 0) and warm[10] == pytest.approx(1.0)
    assert np.all(np.diff(warm[10:]) <= 0) and warm[-1] < 0.01

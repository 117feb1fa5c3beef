"""The shared training scaffold (rbclib.core.training): devices, autocast, checkpoints, logs."""
from __future__ import annotations

import pytest
import torch

from rbclib.core import training as T


def test_pick_device_explicit_and_automatic():
    assert T.pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert T.pick_device().type == expected


def test_autocast_runs_bf16_only_when_enabled_and_in_hardware():
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    cpu = torch.device("cpu")
    with T.autocast(cpu, False):
        assert layer(x).dtype == torch.float32
    with T.autocast(cpu, True):     # emulated bfloat16 is far slower than float32: not used
        assert layer(x).dtype == (torch.bfloat16 if T.bf16_is_fast(cpu) else torch.float32)
    assert T.bf16_is_fast(torch.device("meta")) is False


def test_checkpoint_roundtrip_and_bad_files_name_the_file(tmp_path):
    T.save_checkpoint(tmp_path / "a.pt", {"w": torch.arange(3.0), "identity": {"lr": 1}})
    assert torch.equal(T.load_checkpoint(tmp_path / "a.pt")["w"], torch.arange(3.0))
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]          # no temporary file left behind
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt: not a readable checkpoint"):
        T.load_checkpoint(tmp_path / "junk.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt: not an rbclib checkpoint"):
        T.load_checkpoint(tmp_path / "list.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        T.load_checkpoint(tmp_path / "missing.pt")


def test_resume_state_same_run_other_run_and_none(tmp_path):
    assert T.resume_state(tmp_path, {"lr": 1}) is None
    T.save_checkpoint(tmp_path / T.CHECKPOINT, {"identity": {"lr": 1}, "step": 7})
    assert T.resume_state(tmp_path, {"lr": 1})["step"] == 7
    with pytest.raises(ValueError, match=r"last\.pt: written by a different run \(it differs in \[.lr.\]\)"):
        T.resume_state(tmp_path, {"lr": 2})


def test_log_rows_kept_up_to_the_checkpoint(tmp_path):
    assert T.read_log_rows(tmp_path, upto="step", last=3) == []
    T.write_log(tmp_path, [{"step": s, "loss": 1.0 / s} for s in range(1, 6)])
    kept = T.read_log_rows(tmp_path, upto="step", last=3)
    assert [r["step"] for r in kept] == [1, 2, 3] and kept[1]["loss"] == pytest.approx(0.5)


def test_ddgan_and_ssl_train_in_channels_last_memory(tmp_path):
    """The scaffold's channels-last option reaches the diffusion GANs and SSL (the gpu profile
    sets it); training still runs and writes its folder."""
    import numpy as np

    from rbclib.ssl.pretrain import SSLConfig, pretrain_ssl
    from rbclib.synth.ddgan import DDGANConfig, train_ddgan

    rng = np.random.default_rng(0)
    phase = [rng.normal(0, 0.05, (64, 64)).astype(np.float32) + 1.5 * (np.hypot(*np.mgrid[-32:32, -32:32]) < 10)]
    labels = [(np.hypot(*np.mgrid[-32:32, -32:32]) < 10).astype(np.uint8)]
    cfg = DDGANConfig(kind="phase", patch_px=16, downsample=2, n_steps=2, g_widths=(8, 16), d_widths=(8, 16), z_dim=8,
                      batch_size=2, epochs=1, iters_per_epoch=2, channels_last=True)
    out = train_ddgan(phase, labels, config=cfg, out_dir=tmp_path / "g", seed=0, device="cpu", progress=False)
    assert (out / "generator.pt").is_file() and len(T.read_log_rows(out, upto="epoch", last=1)) == 1

    images = torch.rand(4, 1, 32, 32) * 2 - 1
    ssl = SSLConfig(encoder="resnet18", crop_px=32, batch_size=2, steps=2, queue_size=4, proj_hidden=16, proj_dim=8,
                    save_every=1, channels_last=True)
    out = pretrain_ssl(list(images), out_dir=tmp_path / "s",
                       config=ssl, seed=0, progress=False, device="cpu")
    assert (out / "encoder_decoder.pt").is_file()


def test_compressed_weights_are_a_quarter_of_the_size_and_close():
    """int8 per output channel (error at most half a step, max |w| / 254) and float16 for the
    rest; integer buffers untouched."""
    torch.manual_seed(0)
    state = {"conv.weight": torch.randn(16, 8, 3, 3) * torch.logspace(-3, 0, 16).reshape(16, 1, 1, 1),
             "conv.bias": torch.randn(16), "bn.num_batches_tracked": torch.tensor(7)}
    packed = T.compress_weights(state)
    assert packed["int8"]["conv.weight"].dtype == torch.int8 and packed["other"]["conv.bias"].dtype == torch.float16
    back = T.expand_weights(packed)
    step = state["conv.weight"].abs().amax(dim=(1, 2, 3), keepdim=True) / 127
    assert ((back["conv.weight"] - state["conv.weight"]).abs() <= 0.5 * step + 1e-7).all()   # per channel, even tiny ones
    assert torch.allclose(back["conv.bias"], state["conv.bias"], rtol=1e-3)
    assert back["bn.num_batches_tracked"].item() == 7 and back["conv.weight"].dtype == torch.float32

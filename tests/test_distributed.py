"""Data-parallel training (rbclib.core.distributed, rbclib.launch): the helpers are no-ops in
one process, and the diffusion GANs and SSL train on two torchrun CPU processes that end
with identical weights."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.ndimage import label

from rbclib.core import distributed as D
from rbclib.core.files import write_json
from rbclib.core.io import write_instances, write_labels, write_phase

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import _disk_pairs  # noqa: E402


def test_helpers_leave_a_single_process_untouched(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert D.distributed_info() == (0, 1, False)
    rank, world, distributed, dev = D.start_distributed("cpu")
    assert (rank, world, distributed, dev) == (0, 1, False, torch.device("cpu"))
    layer = torch.nn.Linear(3, 2)
    layer(torch.ones(4, 3)).sum().backward()
    before = layer.weight.grad.clone()
    D.average_gradients(layer.parameters(), 1)
    assert torch.equal(layer.weight.grad, before)
    keys = torch.randn(4, 8)
    assert D.gather_from_ranks(keys, 1) is keys
    assert D.mean_over_ranks([1.5, 2.0], torch.device("cpu"), 1).tolist() == [1.5, 2.0]
    assert D.rank_share(8, 2) == 4
    with pytest.raises(ValueError, match="batch_size 6 is not divisible by the 4 DDP processes"):
        D.rank_share(6, 4)


def _torchrun() -> str:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    if torchrun is None:
        pytest.skip("torchrun not installed beside this python")
    return torchrun


def _launch(args: list[str], port: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([_torchrun(), "--nproc_per_node", "2", "--master_port", str(port), "-m", "rbclib.launch",
                           *args, "--profile", "smoke"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _disk_run(folder: Path, n: int = 3) -> Path:
    """A run folder (phase, labels, instances, splits.json) of ``n`` fields of two disc cells, all in train."""
    pairs = _disk_pairs(n)
    for p in pairs:
        write_phase(folder / "phase" / f"{p.name}.tif", p.phase)
        write_labels(folder / "labels" / f"{p.name}.png", p.labels)
        write_instances(folder / "instances" / f"{p.name}.png", label(p.labels > 0)[0].astype(np.int32))
    write_json(folder / "splits.json", {"train": [p.name for p in pairs], "test": [], "seed": 0, "method": "t"})
    return folder


@pytest.mark.slow
def test_ddgan_trains_on_two_processes_with_identical_weights(tmp_path):
    run = _disk_run(tmp_path / "run")
    _launch(["ddgan", str(run), str(tmp_path / "gm"), "--kind", "mask"], 29521)
    assert json.loads((tmp_path / "gm" / "ddp_sync.json").read_text()) == {"world_size": 2, "max_abs_weight_diff": 0.0}
    log = pd.read_csv(tmp_path / "gm" / "log.csv")
    assert len(log) == 2 and np.isfinite(log[["loss_d", "loss_g", "loss_l1"]].to_numpy()).all()
    assert (tmp_path / "gm" / "generator.pt").is_file()


@pytest.mark.slow
def test_ssl_trains_on_two_processes_with_identical_weights_and_queues(tmp_path):
    _launch(["ssl", str(tmp_path / "ssl"), "--corpus", "simulated"], 29523)
    sync = json.loads((tmp_path / "ssl" / "ddp_sync.json").read_text())
    assert sync == {"world_size": 2, "max_abs_weight_diff": 0.0}          # queue buffers included
    log = pd.read_csv(tmp_path / "ssl" / "log.csv")
    assert log["step"].tolist() == [1, 2, 3] and np.isfinite(log["loss"]).all()
    assert json.loads((tmp_path / "ssl" / "config.json").read_text())["steps_done"] == 3

"""Self-supervised pretraining (rbclib.ssl.pretrain): losses, momentum, queue, training, transfer, corpora, probe."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rbclib.seg.models import build_resunet
from rbclib.ssl.corpus import MedMNISTCorpus, PBCFolderCorpus, SimulatedPhaseCorpus, describe_corpus, holdout_split, prepare_ssl_data, simulated_cell_crops, smear_to_pseudo_phase
from rbclib.seg.pretrained import load_into_resunet
from rbclib.ssl.moco import FeatureQueue, info_nce, momentum_update
from rbclib.ssl.pretrain import BACKGROUND_VALUE, SSLConfig, pretrain_ssl, read_ssl_log, two_crops
from rbclib.ssl.probe import probe_encoder, probe_pretrained_vs_random

TINY = dict(encoder="resnet18", crop_px=32, batch_size=4, queue_size=8, proj_hidden=32, proj_dim=16, save_every=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class BlobCorpus(torch.utils.data.Dataset):
    """Deterministic (1, 48, 48) images: one bright disc per image, varying place and size."""

    kind = "blobs"

    def __init__(self, n: int = 6):
        yy, xx = np.mgrid[:48, :48]
        rng = np.random.default_rng(0)
        self.images = []
        for _ in range(n):
            cy, cx, r = rng.uniform(12, 36), rng.uniform(12, 36), rng.uniform(5, 12)
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).astype(np.float32)
            self.images.append(torch.from_numpy(disc * 1.5 + BACKGROUND_VALUE).clamp(-1, 1)[None])
        self.description = f"{n} synthetic discs"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


# ------------------------------------------------------------------ losses, momentum, queue
def test_info_nce_equals_manual_eq10():
    torch.manual_seed(0)
    q, k = F.normalize(torch.randn(3, 5), dim=1), F.normalize(torch.randn(3, 5), dim=1)
    queue = F.normalize(torch.randn(7, 5), dim=1)
    tau = 0.2
    loss, logits = info_nce(q, k, queue, tau)
    manual = []
    for i in range(3):
        pos = math.exp(float(q[i] @ k[i]) / tau)
        neg = sum(math.exp(float(q[i] @ queue[j]) / tau) for j in range(7))
        manual.append(-math.log(pos / (pos + neg)))
    assert logits.shape == (3, 8)
    assert float(loss) == pytest.approx(sum(manual) / 3, rel=1e-5)


def test_info_nce_identical_keys_give_lower_loss():
    torch.manual_seed(1)
    q = F.normalize(torch.randn(4, 8), dim=1)
    queue = F.normalize(torch.randn(16, 8), dim=1)
    same, _ = info_nce(q, q.clone(), queue, 0.2)
    other, _ = info_nce(q, F.normalize(torch.randn(4, 8), dim=1), queue, 0.2)
    assert float(same) < float(other)
    assert float(same) < math.log(17)  # better than chance among 1 + K


def test_momentum_update_math():
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    bn_o, bn_t = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    bn_o.running_mean.fill_(5.0)
    before = [p.detach().clone() for p in target.parameters()]
    momentum_update(online, target, 0.9)
    for p_t, p_b, p_o in zip(target.parameters(), before, online.parameters()):
        assert torch.allclose(p_t, 0.9 * p_b + 0.1 * p_o)
    momentum_update(bn_o, bn_t, 0.9)
    assert torch.equal(bn_t.running_mean, bn_o.running_mean)  # buffers are copied


def test_queue_is_fifo_ring():
    queue = FeatureQueue(5, 2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(queue.features.norm(dim=1), torch.ones(5))
    a = torch.arange(6.0).reshape(3, 2)
    queue.enqueue(a)
    assert torch.equal(queue.features[:3], a) and int(queue.ptr) == 3
    b = torch.arange(100.0, 106.0).reshape(3, 2)
    queue.enqueue(b)  # wraps: rows 3, 4, then 0
    assert torch.equal(queue.features[3:], b[:2]) and torch.equal(queue.features[0], b[2])
    assert torch.equal(queue.features[1:3], a[1:]) and int(queue.ptr) == 1


def test_two_crops_shapes_and_targets():
    cfg = SSLConfig(**{**TINY, "noise_std": 0.0, "blur_prob": 0.0, "intensity_jitter": 0.0})
    images = torch.stack([BlobCorpus(2)[i] for i in range(2)])
    in1, t1, in2, t2 = two_crops(images, cfg, torch.Generator().manual_seed(0))
    for x in (in1, t1, in2, t2):
        assert x.shape == (2, 1, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert torch.allclose(in1, t1)  # no intensity augmentation: input == target crop
    assert not torch.allclose(t1, t2)  # two different crops


def test_config_validation_and_roundtrip():
    cfg = SSLConfig(**TINY)
    assert SSLConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="multiple of 32"):
        SSLConfig(crop_px=48)
    with pytest.raises(ValueError, match="unknown SSL settings"):
        SSLConfig.from_dict({"crop": 64})


# ------------------------------------------------------------------ training and transfer
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, learning_seed) -> Path:
    out = tmp_path_factory.mktemp("ssl") / "ssl"
    return pretrain_ssl(BlobCorpus(), out_dir=out, config={**TINY, "steps": 12, "lr": 2e-3}, seed=learning_seed,
                        progress=False)


@pytest.mark.learning
def test_pretraining_writes_folder_and_loss_decreases(tiny_run, learning):
    for name in ("config.json", "encoder_decoder.pt", "last.pt", "log.csv"):
        assert (tiny_run / name).exists(), name
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["steps_done"] == 12 and cfg["corpus"] == "6 synthetic discs" and cfg["corpus_kind"] == "blobs"
    log = read_ssl_log(tiny_run)
    assert list(log["step"]) == list(range(1, 13))
    assert np.allclose(log["loss"], log["contrastive"] + log["rec"], atol=1e-4)
    # learning shows in the reconstruction term; the contrastive term of 12 steps need not fall
    # (its queue of negatives fills meanwhile; total loss 0.76-0.91 of the first steps' at seeds 0-1)
    learning.below("reconstruction loss, last / first three steps",
                   log["rec"].iloc[-3:].mean() / log["rec"].iloc[:3].mean(), 0.5, list(log["rec"]))


def test_resume_refuses_other_config_and_skips_finished_run(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "ssl"
    shutil.copytree(tiny_run, copy)
    with pytest.raises(ValueError, match="different run"):
        pretrain_ssl(BlobCorpus(), out_dir=copy, config={**TINY, "steps": 12, "lr": 1e-3}, seed=0, progress=False)
    before = (copy / "encoder_decoder.pt").read_bytes()
    pretrain_ssl(BlobCorpus(), out_dir=copy, config={**TINY, "steps": 12, "lr": 2e-3}, seed=0, progress=False)
    assert (copy / "encoder_decoder.pt").read_bytes() == before  # finished: nothing retrained
    assert len(read_ssl_log(copy)) == 12


class FailingBlobCorpus(BlobCorpus):
    """BlobCorpus that raises after ``limit`` item reads (an interrupted run)."""

    def __init__(self, limit: int):
        super().__init__()
        self.calls, self.limit = 0, limit

    def __getitem__(self, i: int) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.limit:
            raise RuntimeError("interrupted")
        return super().__getitem__(i)


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    cfg = {**TINY, "steps": 2, "save_every": 1}
    full = pretrain_ssl(BlobCorpus(), out_dir=tmp_path / "full", config=cfg, seed=3, progress=False)
    part = tmp_path / "part"
    with pytest.raises(RuntimeError, match="interrupted"):
        pretrain_ssl(FailingBlobCorpus(limit=4), out_dir=part, config=cfg, seed=3, progress=False)  # dies in step 2
    assert int(torch.load(part / "last.pt", weights_only=True)["step"]) == 1
    pretrain_ssl(BlobCorpus(), out_dir=part, config=cfg, seed=3, progress=False)
    a, b = read_ssl_log(full), read_ssl_log(part)
    assert list(b["step"]) == [1, 2]
    assert np.allclose(a["loss"], b["loss"], rtol=1e-4)
    wa = torch.load(full / "encoder_decoder.pt", weights_only=True)["encoder"]
    wb = torch.load(part / "encoder_decoder.pt", weights_only=True)["encoder"]
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-5) for k in wa)


def test_load_into_resunet_copies_exactly_and_refuses_mismatch(tiny_run):
    saved = torch.load(tiny_run / "encoder_decoder.pt", weights_only=True)
    torch.manual_seed(123)
    model = build_resunet("resnet18", in_channels=3, classes=5)
    head_before = {k: v.clone() for k, v in model.segmentation_head.state_dict().items()}
    assert not torch.equal(model.encoder.conv1.weight, saved["encoder"]["conv1.weight"])
    load_into_resunet(model, tiny_run)
    for part in ("encoder", "decoder"):
        have = getattr(model, part).state_dict()
        assert set(have) == set(saved[part])
        for key, value in saved[part].items():
            assert torch.equal(have[key], value), f"{part}.{key}"
    for k, v in model.segmentation_head.state_dict().items():
        assert torch.equal(v, head_before[k])  # head untouched
    with pytest.raises(ValueError, match="resnet18"):
        load_into_resunet(build_resunet("resnet34", in_channels=3, classes=5), tiny_run)
    with pytest.raises(ValueError, match="shape differs"):
        load_into_resunet(build_resunet("resnet18", in_channels=1, classes=5), tiny_run)


@pytest.mark.learning
def test_probe_returns_accuracies_for_pretrained_and_random(tiny_run, learning):
    corpus = BlobCorpus(12)
    images = torch.stack([F.interpolate(corpus[i][None], size=32, mode="area")[0] for i in range(12)])
    labels = np.array([0, 1] * 6)
    images[labels == 1] = 1.0  # class 0: discs, class 1: uniformly bright
    table = probe_pretrained_vs_random(tiny_run, images, labels, seed=learning.seed, test_fraction=0.5, k=3)
    assert list(table["encoder"]) == ["pretrained", "random"]
    assert ((table["knn_accuracy"] >= 0) & (table["knn_accuracy"] <= 1)).all()
    res = probe_encoder(build_resunet("resnet18").encoder, images, labels, test_fraction=0.5, k=3, seed=learning.seed)
    assert res["n_train"] == 6 and res["n_test"] == 6 and res["chance"] == 0.5
    # trivially separable classes: one error of the six test images (0.83) fails
    learning.above("kNN accuracy, trivially separable classes", res["knn_accuracy"], 0.9)
    learning.above("linear-probe accuracy, trivially separable classes", res["linear_accuracy"], 0.9)


def test_holdout_split_is_stratified():
    labels = np.repeat([0, 1, 2], 10)
    kept, held = holdout_split(labels, fraction=0.3, seed=0)
    assert len(held) == 9 and not set(kept) & set(held) and len(kept) + len(held) == 30
    assert np.bincount(labels[held]).tolist() == [3, 3, 3]


# ------------------------------------------------------------------ corpora
def test_smear_to_pseudo_phase_makes_cells_positive():
    rgb = np.full((20, 20, 3), 230, np.uint8)
    rgb[5:10, 5:10, 1] = 115  # a cell absorbing half the green light
    phase = smear_to_pseudo_phase(rgb, od_to_rad=8.0)
    assert phase[0, 0] == 0.0
    assert phase[7, 7] == pytest.approx(8.0 * math.log10(2), rel=1e-3)


def _write_bloodmnist(path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(100, 255, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 8, (n, 1), dtype=np.uint8)
    np.savez_compressed(path, **arrays)


def test_medmnist_corpus_reads_medmnist_npz(tmp_path):
    _write_bloodmnist(tmp_path / "bloodmnist_224.npz")
    corpus = MedMNISTCorpus(tmp_path, size=224)
    assert len(corpus) == 5 and corpus.labels.shape == (5,)
    x = corpus[0]
    assert x.shape == (1, 224, 224) and x.dtype == torch.float32 and -1 <= float(x.min()) <= float(x.max()) <= 1
    every = MedMNISTCorpus(tmp_path / "bloodmnist_224.npz", size=64, split="all")
    assert len(every) == 10 and every[9].shape == (1, 64, 64)
    assert "BloodMNIST" in describe_corpus(every)
    with pytest.raises(ValueError, match="bloodmnist_128.npz"):
        MedMNISTCorpus(tmp_path, size=128)


def test_pbc_folder_corpus_on_a_written_folder(tmp_path):
    for cls in ("b_cls", "a_cls"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            rgb = np.full((40, 44, 3), 220, np.uint8)
            rgb[10:20, 10:20] = (180, 90, 150)
            Image.fromarray(rgb).save(tmp_path / cls / f"{i}.jpg")
    corpus = PBCFolderCorpus(tmp_path, size=32)
    assert len(corpus) == 4 and corpus.class_names == ["a_cls", "b_cls"] and corpus.labels.tolist() == [0, 0, 1, 1]
    x = corpus[3]
    assert x.shape == (1, 32, 32) and float(x.min()) >= -1 and float(x.max()) <= 1
    assert float(x[0, 15, 15]) > float(x[0, 30, 30])  # the absorbing cell is a positive bump
    with pytest.raises(ValueError, match="no class subfolders"):
        PBCFolderCorpus(tmp_path / "a_cls")


@pytest.mark.realdata
def test_pbc_folder_corpus_real(shared_data):
    folder = shared_data / "blood_cells_pbc"
    if not folder.is_dir():
        pytest.skip(f"{folder} missing")
    corpus = PBCFolderCorpus(folder, size=64)
    assert len(corpus) == 1600 and len(corpus.class_names) == 8
    x = corpus[0]
    assert x.shape == (1, 64, 64) and -1 <= float(x.min()) and float(x.max()) <= 1
    # most of a smear is glass near the medium level; cells stand above it
    assert float(x.median()) < -0.3 and float(x.max()) > 0.0


def test_simulated_phase_corpus_and_cell_crops():
    corpus = SimulatedPhaseCorpus(2, size=128, seed=0)
    x = corpus[1]
    assert x.shape == (1, 128, 128) and x.dtype == torch.float32
    assert float(x.min()) == pytest.approx(BACKGROUND_VALUE) and float(x.max()) <= 1
    assert torch.equal(SimulatedPhaseCorpus(2, size=128, seed=0)[1], x)  # seeded
    assert "storage days" in corpus.description
    crops, labels, names = simulated_cell_crops(corpus, crop_px=48)
    assert crops.shape[1:] == (1, 48, 48) and len(crops) == len(labels) > 0
    assert set(labels) <= {1, 2, 3, 4} and names[1] == "discocyte"


def _write_pbc(folder: Path, classes=("a_cls", "b_cls"), n: int = 2) -> None:
    for k, cls in enumerate(classes):
        (folder / cls).mkdir(parents=True)
        for i in range(n):
            rgb = np.full((40, 44, 3), 220, np.uint8)
            rgb[10:20 + 5 * k, 10:20] = (180, 90 - 10 * i, 150)
            Image.fromarray(rgb).save(folder / cls / f"{i}.jpg")


def test_prepare_ssl_data_pbc_holds_probe_images_out(tmp_path):
    _write_pbc(tmp_path / "pbc", n=4)
    data = prepare_ssl_data("auto", image_px=32, seed=0, default_pbc=tmp_path / "pbc", probe_fraction=0.5)
    assert data.kind == "pbc" and len(data.pretrain) == 4 and data.probe_images.shape == (4, 1, 32, 32)
    assert sorted(data.probe_labels.tolist()) == [0, 0, 1, 1]
    assert not set(data.pretrain.indices) & set(holdout_split(data.pretrain.dataset.labels, fraction=0.5, seed=0)[1])
    assert "subset of 4 images" in data.description
    assert prepare_ssl_data("auto", image_px=32, seed=0, default_pbc=tmp_path / "none", sim_fields=1,
                            sim_field_px=64, probe_fields=1, probe_crop_px=32).kind == "simulated"


def test_prepare_ssl_data_bloodmnist(tmp_path):
    _write_bloodmnist(tmp_path / "bloodmnist_224.npz")
    data = prepare_ssl_data("bloodmnist", image_px=32, seed=0, medmnist_root=tmp_path, max_images=4)
    assert data.kind == "bloodmnist" and len(data.pretrain) == 4 and data.probe_images.shape == (3, 1, 32, 32)
    assert data.class_names[3] == "ig"


def test_queue_size_fits_the_corpus():
    from rbclib.ssl.pretrain import queue_size_for

    assert queue_size_for(10_000, queue_size=1024, batch_size=32) == 1024      # large corpus: as configured
    assert queue_size_for(300, queue_size=1024, batch_size=32) == 268          # below corpus minus one batch
    assert queue_size_for(40, queue_size=1024, batch_size=32) == 32            # never below one batch

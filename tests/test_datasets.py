"""rbclib.seg.datasets: phase input, run-folder pairs, the training patch dataset."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rbclib.seg.datasets import (BalancedCropDataset, CropPicker, Pair, PatchDataset, load_pairs, load_pairs_folder,
                             normalise_phase, phase_to_input, read_splits)
from rbclib.core.io import write_labels, write_phase
from rbclib.core.files import ImageFileError, write_json


def _write_run(root, n=3, size=(96, 128)):
    rng = np.random.default_rng(0)
    stems = [f"field_{i:04d}" for i in range(n)]
    for s in stems:
        write_phase(root / "phase" / f"{s}.tif", rng.uniform(0, 2, size).astype(np.float32))
        write_labels(root / "labels" / f"{s}.png", rng.integers(0, 5, size).astype(np.uint8))
    write_json(root / "splits.json", {"train": stems[:-1], "test": stems[-1:], "seed": 0, "method": "test"})
    return stems


def test_phase_to_input_replicates_the_fixed_normalisation():
    phase = np.array([[0.0, 1.5], [3.5, -0.5]], np.float32)
    x = phase_to_input(phase, in_channels=3)
    assert x.shape == (3, 2, 2) and x.dtype == np.float32
    assert np.array_equal(x[0], x[2])
    assert np.allclose(x[0], normalise_phase(phase))
    assert np.allclose(x[0], [[-0.75, 0.0], [1.0, -1.0]])
    assert phase_to_input(np.zeros((5, 8, 8)), in_channels=1).shape == (5, 1, 8, 8)


def test_load_pairs_reads_the_split_of_a_run_folder(tmp_path):
    stems = _write_run(tmp_path)
    pairs = load_pairs(tmp_path, "train")
    assert [p.name for p in pairs] == stems[:2]
    assert pairs[0].phase.dtype == np.float32 and pairs[0].labels.dtype == np.uint8
    assert pairs[0].phase.shape == (96, 128)
    assert read_splits(tmp_path)["test"] == stems[2:]


def test_bad_run_folders_name_the_file(tmp_path):
    stems = _write_run(tmp_path)
    (tmp_path / "labels" / f"{stems[0]}.png").unlink()
    with pytest.raises(ImageFileError, match=f"{stems[0]}.png"):
        load_pairs(tmp_path, "train")
    write_labels(tmp_path / "labels" / f"{stems[0]}.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(ImageFileError, match="does not match"):
        load_pairs(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="splits.json"):
        read_splits(tmp_path / "nowhere")


def test_pairs_folder_needs_matching_ids(tmp_path):
    write_phase(tmp_path / "phase" / "a.tif", np.ones((40, 40), np.float32))
    write_labels(tmp_path / "labels" / "a.png", np.ones((40, 40), np.uint8))
    assert [p.name for p in load_pairs_folder(tmp_path)] == ["a"]
    (tmp_path / "phase" / ".b.tif.x1y2.tif").write_bytes(b"half-written")  # left by a kill -9 during a save
    assert [p.name for p in load_pairs_folder(tmp_path)] == ["a"]
    write_phase(tmp_path / "phase" / "b.tif", np.ones((40, 40), np.float32))
    with pytest.raises(ImageFileError, match="unmatched"):
        load_pairs_folder(tmp_path)


def test_patch_dataset_counts_patches_rotations_and_pads(tmp_path):
    _write_run(tmp_path)
    pairs = load_pairs(tmp_path, "train")
    ds = PatchDataset(pairs, patch=32, mode="paper", rotations=4, in_channels=3)
    assert len(ds) == 2 * (3 * 4) * 4
    x, y = ds[5]
    assert x.shape == (3, 32, 32) and y.shape == (32, 32)
    assert str(x.dtype) == "torch.float32" and str(y.dtype) == "torch.int64"
    # patch 1 rotated by 90 degrees is item 5 (patches are enumerated with their 4 rotations)
    assert np.array_equal(y.numpy(), np.rot90(pairs[0].labels[:32, 32:64]))
    small = PatchDataset(pairs, patch=128, mode="cover", rotations=1)
    x, y = small[0]
    assert x.shape == (3, 128, 128) and y[96:].sum() == 0


def test_crop_picker_balances_classes():
    lab = np.zeros((100, 100), np.uint8)
    lab[:, :60] = 1  # a sea of discocyte pixels
    lab[90:94, 90:94] = 4  # one small stomatocyte
    rng = np.random.default_rng(0)
    bal = CropPicker([lab], cell_fraction=1.0, class_balanced=True)
    hits = sum(lab[y:y + 10, x:x + 10].max() == 4 for _, y, x in (bal.pick(rng, 10) for _ in range(400)))
    assert 150 < hits < 250  # about half the crops hold the rare class
    plain = CropPicker([lab], cell_fraction=1.0, class_balanced=False)
    hits = sum(lab[y:y + 10, x:x + 10].max() == 4 for _, y, x in (plain.pick(rng, 10) for _ in range(400)))
    assert hits < 10


def test_crop_picker_names_the_centre_class_and_centres_on_cells():
    lab = np.zeros((100, 100), np.uint8)
    inst = np.zeros((100, 100), np.int32)
    lab[10:20, 10:30], inst[10:20, 10:30] = 1, 1   # a discocyte, centroid (14.5, 19.5) -> (14, 20) or (15, 20)
    lab[60:71, 50:61], inst[60:71, 50:61] = 2, 2   # a spherocyte, centroid (65, 55)
    lab[60:71, 58:61] = 1                          # a few minority pixels: still a spherocyte
    rng = np.random.default_rng(0)
    picks = [CropPicker([lab], cell_fraction=1.0, instances=[inst]).pick_with_class(rng, 20) for _ in range(100)]
    assert {c for c, *_ in picks} == {1, 2}
    for c, i, y, x in picks:
        assert i == 0 and (y + 10, x + 10) == {1: (np.rint(14.5), 20), 2: (65, 55)}[c]
    # pixel-centred crops name the class of the pixel they are centred on; uniform crops name 0
    for c, _, y, x in (CropPicker([lab], cell_fraction=1.0).pick_with_class(rng, 6) for _ in range(100)):
        assert lab[y + 3, x + 3] == c
    assert {CropPicker([lab], cell_fraction=0.0).pick_with_class(rng, 6)[0] for _ in range(20)} == {0}
    with pytest.raises(ValueError, match="differ in shape"):
        CropPicker([lab], instances=[inst[:50]])


def test_balanced_crops_favour_rare_classes_and_are_reproducible():
    lab = np.zeros((200, 200), np.uint8)
    lab[:, :120] = 1  # mostly discocyte
    lab[180:190, 180:190] = 4  # one small stomatocyte
    phase = np.where(lab > 0, 1.0, 0.0).astype(np.float32)
    ds = BalancedCropDataset([Pair(phase, lab, "a")], patch=32, length=200, seed=3, in_channels=1)
    ds.set_epoch(0)
    items = [ds[i] for i in range(len(ds))]
    share = np.mean([bool((y == 4).any()) for _, y in items])
    assert 0.3 < share < 0.7  # about half the crops hold the rare class (1 in 400 cell pixels)
    x, y = items[5]
    assert x.shape == (1, 32, 32) and y.shape == (32, 32) and y.dtype == torch.int64
    assert torch.equal(ds[5][1], y)  # same (seed, epoch, i) -> same crop
    # input and label are cut from the same place: 1 rad exactly where the label is a cell
    for x, y in items[:50]:
        assert torch.equal(x[0] == float(normalise_phase(np.float32(1.0))), y > 0)
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i][1], items[i][1]) for i in range(20))


def test_balanced_crops_randomise_the_phase_scale():
    """phase_gain multiplies each crop's phase by a log-uniform gain; (1, 1) keeps it."""
    phase = np.zeros((64, 64), np.float32)
    phase[16:48, 16:48] = 1.0                       # a flat 1 rad block, class 1
    lab = (phase > 0).astype(np.uint8)
    pairs = [Pair(phase, lab, "a")]
    plain = BalancedCropDataset(pairs, patch=32, length=40, seed=0, in_channels=1)
    gained = BalancedCropDataset(pairs, patch=32, length=40, seed=0, in_channels=1, phase_gain=(0.75, 1.35))

    def cell_levels(ds):   # the 1 rad cell back in rad: normalised x -> phase
        lo, hi = ds.phase_range
        return np.array([float(((x[0][y == 1] + 1) / 2 * (hi - lo) + lo).mean()) for x, y in (ds[i] for i in range(40))])

    assert np.allclose(cell_levels(plain), 1.0, atol=1e-5)
    gains = cell_levels(gained)
    assert 0.75 - 1e-5 <= gains.min() and gains.max() <= 1.35 + 1e-5 and gains.std() > 0.1
    assert np.allclose(cell_levels(gained), gains)   # reproducible by (seed, epoch, item)
    with pytest.raises(ValueError, match="phase_gain"):
        BalancedCropDataset(pairs, patch=32, length=4, seed=0, phase_gain=(1.2, 0.8))

"""Training patches of the DDGANs (:mod:`rbclib.synth.ddgan`) from a run folder.

The phase and class maps of a split (:func:`load_split_fields`), their instance maps
(:func:`load_instances`), and random crops of them as the networks' inputs (:class:`PatchSampler`).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from rbclib.core.files import read_json
from rbclib.core.io import read_instances, read_labels, read_phase
from rbclib.core.labels import N_CLASSES
from rbclib.core.paths import RunPaths
from rbclib.seg.datasets import PHASE_RANGE_RAD, CropPicker, normalise_phase

if TYPE_CHECKING:
    from rbclib.synth.ddgan import DDGANConfig


def load_split_fields(run_dir: str | Path, split: str = "train") -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Phase maps and class maps of one split of a run folder (``splits.json``).

    Parameters
    ----------
    run_dir : str or pathlib.Path
        The run folder (``splits.json``, ``phase/``, ``labels/``).
    split : str, optional
        The split's name (default "train").

    Returns
    -------
    phases : list of numpy.ndarray
        (H, W) phase maps [rad].
    labels : list of numpy.ndarray
        (H, W) class maps.
    stems : list of str
        The fields' names, in the same order.

    Raises
    ------
    ValueError
        ``splits.json`` has no such split, or a class map's shape differs from its phase.
    """
    paths = RunPaths(run_dir)
    splits = read_json(paths.splits_json)
    if split not in splits:
        raise ValueError(f"{paths.splits_json}: no split {split!r} (has {sorted(splits)})")
    phases, labels = [], []
    for stem in splits[split]:
        phase = read_phase(paths.phase / f"{stem}.tif").data
        lab = read_labels(paths.labels / f"{stem}.png")
        if phase.shape != lab.shape:
            raise ValueError(f"{paths.labels / (stem + '.png')}: shape {lab.shape} differs from phase {phase.shape}")
        phases.append(phase)
        labels.append(lab)
    return phases, labels, list(splits[split])


def load_instances(run_dir: str | Path, stems: list[str]) -> list[np.ndarray]:
    """Instance maps of some fields of a run folder.

    Parameters
    ----------
    run_dir : str or pathlib.Path
        The run folder.
    stems : list of str
        The fields' names (e.g. from :func:`load_split_fields`).

    Returns
    -------
    list of numpy.ndarray
        (H, W) instance maps (``instances/<stem>.png``, written by 02), in the order of ``stems``.
    """
    paths = RunPaths(run_dir)
    return [read_instances(paths.instances / f"{stem}.png") for stem in stems]


class PatchSampler:
    """Random square crops (with random rot90 / flip) of phase + labels fields.

    Crop positions come from :class:`rbclib.seg.datasets.CropPicker` (cell-centred, class-balanced). Crops are
    ``patch_px * downsample`` data pixels, average-pooled by ``downsample``.

    Parameters
    ----------
    phases : list of numpy.ndarray
        (H, W) phase maps [rad], each at least ``patch_px * downsample`` px on a side.
    labels : list of numpy.ndarray
        (H, W) class maps of the same fields.
    patch_px : int
        Patch side [px] after pooling.
    downsample : int, optional
        Data pixels per patch pixel.
    cell_fraction : float, optional
        Share of crops centred on a cell.
    class_balanced : bool, optional
        Draw the centre's cell class uniformly.
    phase_range_rad : tuple of float, optional
        Phase range [rad] mapped to [-1, 1].
    instances : list of numpy.ndarray, optional
        Instance maps of the fields: crops centred on a cell's centroid.

    Raises
    ------
    ValueError
        No fields, or a field smaller than a patch.
    """

    def __init__(self, phases: list[np.ndarray], labels: list[np.ndarray], *, patch_px: int, downsample: int = 1,
                 cell_fraction: float = 0.9, class_balanced: bool = True, phase_range_rad: tuple[float, float] = PHASE_RANGE_RAD,
                 instances: list[np.ndarray] | None = None):
        if not phases:
            raise ValueError("PatchSampler: no training fields given")
        small = [p.shape for p in phases if min(p.shape) < patch_px * downsample]
        if small:
            raise ValueError(f"PatchSampler: fields {small[:3]} are smaller than the {patch_px * downsample} px patches")
        self.phases = [normalise_phase(p, phase_range_rad) for p in phases]
        self.labels = [np.asarray(lab, dtype=np.uint8) for lab in labels]
        self.picker = CropPicker(self.labels, cell_fraction=cell_fraction, class_balanced=class_balanced,
                                 instances=instances)
        self.patch_px, self.downsample = patch_px, downsample

    @classmethod
    def for_config(cls, phases: list[np.ndarray], labels: list[np.ndarray], config: "DDGANConfig",
                   instances: list[np.ndarray] | None = None) -> "PatchSampler":
        """The sampler a DDGANConfig asks for.

        Parameters
        ----------
        phases, labels : list of numpy.ndarray
            (H, W) phase maps [rad] and class maps.
        config : DDGANConfig
            Its patch size, downsampling, crop settings and phase range.
        instances : list of numpy.ndarray, optional
            Instance maps; used only with ``crop_centre == "cell"``, which needs them.

        Returns
        -------
        PatchSampler
            The sampler.

        Raises
        ------
        ValueError
            ``crop_centre == "cell"`` without instance maps.
        """
        if config.crop_centre == "cell" and instances is None:
            raise ValueError("DDGANConfig.crop_centre='cell' needs the instance maps of the training fields")
        return cls(phases, labels, patch_px=config.patch_px, downsample=config.downsample,
                   cell_fraction=config.cell_crop_fraction, class_balanced=config.class_balanced_crops,
                   phase_range_rad=config.phase_range_rad,
                   instances=instances if config.crop_centre == "cell" else None)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Draw ``n`` random crops (with random rot90 / flip).

        Parameters
        ----------
        rng : numpy.random.Generator
            The random source.
        n : int
            Crops to draw.

        Returns
        -------
        phase : torch.Tensor
            (n, 1, P, P) float32 normalised phase.
        onehot : torch.Tensor
            (n, 5, P, P) float32 one-hot masks scaled to [-1, 1] (soft at cell edges when pooled).
        centre : torch.Tensor
            (n,) int64 class each crop is centred on (0 for uniform crops).
        """
        P, f, ph, lab, centre = self.patch_px * self.downsample, self.downsample, [], [], []
        for _ in range(n):
            c, i, y, x = self.picker.pick_with_class(rng, P)
            centre.append(c)
            p, m = self.phases[i][y:y + P, x:x + P], self.labels[i][y:y + P, x:x + P]
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            p, m = np.rot90(p, k), np.rot90(m, k)
            if flip:
                p, m = p[:, ::-1], m[:, ::-1]
            ph.append(p)
            lab.append(m)
        phase = torch.from_numpy(np.ascontiguousarray(np.stack(ph)))[:, None]
        onehot = F.one_hot(torch.from_numpy(np.ascontiguousarray(np.stack(lab))).long(), N_CLASSES)
        onehot = onehot.permute(0, 3, 1, 2).float()
        if f > 1:
            phase, onehot = F.avg_pool2d(phase, f), F.avg_pool2d(onehot, f)
        return phase, onehot * 2.0 - 1.0, torch.tensor(centre, dtype=torch.long)

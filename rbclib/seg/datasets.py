"""Phase normalisation, phase/label pairs of a run folder and the training patch dataset.

Phase is mapped to [-1, 1] by a fixed physical range (not per-image min-max); training crops
may be given a random phase gain (:class:`BalancedCropDataset`'s ``phase_gain``) so that a
model does not rely on the absolute phase level, on which real instruments disagree.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from rbclib.core.io import list_images, read_labels, read_phase
from rbclib.core.files import ImageFileError, read_json
from rbclib.core.labels import N_CLASSES, instance_classes
from rbclib.seg.tiles import Mode, extract_patches, pad_to_min, rotations4

# Fixed physical phase range [rad] mapped to [-1, 1]. At 682.5 nm and dn ~ 0.066 a 4 um
# thick spherocyte peaks near 2.4 rad; the margin keeps noise and thicker cells in range.
PHASE_RANGE_RAD: tuple[float, float] = (-0.5, 3.5)


def normalise_phase(phase: np.ndarray, phase_range: tuple[float, float] = PHASE_RANGE_RAD) -> np.ndarray:
    """Phase [rad] -> float32 in [-1, 1] (values outside the range are clipped).

    Parameters
    ----------
    phase : numpy.ndarray
        Phase [rad], any shape.
    phase_range : tuple of (float, float), optional
        (low, high) [rad] mapped to -1 and 1; default :data:`PHASE_RANGE_RAD`.

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape, in [-1, 1].
    """
    lo, hi = phase_range
    out = (np.asarray(phase, dtype=np.float32) - lo) / (hi - lo) * 2.0 - 1.0
    return np.clip(out, -1.0, 1.0)


def denormalise_phase(x: np.ndarray, phase_range: tuple[float, float] = PHASE_RANGE_RAD) -> np.ndarray:
    """Inverse of :func:`normalise_phase` (for values that were inside the range).

    Parameters
    ----------
    x : numpy.ndarray
        Normalised phase in [-1, 1], any shape.
    phase_range : tuple of (float, float), optional
        (low, high) [rad] that -1 and 1 stand for; default :data:`PHASE_RANGE_RAD`.

    Returns
    -------
    numpy.ndarray
        float32 phase [rad] of the same shape.
    """
    lo, hi = phase_range
    return ((np.asarray(x, dtype=np.float32) + 1.0) / 2.0 * (hi - lo) + lo).astype(np.float32)


@dataclass
class Pair:
    """One training/evaluation image.

    Attributes
    ----------
    phase : numpy.ndarray
        (H, W) float32 phase [rad].
    labels : numpy.ndarray
        (H, W) uint8 class map 0..4.
    name : str
        File stem.
    """

    phase: np.ndarray
    labels: np.ndarray
    name: str


def phase_to_input(phase: np.ndarray, *, in_channels: int = 3,
                   phase_range: tuple[float, float] = PHASE_RANGE_RAD) -> np.ndarray:
    """Phase -> normalised network input, the single phase channel replicated to ``in_channels``.

    Parameters
    ----------
    phase : numpy.ndarray
        (..., H, W) phase [rad].
    in_channels : int, optional
        Number of input channels, default 3 (the paper's ResUnet, whose SSL pretraining saw
        RGB images).
    phase_range : tuple of (float, float), optional
        (low, high) [rad] mapped to [-1, 1]; default :data:`PHASE_RANGE_RAD`.

    Returns
    -------
    numpy.ndarray
        (..., in_channels, H, W) float32 in [-1, 1].
    """
    x = normalise_phase(phase, phase_range)[..., None, :, :]
    reps = [1] * x.ndim
    reps[-3] = in_channels
    return np.tile(x, reps)


def read_pair(phase_path: str | Path, labels_path: str | Path, *, allow_ignore: bool = False) -> Pair:
    """Read one phase TIFF and its class-map PNG.

    Parameters
    ----------
    phase_path : str or pathlib.Path
        The phase TIFF [rad].
    labels_path : str or pathlib.Path
        The class-map PNG.
    allow_ignore : bool, optional
        The class map may hold ``rbclib.core.labels.IGNORE``; default False.

    Returns
    -------
    Pair
        The pair, named by the phase file's stem.

    Raises
    ------
    rbclib.core.files.ImageFileError
        When the two sizes differ (the error names the file).
    """
    phase = read_phase(phase_path).data
    labels = read_labels(labels_path, allow_ignore=allow_ignore)
    if phase.shape != labels.shape:
        raise ImageFileError(labels_path, f"label map {labels.shape} does not match phase image {phase.shape} ({phase_path})")
    return Pair(phase=phase, labels=labels, name=Path(phase_path).stem)


def read_splits(run_dir: str | Path) -> dict:
    """Read ``<run>/splits.json``.

    Parameters
    ----------
    run_dir : str or pathlib.Path
        The run folder.

    Returns
    -------
    dict
        {"train": [stems], "test": [stems], ...}.

    Raises
    ------
    FileNotFoundError
        When there is no splits.json (run 02_annotate first).
    rbclib.core.files.ImageFileError
        When the "train" or "test" list is missing.
    """
    path = Path(run_dir) / "splits.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no splits.json; run 02_annotate first")
    splits = read_json(path)
    for key in ("train", "test"):
        if key not in splits:
            raise ImageFileError(path, f"no {key!r} list")
    return splits


def load_pairs(run_dir: str | Path, stems: str | Sequence[str]) -> list[Pair]:
    """Pairs ``<run>/phase/<stem>.tif`` + ``<run>/labels/<stem>.png`` of a split.

    Parameters
    ----------
    run_dir : str or pathlib.Path
        The run folder.
    stems : str or Sequence[str]
        A split name ("train"/"test", read from splits.json) or an explicit list of stems.

    Returns
    -------
    list of Pair
        One pair per stem, in the order of the stems.

    Raises
    ------
    rbclib.core.files.ImageFileError
        When a listed file is missing.
    """
    run_dir = Path(run_dir)
    if isinstance(stems, str):
        stems = read_splits(run_dir)[stems]
    pairs = []
    for stem in stems:
        phase_path, labels_path = run_dir / "phase" / f"{stem}.tif", run_dir / "labels" / f"{stem}.png"
        for p in (phase_path, labels_path):
            if not p.is_file():
                raise ImageFileError(p, "listed in splits.json but missing")
        pairs.append(read_pair(phase_path, labels_path))
    return pairs


def load_pairs_folder(folder: str | Path, *, allow_ignore: bool = False) -> list[Pair]:
    """Pairs from a folder holding ``phase/<id>.tif`` and ``labels/<id>.png``, matched by id.

    Parameters
    ----------
    folder : str or pathlib.Path
        E.g. the accepted synthetic pairs of 04, ``<run>/synthetic/train``.
    allow_ignore : bool, optional
        The labels may hold ``rbclib.core.labels.IGNORE`` (pass it for the synthetic pairs);
        default False.

    Returns
    -------
    list of Pair
        The pairs, sorted by id.

    Raises
    ------
    rbclib.core.files.ImageFileError
        When a sub-folder is missing, ids do not match, or there are no pairs.
    """
    folder = Path(folder)
    phase_dir, labels_dir = folder / "phase", folder / "labels"
    for d in (phase_dir, labels_dir):
        if not d.is_dir():
            raise ImageFileError(d, "folder of pairs needs phase/ and labels/ sub-folders")
    # list_images skips hidden files: the temporary files of an interrupted atomic write
    phases = {p.stem: p for p in list_images(phase_dir, (".tif",))}
    labels = {p.stem: p for p in list_images(labels_dir, (".png",))}
    missing = sorted(set(phases) ^ set(labels))
    if missing:
        raise ImageFileError(folder, f"unmatched phase/label ids, e.g. {missing[:5]}")
    if not phases:
        raise ImageFileError(folder, "no phase/*.tif + labels/*.png pairs")
    return [read_pair(phases[k], labels[k], allow_ignore=allow_ignore) for k in sorted(phases)]


class PatchDataset(Dataset):
    """(input, target) patches of phase/label pairs for training.

    Each pair is cut into ``patch`` px patches (``mode="paper"``: non-overlapping grid;
    ``"cover"``: overlapping tiles covering the image); images smaller than a patch are
    padded with medium (0 rad) / background. With ``rotations=4`` every patch also appears
    rotated by 90, 180 and 270 degrees (the paper's x4 augmentation); ``rotations=1``
    leaves them as they are (e.g. synthetic pairs already rotated by 04).
    Items: float32 tensor (in_channels, patch, patch), int64 tensor (patch, patch).

    Parameters
    ----------
    pairs : Sequence[Pair]
        The phase/label pairs.
    patch : int, optional
        Patch side [px], default 256.
    mode : {"paper", "cover"}, optional
        Patch layout (:func:`rbclib.seg.tiles.extract_patches`), default "paper".
    overlap : int, optional
        Minimum tile overlap in "cover" mode [px], default 32.
    rotations : {4, 1}, optional
        4 (default): every patch also rotated by 90, 180, 270 degrees; 1: as they are.
    in_channels : int, optional
        Input channels (phase replicated), default 3.
    phase_range : tuple of (float, float), optional
        (low, high) [rad] mapped to [-1, 1]; default :data:`PHASE_RANGE_RAD`.

    Raises
    ------
    ValueError
        When ``rotations`` is not 1 or 4, or there are no pairs.
    """

    def __init__(self, pairs: Sequence[Pair], *, patch: int = 256, mode: Mode = "paper",
                 overlap: int = 32, rotations: int = 4, in_channels: int = 3,
                 phase_range: tuple[float, float] = PHASE_RANGE_RAD):
        if rotations not in (1, 4):
            raise ValueError(f"rotations must be 1 or 4, got {rotations}")
        xs, ys = [], []
        for pair in pairs:
            phase = pad_to_min(np.asarray(pair.phase, np.float32), patch, value=0.0)
            labels = pad_to_min(np.asarray(pair.labels, np.uint8), patch, value=0)
            xp, _ = extract_patches(phase, patch, mode=mode, overlap=overlap)
            yp, _ = extract_patches(labels, patch, mode=mode, overlap=overlap)
            for x, y in zip(xp, yp):
                for xr, yr in (rotations4(x, y) if rotations == 4 else [(x, y)]):
                    xs.append(xr)
                    ys.append(yr)
        if not xs:
            raise ValueError("PatchDataset: no pairs given")
        self.inputs = torch.from_numpy(np.stack(xs))  # (N, p, p) normalised lazily
        self.targets = torch.from_numpy(np.stack(ys).astype(np.int64))
        self.in_channels, self.phase_range = in_channels, phase_range

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = phase_to_input(self.inputs[i].numpy(), in_channels=self.in_channels, phase_range=self.phase_range)
        return torch.from_numpy(x), self.targets[i]


def _cell_centres(instances: np.ndarray, labels: np.ndarray, cls: int) -> np.ndarray:
    """Flat pixel indices of the rounded centroids of the cells of class ``cls`` (majority
    class of each instance, :func:`rbclib.core.labels.instance_classes`)."""
    inst, lab = np.asarray(instances), np.asarray(labels)
    if inst.shape != lab.shape:
        raise ValueError(f"CropPicker: instance map {inst.shape} and class map {lab.shape} differ in shape")
    ids = np.array([i for i, c in instance_classes(lab, inst).items() if c == cls], dtype=np.int64)
    if not ids.size:
        return np.zeros(0, np.int64)
    n = int(inst.max()) + 1
    yy, xx = np.indices(inst.shape)
    size = np.bincount(inst.ravel(), minlength=n)[ids]
    cy = np.rint(np.bincount(inst.ravel(), weights=yy.ravel(), minlength=n)[ids] / size).astype(np.int64)
    cx = np.rint(np.bincount(inst.ravel(), weights=xx.ravel(), minlength=n)[ids] / size).astype(np.int64)
    return cy * inst.shape[1] + cx


class CropPicker:
    """Where to crop training patches from a list of class maps.

    With probability ``cell_fraction`` a crop is centred on a cell pixel: with
    ``class_balanced`` the cell class is drawn uniformly among the classes present in the
    whole set, then a pixel of that class (so rare classes are seen as often as common
    ones: the DDGAN's training crops and the segmenter's ``patch_mode = "balanced"``);
    otherwise any cell pixel. With ``instances`` (instance maps, one per class map) a crop is
    centred on a cell's centroid instead, the cell drawn uniformly among the cells of the
    class (the diffusion GANs' ``crop_centre = "cell"``). The remaining crops are placed
    uniformly in a random field.

    Parameters
    ----------
    labels : list of numpy.ndarray
        (H, W) class maps 0..4, one per field.
    cell_fraction : float, optional
        Probability that a crop is centred on a cell, default 0.9.
    class_balanced : bool, optional
        Draw the cell class uniformly among the classes present, default True.
    instances : list of numpy.ndarray, optional
        (H, W) instance maps, one per class map: centre crops on cell centroids.

    Raises
    ------
    ValueError
        When ``instances`` and ``labels`` differ in number (or an instance map in shape).
    """

    def __init__(self, labels: list[np.ndarray], *, cell_fraction: float = 0.9, class_balanced: bool = True,
                 instances: list[np.ndarray] | None = None):
        self.shapes = [lab.shape for lab in labels]
        self.cell_fraction, self.class_balanced = cell_fraction, class_balanced
        self.where: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if instances is not None and len(instances) != len(labels):
            raise ValueError(f"CropPicker: {len(instances)} instance maps for {len(labels)} class maps")
        for c in range(1, N_CLASSES):
            if instances is None:
                per = [np.flatnonzero(np.asarray(lab).ravel() == c) for lab in labels]
            else:
                per = [_cell_centres(inst, lab, c) for inst, lab in zip(instances, labels)]
            fields = np.concatenate([np.full(len(p), i) for i, p in enumerate(per)]) if per else np.zeros(0, int)
            if fields.size:
                self.where[c] = (fields.astype(np.int64), np.concatenate(per))

    def pick(self, rng: np.random.Generator, patch_px: int) -> tuple[int, int, int]:
        """Place one crop.

        Parameters
        ----------
        rng : numpy.random.Generator
            The random source.
        patch_px : int
            Crop side [px]; no larger than any field.

        Returns
        -------
        tuple of (int, int, int)
            (field index, top, left) of one crop of side ``patch_px``.
        """
        return self.pick_with_class(rng, patch_px)[1:]

    def pick_with_class(self, rng: np.random.Generator, patch_px: int) -> tuple[int, int, int, int]:
        """Place one crop and say which class it is centred on.

        Parameters
        ----------
        rng : numpy.random.Generator
            The random source.
        patch_px : int
            Crop side [px]; no larger than any field.

        Returns
        -------
        tuple of (int, int, int, int)
            (class, field index, top, left) of one crop: the class of the pixel (or, with
            instance maps, the cell) it is centred on; 0 for a crop placed uniformly.
        """
        if self.where and rng.random() < self.cell_fraction:
            classes = sorted(self.where)
            if self.class_balanced:
                c = classes[int(rng.integers(len(classes)))]
                fields, pixels = self.where[c]
                j = int(rng.integers(len(fields)))
            else:
                fields = np.concatenate([self.where[c][0] for c in classes])
                pixels = np.concatenate([self.where[c][1] for c in classes])
                j = int(rng.integers(len(fields)))
                c = classes[int(np.searchsorted(np.cumsum([len(self.where[k][0]) for k in classes]), j, side="right"))]
            i = int(fields[j])
            H, W = self.shapes[i]
            cy, cx = divmod(int(pixels[j]), W)
            return c, i, int(np.clip(cy - patch_px // 2, 0, H - patch_px)), int(np.clip(cx - patch_px // 2, 0, W - patch_px))
        i = int(rng.integers(len(self.shapes)))
        H, W = self.shapes[i]
        return 0, i, int(rng.integers(H - patch_px + 1)), int(rng.integers(W - patch_px + 1))


class BalancedCropDataset(Dataset):
    """Class-balanced random crops of phase/label pairs for training (``patch_mode =
    "balanced"``): item ``i`` of epoch ``e`` is a ``patch`` px crop placed by
    :class:`CropPicker` (centred on a pixel of a cell class drawn uniformly, so a class
    holding 4 % of the cells is seen as often as one holding 76 %) and rotated by a random
    multiple of 90 degrees, all drawn from ``(seed, e, i)``: reproducible, resumable, and
    independent of the DataLoader's order. Call :meth:`set_epoch` before each epoch.
    Items as in :class:`PatchDataset`.

    Parameters
    ----------
    pairs : Sequence[Pair]
        The phase/label pairs; fields smaller than ``patch`` are padded with medium (0 rad) /
        background.
    patch : int
        Crop side [px].
    length : int
        Items per epoch.
    seed : int
        Seed of every draw.
    in_channels : int, optional
        Input channels (phase replicated), default 3.
    cell_fraction : float, optional
        Share of crops centred on a cell (:class:`CropPicker`), default 0.9.
    phase_range : tuple of (float, float), optional
        (low, high) [rad] mapped to [-1, 1]; default :data:`PHASE_RANGE_RAD`.
    phase_gain : tuple of (float, float), optional
        (low, high): each crop's phase is multiplied by a gain drawn log-uniformly from it
        (real instruments disagree on absolute phase through wavelength, medium and
        calibration, so a class must be told by its shape, not its phase level); (1, 1), the
        default, leaves the phase as it is.

    Raises
    ------
    ValueError
        When ``phase_gain`` is not 0 < low <= high, or there are no pairs.
    """

    def __init__(self, pairs: Sequence[Pair], *, patch: int, length: int, seed: int, in_channels: int = 3,
                 cell_fraction: float = 0.9, phase_range: tuple[float, float] = PHASE_RANGE_RAD,
                 phase_gain: tuple[float, float] = (1.0, 1.0)):
        if not 0 < phase_gain[0] <= phase_gain[1]:
            raise ValueError(f"phase_gain must be (low, high) with 0 < low <= high, got {phase_gain!r}")
        if not pairs:
            raise ValueError("BalancedCropDataset: no pairs given")
        self.phases = [pad_to_min(np.asarray(p.phase, np.float32), patch, value=0.0) for p in pairs]
        self.labels = [pad_to_min(np.asarray(p.labels, np.uint8), patch, value=0) for p in pairs]
        self.picker = CropPicker(self.labels, cell_fraction=cell_fraction, class_balanced=True)
        self.patch, self.length, self.seed, self.epoch = int(patch), int(length), int(seed), 0
        self.in_channels, self.phase_range = in_channels, phase_range
        self.log_gain = (float(np.log(phase_gain[0])), float(np.log(phase_gain[1])))

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that the following items are drawn for.

        Parameters
        ----------
        epoch : int
            The epoch index ``e`` of the ``(seed, e, i)`` draws.
        """
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        k, y, x = self.picker.pick(rng, self.patch)
        sl = (slice(y, y + self.patch), slice(x, x + self.patch))
        turns = int(rng.integers(4))
        phase, labels = np.rot90(self.phases[k][sl], turns), np.rot90(self.labels[k][sl], turns)
        gain = np.float32(np.exp(rng.uniform(*self.log_gain)))
        x_in = phase_to_input(np.ascontiguousarray(phase) * gain, in_channels=self.in_channels,
                              phase_range=self.phase_range)
        return torch.from_numpy(x_in), torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))

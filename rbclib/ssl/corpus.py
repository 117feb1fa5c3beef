"""Corpora for self-supervised pretraining and the labelled probe sets (stage 05).

Corpora (:class:`PBCFolderCorpus`, :class:`MedMNISTCorpus`, :class:`SimulatedPhaseCorpus`)
all return (1, size, size) float32 tensors in [-1, 1] on the scale of
:func:`rbclib.seg.datasets.normalise_phase`. Stained RGB smears become single-channel
"pseudo-phase" by :func:`smear_to_pseudo_phase`: optical density of the green channel,
times ``od_to_rad``. Haemoglobin and eosin absorb most near 540 nm, so in the green
channel a red cell is a dark disc on a bright background; its optical density
-log10(I / I_background) is a positive bump on a zero background, which is what a phase
map of a cell in its medium looks like. With 8 rad per OD unit a red cell of the PBC
smears (green OD 0.12-0.2) lands at 1-1.6 rad, in the range of RBC phase; stained nuclei
(OD up to ~1) saturate at the top of the phase range.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from rbclib.core.files import ImageFileError
from rbclib.core.io import list_images
from rbclib.seg.datasets import normalise_phase

PBC_CLASSES = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")


# --------------------------------------------------------------------------- corpora
def smear_to_pseudo_phase(rgb: np.ndarray, *, od_to_rad: float = 8.0, background_percentile: float = 99.0) -> np.ndarray:
    """Stained RGB smear -> pseudo-phase.

    Green-channel optical density OD = -log10(G / G_bg), with G_bg the
    ``background_percentile`` of G (the bright, cell-free glass), clipped at 0, times
    ``od_to_rad``. Cells come out as positive bumps on a zero background, like phase.

    Parameters
    ----------
    rgb : numpy.ndarray
        (H, W, 3) uint8 stained smear.
    od_to_rad : float, optional
        Pseudo-phase per optical-density unit [rad], default 8.
    background_percentile : float, optional
        Percentile of G taken as the background G_bg, default 99.

    Returns
    -------
    numpy.ndarray
        (H, W) float32 pseudo-phase [rad], >= 0.
    """
    green = np.asarray(rgb, dtype=np.float32)[..., 1]
    bg = max(float(np.percentile(green, background_percentile)), 1.0)
    od = -np.log10(np.clip(green, 1.0, None) / bg)
    return (np.clip(od, 0.0, None) * od_to_rad).astype(np.float32)


def _to_tensor(pseudo_phase: np.ndarray, size: int) -> torch.Tensor:
    """Pseudo-phase [rad] (H, W) -> (1, size, size) float32 in [-1, 1] (area resize)."""
    x = torch.from_numpy(normalise_phase(pseudo_phase))[None, None]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="area")
    return x[0].clamp(-1.0, 1.0)


class PBCFolderCorpus(Dataset):
    """Stained blood-smear images in class subfolders (the PBC layout of Acevedo et al. 2020).

    folder/<class>/*.jpg -> (1, size, size) float32 in [-1, 1] via
    :func:`smear_to_pseudo_phase`. ``labels`` (int array) index ``class_names`` (sorted
    subfolder names); decoded images are cached in memory.

    Parameters
    ----------
    folder : str or pathlib.Path
        The folder of class subfolders.
    size : int, optional
        Side of the resized images [px], default 128.
    od_to_rad : float, optional
        Pseudo-phase per optical-density unit [rad], default 8.

    Raises
    ------
    rbclib.core.files.ImageFileError
        When the folder does not exist or holds no class subfolders with images.
    """

    kind = "pbc"

    def __init__(self, folder: str | Path, *, size: int = 128, od_to_rad: float = 8.0):
        self.folder = Path(folder).expanduser().resolve()
        if not self.folder.is_dir():
            raise ImageFileError(self.folder, "PBC folder not found")
        classes = sorted(d.name for d in self.folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        files, labels = [], []
        for i, name in enumerate(classes):
            found = [p for p in list_images(self.folder / name) if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")]
            files += found
            labels += [i] * len(found)
        if not files:
            raise ImageFileError(self.folder, "no class subfolders with images (expected <folder>/<class>/*.jpg)")
        self.files, self.labels, self.class_names = files, np.asarray(labels, dtype=np.int64), classes
        self.size, self.od_to_rad = int(size), float(od_to_rad)
        self._cache: dict[int, torch.Tensor] = {}

    @property
    def description(self) -> str:
        """One line naming the folder, image and class counts and the conversion."""
        return (f"PBC-layout folder {self.folder} ({len(self)} stained smear images, {len(self.class_names)} "
                f"classes), green optical density x {self.od_to_rad:g} rad, resized to {self.size} px")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        if index not in self._cache:
            from PIL import Image

            path = self.files[index]
            try:
                with Image.open(path) as im:
                    rgb = np.asarray(im.convert("RGB"))
            except OSError as exc:
                raise ImageFileError(path, f"cannot decode image ({exc})") from exc
            self._cache[index] = _to_tensor(smear_to_pseudo_phase(rgb, od_to_rad=self.od_to_rad), self.size)
        return self._cache[index]


class MedMNISTCorpus(Dataset):
    """MedMNIST's BloodMNIST (the PBC images, Yang et al. 2023) from its ``.npz`` file.

    Images (N, H, W, 3) uint8 become pseudo-phase by :func:`smear_to_pseudo_phase`.

    Parameters
    ----------
    npz_or_root : str or pathlib.Path
        The file itself, or the folder holding ``bloodmnist_<size>.npz`` (``bloodmnist.npz``
        at size 28), medmnist's naming.
    size : int, optional
        MedMNIST image size of the file [px], default 224.
    split : {"train", "val", "test", "all"}, optional
        Which split to read, default "train".
    download : bool, optional
        With the file missing, the ``medmnist`` package (``pip install medmnist``) downloads
        it first; default False.
    image_px : int, optional
        Side the images are resized to [px]; default ``size``.
    od_to_rad : float, optional
        Pseudo-phase per optical-density unit [rad], default 8.

    Raises
    ------
    ValueError
        On an unknown ``split``.
    rbclib.core.files.ImageFileError
        When the file is missing or not a MedMNIST file of RGB images and labels.
    ImportError
        When ``download`` needs the medmnist package and it is not installed.
    """

    kind = "bloodmnist"
    flag = "bloodmnist"

    def __init__(self, npz_or_root: str | Path, size: int = 224, *, split: str = "train", download: bool = False,
                 image_px: int | None = None, od_to_rad: float = 8.0):
        if split not in ("train", "val", "test", "all"):
            raise ValueError(f"split={split!r}; choose train, val, test or all")
        path = Path(npz_or_root).expanduser()
        if path.is_dir() or path.suffix != ".npz":
            path = path / (f"{self.flag}.npz" if size == 28 else f"{self.flag}_{size}.npz")
        if not path.exists() and download:
            self._download(path.parent, size)
        if not path.exists():
            raise ImageFileError(path, "BloodMNIST file not found (pass download=True with the medmnist package "
                                       "installed, or download it from https://zenodo.org/records/10519652)")
        splits = ("train", "val", "test") if split == "all" else (split,)
        try:
            with np.load(path) as data:
                images = np.concatenate([data[f"{s}_images"] for s in splits])
                labels = np.concatenate([np.asarray(data[f"{s}_labels"]).reshape(-1) for s in splits])
        except (KeyError, ValueError, OSError) as exc:
            raise ImageFileError(path, f"not a MedMNIST file with {[f'{s}_images' for s in splits]} ({exc})") from exc
        if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
            raise ImageFileError(path, f"expected RGB images (N, H, W, 3) and N labels, got {images.shape} and {labels.shape}")
        self.path, self.split, self.images = path, split, images
        self.labels = labels.astype(np.int64)
        self.class_names = list(PBC_CLASSES)
        self.size, self.od_to_rad = int(image_px or size), float(od_to_rad)

    @staticmethod
    def _download(root: Path, size: int) -> None:
        try:
            import medmnist
        except ImportError as exc:
            raise ImportError("download=True needs the medmnist package: pip install medmnist") from exc
        root.mkdir(parents=True, exist_ok=True)
        medmnist.BloodMNIST(split="train", root=str(root), size=size, download=True)

    @property
    def description(self) -> str:
        """One line naming the file, split, image count and the conversion."""
        return (f"BloodMNIST {self.path} (split {self.split}, {len(self)} images), green optical density x "
                f"{self.od_to_rad:g} rad, resized to {self.size} px")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return _to_tensor(smear_to_pseudo_phase(self.images[index], od_to_rad=self.od_to_rad), self.size)


class SimulatedPhaseCorpus(Dataset):
    """Unlabelled simulated phase fields (true phase of :func:`rbclib.physics.simulate.simulate_field`).

    Field ``i`` is drawn from ``np.random.default_rng([seed, i])`` at ``size`` x ``size`` px
    (0.1441 um/px by default, no resizing), normalised by
    :func:`rbclib.seg.datasets.normalise_phase`. Unless ``simulate_kw`` fixes ``mixture`` or
    ``day``, field ``i`` has the class mixture of storage day ``days[i % len(days)]``, so the
    corpus spans every storage stage. No holograms are formed; fields are cached on first access.

    Parameters
    ----------
    n_fields : int
        Number of fields, >= 1.
    size : int, optional
        Field side [px], default 256.
    seed : int, optional
        Seed of the fields, default 0.
    days : Sequence[float], optional
        Storage days cycled over the fields; default
        :data:`rbclib.physics.simulate.STORAGE_DAYS`. Unused when ``simulate_kw`` fixes
        ``mixture`` or ``day``.
    **simulate_kw
        Other arguments of ``simulate_field`` (e.g. ``cells_per_field``, ``optics``,
        ``mixture``, ``day``).

    Raises
    ------
    ValueError
        When ``n_fields`` < 1.
    """

    kind = "simulated"
    labels = None

    def __init__(self, n_fields: int, *, size: int = 256, seed: int = 0, days: Sequence[float] | None = None,
                 **simulate_kw: Any):
        from rbclib.physics.simulate import STORAGE_DAYS

        if n_fields < 1:
            raise ValueError(f"n_fields={n_fields} must be >= 1")
        self.n_fields, self.size, self.seed, self.simulate_kw = int(n_fields), int(size), int(seed), simulate_kw
        self.days = None if {"mixture", "day"} & set(simulate_kw) else tuple(days or STORAGE_DAYS)
        self._fields: dict[int, Any] = {}

    @property
    def description(self) -> str:
        """One line naming the field count, size, seed, storage days and extra settings."""
        extra = f", {self.simulate_kw}" if self.simulate_kw else ""
        days = f", storage days {list(self.days)}" if self.days else ""
        return f"simulated phase fields ({self.n_fields} fields of {self.size} px, seed {self.seed}{days}{extra})"

    def field(self, index: int) -> Any:
        """The cached :class:`rbclib.physics.simulate.SimulatedField` number ``index``.

        Parameters
        ----------
        index : int
            Field number, 0..n_fields - 1.

        Returns
        -------
        rbclib.physics.simulate.SimulatedField
            The field, simulated on first access.

        Raises
        ------
        IndexError
            When ``index`` is out of range.
        """
        if not 0 <= index < self.n_fields:
            raise IndexError(f"field {index} out of range 0..{self.n_fields - 1}")
        if index not in self._fields:
            from rbclib.physics.simulate import simulate_field

            rng = np.random.default_rng([self.seed, index])
            day = {"day": self.days[index % len(self.days)]} if self.days else {}
            self._fields[index] = simulate_field(rng, field_px=self.size, holograms=False, **day, **self.simulate_kw)
        return self._fields[index]

    def __len__(self) -> int:
        return self.n_fields

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(normalise_phase(self.field(index).phase))[None]


def describe_corpus(corpus: Dataset) -> str:
    """One line naming what a corpus (or a Subset of one) holds.

    Parameters
    ----------
    corpus : torch.utils.data.Dataset
        A corpus of this module, a Subset of one, or any sized dataset.

    Returns
    -------
    str
        Its ``description`` (plus the subset size), else its class name and length.
    """
    if isinstance(corpus, Subset):
        return f"{describe_corpus(corpus.dataset)}; subset of {len(corpus)} images"
    return getattr(corpus, "description", f"{type(corpus).__name__} of {len(corpus)} images")


def corpus_kind(corpus: Dataset) -> str:
    """The kind of a corpus or Subset.

    Parameters
    ----------
    corpus : torch.utils.data.Dataset
        A corpus, possibly wrapped in Subsets.

    Returns
    -------
    str
        "pbc", "bloodmnist", "simulated" (or the class name).
    """
    while isinstance(corpus, Subset):
        corpus = corpus.dataset
    return getattr(corpus, "kind", type(corpus).__name__)


def holdout_split(labels: Sequence[int], *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of indices, ``fraction`` of each class held out.

    Parameters
    ----------
    labels : Sequence[int]
        Class of each item.
    fraction : float
        Share of each class held out (rounded per class).
    seed : int
        Seed of the permutations.

    Returns
    -------
    kept, held_out : numpy.ndarray
        Sorted int64 indices.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    kept, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_held = int(round(fraction * len(idx)))
        held += list(idx[:n_held])
        kept += list(idx[n_held:])
    return np.sort(np.asarray(kept, dtype=np.int64)), np.sort(np.asarray(held, dtype=np.int64))


def simulated_cell_crops(corpus: SimulatedPhaseCorpus, *, crop_px: int = 64) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Crops centred on every simulated cell that fits whole in its field.

    Parameters
    ----------
    corpus : SimulatedPhaseCorpus
        The simulated fields.
    crop_px : int, optional
        Crop side [px], default 64.

    Returns
    -------
    images : torch.Tensor
        (N, 1, crop_px, crop_px) in [-1, 1].
    labels : numpy.ndarray
        (N,) int64 class ids (1..4, rbclib.core.labels).
    class_names : list of str
        The class names in id order (index 0 "background" is never a label).

    Raises
    ------
    ValueError
        When no cell fits in a crop.
    """
    from rbclib.core.labels import CLASS_NAMES

    half = crop_px // 2
    crops, labels = [], []
    for i in range(len(corpus)):
        f = corpus.field(i)
        image = corpus[i][0]
        for row in f.cells.itertuples():
            y, x = int(round(row.centre_y_px)), int(round(row.centre_x_px))
            if half <= y <= corpus.size - half and half <= x <= corpus.size - half:
                crops.append(image[y - half:y - half + crop_px, x - half:x - half + crop_px])
                labels.append(int(row.class_id))
    if not crops:
        raise ValueError(f"no cell of {describe_corpus(corpus)} fits in a {crop_px} px crop")
    return torch.stack(crops)[:, None], np.asarray(labels, dtype=np.int64), [CLASS_NAMES[i] for i in sorted(CLASS_NAMES)]


@dataclass
class SSLData:
    """What 05_ssl_pretrain needs: the unlabelled pretraining corpus and a labelled probe set
    the pretraining never saw.

    Attributes
    ----------
    kind : str
        "pbc", "bloodmnist" or "simulated".
    pretrain : torch.utils.data.Dataset
        The unlabelled pretraining corpus.
    probe_images : torch.Tensor
        (N, 1, H, W) in [-1, 1].
    probe_labels : numpy.ndarray
        (N,) indices into ``class_names``.
    class_names : list of str
        The probe classes.
    probe_description : str
        One line naming what the probe set holds.
    """

    kind: str
    pretrain: Dataset
    probe_images: torch.Tensor
    probe_labels: np.ndarray
    class_names: list[str]
    probe_description: str

    @property
    def description(self) -> str:
        """One line naming the pretraining corpus (:func:`describe_corpus`)."""
        return describe_corpus(self.pretrain)


def _stack(corpus: Dataset, indices: Sequence[int]) -> torch.Tensor:
    return torch.stack([corpus[int(i)] for i in indices])


def _per_class(labels: np.ndarray, indices: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most ``n`` of ``indices`` per class (seeded), sorted; n <= 0 keeps all."""
    if n <= 0:
        return indices
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(indices[labels[indices] == c])[:n] for c in np.unique(labels[indices])]
    return np.sort(np.concatenate(keep))


def prepare_ssl_data(corpus: str, *, image_px: int, seed: int, default_pbc: str | Path | None = None,
                     medmnist_root: str | Path | None = None, download: bool = False, max_images: int = 0,
                     probe_fraction: float = 0.25, probe_per_class: int = 0, sim_fields: int = 32,
                     sim_field_px: int = 256, probe_fields: int = 8, probe_crop_px: int = 64) -> SSLData:
    """Pretraining corpus and held-out labelled probe set for ``corpus``.

    PBC: ``probe_fraction`` of each class is held out of pretraining for the probe.
    BloodMNIST: pretraining on its train split, probe on its test split. Simulated:
    ``sim_fields`` fields for pretraining; the probe uses cells cropped from
    ``probe_fields`` other fields (another seed, equal class mixture).

    Parameters
    ----------
    corpus : str
        "auto" (the PBC folder ``default_pbc`` if it exists, else "simulated"), a path to a
        PBC-layout folder (or "pbc" for ``default_pbc``), "bloodmnist" or "simulated".
    image_px : int
        Side of the resized smear images [px] (PBC, BloodMNIST).
    seed : int
        Seed of the splits, caps and simulated fields (the probe fields use ``seed + 1``).
    default_pbc : str or pathlib.Path, optional
        The PBC folder for "auto" and "pbc".
    medmnist_root : str or pathlib.Path, optional
        Folder of bloodmnist_<size>.npz; needed for "bloodmnist".
    download : bool, optional
        Download the BloodMNIST file when missing, default False.
    max_images : int, optional
        Caps pretraining images (0, the default: all).
    probe_fraction : float, optional
        PBC: share of each class held out for the probe, default 0.25.
    probe_per_class : int, optional
        Caps the probe set per class (0, the default: all).
    sim_fields : int, optional
        Simulated: pretraining fields, default 32.
    sim_field_px : int, optional
        Simulated: field side [px], default 256 (not resized: ``image_px`` applies to smears).
    probe_fields : int, optional
        Simulated: fields the probe cells are cropped from, default 8.
    probe_crop_px : int, optional
        Simulated: probe crop side [px], default 64.

    Returns
    -------
    SSLData
        The pretraining corpus and the probe set.

    Raises
    ------
    ValueError
        For "bloodmnist" without ``medmnist_root``.
    rbclib.core.files.ImageFileError
        When the PBC folder or BloodMNIST file is missing or unreadable.

    Notes
    -----
    One entry point serves three corpus kinds, each reading its own few settings; the
    parameters are the entries of the profile's ``ssl`` section, which 05_ssl_pretrain and
    :mod:`rbclib.launch` pass one to one.
    """
    from rbclib.core.labels import CELL_CLASSES, CLASS_NAMES

    name = corpus.strip()
    if name == "auto":
        name = "pbc" if default_pbc is not None and Path(default_pbc).is_dir() else "simulated"
    if name == "simulated":
        pre = SimulatedPhaseCorpus(sim_fields if max_images <= 0 else min(sim_fields, max_images), size=sim_field_px,
                                   seed=seed)
        uniform = {CLASS_NAMES[c]: 1.0 / len(CELL_CLASSES) for c in CELL_CLASSES}
        probe_corpus = SimulatedPhaseCorpus(probe_fields, size=max(sim_field_px, 2 * probe_crop_px), seed=seed + 1,
                                            mixture=uniform)
        images, labels, names = simulated_cell_crops(probe_corpus, crop_px=probe_crop_px)
        idx = _per_class(labels, np.arange(len(labels)), probe_per_class, seed)
        return SSLData("simulated", pre, images[idx], labels[idx], names,
                       f"{len(idx)} cell crops ({probe_crop_px} px) from {describe_corpus(probe_corpus)}")
    if name == "bloodmnist":
        if medmnist_root is None:
            raise ValueError("corpus='bloodmnist' needs medmnist_root (folder of bloodmnist_<size>.npz)")
        pre_full = MedMNISTCorpus(medmnist_root, size=224, split="train", download=download, image_px=image_px)
        pre_idx = np.arange(len(pre_full))
        if max_images > 0:
            pre_idx = np.sort(np.random.default_rng(seed).permutation(pre_idx)[:max_images])
        test = MedMNISTCorpus(medmnist_root, size=224, split="test", image_px=image_px)
        idx = _per_class(test.labels, np.arange(len(test)), probe_per_class, seed)
        return SSLData("bloodmnist", Subset(pre_full, pre_idx.tolist()), _stack(test, idx), test.labels[idx],
                       test.class_names, f"{len(idx)} images of the BloodMNIST test split")
    folder = Path(default_pbc) if name == "pbc" and default_pbc is not None else Path(name)
    full = PBCFolderCorpus(folder, size=image_px)
    kept, held = holdout_split(full.labels, fraction=probe_fraction, seed=seed)
    if max_images > 0:
        kept = np.sort(np.random.default_rng(seed).permutation(kept)[:max_images])
    held = _per_class(full.labels, held, probe_per_class, seed)
    return SSLData("pbc", Subset(full, kept.tolist()), _stack(full, held), full.labels[held], full.class_names,
                   f"{len(held)} held-out images of {full.folder} (never used for pretraining)")

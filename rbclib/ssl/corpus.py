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
    """Stained RGB smear (H, W, 3) uint8 -> pseudo-phase [rad], float32 (H, W).

    Green-channel optical density OD = -log10(G / G_bg), with G_bg the
    ``background_percentile`` of G (the bright, cell-free glass), clipped at 0, times
    ``od_to_rad``. Cells come out as positive bumps on a zero background, like phase.
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

    ``npz_or_root``: the file itself, or the folder holding ``bloodmnist_<size>.npz``
    (``bloodmnist.npz`` at size 28), medmnist's naming. With ``download=True`` and the file
    missing, the ``medmnist`` package (``pip install medmnist``) downloads it first.
    ``split``: "train", "val", "test" or "all". Images (N, H, W, 3) uint8 become
    pseudo-phase by :func:`smear_to_pseudo_phase`, resized to ``image_px`` (default ``size``).
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
    corpus spans every storage stage. Other ``simulate_kw`` go to ``simulate_field`` (e.g.
    ``cells_per_field``, ``optics``). No holograms are formed; fields are cached on first access.
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
        extra = f", {self.simulate_kw}" if self.simulate_kw else ""
        days = f", storage days {list(self.days)}" if self.days else ""
        return f"simulated phase fields ({self.n_fields} fields of {self.size} px, seed {self.seed}{days}{extra})"

    def field(self, index: int) -> Any:
        """The cached :class:`rbclib.physics.simulate.SimulatedField` number ``index``."""
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
    """One line naming what a corpus (or a Subset of one) holds."""
    if isinstance(corpus, Subset):
        return f"{describe_corpus(corpus.dataset)}; subset of {len(corpus)} images"
    return getattr(corpus, "description", f"{type(corpus).__name__} of {len(corpus)} images")


def corpus_kind(corpus: Dataset) -> str:
    """"pbc", "bloodmnist", "simulated" (or the class name) of a corpus or Subset."""
    while isinstance(corpus, Subset):
        corpus = corpus.dataset
    return getattr(corpus, "kind", type(corpus).__name__)


def holdout_split(labels: Sequence[int], *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of indices: (kept, held_out), ``fraction`` of each class held out."""
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

    Returns images (N, 1, crop_px, crop_px) in [-1, 1], class ids (N,) (1..4, rbclib.core.labels)
    and the class names in id order (index 0 "background" is never a label).
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
    the pretraining never saw. probe_images (N, 1, H, W) in [-1, 1], probe_labels (N,)
    index class_names; kind: "pbc", "bloodmnist" or "simulated"."""

    kind: str
    pretrain: Dataset
    probe_images: torch.Tensor
    probe_labels: np.ndarray
    class_names: list[str]
    probe_description: str

    @property
    def description(self) -> str:
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

    corpus: "auto" (the PBC folder ``default_pbc`` if it exists, else "simulated"), a path
    to a PBC-layout folder (or "pbc" for ``default_pbc``), "bloodmnist" (file in
    ``medmnist_root``, downloaded with ``download``) or "simulated".
    PBC: ``probe_fraction`` of each class is held out of pretraining for the probe.
    BloodMNIST: pretraining on its train split, probe on its test split. Simulated:
    ``sim_fields`` fields of ``sim_field_px`` px (not resized: image_px applies to smears)
    for pretraining; the probe uses cells cropped (``probe_crop_px``) from ``probe_fields``
    other fields (another seed, equal class mixture).
    max_images (0: all) caps pretraining images; probe_per_class (0: all) caps the probe set.
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

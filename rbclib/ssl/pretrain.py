"""Self-supervised pretraining of the ResUnet (paper section 3, eqs. 10-12).

MoCo v2 (He et al. 2020; Chen et al. 2020) on the ResUnet encoder plus an MSE
reconstruction through the U-Net decoder:

- two random crops c, c' of one image (random resized crop, flips, 90-degree rotations;
  then intensity jitter, Gaussian blur and noise on the network input only);
- the query encoder + MLP projection head embeds c (z), the momentum encoder + its head
  embeds c' (z'); InfoNCE with temperature against a queue of earlier keys (eq. 10);
- the decoder + a 1x1 reconstruction head rebuilds c from the query features and c' from
  the momentum features (eq. 11, mean squared error against the crops before the
  intensity augmentations);
- total loss L = L_contrastive + rec_weight * L_rec (eq. 12; rec_weight 1 is the paper).

A model folder holds ``config.json``, ``encoder_decoder.pt`` (the weights 06_finetune loads
with :func:`load_into_resunet`), ``last.pt`` (full state, for resuming) and ``log.csv``
(losses per step).

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

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from rbclib.core.config import check_known_fields
from rbclib.seg.datasets import normalise_phase
from rbclib.core.training import (CHECKPOINT, autocast, load_checkpoint, pick_device, progress as progress_bar,
                                  read_log_rows, save_checkpoint, write_log)
from rbclib.core.io import list_images
from rbclib.core.files import ImageFileError, write_json

WEIGHTS_FILE = "encoder_decoder.pt"
# Normalised value of 0 rad (the medium): the point intensity jitter scales around.
BACKGROUND_VALUE = float(normalise_phase(np.zeros(1))[0])
PBC_CLASSES = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SSLConfig:
    """Settings of one pretraining run (defaults suited to a few thousand images).

    encoder: ResNet of the ResUnet ("resnet18/34/50/101"); decoder_channels: its U-Net
    decoder (the paper's by default; must match the ResUnet of 06); in_channels: ResUnet input
    channels (the single-channel crop is replicated); crop_px: side of each crop fed to the
    network [px], a multiple of 32; crop_scale: (min, max) crop area as a fraction of the
    image; batch_size, steps: optimisation steps of AdamW at ``lr`` with cosine decay;
    queue_size: negatives K in eq. 10 (keep below the corpus size, or old keys of the same
    image become negatives); momentum: EMA factor of the momentum encoder; temperature:
    tau of eq. 10; proj_hidden/proj_dim: MLP projection head; rec_weight: weight of eq. 11
    in eq. 12; flip: random flips and 90-degree rotations; intensity_jitter: relative
    gain (and half of it as offset) jitter of the input; blur_prob/blur_sigma_px: Gaussian
    blur; noise_std: additive noise (normalised units); save_every: checkpoint period.
    """

    encoder: str = "resnet18"
    decoder_channels: tuple[int, ...] = (1024, 512, 256, 128, 64)
    in_channels: int = 3
    crop_px: int = 64
    crop_scale: tuple[float, float] = (0.3, 1.0)
    batch_size: int = 32
    steps: int = 200
    lr: float = 1e-3
    weight_decay: float = 1e-4
    queue_size: int = 1024
    momentum: float = 0.99
    temperature: float = 0.2
    proj_hidden: int = 512
    proj_dim: int = 128
    rec_weight: float = 1.0
    flip: bool = True
    intensity_jitter: float = 0.2
    blur_prob: float = 0.5
    blur_sigma_px: tuple[float, float] = (0.1, 1.5)
    noise_std: float = 0.03
    save_every: int = 50
    autocast_bf16: bool = False

    def __post_init__(self) -> None:
        if self.crop_px % 32 or self.crop_px < 32:
            raise ValueError(f"SSLConfig.crop_px={self.crop_px} must be a positive multiple of 32")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"SSLConfig.crop_scale={self.crop_scale} must satisfy 0 < min <= max <= 1")
        for name in ("batch_size", "steps", "queue_size", "save_every", "proj_hidden", "proj_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"SSLConfig.{name}={getattr(self, name)} must be >= 1")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"SSLConfig.momentum={self.momentum} must be in [0, 1)")
        if self.temperature <= 0:
            raise ValueError(f"SSLConfig.temperature={self.temperature} must be > 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SSLConfig":
        """Build from a dict (profile table or config.json); unknown keys are an error."""
        check_known_fields(cls, data, "SSL settings")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fixed)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _as_config(config: SSLConfig | dict[str, Any]) -> SSLConfig:
    return config if isinstance(config, SSLConfig) else SSLConfig.from_dict(dict(config))


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
    from rbclib.core.labels import CLASS_NAMES, CELL_CLASSES

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


# --------------------------------------------------------------------------- augmentation
def _random_resized_box(h: int, w: int, scale: tuple[float, float], g: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop with area fraction in ``scale`` and
    aspect ratio in [3/4, 4/3] (log-uniform)."""
    area = h * w
    for _ in range(10):
        s = scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=g))
        r = math.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * float(torch.rand((), generator=g)))
        ch, cw = int(round(math.sqrt(area * s / r))), int(round(math.sqrt(area * s * r)))
        if 0 < ch <= h and 0 < cw <= w:
            top = int(torch.randint(0, h - ch + 1, (), generator=g))
            left = int(torch.randint(0, w - cw + 1, (), generator=g))
            return top, left, ch, cw
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side, side


def two_crops(images: torch.Tensor, config: SSLConfig, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Two augmented views of each image of a batch (B, 1, H, W) in [-1, 1].

    Returns (input_1, target_1, input_2, target_2), each (B, 1, crop_px, crop_px): the
    targets are the random resized crops after flips/rotations (c, c' of eq. 11), the
    inputs add intensity jitter around the medium level, Gaussian blur and noise.
    """
    from torchvision.transforms.v2 import functional as TF

    cfg, g = config, generator
    outs: list[list[torch.Tensor]] = [[], [], [], []]
    for img in images:
        for view in range(2):
            top, left, ch, cw = _random_resized_box(img.shape[-2], img.shape[-1], cfg.crop_scale, g)
            crop = TF.resized_crop(img, top, left, ch, cw, [cfg.crop_px, cfg.crop_px], antialias=True)
            if cfg.flip:
                crop = torch.rot90(crop, int(torch.randint(0, 4, (), generator=g)), dims=(-2, -1))
                if float(torch.rand((), generator=g)) < 0.5:
                    crop = torch.flip(crop, dims=(-1,))
            crop = crop.clamp(-1.0, 1.0)
            x = crop
            j = cfg.intensity_jitter
            gain = 1.0 + j * (2 * float(torch.rand((), generator=g)) - 1)
            offset = 0.5 * j * (2 * float(torch.rand((), generator=g)) - 1)
            x = (x - BACKGROUND_VALUE) * gain + BACKGROUND_VALUE + offset
            if float(torch.rand((), generator=g)) < cfg.blur_prob:
                lo, hi = cfg.blur_sigma_px
                sigma = lo + (hi - lo) * float(torch.rand((), generator=g))
                k = 2 * math.ceil(3 * sigma) + 1
                x = TF.gaussian_blur(x, [k, k], [sigma, sigma])
            if cfg.noise_std > 0:
                x = x + cfg.noise_std * torch.randn(x.shape, generator=g)
            outs[2 * view].append(x.clamp(-1.0, 1.0))
            outs[2 * view + 1].append(crop)
    return tuple(torch.stack(o) for o in outs)


# --------------------------------------------------------------------------- MoCo pieces
def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 10 averaged over the batch: q, k (B, D) L2-normalised, queue (K, D) negatives.

    Returns (loss, logits (B, 1 + K)); the positive is column 0 and sim is the dot product.
    """
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.t()
    logits = torch.cat([pos, neg], dim=1) / temperature
    labels = torch.zeros(len(q), dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels), logits


@torch.no_grad()
def momentum_update(online: nn.Module, target: nn.Module, momentum: float) -> None:
    """theta_target <- m * theta_target + (1 - m) * theta_online; buffers (BN statistics) copied."""
    for p_o, p_t in zip(online.parameters(), target.parameters()):
        p_t.mul_(momentum).add_(p_o.detach(), alpha=1.0 - momentum)
    for b_o, b_t in zip(online.buffers(), target.buffers()):
        b_t.copy_(b_o)


class FeatureQueue(nn.Module):
    """Ring buffer of the last ``size`` keys (size, dim), first-in first-out.

    Starts with random unit vectors (as MoCo does); ``enqueue`` overwrites the oldest.
    """

    def __init__(self, size: int, dim: int, *, generator: torch.Generator | None = None):
        super().__init__()
        self.register_buffer("features", F.normalize(torch.randn(size, dim, generator=generator), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        size = len(self.features)
        keys = keys.detach()[-size:]
        idx = (int(self.ptr) + torch.arange(len(keys), device=keys.device)) % size
        self.features[idx] = keys
        self.ptr.fill_((int(self.ptr) + len(keys)) % size)


def _projection_head(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


class MoCoResUnet(nn.Module):
    """The SSL network of Figure 3: ResUnet encoder/decoder (query), momentum encoder,
    MLP projection heads, reconstruction head (1x1 conv to ``in_channels``) and the queue."""

    def __init__(self, config: SSLConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        from rbclib.seg.models import build_resunet

        self.config = config
        net = build_resunet(config.encoder, in_channels=config.in_channels, classes=1,
                            decoder_channels=config.decoder_channels)
        self.encoder, self.decoder = net.encoder, net.decoder
        self.rec_head = nn.Conv2d(config.decoder_channels[-1], config.in_channels, kernel_size=1)
        feat_dim = self.encoder.out_channels[-1]
        self.proj = _projection_head(feat_dim, config.proj_hidden, config.proj_dim)
        self.encoder_k = copy.deepcopy(self.encoder)
        self.proj_k = copy.deepcopy(self.proj)
        for p in list(self.encoder_k.parameters()) + list(self.proj_k.parameters()):
            p.requires_grad_(False)
        self.queue = FeatureQueue(config.queue_size, config.proj_dim, generator=generator)

    def online_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimiser updates (query encoder, decoder, heads)."""
        return [p for m in (self.encoder, self.decoder, self.rec_head, self.proj) for p in m.parameters()]

    def _expand(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, self.config.in_channels, -1, -1)

    def forward(self, in_q: torch.Tensor, tgt_q: torch.Tensor, in_k: torch.Tensor, tgt_k: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses of one batch of view pairs (B, 1, H, W); updates the momentum encoder and
        the queue as side effects when training. Keys: loss, contrastive, rec, accuracy."""
        cfg = self.config
        feats_q = self.encoder(self._expand(in_q))
        q = F.normalize(self.proj(feats_q[-1].mean(dim=(2, 3))), dim=1)
        with torch.no_grad():
            if self.training:
                momentum_update(self.encoder, self.encoder_k, cfg.momentum)
                momentum_update(self.proj, self.proj_k, cfg.momentum)
            feats_k = self.encoder_k(self._expand(in_k))
            k = F.normalize(self.proj_k(feats_k[-1].mean(dim=(2, 3))), dim=1)
        contrastive, logits = info_nce(q, k, self.queue.features.clone(), cfg.temperature)
        rec_q = self.rec_head(self.decoder(feats_q))
        rec_k = self.rec_head(self.decoder([f.detach() for f in feats_k]))
        rec = F.mse_loss(rec_q, self._expand(tgt_q)) + F.mse_loss(rec_k, self._expand(tgt_k))
        if self.training:
            self.queue.enqueue(k)
        accuracy = (logits.argmax(dim=1) == 0).float().mean()
        return {"loss": contrastive + cfg.rec_weight * rec, "contrastive": contrastive.detach(),
                "rec": rec.detach(), "accuracy": accuracy}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output for inputs (B, 1, H, W), first channel (B, 1, H, W)."""
        return self.rec_head(self.decoder(self.encoder(self._expand(x))))[:, :1]


# --------------------------------------------------------------------------- training
def _batch(corpus: Dataset, indices: torch.Tensor) -> torch.Tensor:
    items = [corpus[int(i)] for i in indices]
    shapes = {tuple(t.shape) for t in items}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[0] != 1:
        raise ValueError(f"corpus items must be (1, H, W) tensors of one size, got {sorted(shapes)}")
    return torch.stack(items)


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


def queue_size_for(n_images: int, *, queue_size: int, batch_size: int) -> int:
    """The negatives queue K (eq. 10) a corpus of ``n_images`` allows: at most ``queue_size``,
    below ``n_images - batch_size`` (a longer queue still holds keys of the images of the
    current batch, which then count as their own negatives), and at least one batch."""
    return max(int(batch_size), min(int(queue_size), int(n_images) - int(batch_size)))


def pretrain_ssl(corpus: Dataset, *, out_dir: str | Path, config: SSLConfig | dict[str, Any], seed: int,
                 progress: bool = True, device: str | None = None) -> Path:
    """Pretrain the ResUnet encoder+decoder with MoCo v2 + reconstruction on ``corpus``.

    corpus: Dataset of (1, H, W) float tensors in [-1, 1] (H, W >= crop_px not required;
    crops are resized). Writes ``out_dir``/config.json, encoder_decoder.pt, last.pt and
    log.csv and returns ``out_dir``. If ``out_dir`` holds a ``last.pt`` of the same config,
    corpus and seed, training resumes from its step (and returns at once if finished).
    Batches and augmentations of step s derive from (seed, s), so a resumed run equals an
    uninterrupted one up to floating point.
    """
    cfg = _as_config(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if len(corpus) < 2:
        raise ValueError(f"corpus has {len(corpus)} image(s); contrastive pretraining needs at least 2")
    dev = pick_device(device)
    ident = {"ssl": cfg.to_dict(), "seed": int(seed), "corpus": describe_corpus(corpus), "corpus_kind": corpus_kind(corpus)}

    torch.manual_seed(seed)
    model = MoCoResUnet(cfg, generator=torch.Generator().manual_seed(seed)).to(dev)
    opt = torch.optim.AdamW(model.online_parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=dev.type in ("cpu", "cuda"))  # fused: ~2.5x faster step on CPU
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    step, rows = 0, []
    state_path = out / CHECKPOINT
    if state_path.exists():
        state = load_checkpoint(state_path, map_location=dev)
        saved = json.loads(state["ident"])
        if saved != ident:
            diff = sorted(k for k in ident if saved.get(k) != ident[k])
            raise ValueError(f"{state_path}: checkpoint of a different run (differs in {diff}); "
                             f"use another out_dir or delete {out}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step = int(state["step"])
        rows = read_log_rows(out, upto="step", last=step)

    def save(seconds: float) -> None:
        save_checkpoint(state_path, {"ident": json.dumps(ident), "model": model.state_dict(),
                                     "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "step": step})
        save_checkpoint(out / WEIGHTS_FILE, {"config": cfg.to_dict(), "encoder": model.encoder.state_dict(),
                                             "decoder": model.decoder.state_dict(),
                                             "rec_head": model.rec_head.state_dict(), "step": step})
        write_log(out, rows, columns=["step", "epoch", "loss", "contrastive", "rec", "accuracy", "lr", "seconds"])
        write_json(out / "config.json", {**ident, "steps_done": step, "device": str(dev),
                                         "train_seconds": seconds, "torch": torch.__version__,
                                         "weights": WEIGHTS_FILE})

    model.train()
    start = time.perf_counter() - (rows[-1]["seconds"] if rows else 0.0)
    bar = progress_bar(cfg.steps, initial=step, desc="SSL pretraining", enabled=progress)
    while step < cfg.steps:
        g = _step_generator(seed, step)
        idx = torch.randperm(len(corpus), generator=g)[: cfg.batch_size]
        if len(idx) < cfg.batch_size:
            idx = idx[torch.randint(0, len(idx), (cfg.batch_size,), generator=g)]
        views = [v.to(dev) for v in two_crops(_batch(corpus, idx), cfg, g)]
        with autocast(dev, cfg.autocast_bf16):
            losses = model(*views)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        lr = opt.param_groups[0]["lr"]
        sched.step()
        step += 1
        rows.append({"step": step, "epoch": step * cfg.batch_size / len(corpus),
                     **{k: float(v.detach()) for k, v in losses.items()}, "lr": lr, "seconds": time.perf_counter() - start})
        bar.update(1)
        bar.set_postfix(loss=f"{rows[-1]['loss']:.3f}")
        if step % cfg.save_every == 0 or step == cfg.steps:
            save(rows[-1]["seconds"])
    bar.close()
    if not (out / WEIGHTS_FILE).exists():
        save(rows[-1]["seconds"] if rows else 0.0)
    return out


def read_ssl_log(ssl_dir: str | Path) -> pd.DataFrame:
    """The per-step loss log of an SSL folder."""
    path = Path(ssl_dir) / "log.csv"
    if not path.exists():
        raise ImageFileError(path, "SSL log not found")
    return pd.read_csv(path)


# --------------------------------------------------------------------------- transfer
def load_ssl_weights(ssl_dir: str | Path) -> dict[str, Any]:
    """{"config", "encoder", "decoder", "rec_head", "step"} from ``ssl_dir``/encoder_decoder.pt."""
    path = Path(ssl_dir) / WEIGHTS_FILE
    if not path.exists():
        raise ImageFileError(path, "SSL weights not found (run pretrain_ssl into this folder first)")
    return load_checkpoint(path)


def load_into_resunet(model: nn.Module, ssl_dir: str | Path) -> nn.Module:
    """Copy pretrained encoder and decoder weights of ``ssl_dir`` into a ResUnet ``model``
    (built by :func:`rbclib.seg.models.build_resunet` with the same encoder and in_channels);
    the segmentation head stays as it was. Raises ValueError naming the SSL encoder and
    the mismatching tensors when the architectures differ. Returns ``model``."""
    saved = load_ssl_weights(ssl_dir)
    ssl_encoder = saved["config"].get("encoder")
    for part in ("encoder", "decoder"):
        target = getattr(model, part, None)
        if target is None:
            raise ValueError(f"{type(model).__name__} has no .{part}; load_into_resunet needs a ResUnet")
        have = target.state_dict()
        weights = saved[part]
        missing = sorted(set(have) - set(weights))
        extra = sorted(set(weights) - set(have))
        shapes = sorted(k for k in set(have) & set(weights) if have[k].shape != weights[k].shape)
        if missing or extra or shapes:
            detail = "; ".join(f"{name}: {keys[:3]}{'...' if len(keys) > 3 else ''}" for name, keys in
                               (("missing", missing), ("unexpected", extra), ("shape differs", shapes)) if keys)
            raise ValueError(f"{Path(ssl_dir)}: SSL weights (encoder {ssl_encoder!r}, in_channels "
                             f"{saved['config'].get('in_channels')}) do not fit the model's {part} ({detail})")
        target.load_state_dict(weights)
    return model


# --------------------------------------------------------------------------- probe
@torch.no_grad()
def encoder_features(encoder: nn.Module, images: torch.Tensor, *, in_channels: int = 3, batch_size: int = 64) -> torch.Tensor:
    """Global-average-pooled deepest encoder features (N, C) of images (N, 1, H, W), eval mode."""
    was_training = encoder.training
    encoder.eval()
    dev = next(encoder.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(dev).expand(-1, in_channels, -1, -1)
        out.append(encoder(x)[-1].mean(dim=(2, 3)).cpu())
    encoder.train(was_training)
    return torch.cat(out)


def _knn_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, k: int) -> float:
    a, b = F.normalize(train_x, dim=1), F.normalize(test_x, dim=1)
    sim = b @ a.t()
    k = min(k, len(train_x))
    top_sim, top_idx = sim.topk(k, dim=1)
    votes = torch.zeros(len(test_x), int(train_y.max()) + 1)
    votes.scatter_add_(1, train_y[top_idx], top_sim.exp())
    return float((votes.argmax(dim=1) == test_y).float().mean())


def _linear_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                     weight_decay: float = 1e-3) -> float:
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xa, xb = (train_x - mean) / std, (test_x - mean) / std
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    lin = nn.Linear(xa.shape[1], n_classes)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(lin(xa), train_y) + weight_decay * lin.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return float((lin(xb).argmax(dim=1) == test_y).float().mean())


def probe_encoder(encoder: nn.Module, images: torch.Tensor, labels: Sequence[int], *, test_fraction: float = 0.3,
                  k: int = 10, seed: int = 0, in_channels: int = 3) -> dict[str, float]:
    """How well frozen encoder features separate labelled images.

    Stratified split of (images (N, 1, H, W), labels (N,)) into probe-train and probe-test
    parts; features from :func:`encoder_features`. Returns {"knn_accuracy" (cosine k-NN,
    similarity-weighted votes), "linear_accuracy" (logistic regression on standardised
    features), "chance" (majority class of the test part), "n_train", "n_test"}.
    """
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    train_idx, test_idx = holdout_split(y.numpy(), fraction=test_fraction, seed=seed)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise ValueError(f"{len(y)} labelled images are too few to split with test_fraction={test_fraction}")
    torch.manual_seed(seed)
    feats = encoder_features(encoder, images, in_channels=in_channels)
    tr, te = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    counts = torch.bincount(y[te])
    return {"knn_accuracy": _knn_accuracy(feats[tr], y[tr], feats[te], y[te], k),
            "linear_accuracy": _linear_accuracy(feats[tr], y[tr], feats[te], y[te]),
            "chance": float(counts.max()) / len(te), "n_train": int(len(tr)), "n_test": int(len(te))}


def probe_pretrained_vs_random(ssl_dir: str | Path, images: torch.Tensor, labels: Sequence[int], *, seed: int = 0,
                               test_fraction: float = 0.3, k: int = 10, device: str | None = None) -> pd.DataFrame:
    """:func:`probe_encoder` for the pretrained encoder of ``ssl_dir`` and for a randomly
    initialised encoder of the same architecture (torch seed ``seed``); one row each.
    Features are computed on ``device`` (default: :func:`rbclib.core.training.pick_device`)."""
    from rbclib.seg.models import build_resunet

    cfg = SSLConfig.from_dict(load_ssl_weights(ssl_dir)["config"])
    rows = []
    for name in ("pretrained", "random"):
        torch.manual_seed(seed)
        model = build_resunet(cfg.encoder, in_channels=cfg.in_channels, decoder_channels=cfg.decoder_channels)
        if name == "pretrained":
            load_into_resunet(model, ssl_dir)
        model.to(pick_device(device))
        res = probe_encoder(model.encoder, images, labels, test_fraction=test_fraction, k=k, seed=seed,
                            in_channels=cfg.in_channels)
        rows.append({"encoder": name, "architecture": cfg.encoder, **res})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- plots
def plot_ssl_log(log: pd.DataFrame) -> "Any":
    """Loss curves (total, contrastive eq. 10, reconstruction eq. 11) and the contrastive
    top-1 accuracy against step; returns a matplotlib Figure."""
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for col, label in (("loss", "total (eq. 12)"), ("contrastive", "InfoNCE (eq. 10)"), ("rec", "reconstruction MSE (eq. 11)")):
        ax1.plot(log["step"], log[col], label=label)
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss")
    ax1.set_yscale("log")
    ax1.legend()
    ax2.plot(log["step"], log["accuracy"])
    ax2.set_xlabel("step")
    ax2.set_ylabel("positive ranked first among 1 + K")
    ax2.set_ylim(0, 1)
    fig.tight_layout()
    return fig


def plot_ssl_views(corpus: Dataset, ssl_dir: str | Path, *, n: int = 4, seed: int = 0) -> "Any":
    """For ``n`` corpus images: the image, crop c, the augmented input and the decoder's
    reconstruction of it (pretrained weights of ``ssl_dir``); returns a Figure."""
    import matplotlib.pyplot as plt

    saved = load_ssl_weights(ssl_dir)
    cfg = SSLConfig.from_dict(saved["config"])
    model = MoCoResUnet(cfg)
    model.encoder.load_state_dict(saved["encoder"])
    model.decoder.load_state_dict(saved["decoder"])
    model.rec_head.load_state_dict(saved["rec_head"])
    model.eval()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(corpus), generator=g)[:n]
    images = _batch(corpus, idx)
    in_q, tgt_q, _, _ = two_crops(images, cfg, g)
    rec = model.reconstruct(in_q)
    fig, axes = plt.subplots(len(idx), 4, figsize=(8, 2 * len(idx)), squeeze=False)
    for r in range(len(idx)):
        for c, (img, title) in enumerate(((images[r, 0], "image"), (tgt_q[r, 0], "crop c"),
                                          (in_q[r, 0], "augmented input"), (rec[r, 0], "reconstruction"))):
            axes[r, c].imshow(img.numpy(), cmap="gray", vmin=-1, vmax=1)
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


__all__ = ["SSLConfig", "SSLData", "prepare_ssl_data", "PBCFolderCorpus", "MedMNISTCorpus", "SimulatedPhaseCorpus", "smear_to_pseudo_phase",
           "describe_corpus", "corpus_kind", "holdout_split", "simulated_cell_crops", "two_crops", "info_nce",
           "momentum_update", "FeatureQueue", "MoCoResUnet", "pretrain_ssl", "read_ssl_log", "load_ssl_weights",
           "load_into_resunet", "encoder_features", "probe_encoder", "probe_pretrained_vs_random",
           "plot_ssl_log", "plot_ssl_views"]

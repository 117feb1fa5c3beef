"""Your microscope in the loop: fine-tune a trained model on a few annotated fields, or adapt
it without labels (BatchNorm statistics, confident pseudo-labels).

Every function writes a self-contained model folder (``config.json``, ``best.pt``, ...) that
``rbc assess --model`` takes. Fields are resampled to the trained model's pixel size first,
as ``rbc assess`` resamples its inputs, so the architecture and its pixel size stay the
trained model's (:func:`rbclib.seg.config.finetune_config`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rbclib.core.config import Optics
from rbclib.core.files import write_json
from rbclib.core.labels import IGNORE
from rbclib.seg.datasets import Pair
from rbclib.study.segmenter import resample
from rbclib.study.twin_match import TwinMatch

FINETUNE_EPOCHS = 15
"""Default epochs of :func:`finetune_model`."""
FINETUNE_STEPS = 20
"""Default batches per epoch of :func:`finetune_model` (with the shipped model, 1-2 min on a 2-core CPU)."""
FINETUNE_LR = 3e-4
"""Default AdamW learning rate of :func:`finetune_model`: a third of the shipped model's training rate."""
TWIN_FIELDS = 16
"""Default rehearsal fields of the shipped model's twin in :func:`twin_rehearsal_fields`."""
SSL_STEPS = 100
"""Default MoCo v2 + reconstruction steps of :func:`adapt_ssl`."""
PSEUDO_LABEL_CONFIDENCE = 0.9
"""Pixels whose top class probability is below this are ignored by :func:`pseudo_label_fields`."""


def read_fields(folder: str | Path) -> tuple[list[Pair], Optics]:
    """Annotated fields of a microscope: ``phase/<id>.tif`` with ``labels/<id>.png``.

    This is what ``rbc simulate`` writes and what 02 exports into a run folder.

    Parameters
    ----------
    folder : str or pathlib.Path
        The folder holding ``phase/`` and ``labels/``.

    Returns
    -------
    pairs : list of rbclib.seg.datasets.Pair
        Phase [rad] and class maps, sorted by id.
    optics : rbclib.core.config.Optics
        The microscope's optics (pixel size, wavelength, ...) from the first phase file's
        metadata (else ``optics.json`` beside it, else the default optics).
    """
    from rbclib.core.io import read_image
    from rbclib.seg.datasets import load_pairs_folder

    folder = Path(folder)
    pairs = load_pairs_folder(folder, allow_ignore=True)
    first = sorted((folder / "phase").glob("*.tif"))[0]
    default = None
    for candidate in (folder / "phase" / "optics.json", folder / "optics.json"):
        if candidate.is_file():
            default = Optics.from_json(candidate)
            break
    return pairs, read_image(first).optics(default)


def at_model_pixel_size(pairs: Sequence[Pair], pixel_size_m: float, model_pixel_size_m: float) -> list[Pair]:
    """Fields resampled to a model's pixel size (phase linear with anti-aliasing, labels nearest).

    Parameters
    ----------
    pairs : sequence of rbclib.seg.datasets.Pair
        Fields at ``pixel_size_m``.
    pixel_size_m, model_pixel_size_m : float
        Pixel size [m] of the fields and of the model.

    Returns
    -------
    list of rbclib.seg.datasets.Pair
        The fields on the model's grid.
    """
    scale = pixel_size_m / model_pixel_size_m
    if abs(scale - 1.0) < 1e-3:
        return list(pairs)
    return [Pair(resample(p.phase.astype(np.float32), scale, order=1), resample(p.labels, scale, order=0), p.name)
            for p in pairs]


def twin_rehearsal_fields(optics: Optics, n: int = TWIN_FIELDS, *, seed: int = 0,
                          match: TwinMatch | None = None) -> list[Pair]:
    """The shipped model's training twin as a microscope with these optics records it.

    Fine-tuning on a few fields beside these keeps the classes those fields hardly hold
    (a field of fresh blood has one or two spherocytes, if any): the fields are drawn by the
    shipped model's recipe (:func:`rbclib.study.default_model.recipe_fields`) with the
    microscope's wavelength and pixel size, so they need no resampling and carry its phase
    scale. With ``match`` (:func:`rbclib.study.twin_match.match_twin`) they also carry the
    microscope's noise, defocus (half the fields below focus, half above) and flat-topped share.

    Parameters
    ----------
    optics : rbclib.core.config.Optics
        The microscope's optics (wavelength, pixel size, ...).
    n : int
        Fields to simulate (each of the recipe's area, 73.8 um square).
    seed : int
        Seed of the fields.
    match : rbclib.study.twin_match.TwinMatch, optional
        Twin settings matched to the microscope's fields; None: the recipe's.

    Returns
    -------
    list of rbclib.seg.datasets.Pair
        ``n`` fields (phase [rad], class maps) at ``optics.pixel_size_m``.
    """
    from rbclib.study.default_model import read_recipe, recipe_fields

    recipe = read_recipe()
    tables = match.twin_tables(recipe["twin"]) if match is not None else [recipe["twin"]]
    seeds = np.random.SeedSequence([int(seed), 35]).spawn(int(n))
    return [pair for k, table in enumerate(tables)
            for pair, _ in recipe_fields({**recipe, "twin": table}, seeds[k::len(tables)], optics=optics,
                                         name="rehearsal twin")]


def finetune_model(model_dir: str | Path, fields: Sequence[Pair], out_dir: str | Path, *, pixel_size_m: float,
                   rehearsal_fields: Sequence[Pair] = (), val_fields: Sequence[Pair] | None = None,
                   epochs: int = FINETUNE_EPOCHS,
                   steps_per_epoch: int = FINETUNE_STEPS, lr: float = FINETUNE_LR, seed: int = 0,
                   device: str | None = None, progress: bool = True) -> Path:
    """Fine-tune a trained model on a few annotated fields of another microscope.

    Parameters
    ----------
    model_dir : str or pathlib.Path
        The trained model folder (e.g. the shipped default model).
    fields : sequence of rbclib.seg.datasets.Pair
        Annotated fields (phase [rad], class maps; ``IGNORE`` pixels are not learnt).
    out_dir : str or pathlib.Path
        The new model folder.
    pixel_size_m : float
        Pixel size [m] of the fields.
    rehearsal_fields : sequence of rbclib.seg.datasets.Pair
        Labelled fields trained on beside ``fields`` but never used to choose the epoch, at
        the same pixel size: :func:`twin_rehearsal_fields`.
    val_fields : sequence of rbclib.seg.datasets.Pair, optional
        Fields that choose the best epoch; None: the fully labelled training fields
        themselves (with one or two fields nothing can be spared), and the lowest training
        loss when none is fully labelled (pseudo-labels).
    epochs, steps_per_epoch : int
        Training length: epochs of this many batches of class-balanced random crops, however
        few the fields.
    lr : float
        AdamW learning rate (cosine decay).
    seed : int
        Seed of the crops and their order.
    device : str, optional
        Torch device (None: cuda, mps or cpu).
    progress : bool
        Show a progress bar.

    Returns
    -------
    pathlib.Path
        ``out_dir``, a model folder ``rbc assess --model`` takes.

    Notes
    -----
    The parameters are the choices of one fine-tuning (data, budget, seed, device), passed on
    to :func:`rbclib.seg.train.train_segmenter`; the architecture is not among them.
    """
    from rbclib.seg.config import SegConfig, finetune_config
    from rbclib.seg.infer import read_model_config
    from rbclib.seg.train import train_segmenter

    if not fields:
        raise ValueError("fine-tuning needs at least one annotated field")
    base = read_model_config(model_dir)
    batch = int(base.get("batch_size", SegConfig.batch_size))
    config = finetune_config(base, epochs=int(epochs), max_steps_per_epoch=int(steps_per_epoch), lr=float(lr),
                             warmup_steps=0, patch_mode="balanced", crops_per_epoch=int(steps_per_epoch) * batch)
    own = at_model_pixel_size(fields, pixel_size_m, config["pixel_size_m"])
    val = (at_model_pixel_size(val_fields, pixel_size_m, config["pixel_size_m"]) if val_fields
           else [p for p in own if not np.any(p.labels == IGNORE)])  # partly labelled fields cannot score Dice
    train = own + at_model_pixel_size(rehearsal_fields, pixel_size_m, config["pixel_size_m"])
    return train_segmenter(train, val, model_name=config["model_name"], out_dir=out_dir, config=config,
                           init_model=model_dir, seed=seed, device=device, progress=progress)


def adapt_batchnorm(model_dir: str | Path, phases: Sequence[np.ndarray], out_dir: str | Path, *,
                    pixel_size_m: float, seed: int = 0, crops: int = 64) -> Path:
    """Re-estimate the BatchNorm statistics of a trained model on a microscope's phase maps (no labels).

    The weights stay; each BatchNorm layer's running mean and variance become the plain
    average over ``crops`` random training-patch crops of ``phases`` (normalised as the model's
    inputs are).

    Parameters
    ----------
    model_dir : str or pathlib.Path
        The trained model folder.
    phases : sequence of numpy.ndarray
        (H, W) phase maps [rad] of the new microscope.
    out_dir : str or pathlib.Path
        The new model folder (config and weights).
    pixel_size_m : float
        Pixel size [m] of the phase maps.
    seed : int
        Seed of the crops.
    crops : int
        Crops the statistics are averaged over (batches of 8).

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    import torch

    from rbclib.seg.datasets import normalise_phase
    from rbclib.seg.infer import load_model

    model, config = load_model(model_dir, device="cpu")
    scale = pixel_size_m / float(config["pixel_size_m"])
    maps = [resample(np.asarray(p, np.float32), scale, order=1) for p in phases]
    side, channels = int(config["patch"]), int(config["in_channels"])
    rng = np.random.default_rng(seed)
    batch = []
    for _ in range(int(crops)):
        m = maps[int(rng.integers(len(maps)))]
        y = int(rng.integers(0, max(1, m.shape[0] - side + 1)))
        x = int(rng.integers(0, max(1, m.shape[1] - side + 1)))
        batch.append(normalise_phase(_square(m, y, x, side), tuple(config["phase_range"])))
    x_all = torch.from_numpy(np.stack(batch)[:, None].repeat(channels, axis=1))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"{model_dir}: the model has no BatchNorm layers to adapt")
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch
    model.train()
    with torch.no_grad():
        for start in range(0, len(x_all), 8):
            model(x_all[start:start + 8].contiguous(memory_format=torch.channels_last))
    return _write_adapted(model.eval(), config, out_dir, adapted_from=model_dir, adaptation="batchnorm",
                          adaptation_crops=int(crops))


def adapt_ssl(model_dir: str | Path, phases: Sequence[np.ndarray], out_dir: str | Path, *, pixel_size_m: float,
              steps: int = SSL_STEPS, seed: int = 0, progress: bool = False) -> Path:
    """Self-supervised adaptation of a trained model to a microscope's unlabelled phase maps.

    The paper's SSL (MoCo v2 + reconstruction, :func:`rbclib.ssl.pretrain.pretrain_ssl`) runs on
    tiles of ``phases``, starting from the trained model's encoder and decoder; the adapted
    encoder and decoder then go back under the trained model's segmentation head.

    Parameters
    ----------
    model_dir : str or pathlib.Path
        The trained model folder (a ResUnet).
    phases : sequence of numpy.ndarray
        (H, W) phase maps [rad] of the new microscope.
    out_dir : str or pathlib.Path
        The new model folder; the SSL run is kept in ``out_dir/ssl``.
    pixel_size_m : float
        Pixel size [m] of the phase maps.
    steps : int
        SSL optimiser steps.
    seed : int
        Seed of the batches and augmentations.
    progress : bool
        Show a progress bar.

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    import torch

    from rbclib.seg.datasets import normalise_phase
    from rbclib.seg.infer import load_model
    from rbclib.seg.pretrained import load_into_resunet
    from rbclib.ssl.pretrain import SSLConfig, pretrain_ssl, queue_size_for

    model, config = load_model(model_dir, device="cpu")
    side = int(config["patch"])
    scale = pixel_size_m / float(config["pixel_size_m"])
    tiles = []
    for phase in phases:
        m = resample(np.asarray(phase, np.float32), scale, order=1)
        for y in range(0, max(1, m.shape[0] - side + 1), side // 2):
            for x in range(0, max(1, m.shape[1] - side + 1), side // 2):
                tile = normalise_phase(_square(m, y, x, side), tuple(config["phase_range"]))
                tiles.append(torch.from_numpy(tile)[None])
    batch = min(16, len(tiles) // 2)
    ssl_config = SSLConfig(encoder=config["encoder"], decoder_channels=tuple(config["decoder_channels"]),
                           in_channels=int(config["in_channels"]), crop_px=side, batch_size=batch, steps=int(steps),
                           lr=1e-4, queue_size=queue_size_for(len(tiles), queue_size=256, batch_size=batch),
                           save_every=int(steps))
    ssl_dir = pretrain_ssl(_Tiles(tiles), out_dir=Path(out_dir) / "ssl", config=ssl_config, seed=seed,
                           progress=progress, init_model=model_dir)
    model = load_into_resunet(model, ssl_dir)
    return _write_adapted(model.eval(), config, out_dir, adapted_from=model_dir, adaptation="ssl",
                          adaptation_steps=int(steps), adaptation_tiles=len(tiles))


def _square(image: np.ndarray, y: int, x: int, side: int) -> np.ndarray:
    """The ``side`` x ``side`` float32 square of ``image`` at (y, x), zero-padded past its edge."""
    out = np.zeros((side, side), np.float32)
    piece = image[y:y + side, x:x + side]
    out[:piece.shape[0], :piece.shape[1]] = piece
    return out


class _Tiles:
    """A list of (1, H, W) tensors as the corpus :func:`rbclib.ssl.pretrain.pretrain_ssl` reads."""

    kind = "microscope tiles"

    def __init__(self, tiles: list) -> None:
        self.tiles = tiles
        self.description = f"{len(tiles)} tiles of the microscope's phase maps"

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int):
        return self.tiles[index]


def _write_adapted(model: Any, config: dict[str, Any], out_dir: str | Path, **facts: Any) -> Path:
    """A model folder (``best.pt`` + ``config.json`` with ``facts``) of an adapted model."""
    from rbclib.core.training import save_checkpoint

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_checkpoint(out / "best.pt", {"model": state, "epoch": 0, "score": float("nan"), "config": ""})
    write_json(out / "config.json", {**config, **{k: str(v) if isinstance(v, Path) else v for k, v in facts.items()}})
    return out


def pseudo_label_fields(model_dir: str | Path, phases: Sequence[np.ndarray], *, pixel_size_m: float,
                        confidence: float = PSEUDO_LABEL_CONFIDENCE, names: Sequence[str] | None = None) -> list[Pair]:
    """Confident pseudo-labels of a trained model on unlabelled phase maps, for self-training.

    Parameters
    ----------
    model_dir : str or pathlib.Path
        The trained model folder.
    phases : sequence of numpy.ndarray
        (H, W) phase maps [rad].
    pixel_size_m : float
        Their pixel size [m].
    confidence : float
        Pixels whose top class probability is below this are ``IGNORE``.
    names : sequence of str, optional
        Field names (default ``field_000``, ...).

    Returns
    -------
    list of rbclib.seg.datasets.Pair
        The phase maps with the model's confident classes, at ``pixel_size_m``.
    """
    from rbclib.seg.infer import load_model, predict_images

    model, config = load_model(model_dir)
    scale = pixel_size_m / float(config["pixel_size_m"])
    names = list(names) if names is not None else [f"field_{i:03d}" for i in range(len(phases))]
    pairs = []
    for phase, name in zip(phases, names):
        small = resample(np.asarray(phase, np.float32), scale, order=1)
        (pred,) = predict_images(model, [small], config=config)
        labels = pred.labels.copy()
        labels[np.asarray(pred.probs).max(axis=0) < confidence] = IGNORE
        pairs.append(Pair(np.asarray(phase, np.float32), resample(labels, 1.0 / scale, order=0)
                          if abs(scale - 1) > 1e-3 else labels, name))
    return pairs

"""Full-image inference with a trained segmentation model.

``predict_image`` cuts an image of any size into overlapping tiles (padding images smaller
than a tile with medium, 0 rad), runs them in batches under ``torch.inference_mode`` in
channels-last memory format, and blends the class probabilities with a window that falls
off towards tile edges. ``fast=True`` adds bfloat16 autocast (AMX / AVX-512-bf16 on CPUs
that have them, tensor cores on GPUs). ``predict_paper_protocol`` is the paper's
non-overlapping 3 x 3 grid of 256 px patches (covering only 768 x 768 of a 900 px image).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rbclib.seg.datasets import PHASE_RANGE_RAD, phase_to_input
from rbclib.core.labels import IGNORE, instances_from_labels
from rbclib.seg.tiles import blend_window, pad_to_min, paper_positions, tile_positions
from rbclib.core.training import bf16_is_fast, channels_last, expand_weights, load_checkpoint, pick_device


@dataclass
class Prediction:
    """Result for one image.

    Attributes
    ----------
    labels : numpy.ndarray
        (H, W) uint8 class map.
    probs : numpy.ndarray
        (classes, H, W) float32 class probabilities.
    instances : numpy.ndarray
        (H, W) int32 cell ids (connected components per class).
    covered : numpy.ndarray
        (H, W) bool, the pixels the model saw (all but the paper protocol's uncovered
        margin, which is set to background).
    """

    labels: np.ndarray
    probs: np.ndarray
    instances: np.ndarray
    covered: np.ndarray


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """A fresh (random) model of the architecture a config names.

    Parameters
    ----------
    config : dict
        A model config with ``model_name``, ``encoder``, ``in_channels``, ``classes`` and,
        for a ResUnet, optionally ``decoder_channels``.

    Returns
    -------
    torch.nn.Module
        The untrained model (:func:`rbclib.seg.models.build_model`).
    """
    from rbclib.seg.models import build_model

    extra = {}
    if config["model_name"] == "resunet" and "decoder_channels" in config:
        extra["decoder_channels"] = tuple(config["decoder_channels"])
    return build_model(config["model_name"], encoder=config["encoder"],
                       in_channels=int(config["in_channels"]), classes=int(config["classes"]), **extra)


def check_model_config(config: Any, cfg_path: str | Path) -> None:
    """Check that a model config can give sane predictions.

    Parameters
    ----------
    config : Any
        The parsed ``config.json``.
    cfg_path : str or pathlib.Path
        Its file, named in the error.

    Raises
    ------
    ValueError
        Naming ``cfg_path``: not a JSON object, a missing architecture key, fewer than 2
        classes, an empty or reversed ``phase_range``, a tile or patch under 16 px
        (``infer_tile`` 0 means the training patch), or an overlap that leaves no tile interior.
    """
    def bad(problem: str) -> ValueError:
        return ValueError(f"{cfg_path}: {problem}")

    if not isinstance(config, dict):
        raise bad("not a model config (expected a JSON object)")
    for key in ("model_name", "encoder", "in_channels", "classes"):
        if key not in config:
            raise bad(f"missing {key!r}")

    def number(key: str, kind: type = int) -> float | None:
        value = config.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (kind is int and value != int(value)):
            raise bad(f"{key}={value!r} is not {'a whole number' if kind is int else 'a number'}")
        return value

    if number("classes") < 2 or number("in_channels") < 1:
        raise bad(f"classes={config['classes']!r}, in_channels={config['in_channels']!r}: need >= 2 classes and "
                  ">= 1 input channel")
    for key in ("patch", "infer_tile"):  # infer_tile 0: the training patch
        if (v := number(key)) is not None and v < 16 and not (key == "infer_tile" and v == 0):
            raise bad(f"{key}={v!r}: tiles of at least 16 px")
    side = number("infer_tile") or number("patch")
    if (ov := number("overlap")) is not None and side is not None and not 0 <= 2 * ov < side:
        raise bad(f"overlap={ov!r} must be >= 0 and less than half the tile ({side!r} px)")
    if "phase_range" in config:
        rng = config["phase_range"]
        if not (isinstance(rng, list) and len(rng) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in rng)
                and rng[0] < rng[1]):
            raise bad(f"phase_range={rng!r}: need [low, high] radians with low < high")


def read_model_config(model_dir: str | Path) -> dict[str, Any]:
    """A model folder's ``config.json``, checked (:func:`check_model_config`), without its weights.

    Parameters
    ----------
    model_dir : str or pathlib.Path
        A model folder written by :mod:`rbclib.seg.train`.

    Returns
    -------
    dict
        The training config: architecture, classes, pixel size, phase range, inference options.

    Raises
    ------
    FileNotFoundError
        The folder has no ``config.json``.
    ValueError
        The config is not valid JSON or describes a model that cannot run.
    """
    cfg_path = Path(model_dir) / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json, so this is not a model folder written by "
                                "rbclib.seg.train (cannot tell which architecture to build)")
    try:
        config = json.loads(cfg_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{cfg_path}: not a valid model config.json ({exc})") from None
    check_model_config(config, cfg_path)
    return config


def load_model(model_dir: str | Path, *, checkpoint: str = "best.pt",
               device: str | torch.device | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from its folder (``config.json`` + ``best.pt``/``last.pt``).

    Parameters
    ----------
    model_dir : str or pathlib.Path
        The model folder.
    checkpoint : str, optional
        The weights file in it (default "best.pt"); compressed (shipped) weights are expanded.
    device : str or torch.device, optional
        Where the model runs (None: :func:`rbclib.core.training.pick_device`).

    Returns
    -------
    model : torch.nn.Module
        In eval mode, channels-last, on ``device``.
    config : dict
        The checked config (:func:`read_model_config`).

    Raises
    ------
    ValueError
        The checkpoint holds no weights, they do not fit the config's architecture, or they
        hold NaN or infinity.
    """
    model_dir = Path(model_dir)
    config, ckpt_path = read_model_config(model_dir), model_dir / checkpoint
    ckpt = load_checkpoint(ckpt_path)
    if isinstance(ckpt.get("compressed_model"), dict):  # a shipped model (core.training.compress_weights)
        ckpt["model"] = expand_weights(ckpt["compressed_model"])
    if not isinstance(ckpt.get("model"), dict):
        raise ValueError(f"{ckpt_path}: not an rbclib.seg.train checkpoint (expected a dict with the weights "
                         "under 'model', e.g. best.pt or last.pt of a model folder)")
    model = model_from_config(config)
    result = model.load_state_dict(ckpt["model"], strict=False)
    bad_shapes = [k for k, v in ckpt["model"].items()
                  if k in model.state_dict() and model.state_dict()[k].shape != v.shape]
    if result.missing_keys or result.unexpected_keys or bad_shapes:
        raise ValueError(
            f"{ckpt_path}: weights do not fit a {config['model_name']} / {config['encoder']} model as config.json says "
            f"({len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected, {len(bad_shapes)} mis-shaped tensors, "
            f"e.g. {(result.missing_keys + result.unexpected_keys + bad_shapes)[:3]}); was it trained with another architecture?")
    broken = [k for k, v in ckpt["model"].items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]
    if broken:
        raise ValueError(f"{ckpt_path}: {len(broken)} weight tensor(s) hold NaN or infinity (e.g. {broken[0]}); "
                         "training diverged or the file is damaged")
    return channels_last(model, pick_device(device)).eval(), config


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def predict_batches(model: nn.Module, inputs: np.ndarray, *, batch_size: int = 8, fast: bool = False) -> np.ndarray:
    """Softmax probabilities of normalised inputs, ``batch_size`` at a time, channels-last.

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    inputs : numpy.ndarray
        (N, C, h, w) normalised inputs.
    batch_size : int, optional
        Inputs per forward pass.
    fast : bool, optional
        bfloat16 autocast.

    Returns
    -------
    numpy.ndarray
        (N, classes, h, w) float32 probabilities.
    """
    dev = _device_of(model)
    model.eval()
    out = []
    for i in range(0, len(inputs), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(inputs[i:i + batch_size])).to(dev)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=fast):
            logits = model(x)
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out)


def _check_phase(phase: np.ndarray) -> np.ndarray:
    phase = np.asarray(phase, dtype=np.float32)
    if phase.ndim != 2:
        raise ValueError(f"phase image must be 2-D (H, W), got shape {phase.shape}")
    if not np.isfinite(phase).all():
        raise ValueError("phase image holds NaN or infinite values")
    return phase


def _finish(probs: np.ndarray, covered: np.ndarray, config: dict[str, Any]) -> Prediction:
    """Class map and instances of blended probabilities; ``postprocess = "watershed"`` (GAN +
    Watershed) splits touching cells by :func:`rbclib.seg.watershed.split_touching`."""
    labels = probs.argmax(0).astype(np.uint8)
    instances = instances_from_labels(labels)
    if config.get("postprocess", "none") == "watershed":
        from rbclib.seg.watershed import split_touching

        instances = split_touching(labels, instances, pixel_size_m=float(config["pixel_size_m"]))
    return Prediction(labels=labels, probs=probs, instances=instances, covered=covered)


def predict_images(model: nn.Module, phases: list[np.ndarray], *, config: dict[str, Any],
                   tile: int | None = None, overlap: int | None = None, batch_size: int = 8,
                   fast: bool | None = False) -> list[Prediction]:
    """Segment whole phase images by overlapping tiles, the tiles of all images batched
    together (one forward pass can hold tiles of several images).

    Probabilities are blended with :func:`rbclib.seg.tiles.blend_window`.

    Parameters
    ----------
    model : torch.nn.Module
        The network (:func:`load_model`).
    phases : list of numpy.ndarray
        Phase images, each (H, W) [rad], any size.
    config : dict
        The model's config (classes, input channels, phase range, patch, post-processing).
    tile : int, optional
        Tile side [px], a multiple of 32 (default: the config's ``infer_tile``, else its
        training patch ``patch``).
    overlap : int, optional
        px shared by neighbouring tiles (default ``config["overlap"]``, else tile / 8).
    batch_size : int, optional
        Tiles per forward pass.
    fast : bool or None, optional
        bfloat16 autocast (None: where :func:`bf16_is_fast`).

    Returns
    -------
    list of Prediction
        One per phase image, on its grid.

    Raises
    ------
    ValueError
        A phase image that is not 2-D or not finite, or a tile that is not a multiple of 32.

    Notes
    -----
    Bigger tiles than the training patch are faster but change the answers (quick model,
    trained on 128 px crops; 48 reconstructed twin fields): one 928 px tile per
    900 px image segmented 3x faster than 128 px tiles, but only 99.0 % of pixels agreed and
    Dice fell 0.738 -> 0.730; with 256 px tiles 99.1 % and 0.737, and on the real holograms
    class shares moved by up to 17 points. So the default stays the training patch. A smaller
    overlap changes the answers too: 16 instead of 32 px takes a 900 px image in 8 x 8 instead
    of 10 x 10 tiles (1.4x faster in ``rbc assess``), but on 12 reconstructed 900 px twin
    holograms only 98.9 % of pixels agreed (worst image 97.1 %; Dice against the truth 0.711 ->
    0.729), on the quick run's 40 fields of 512 px 99.91 % (Dice 0.6958 -> 0.6941), quick model.
    So the default stays the training config's overlap.
    """
    phases = [_check_phase(p) for p in phases]
    if fast is None:
        fast = bf16_is_fast(_device_of(model))
    side = int(tile or config.get("infer_tile") or config["patch"])
    if side % 32:
        raise ValueError(f"tile must be a multiple of 32 px (the encoders downsample 5 times), got {side}")
    ov = int(config.get("overlap", side // 8) if overlap is None else overlap)
    plans, inputs = [], []
    for phase in phases:
        padded = pad_to_min(phase, side, value=0.0)
        pos = tile_positions(padded.shape, side, ov)
        plans.append((padded.shape, pos))
        inputs.append(phase_to_input(np.stack([padded[y:y + side, x0:x0 + side] for y, x0 in pos]),
                                     in_channels=int(config["in_channels"]),
                                     phase_range=tuple(config.get("phase_range", PHASE_RANGE_RAD))))
    # The tiles' probabilities are blended into each image's accumulator batch by batch, never
    # all held at once (an 8000 px image at the shipped model's pixel size: 324 tiles, 0.4 GB).
    where = [(i, yx) for i, (_, pos) in enumerate(plans) for yx in pos]
    tiles_in = np.concatenate(inputs)
    win = blend_window(side, ov)
    acc = [np.zeros((int(config["classes"]),) + shape, np.float32) for shape, _ in plans]
    norm = [np.zeros(shape, np.float32) for shape, _ in plans]
    for start in range(0, len(tiles_in), batch_size):
        probs = predict_batches(model, tiles_in[start:start + batch_size], batch_size=batch_size, fast=fast)
        for (i, (y, x0)), p in zip(where[start:start + batch_size], probs):
            acc[i][:, y:y + side, x0:x0 + side] += p * win
            norm[i][y:y + side, x0:x0 + side] += win
    out = []
    for phase, a, n in zip(phases, acc, norm):
        a /= n
        h, w = phase.shape
        out.append(_finish(np.ascontiguousarray(a[:, :h, :w]), np.ones((h, w), bool), config))
    return out


def predict_image(model: nn.Module, phase: np.ndarray, *, config: dict[str, Any], tile: int | None = None,
                  overlap: int | None = None, batch_size: int = 8, fast: bool | None = False) -> Prediction:
    """Segment one whole phase image: :func:`predict_images` of one image.

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    phase : numpy.ndarray
        (H, W) phase [rad].
    config : dict
        The model's config.
    tile, overlap, batch_size, fast
        As in :func:`predict_images`.

    Returns
    -------
    Prediction
        The image's prediction.
    """
    return predict_images(model, [phase], config=config, tile=tile, overlap=overlap, batch_size=batch_size,
                          fast=fast)[0]


def predict_paper_protocol(model: nn.Module, phase: np.ndarray, *, config: dict[str, Any], patch: int | None = None,
                           batch_size: int = 9, fast: bool = False) -> Prediction:
    """The paper's inference: non-overlapping patches from the top-left corner, predicted and merged.

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    phase : numpy.ndarray
        (H, W) phase [rad].
    config : dict
        The model's config.
    patch : int, optional
        Patch side [px] (default ``config["patch"]``; 3 x 3 of 256 px for 900 px).
    batch_size : int, optional
        Patches per forward pass.
    fast : bool, optional
        bfloat16 autocast.

    Returns
    -------
    Prediction
        The uncovered right/bottom margin is background with ``covered`` False (evaluate
        on ``covered`` only).
    """
    phase = _check_phase(phase)
    patch = int(patch or config["patch"])
    pos = paper_positions(phase.shape, patch)
    x = phase_to_input(np.stack([phase[y:y + patch, x0:x0 + patch] for y, x0 in pos]),
                       in_channels=int(config["in_channels"]),
                       phase_range=tuple(config.get("phase_range", PHASE_RANGE_RAD)))
    tiles = predict_batches(model, x, batch_size=batch_size, fast=fast)
    probs = np.zeros((tiles.shape[1],) + phase.shape, np.float32)
    probs[0] = 1.0
    covered = np.zeros(phase.shape, bool)
    for (y, x0), p in zip(pos, tiles):
        probs[:, y:y + patch, x0:x0 + patch] = p
        covered[y:y + patch, x0:x0 + patch] = True
    return _finish(probs, covered, config)


def check_mask_classes(labels: np.ndarray, classes: int, *, source: str = "label map") -> None:
    """Check that a mask holds only class ids the model can predict.

    Parameters
    ----------
    labels : numpy.ndarray
        (H, W) class map.
    classes : int
        Classes the model predicts.
    source : str, optional
        Where the mask came from, named in the error.

    Raises
    ------
    ValueError
        A class id >= ``classes`` (pixels of ``rbclib.core.labels.IGNORE`` aside).
    """
    labels = np.asarray(labels)
    top = int(np.max(labels[labels != IGNORE], initial=0))
    if top >= classes:
        raise ValueError(f"{source}: holds class {top}, but the model predicts only classes 0..{classes - 1}")


def measure_prediction(prediction: Prediction, phase: np.ndarray, *, optics: Any) -> "Any":
    """Per-cell table of the predicted instances, with the predicted class of each cell.

    Parameters
    ----------
    prediction : Prediction
        The model's prediction.
    phase : numpy.ndarray
        (H, W) phase [rad] it was made on.
    optics : rbclib.core.config.Optics
        The image's optics.

    Returns
    -------
    pandas.DataFrame
        One row per cell (``rbclib.physics.measure.measure_cells``).
    """
    from rbclib.physics.measure import measure_cells

    return measure_cells(phase, prediction.instances, optics=optics, labels=prediction.labels)

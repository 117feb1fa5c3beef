"""The mask generator G_M used as a segmenter (the paper's DDGAN row of Tables 1-2): a
phase map is cut into patches, each masked by G_M's reverse diffusion, and stitched back."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from rbclib.seg.datasets import normalise_phase
from rbclib.seg.infer import Prediction
from rbclib.synth.ddgan import seed_for
from rbclib.synth.ddgan_sampling import load_generator, mask_from_x0, resize_patches, sample_x0


def segment_with_mask_generator(model_dir: str | Path, phase: np.ndarray, *, seed: int, n_samples: int = 1,
                                batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """G_M used as a segmenter: phase -> class maps and confidence.

    Images are cut into non-overlapping native_px tiles (reflect-padded at the border, the
    paper's patch protocol), each tile's mask is the mean x0 of ``n_samples`` stochastic
    reverse chains, and the tiles are merged back to (N, H, W). A class-conditional G_M is
    given label 0 for every tile (the label of its training crops not centred on a cell).

    Parameters
    ----------
    model_dir : str or pathlib.Path
        The mask DDGAN's model folder.
    phase : numpy.ndarray
        (N, H, W) or (H, W) phase [rad].
    seed : int
        Seed of the reverse chains.
    n_samples : int, optional
        Reverse chains averaged per tile, default 1.
    batch_size : int, optional
        Tiles per generator batch, default 16.

    Returns
    -------
    labels : numpy.ndarray
        uint8 class maps 0..4, shaped as ``phase``.
    confidence : numpy.ndarray
        float32 per-pixel confidence (:func:`rbclib.synth.ddgan_sampling.mask_from_x0`), shaped as ``phase``.

    Raises
    ------
    ValueError
        When ``model_dir`` holds a phase model, not a mask model (G_M).
    """
    gm, cfg = load_generator(model_dir)
    if cfg.kind != "mask":
        raise ValueError(f"{model_dir}: is a {cfg.kind!r} DDGAN; a mask model (G_M) is needed")
    arr = np.asarray(phase, dtype=np.float32)
    single = arr.ndim == 2
    arr = arr[None] if single else arr
    N, H, W = arr.shape
    P = cfg.native_px
    ph, pw = -H % P, -W % P
    padded = np.pad(normalise_phase(arr, cfg.phase_range_rad), ((0, 0), (0, ph), (0, pw)), mode="reflect")
    ny, nx = padded.shape[1] // P, padded.shape[2] // P
    tiles = padded.reshape(N, ny, P, nx, P).transpose(0, 1, 3, 2, 4).reshape(-1, 1, P, P)
    cond = torch.from_numpy(np.ascontiguousarray(tiles))
    if cfg.downsample > 1:
        cond = F.avg_pool2d(cond, cfg.downsample)
    unknown = torch.zeros(len(cond), dtype=torch.long)  # a class-conditional G_M: label 0, that of its uniform crops
    x0 = sum(sample_x0(gm, cfg, len(cond), seed=seed_for(seed, 20, k), cond=cond, classes=unknown,
                       batch_size=batch_size) for k in range(n_samples)) / n_samples
    labels, conf = mask_from_x0(resize_patches(x0, P))

    def merge(a: np.ndarray) -> np.ndarray:
        full = a.reshape(N, ny, nx, P, P).transpose(0, 1, 3, 2, 4).reshape(N, ny * P, nx * P)
        return full[:, :H, :W]

    labels, conf = merge(labels), merge(conf)
    return (labels[0], conf[0]) if single else (labels, conf)


def mask_generator_predictor(model_dir: str | Path, *, seed: int) -> Callable[[np.ndarray], Prediction]:
    """``phase -> Prediction`` using the DDGAN mask generator as a segmenter.

    Uses :func:`segment_with_mask_generator`; probabilities are one-hot. The
    DDGAN-as-segmenter row of 07's tables (:func:`rbclib.seg.evaluate.evaluate_predictor`).

    Parameters
    ----------
    model_dir : str or pathlib.Path
        The mask DDGAN's model folder (read at every call).
    seed : int
        Seed of the reverse chains.

    Returns
    -------
    Callable[[numpy.ndarray], rbclib.seg.infer.Prediction]
        (H, W) phase [rad] -> prediction: class map, one-hot probabilities, connected-component
        instances, every pixel covered.
    """
    from rbclib.core.labels import instances_from_labels, to_onehot

    def predict(phase: np.ndarray) -> Prediction:
        labels, _ = segment_with_mask_generator(model_dir, phase, seed=seed)
        labels = np.asarray(labels, dtype=np.uint8).reshape(phase.shape)
        return Prediction(labels=labels, probs=to_onehot(labels), instances=instances_from_labels(labels),
                          covered=np.ones(phase.shape, bool))

    return predict

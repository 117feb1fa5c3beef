"""Figures of the diffusion GANs (03, 04): grids of generated phase patches with their
masks, and a trained model's preview."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from rbclib.seg.datasets import PHASE_RANGE_RAD, denormalise_phase
from rbclib.synth.ddgan_sampling import draw_classes, load_generator, resize_patches, sample_x0
from rbclib.synth.mask_segmenter import segment_with_mask_generator


def sample_grid_figure(phase: np.ndarray, labels: np.ndarray | None = None, *, ncols: int = 8,
                       title: str | None = None, phase_range_rad: tuple[float, float] = PHASE_RANGE_RAD):
    """Grid of phase patches, each with its coloured mask below when given.

    Parameters
    ----------
    phase : numpy.ndarray
        (n, P, P) phase patches [rad].
    labels : numpy.ndarray, optional
        (n, P, P) class maps 0..4, shown below their patches.
    ncols : int, optional
        Patches per row, default 8 (at most n).
    title : str, optional
        Figure title.
    phase_range_rad : tuple of (float, float), optional
        Grey-scale limits [rad], default :data:`rbclib.seg.datasets.PHASE_RANGE_RAD`.

    Returns
    -------
    matplotlib.figure.Figure
        The grid.
    """
    import matplotlib.pyplot as plt

    from rbclib.core.labels import colourize

    n = len(phase)
    ncols = max(1, min(ncols, n))
    rows_per = 1 if labels is None else 2
    nrows = math.ceil(n / ncols) * rows_per
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.6 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, ncols)
        axes[r * rows_per, c].imshow(phase[i], cmap="gray", vmin=phase_range_rad[0], vmax=phase_range_rad[1])
        if labels is not None:
            axes[r * rows_per + 1, c].imshow(colourize(labels[i]))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def preview_figure(model_dir: str | Path, *, n: int = 16, seed: int = 0, real_phase: np.ndarray | None = None,
                   real_labels: np.ndarray | None = None):
    """Sample grid of one model folder (the per-epoch check).

    G_p draws ``n`` phase patches; G_M segments ``real_phase``, shown beside ``real_labels``.

    Parameters
    ----------
    model_dir : str or pathlib.Path
        A DDGAN model folder, phase (G_p) or mask (G_M).
    n : int, optional
        Patches shown, default 16.
    seed : int, optional
        Seed of the samples, default 0.
    real_phase : numpy.ndarray, optional
        (n, native_px, native_px) real phase patches [rad]; needed for a mask model.
    real_labels : numpy.ndarray, optional
        (n, native_px, native_px) their true class maps, shown in the first rows.

    Returns
    -------
    matplotlib.figure.Figure
        The grid.

    Raises
    ------
    ValueError
        For a mask model without ``real_phase``.
    """
    _, cfg = load_generator(model_dir)
    if cfg.kind == "phase":
        g, _ = load_generator(model_dir)
        classes = torch.from_numpy(draw_classes(n, seed=seed).astype(np.int64)) if cfg.class_conditional else None
        x = resize_patches(sample_x0(g, cfg, n, seed=seed, classes=classes), cfg.native_px)
        return sample_grid_figure(denormalise_phase(x[:, 0].numpy(), cfg.phase_range_rad), None,
                                  title=f"G_p samples ({Path(model_dir).name})", phase_range_rad=cfg.phase_range_rad)
    if real_phase is None:
        raise ValueError(f"{model_dir}: a mask model needs real_phase patches to preview")
    pred, _ = segment_with_mask_generator(model_dir, real_phase[:n], seed=seed)
    phase = np.concatenate([real_phase[:n], real_phase[:n]]) if real_labels is not None else real_phase[:n]
    labels = np.concatenate([real_labels[:n], pred]) if real_labels is not None else pred
    return sample_grid_figure(phase, labels, title="G_M masks: true (first rows), generated (last rows)",
                              phase_range_rad=cfg.phase_range_rad)

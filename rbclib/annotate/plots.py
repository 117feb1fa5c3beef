"""Figures of stage 02 (proposals, annotations, per-cell measurements); each returns a Figure."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from skimage.segmentation import find_boundaries

from rbclib.core.labels import CELL_CLASSES, CLASS_COLOURS, CLASS_NAMES, colourize


def plot_proposals(phase: np.ndarray, proposals: np.ndarray, true_instances: np.ndarray | None = None, *,
                   title: str = "") -> Figure:
    """Phase image [rad] with proposal outlines (magenta) and, if given, true outlines (cyan).

    Parameters
    ----------
    phase : numpy.ndarray
        (H, W) phase [rad].
    proposals : numpy.ndarray
        (H, W) proposed instance map, 0 background.
    true_instances : numpy.ndarray, optional
        (H, W) true instance map; given, a second panel shows it.
    title : str, optional
        Prefix of each panel's title.

    Returns
    -------
    matplotlib.figure.Figure
        One or two panels, each titled with its number of cells.
    """
    panels = 2 if true_instances is not None else 1
    fig = Figure(figsize=(5.0 * panels, 5.0))
    axes = np.atleast_1d(fig.subplots(1, panels))
    for ax, inst, colour, name in zip(axes, (proposals, true_instances), ((1, 0, 1), (0, 1, 1)),
                                      ("proposals", "ground truth")):
        ax.imshow(phase, cmap="gray")
        rgba = np.zeros(phase.shape + (4,), np.float32)
        rgba[find_boundaries(inst, mode="inner")] = (*colour, 1.0)
        ax.imshow(rgba, interpolation="nearest")
        ax.set_title(f"{title} {name} ({len(np.unique(inst)) - 1} cells)".strip())
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_annotations(phases: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray], *,
                     stems: Sequence[str]) -> Figure:
    """Rows of (phase [rad], class map in the paper's colours) for ``stems``.

    Parameters
    ----------
    phases : mapping of str to numpy.ndarray
        Stem -> (H, W) phase [rad].
    labels : mapping of str to numpy.ndarray
        Stem -> (H, W) class map.
    stems : sequence of str
        The images to show, one row each.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    fig = Figure(figsize=(8.0, 4.0 * len(stems)))
    axes = np.atleast_2d(fig.subplots(len(stems), 2))
    for row, stem in zip(axes, stems):
        im = row[0].imshow(phases[stem], cmap="viridis")
        fig.colorbar(im, ax=row[0], label="phase [rad]", shrink=0.8)
        row[1].imshow(colourize(labels[stem]), interpolation="nearest")
        row[0].set_title(stem)
        row[1].set_title("classes: " + ", ".join(f"{CLASS_NAMES[c]}" for c in CELL_CLASSES
                                                 if (labels[stem] == c).any()), fontsize=8)
        for ax in row:
            ax.set_axis_off()
    fig.tight_layout()
    return fig


def plot_cell_measurements(cells: pd.DataFrame, *, columns: Sequence[str] = (
        "equivalent_diameter_um", "dry_mass_pg", "volume_um3", "sphericity", "central_dip_ratio", "phase_max_rad"),
        delta_n: float | None = None) -> Figure:
    """Histograms of per-cell measurements by class (paper colours).

    Parameters
    ----------
    cells : pandas.DataFrame
        The cell table (``class_id`` and the measurement columns).
    columns : sequence of str, optional
        The measurements to show, one panel each, in two rows (default: equivalent diameter,
        dry mass, volume, sphericity, central dip ratio, peak phase).
    delta_n : float, optional
        The assumed dn (n_cell - n_medium), for the title.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    fig = Figure(figsize=(4.0 * len(columns) / 2, 6.0))
    axes = fig.subplots(2, int(np.ceil(len(columns) / 2))).ravel()
    for ax, col in zip(axes, columns):
        values = cells[col].dropna()
        bins = np.linspace(values.min(), values.max(), 25) if len(values) and values.min() < values.max() else 10
        for cls in CELL_CLASSES:
            sel = cells.loc[cells["class_id"] == cls, col].dropna()
            if len(sel):
                ax.hist(sel, bins=bins, alpha=0.6, color=CLASS_COLOURS[cls], edgecolor="k", linewidth=0.3,
                        label=f"{CLASS_NAMES[cls]} ({len(sel)})")
        ax.set_xlabel(col)
    axes[0].legend(fontsize=7)
    if delta_n is not None:
        fig.suptitle(f"volume and sphericity assume n_cell - n_medium = {delta_n:.4f}", fontsize=9)
    fig.tight_layout()
    return fig

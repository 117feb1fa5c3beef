"""Cell proposals for annotation (stage 02): :func:`propose_cells` cuts a phase image into
candidate cells (threshold, then a distance-transform watershed that splits touching
cells); merge / split edits of a proposal map; proposal quality against the twin's truth."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import apply_hysteresis_threshold, threshold_otsu
from skimage.segmentation import relabel_sequential, watershed

from rbclib.core.config import Optics
from rbclib.core.io import read_phase
from rbclib.core.labels import edge_ids
from rbclib.seg.metrics import aji, match_instances


# ----------------------------------------------------------------------------- proposals
@dataclass
class Proposals:
    """Candidate cells of one phase image.

    Attributes
    ----------
    instances : numpy.ndarray
        (H, W) int32, 0 background, ids 1..N.
    threshold_rad : float
        Threshold used [rad].
    flags : pandas.DataFrame
        One row per id with ``cell_id``, ``area_px``, ``touches_edge``, ``tiny``.
    """

    instances: np.ndarray
    threshold_rad: float
    flags: pd.DataFrame


def propose_cells(phase: np.ndarray, *, threshold_rad: float | None = None, pixel_size_m: float = Optics().pixel_size_m,
                  smooth_sigma_px: float = 1.0, edge_fraction: float = 0.5, min_separation_um: float = 2.5,
                  min_area_um2: float = 8.0) -> Proposals:
    """Threshold (``threshold_rad`` [rad], or Otsu when None) then split touching cells.

    Objects are the pixels of the smoothed phase above the threshold, grown (hysteresis)
    over connected pixels above ``edge_fraction`` x threshold, so the faint cell rims
    are kept (on simulated fields 0.5 raises the proposal AJI from ~0.91 to ~0.98).
    The foreground (holes filled) is split by a watershed on the negative distance
    transform from seeds at distance maxima at least ``min_separation_um`` apart. Objects
    touching the image edge or smaller than ``min_area_um2`` are flagged, never dropped.

    Parameters
    ----------
    phase : numpy.ndarray
        (H, W) phase [rad], finite.
    threshold_rad : float, optional
        Threshold [rad] of the smoothed phase; None: Otsu's (infinite for a constant image).
    pixel_size_m : float, optional
        Pixel size at the sample [m] (default that of :class:`rbclib.core.config.Optics`).
    smooth_sigma_px : float, optional
        Gaussian smoothing before thresholding [px] (default 1.0; 0 turns it off).
    edge_fraction : float, optional
        Low hysteresis threshold as a fraction of ``threshold_rad``, in (0, 1] (default 0.5).
    min_separation_um : float, optional
        Least distance between watershed seeds [um] (default 2.5).
    min_area_um2 : float, optional
        Objects smaller than this [um^2] are flagged ``tiny`` (default 8.0).

    Returns
    -------
    Proposals
        The instances, the threshold used and the flags.

    Raises
    ------
    ValueError
        ``phase`` is not 2-D or not finite, or ``edge_fraction`` is outside (0, 1].
    """
    phase = np.asarray(phase, dtype=np.float32)
    if phase.ndim != 2:
        raise ValueError(f"phase must be a 2-D map, got shape {phase.shape}")
    if not np.all(np.isfinite(phase)):
        raise ValueError("phase holds NaN or infinite values")
    smooth = ndi.gaussian_filter(phase, smooth_sigma_px) if smooth_sigma_px > 0 else phase
    if threshold_rad is None:
        threshold_rad = float(threshold_otsu(smooth)) if smooth.min() < smooth.max() else math.inf
    if not 0 < edge_fraction <= 1:
        raise ValueError(f"edge_fraction must lie in (0, 1], got {edge_fraction}")
    mask = ndi.binary_fill_holes(apply_hysteresis_threshold(smooth, edge_fraction * threshold_rad, threshold_rad))
    dist = ndi.distance_transform_edt(mask)
    comps, _ = ndi.label(mask, structure=np.ones((3, 3), bool))
    sep_px = max(1, int(round(min_separation_um * 1e-6 / pixel_size_m)))
    peaks = peak_local_max(ndi.gaussian_filter(dist, 1.0), min_distance=sep_px, labels=comps, exclude_border=False)
    markers = np.zeros(phase.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # a component without a seed (tiny or flat) gets one at its first pixel
    seeded = np.unique(comps[markers > 0])
    for comp_id in np.setdiff1d(np.arange(1, comps.max() + 1), seeded):
        y, x = np.argwhere(comps == comp_id)[0]
        markers[y, x] = markers.max() + 1
    inst = watershed(-dist, markers, mask=mask) if mask.any() else np.zeros(phase.shape, np.int32)
    inst = relabel_sequential(inst.astype(np.int32))[0]
    return Proposals(instances=inst, threshold_rad=float(threshold_rad),
                     flags=_flags(inst, pixel_size_m=pixel_size_m, min_area_um2=min_area_um2))


def _flags(inst: np.ndarray, *, pixel_size_m: float, min_area_um2: float) -> pd.DataFrame:
    ids = np.arange(1, int(inst.max(initial=0)) + 1)
    area = np.bincount(inst.ravel(), minlength=ids.size + 1)[1:]
    min_px = min_area_um2 * 1e-12 / pixel_size_m ** 2
    return pd.DataFrame({"cell_id": ids, "area_px": area, "touches_edge": np.isin(ids, edge_ids(inst)), "tiny": area < min_px})


def proposal_quality(proposed: np.ndarray, true_instances: np.ndarray) -> dict[str, float]:
    """Compare proposal instances with true instances (class-agnostic).

    Parameters
    ----------
    proposed : numpy.ndarray
        (H, W) proposed instance map, 0 background.
    true_instances : numpy.ndarray
        (H, W) true instance map, 0 background.

    Returns
    -------
    dict of str to float
        ``aji`` (eq. 14), ``n_true``, ``n_proposed``, ``matched_iou50`` (fraction of true
        cells whose best proposal has IoU > 0.5) and ``mean_iou`` (NaN without true cells).
    """
    m = match_instances(proposed, true_instances)
    return {"aji": aji(proposed, true_instances), "n_true": int(len(m)),
            "n_proposed": int(len(np.unique(proposed)) - (1 if (np.asarray(proposed) == 0).any() else 0)),
            "matched_iou50": float((m["iou"] > 0.5).mean()) if len(m) else math.nan,
            "mean_iou": float(m["iou"].mean()) if len(m) else math.nan}


# ------------------------------------------------------------------------ edit operations
def merge_cells(instances: np.ndarray, a: int, b: int) -> np.ndarray:
    """Merge cell ``b`` into ``a`` (the lower id survives).

    Parameters
    ----------
    instances : numpy.ndarray
        (H, W) instance map, 0 background; not changed.
    a, b : int
        The two cells' ids.

    Returns
    -------
    numpy.ndarray
        A new instance map.

    Raises
    ------
    ValueError
        ``a`` equals ``b``, or either is not a cell of ``instances``.
    """
    a, b = int(a), int(b)
    if a == b:
        raise ValueError(f"cannot merge cell {a} with itself")
    for c in (a, b):
        if c <= 0 or not (instances == c).any():
            raise ValueError(f"no cell {c} in this image")
    keep, gone = min(a, b), max(a, b)
    out = instances.copy()
    out[out == gone] = keep
    return out


def split_cell(instances: np.ndarray, cell: int) -> np.ndarray:
    """Split one cell in two by a watershed from its two main distance maxima.

    Without two maxima the seeds sit on the major axis, half an equivalent radius from
    the centroid.

    Parameters
    ----------
    instances : numpy.ndarray
        (H, W) instance map, 0 background; not changed.
    cell : int
        The id of the cell to split.

    Returns
    -------
    numpy.ndarray
        A new instance map: the first part keeps ``cell``, the second gets ``max id + 1``.

    Raises
    ------
    ValueError
        No such cell, a cell of fewer than 4 pixels, or a split that leaves one part empty.
    """
    cell = int(cell)
    mask = instances == cell
    if cell <= 0 or not mask.any():
        raise ValueError(f"no cell {cell} in this image")
    if mask.sum() < 4:
        raise ValueError(f"cell {cell} has {int(mask.sum())} pixel(s); too small to split")
    ys, xs = np.nonzero(mask)
    y0, x0 = ys.min(), xs.min()
    crop = np.pad(mask[y0:ys.max() + 1, x0:xs.max() + 1], 1)
    dist = ndi.distance_transform_edt(crop)
    r_eq = math.sqrt(mask.sum() / math.pi)
    peaks = peak_local_max(dist, min_distance=max(2, int(r_eq / 3)), num_peaks=2, labels=crop.astype(int),
                           exclude_border=False)
    if len(peaks) < 2:
        pts = np.argwhere(crop).astype(float)
        centre = pts.mean(0)
        _, vecs = np.linalg.eigh(np.cov((pts - centre).T))
        axis = vecs[:, -1] * 0.5 * r_eq
        peaks = np.array([centre + axis, centre - axis])
        peaks = np.array([pts[np.argmin(((pts - p) ** 2).sum(1))] for p in peaks]).astype(int)
    markers = np.zeros(crop.shape, np.int32)
    markers[peaks[0][0], peaks[0][1]] = 1
    markers[peaks[1][0], peaks[1][1]] = 2
    parts = watershed(-dist, markers, mask=crop)[1:-1, 1:-1]
    if not (parts == 2).any() or not (parts == 1).any():
        raise ValueError(f"cell {cell} could not be split in two")
    out = instances.copy()
    region = out[y0:ys.max() + 1, x0:xs.max() + 1]
    region[(parts == 2)] = int(instances.max()) + 1
    return out


def evaluate_proposals(run_paths: Any, stems: Iterable[str], *, threshold_rad: float | None = None,
                       progress: bool = True, **proposal_options: Any) -> pd.DataFrame:
    """Proposal quality against the simulator's instances, one row per image.

    Proposals are made on the reconstructed phase (``<run>/phase``) and, where it exists,
    on the true phase (``<run>/truth/phase``).

    Parameters
    ----------
    run_paths : rbclib.core.paths.RunPaths
        The run folder (``phase/`` and ``truth/``).
    stems : iterable of str
        The images.
    threshold_rad : float, optional
        Proposal threshold [rad]; None: Otsu's per image.
    progress : bool, optional
        Show a progress bar (default True).
    **proposal_options
        Passed to :func:`propose_cells` (the pixel size comes from each image's optics).

    Returns
    -------
    pandas.DataFrame
        Columns ``image``, ``threshold_rad``, ``n_true``, ``n_proposed``, ``aji``,
        ``matched_iou50``, ``mean_iou`` (reconstructed phase) and ``aji_true_phase``.

    Raises
    ------
    ValueError
        A phase image and its true instances differ in shape.
    """
    from tqdm.auto import tqdm

    from rbclib.core.io import read_instances

    rows = []
    for stem in tqdm(list(stems), desc="proposal quality", disable=not progress):
        img = read_phase(run_paths.phase / f"{stem}.tif")
        true_inst = read_instances(run_paths.truth / "instances" / f"{stem}.png")
        if true_inst.shape != img.data.shape:
            raise ValueError(f"{stem}: phase {img.data.shape} and true instances {true_inst.shape} differ in shape")
        px = img.optics().pixel_size_m
        prop = propose_cells(img.data, threshold_rad=threshold_rad, pixel_size_m=px, **proposal_options)
        row = {"image": stem, "threshold_rad": prop.threshold_rad, **proposal_quality(prop.instances, true_inst)}
        true_phase = run_paths.truth / "phase" / f"{stem}.tif"
        if true_phase.exists():
            p_true = propose_cells(read_phase(true_phase).data, threshold_rad=threshold_rad, pixel_size_m=px,
                                   **proposal_options)
            row["aji_true_phase"] = aji(p_true.instances, true_inst)
        rows.append(row)
    return pd.DataFrame(rows)

"""Morphology score of (phase, mask) pairs: do the diffusion GANs draw red cells?

A feature distance over whole patches (:mod:`rbclib.synth.scores`) does not see shape: it
called cell-bright blobs good. This score looks at cells. The project's own cell finder
(:func:`rbclib.annotate.proposals.propose_cells`, fixed threshold) and per-cell statistics
(:func:`rbclib.physics.image_statistics.cell_statistics`, the code that compares the twin with real
holograms) run on generated patches and on real training patches; cells cut by the patch
border are left out. Per cell:

- shape: area [um^2], peak phase [rad], central dip ratio, outline roughness, eccentricity;
- the mask's agreement with its phase: ``purity``, the share of the cell's masked pixels in
  their majority class (G_M painting several classes into one cell lowers it), and ``iou``,
  the intersection over union of the cell's proposal with the mask's cell (the 8-connected
  component of mask > 0 overlapping it most);
- ``class_name``: the mask's majority class over the cell.

:func:`morphology_score` compares the generated cells with the real ones, per class and
overall, against :data:`TARGETS` (issue 15, quick profile).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from skimage.measure import regionprops_table
from skimage.segmentation import expand_labels

from rbclib.annotate.proposals import propose_cells
from rbclib.core.config import Optics
from rbclib.core.labels import CELL_CLASS_NAMES, CLASS_NAMES
from rbclib.physics.image_statistics import cell_statistics
from rbclib.synth.scores import CELL_THRESHOLD_RAD

SHAPE_FEATURES = ("area_um2", "peak_phase_rad", "dip_ratio", "roughness", "eccentricity")
CELL_TABLE_COLUMNS = ("patch", "cell_id", "class_name", *SHAPE_FEATURES, "purity", "iou")
PURE_CELL = 0.9
"""A cell counts as pure when at least this share of its masked pixels is one class."""
IOU_MIN = 0.8
"""A cell's mask fits its phase when their IoU reaches this."""
TARGETS = {"area_in_real_range": 0.8, "peak_in_real_range": 0.8, "pure_cells": 0.9, "iou_median": IOU_MIN}
"""Targets at the quick budget (issue 15): shares of generated cells inside the real cells'
5-95 % range of area and of peak phase, share of pure cells, median mask vs proposal IoU."""


def _mask_agreement(instances: np.ndarray, labels: np.ndarray, *, region_px: int) -> pd.DataFrame:
    """Per proposal id: majority mask class, purity, and IoU of the proposal with the masked
    pixels of its region (the proposal grown by ``region_px``, split between neighbours)."""
    n = int(instances.max(initial=0))
    ids = np.arange(1, n + 1)
    votes = np.zeros((n + 1, len(CLASS_NAMES)), np.int64)
    np.add.at(votes, (instances.ravel(), labels.ravel()), 1)
    cell_votes = votes[1:, 1:]                                    # classes 1.. (masked pixels)
    masked = cell_votes.sum(axis=1)
    majority = np.where(masked > 0, cell_votes.argmax(axis=1) + 1, 0)
    purity = np.where(masked > 0, cell_votes.max(axis=1) / np.maximum(masked, 1), 0.0)
    # the mask's share of the cell: masked pixels of the cell's own region (every pixel goes
    # to the nearest proposal within reach), so that touching cells are told apart
    region = expand_labels(instances, distance=region_px)
    size_p = np.bincount(instances.ravel(), minlength=n + 1)[1:]
    size_m = np.bincount(region.ravel(), weights=(labels > 0).ravel(), minlength=n + 1)[1:]
    inter = np.bincount(instances.ravel(), weights=(labels > 0).ravel(), minlength=n + 1)[1:]
    iou = inter / np.maximum(size_p + size_m - inter, 1)
    return pd.DataFrame({"cell_id": ids, "class_name": [CLASS_NAMES[int(c)] for c in majority],
                         "purity": purity, "iou": iou})


def cell_table(phases: np.ndarray, labels: np.ndarray, *, pixel_size_m: float,
               threshold_rad: float = CELL_THRESHOLD_RAD, min_area_um2: float = 8.0,
               region_um: float = 1.5) -> pd.DataFrame:
    """Cells of phase patches with their class masks.

    Parameters
    ----------
    phases : numpy.ndarray
        (n, H, W) phase patches [rad].
    labels : numpy.ndarray
        (n, H, W) class masks 0..4.
    pixel_size_m : float
        Pixel size [m].
    threshold_rad : float, optional
        Cell threshold of the cell finder [rad], default
        :data:`rbclib.synth.scores.CELL_THRESHOLD_RAD`.
    min_area_um2 : float, optional
        Smaller objects (platelets, specks: the proposals' ``tiny`` flag) are left out
        [um^2]; default 8.
    region_um : float, optional
        How far a cell's region for the IoU reaches beyond its proposal [um], default 1.5.

    Returns
    -------
    pandas.DataFrame
        One row per cell neither cut by the patch border nor under ``min_area_um2``,
        columns :data:`CELL_TABLE_COLUMNS` (``patch`` is the index in ``phases``).
    """
    optics = Optics().replace(pixel_size_m=pixel_size_m)
    region_px = int(round(region_um * 1e-6 / pixel_size_m))
    frames = []
    for i, (phase, mask) in enumerate(zip(np.asarray(phases, np.float32), np.asarray(labels))):
        found = propose_cells(phase, threshold_rad=threshold_rad, pixel_size_m=pixel_size_m,
                              min_area_um2=min_area_um2)
        inst = found.instances
        if not inst.any():
            continue
        stats = cell_statistics(phase, inst, optics=optics).drop(columns=["class_name", "touches_edge"])
        shape = pd.DataFrame(regionprops_table(inst, properties=("label", "eccentricity"))).rename(
            columns={"label": "cell_id"})
        cells = (stats.merge(shape, on="cell_id").merge(found.flags, on="cell_id")
                 .merge(_mask_agreement(inst, mask.astype(np.intp), region_px=region_px), on="cell_id"))
        frames.append(cells[~cells["touches_edge"] & ~cells["tiny"]].assign(patch=i))
    if not frames:
        return pd.DataFrame(columns=list(CELL_TABLE_COLUMNS))
    return pd.concat(frames, ignore_index=True)[list(CELL_TABLE_COLUMNS)]


RANGE_FEATURES = ("area_um2", "peak_phase_rad")


def real_ranges(real: pd.DataFrame) -> dict[str, dict[str, tuple[float, float]]]:
    """The real cells' 5-95 % ranges of :data:`RANGE_FEATURES`.

    Objects the mask calls background (debris, platelets) are not cells and are left out.

    Parameters
    ----------
    real : pandas.DataFrame
        The real cells, a :func:`cell_table`.

    Returns
    -------
    dict[str, dict[str, tuple of (float, float)]]
        Class name (and ``overall``) -> {feature: (low, high)}; a class with fewer than 5
        real cells takes the overall range. Empty without real cells.
    """
    real = real[real["class_name"] != CLASS_NAMES[0]]
    if not len(real):
        return {}

    def span(frame: pd.DataFrame) -> dict[str, tuple[float, float]]:
        return {f: tuple(float(v) for v in np.nanpercentile(frame[f].astype(float), [5, 95])) for f in RANGE_FEATURES}

    overall = span(real)
    out = {name: span(group) if len(group) >= 5 else overall for name, group in real.groupby("class_name")}
    return {**{name: out.get(name, overall) for name in CELL_CLASS_NAMES}, "overall": overall}


def cell_passes(cells: pd.DataFrame, ranges: dict[str, dict[str, tuple[float, float]]]) -> np.ndarray:
    """Which cells look like real ones.

    Parameters
    ----------
    cells : pandas.DataFrame
        A :func:`cell_table`.
    ranges : dict[str, dict[str, tuple of (float, float)]]
        The real cells' :func:`real_ranges`.

    Returns
    -------
    numpy.ndarray
        (len(cells),) bool: area and peak phase inside the real range of its class,
        purity >= :data:`PURE_CELL` and IoU >= :data:`IOU_MIN`.
    """
    ok = (cells["purity"].to_numpy(float) >= PURE_CELL) & (cells["iou"].to_numpy(float) >= IOU_MIN)
    for j, name in enumerate(cells["class_name"]):
        limits = ranges.get(name) if name != CLASS_NAMES[0] else None
        ok[j] &= limits is not None and all(limits[f][0] <= float(cells[f].iloc[j]) <= limits[f][1]
                                            for f in RANGE_FEATURES)
    return ok


def cell_quality(cells: pd.DataFrame, ranges: dict[str, dict[str, tuple[float, float]]]) -> float:
    """Share of the whole cells of one pair that pass :func:`cell_passes`.

    Parameters
    ----------
    cells : pandas.DataFrame
        The :func:`cell_table` of one pair.
    ranges : dict[str, dict[str, tuple of (float, float)]]
        The real cells' :func:`real_ranges`.

    Returns
    -------
    float
        The share in [0, 1]; 0 without any cell.
    """
    return float(cell_passes(cells, ranges).mean()) if len(cells) else 0.0


def _share_inside(values: pd.Series, limits: dict[str, tuple[float, float]] | None, feature: str) -> float:
    """Share of ``values`` inside ``limits[feature]`` (nan without values or limits)."""
    if not len(values) or limits is None:
        return float("nan")
    lo, hi = limits[feature]
    return float(values.between(lo, hi).mean())


def _iqr(values: pd.Series) -> float:
    """Interquartile range of ``values``."""
    q1, q3 = np.nanpercentile(values.astype(float), [25, 75])
    return float(q3 - q1)


def morphology_score(real: pd.DataFrame, generated: pd.DataFrame) -> pd.DataFrame:
    """Generated cells against real cells, per class of the generated cells and ``overall``.

    Real objects the mask calls background, debris and platelets, are left out.

    Parameters
    ----------
    real, generated : pandas.DataFrame
        Two :func:`cell_table` results.

    Returns
    -------
    pandas.DataFrame
        Index ``class_name``: one row per class of the generated cells (their mask's class)
        and ``overall``. Columns: ``n_generated``, ``n_real``; ``area_in_real_range`` /
        ``peak_in_real_range`` (share of generated cells inside the real cells' 5-95 % range
        of that class, or of all real cells for ``overall`` and for a class with fewer than 5
        real cells); ``pure_cells`` (share with purity >= :data:`PURE_CELL`); ``iou_median``;
        the medians of :data:`SHAPE_FEATURES` as ``<feature>_generated`` / ``<feature>_real``;
        ``area_spread_ratio`` / ``peak_spread_ratio``: the generated cells' interquartile
        range of area / peak phase over the real cells' (1: as varied as real cells; near 0:
        the same cell drawn again and again, which the range shares above do not see);
        ``meets_targets`` (every :data:`TARGETS` share met; ``overall`` only).
    """
    ranges = real_ranges(real)
    real = real[real["class_name"] != CLASS_NAMES[0]]           # debris and platelets: not cells
    rows = []
    groups = [(name, generated[generated["class_name"] == name]) for name in sorted(set(generated["class_name"]))]
    for name, gen in [*groups, ("overall", generated)]:
        ref = real[real["class_name"] == name] if name != "overall" else real
        if len(ref) < 5:
            ref = real
        limits = ranges.get(name, ranges.get("overall"))
        row = {"class_name": name, "n_generated": len(gen), "n_real": len(ref),
               "area_in_real_range": _share_inside(gen["area_um2"], limits, "area_um2"),
               "peak_in_real_range": _share_inside(gen["peak_phase_rad"], limits, "peak_phase_rad"),
               "pure_cells": float((gen["purity"] >= PURE_CELL).mean()) if len(gen) else float("nan"),
               "iou_median": float(gen["iou"].median()) if len(gen) else float("nan")}
        for f in SHAPE_FEATURES:
            row[f"{f}_generated"] = float(gen[f].median()) if len(gen) else float("nan")
            row[f"{f}_real"] = float(ref[f].median()) if len(ref) else float("nan")
        for short, f in (("area", "area_um2"), ("peak", "peak_phase_rad")):
            real_iqr = _iqr(ref[f]) if len(ref) else float("nan")
            row[f"{short}_spread_ratio"] = _iqr(gen[f]) / real_iqr if len(gen) and real_iqr > 0 else float("nan")
        rows.append(row)
    table = pd.DataFrame(rows).set_index("class_name")
    table["meets_targets"] = False
    overall = table.loc["overall"]
    table.loc["overall", "meets_targets"] = bool(all(overall[k] >= v for k, v in TARGETS.items()))
    return table

"""Per-cell physical measurements from a phase map and an instance map (the equations below).

From the phase phi [rad] over a cell's mask M (pixel area dA):
OPD = lambda * phi / (2 pi); optical volume OV = sum_M OPD dA; dry mass m = OV / alpha.
Thickness h = OPD / dn, volume V = OV / dn and the surface-based quantities need an
assumed index difference dn = n_cell - n_medium; the table records it in ``df.attrs``.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.measure import regionprops_table

from rbclib.core.config import Optics
from rbclib.core.labels import CLASS_NAMES, check_labels, instance_classes

CENTRAL_DISC_FRACTION = 0.25  # radius of the central disc (fraction of the equivalent radius)

MEASUREMENT_COLUMNS: tuple[str, ...] = (
    "cell_id", "centroid_y_px", "centroid_x_px", "area_px", "area_um2", "equivalent_diameter_um",
    "perimeter_um", "phase_mean_rad", "phase_max_rad", "optical_volume_um3", "dry_mass_pg",
    "thickness_mean_um", "thickness_max_um", "volume_um3", "surface_area_um2", "sphericity",
    "circularity", "solidity", "eccentricity", "central_dip_ratio", "touches_edge",
)


def _mesh_area(z: np.ndarray, step: float) -> float:
    """Area of the height field ``z`` sampled on a grid of spacing ``step`` (two triangles per square)."""
    a, b, c, e = z[:-1, :-1], z[:-1, 1:], z[1:, :-1], z[1:, 1:]
    t1 = np.sqrt((step * (b - a)) ** 2 + (step * (c - a)) ** 2 + step ** 4)
    t2 = np.sqrt((step * (c - e)) ** 2 + (step * (b - e)) ** 2 + step ** 4)
    return float(0.5 * (t1 + t2).sum())


def measure_cells(phase: np.ndarray, instances: np.ndarray, *, optics: Optics,
                  labels: np.ndarray | None = None) -> pd.DataFrame:
    """One row per instance id (> 0) with the columns of ``MEASUREMENT_COLUMNS``.

    Units are in the column names. Thickness, volume, surface area and sphericity assume
    dn = ``optics.delta_n`` (recorded in ``df.attrs``). Surface area: the cell is taken as
    symmetric about its mid-plane, S = 2 x the area of the triangulated height field h/2
    over the mask including its drop to 0 at the rim (a sphere gives 4 pi R^2 within 1.5 %
    for R >= 2 um), sphericity = pi^(1/3) (6 V)^(2/3) / S (1 for a sphere). Circularity
    4 pi A / P^2 (Crofton perimeter); central-dip ratio = mean phase in a central disc (radius 0.25 of the
    equivalent radius around the centroid) / max phase (about 1 for a spherocyte, < 1 for
    a biconcave discocyte); ``touches_edge``: the mask reaches the image border.

    Parameters
    ----------
    phase : numpy.ndarray
        (H, W) float phase [rad], medium 0.
    instances : numpy.ndarray
        (H, W) integer ids, 0 background.
    optics : rbclib.core.config.Optics
        Wavelength, pixel size, alpha and the assumed n_cell - n_medium.
    labels : numpy.ndarray, optional
        (H, W) class map 0..4; adds ``class_id``/``class_name`` (majority).

    Returns
    -------
    pandas.DataFrame
        One row per cell, the columns of ``MEASUREMENT_COLUMNS`` (plus ``class_id``,
        ``class_name`` with ``labels``); empty with those columns when there is no cell.

    Raises
    ------
    ValueError
        When a map is not 2-D, the shapes differ, the ids are not non-negative integers or
        the phase is not finite.

    Notes
    -----
    Long because the 21 columns come from one ``regionprops_table`` pass and share its
    per-cell intermediates (phase sums, optical volume, dn, the cell's mask for surface and
    central dip); a third of the lines are the input checks and the column table itself.
    """
    phase = np.asarray(phase)
    if not np.issubdtype(phase.dtype, np.floating):
        phase = phase.astype(np.float64)
    inst = np.asarray(instances)
    if phase.ndim != 2:
        raise ValueError(f"phase must be a 2-D map, got shape {phase.shape}")
    if inst.shape != phase.shape:
        raise ValueError(f"phase {phase.shape} and instance map {inst.shape} differ in shape")
    if not np.issubdtype(inst.dtype, np.integer):
        raise ValueError(f"instance map must hold integer ids, got {inst.dtype}")
    if inst.size and inst.min() < 0:
        raise ValueError("instance map holds negative ids")
    if not np.all(np.isfinite(phase)):
        raise ValueError("phase holds NaN or infinite values")
    if labels is not None:
        labels = check_labels(labels, source="class map")
        if labels.shape != phase.shape:
            raise ValueError(f"phase {phase.shape} and class map {labels.shape} differ in shape")
    inst = inst.astype(np.int32, copy=False)
    dn = optics.delta_n
    px_um = optics.pixel_size_m * 1e6
    da_um2 = px_um ** 2
    um_per_rad = (optics.wavelength_m * 1e6) / (2 * math.pi)  # optical path difference per radian
    attrs = {"delta_n_assumed": dn, "n_cell_assumed": optics.n_cell, "n_medium": optics.n_medium,
             "wavelength_m": optics.wavelength_m, "pixel_size_m": optics.pixel_size_m,
             "alpha_m3_per_kg": optics.alpha_m3_per_kg,
             "note": "thickness_*, volume_um3, surface_area_um2 and sphericity assume delta_n_assumed"}
    if not inst.any():
        frame = pd.DataFrame({c: pd.Series(dtype=float) for c in MEASUREMENT_COLUMNS})
        if labels is not None:
            frame["class_id"], frame["class_name"] = pd.Series(dtype=int), pd.Series(dtype=str)
        frame.attrs.update(attrs)
        return frame

    props = regionprops_table(inst, intensity_image=phase, properties=(
        "label", "area", "centroid", "equivalent_diameter_area", "perimeter_crofton", "solidity", "eccentricity",
        "intensity_max", "bbox", "image", "image_intensity"))
    ids = props["label"].astype(int)
    area_px = props["area"].astype(float)
    # per-cell sums in float64 (bincount), with no whole-image float64 copy of the phase
    phase_sum = ndi.sum_labels(phase, inst, ids)
    phase_mean = phase_sum / area_px
    ov_um3 = phase_sum * um_per_rad * da_um2
    h, w = inst.shape
    surface, dip = np.empty(ids.size), np.empty(ids.size)
    for k in range(ids.size):
        mask = props["image"][k]
        cell_phase = props["image_intensity"][k].astype(np.float64)
        half_h = np.pad(np.where(mask, cell_phase, 0.0), 1) * um_per_rad / dn / 2
        planar = (half_h.shape[0] - 1) * (half_h.shape[1] - 1) * da_um2
        surface[k] = 2.0 * (_mesh_area(half_h, px_um) - planar + area_px[k] * da_um2)
        r_eq = math.sqrt(area_px[k] / math.pi)
        yy, xx = np.nonzero(mask)
        cy, cx = yy.mean(), xx.mean()
        central = (yy - cy) ** 2 + (xx - cx) ** 2 <= (CENTRAL_DISC_FRACTION * r_eq) ** 2
        vals = cell_phase[yy, xx]
        peak = vals.max()
        dip[k] = float(vals[central].mean() / peak) if central.any() and peak > 0 else math.nan
    touches = ((props["bbox-0"] == 0) | (props["bbox-1"] == 0) | (props["bbox-2"] == h) | (props["bbox-3"] == w))
    volume = ov_um3 / dn
    perimeter_um = props["perimeter_crofton"] * px_um
    with np.errstate(divide="ignore", invalid="ignore"):
        sphericity = np.where(surface > 0, math.pi ** (1 / 3) * np.cbrt(6 * np.maximum(volume, 0)) ** 2 / surface, np.nan)
        circularity = np.where(perimeter_um > 0, 4 * math.pi * area_px * da_um2 / perimeter_um ** 2, np.nan)
    frame = pd.DataFrame({
        "cell_id": ids,
        "centroid_y_px": props["centroid-0"],
        "centroid_x_px": props["centroid-1"],
        "area_px": area_px.astype(int),
        "area_um2": area_px * da_um2,
        "equivalent_diameter_um": props["equivalent_diameter_area"] * px_um,
        "perimeter_um": perimeter_um,
        "phase_mean_rad": phase_mean,
        "phase_max_rad": props["intensity_max"].astype(np.float64),
        "optical_volume_um3": ov_um3,
        "dry_mass_pg": ov_um3 * 1e-18 / optics.alpha_m3_per_kg * 1e15,
        "thickness_mean_um": phase_mean * um_per_rad / dn,
        "thickness_max_um": props["intensity_max"].astype(np.float64) * um_per_rad / dn,
        "volume_um3": volume,
        "surface_area_um2": surface,
        "sphericity": sphericity,
        "circularity": circularity,
        "solidity": props["solidity"],
        "eccentricity": props["eccentricity"],
        "central_dip_ratio": dip,
        "touches_edge": touches.astype(bool),
    })
    if labels is not None:
        cls = instance_classes(labels, inst)
        frame["class_id"] = [cls.get(int(i), 0) for i in ids]
        frame["class_name"] = [CLASS_NAMES[c] for c in frame["class_id"]]
    frame.attrs.update(attrs)
    return frame


def compare_with_truth(measured: pd.DataFrame, truth: pd.DataFrame, *, n_medium: float) -> pd.DataFrame:
    """Relative errors of measured cells against simulator truth (both keyed by ``image``, ``cell_id``).

    Parameters
    ----------
    measured : pandas.DataFrame
        :func:`measure_cells` table with an ``image`` column; its ``attrs`` hold the assumed dn.
    truth : pandas.DataFrame
        The simulator's cell table (``volume_um3``, ``dry_mass_pg``, ``n_cell``, ``touching``).
    n_medium : float
        Refractive index of the medium.

    Returns
    -------
    pandas.DataFrame
        One row per matched cell with ``dry_mass_rel_err``, ``volume_rel_err`` (under the
        assumed dn of ``measured.attrs``) and ``volume_true_dn_rel_err`` (optical volume divided
        by the cell's true n_cell - n_medium).
    """
    m = measured.merge(truth[["image", "cell_id", "volume_um3", "dry_mass_pg", "n_cell", "touching"]],
                       on=["image", "cell_id"], suffixes=("", "_true"))
    return pd.DataFrame({
        "image": m["image"], "cell_id": m["cell_id"], "class_name": m.get("class_name"),
        "touching": m["touching"].astype(bool), "touches_edge": m["touches_edge"].astype(bool),
        "dry_mass_rel_err": m["dry_mass_pg"] / m["dry_mass_pg_true"] - 1,
        "volume_rel_err": m["volume_um3"] / m["volume_um3_true"] - 1,
        "volume_true_dn_rel_err": m["optical_volume_um3"] / (m["n_cell"] - n_medium) / m["volume_um3_true"] - 1,
    })

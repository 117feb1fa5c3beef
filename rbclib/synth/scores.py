"""How good are the DDGAN generators? Distribution distance, class composition, consistency.

Distance between generated and real phase patches: a Frechet distance (the FID formula)
on a vector of physically meaningful patch features, each standardised by the real
patches' spread. Why not FID itself: FID needs an ImageNet Inception network (downloaded
weights, colour photographs, 299 px), none of which fits quantitative phase. The features
used here are the ones a haematologist would check: the phase-value distribution
(quantiles, in rad), the cell-covered area, the mean phase over cells (dry-mass density),
edge sharpness (gradient), texture (Laplacian energy) and the number and size of cell
blobs. The distance is reported beside two references measured in the same call:
real-vs-real (two halves of the real patches: the floor from sampling noise) and
real-vs-blurred-noise (a trivial generator matched in mean and spread: the ceiling).
Features are standardised by the real patches' spread, floored at ``FEATURE_FLOORS``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import linalg
from scipy import ndimage as ndi

from rbclib.seg.datasets import CropPicker
from rbclib.core.labels import CELL_CLASSES, CLASS_NAMES, N_CLASSES, border_cut_cells, instances_from_labels

FEATURE_NAMES = ("q10_rad", "q50_rad", "q90_rad", "q99_rad", "std_rad", "cell_area_frac",
                 "cell_mean_rad", "grad_mean_rad_px", "laplace_energy", "n_blobs", "mean_blob_px")
# Smallest spread used to standardise each feature (its measurement resolution: ~0.05 rad
# phase noise, 2 % area, half a blob, ...), so a feature that is constant in the real set
# (e.g. an exactly flat simulated background) cannot blow the distance up.
FEATURE_FLOORS = (0.05, 0.05, 0.05, 0.05, 0.05, 0.02, 0.05, 0.005, 1e-4, 0.5, 20.0)
CELL_THRESHOLD_RAD = 0.3  # phase above which a pixel counts as cell (medium is 0 rad)


def patch_features(phase: np.ndarray, *, threshold_rad: float = CELL_THRESHOLD_RAD) -> np.ndarray:
    """Physical features of phase patches (:data:`FEATURE_NAMES`).

    Parameters
    ----------
    phase : numpy.ndarray
        (n, H, W) phase [rad].
    threshold_rad : float, optional
        Phase above which a (smoothed) pixel counts as cell [rad], default :data:`CELL_THRESHOLD_RAD`.

    Returns
    -------
    numpy.ndarray
        (n, len(FEATURE_NAMES)) float64 features.
    """
    out = []
    for p in np.asarray(phase, dtype=np.float64):
        smooth = ndi.gaussian_filter(p, 1.0)
        cell = smooth > threshold_rad
        blobs, n_blobs = ndi.label(cell)
        gy, gx = np.gradient(smooth)
        q = np.quantile(p, [0.1, 0.5, 0.9, 0.99])
        out.append([*q, p.std(), cell.mean(), p[cell].mean() if cell.any() else 0.0,
                    np.hypot(gy, gx).mean(), np.mean(ndi.laplace(smooth) ** 2), n_blobs,
                    cell.sum() / n_blobs if n_blobs else 0.0])
    return np.asarray(out, dtype=np.float64).reshape(-1, len(FEATURE_NAMES))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two samples.

    Parameters
    ----------
    a, b : numpy.ndarray
        (n, d) samples (n may differ).

    Returns
    -------
    float
        The Frechet distance (1e-6 is added to the covariances' diagonal for the square root).
    """
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    eps = 1e-6 * np.eye(len(s_a))
    covmean = linalg.sqrtm((s_a + eps) @ (s_b + eps))
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(s_a + s_b - 2.0 * np.real(covmean)))


def phase_distribution_distance(real: np.ndarray, generated: np.ndarray, *, seed: int,
                                threshold_rad: float = CELL_THRESHOLD_RAD) -> dict[str, float]:
    """Feature Frechet distance of generated vs real phase patches [rad], with floor and ceiling.

    Parameters
    ----------
    real : numpy.ndarray
        (n, H, W) real phase patches [rad], n >= 4.
    generated : numpy.ndarray
        (m, H, W) generated phase patches [rad], m >= 2.
    seed : int
        Seed of the blurred noise and the split into halves.
    threshold_rad : float, optional
        Phase above which a (smoothed) pixel counts as cell [rad], default :data:`CELL_THRESHOLD_RAD`.

    Returns
    -------
    dict[str, float]
        fd_generated, fd_real_halves (floor), fd_blurred_noise (ceiling), ``relative`` =
        (fd_generated - floor) / (ceiling - floor): 0 is as close as real data to itself, 1
        as far as blurred noise; and n_real, n_generated.

    Raises
    ------
    ValueError
        With fewer than 4 real or 2 generated patches.
    """
    real, generated = np.asarray(real, np.float32), np.asarray(generated, np.float32)
    if len(real) < 4 or len(generated) < 2:
        raise ValueError(f"need >= 4 real and >= 2 generated patches, got {len(real)} and {len(generated)}")
    rng = np.random.default_rng(seed)
    fr = patch_features(real, threshold_rad=threshold_rad)
    mu, sd = fr.mean(0), np.maximum(fr.std(0), FEATURE_FLOORS)
    z = lambda f: (f - mu) / sd  # noqa: E731
    noise = ndi.gaussian_filter(rng.standard_normal(real.shape), (0, 3, 3))
    noise = (noise - noise.mean()) / (noise.std() + 1e-12) * real.std() + real.mean()
    perm = rng.permutation(len(real))
    half = len(real) // 2
    floor = frechet_distance(z(fr[perm[:half]]), z(fr[perm[half:]]))
    ceiling = frechet_distance(z(fr), z(patch_features(noise, threshold_rad=threshold_rad)))
    fd = frechet_distance(z(fr), z(patch_features(generated, threshold_rad=threshold_rad)))
    return {"fd_generated": fd, "fd_real_halves": floor, "fd_blurred_noise": ceiling,
            "relative": (fd - floor) / max(ceiling - floor, 1e-12), "n_real": float(len(real)),
            "n_generated": float(len(generated))}


def mask_counts(labels: np.ndarray) -> dict[str, float]:
    """Cell counts and pixel fractions of one mask.

    Parameters
    ----------
    labels : numpy.ndarray
        (H, W) class map 0..4.

    Returns
    -------
    dict[str, float]
        Cells (connected components) per cell class (``n_<class>``), those of them not cut
        by the border (``n_whole_<class>``, :func:`rbclib.core.labels.border_cut_cells`) and
        the pixel fraction per class (``frac_<class>``).
    """
    labels = np.asarray(labels)
    inst = instances_from_labels(labels)
    cut = set(np.unique(inst[border_cut_cells(labels)]).tolist())
    out: dict[str, float] = {}
    ids = np.unique(inst[inst > 0])
    cls_of = {int(i): int(np.bincount(labels[inst == i], minlength=N_CLASSES).argmax()) for i in ids}
    for c in CELL_CLASSES:
        out[f"n_{CLASS_NAMES[c]}"] = float(sum(1 for v in cls_of.values() if v == c))
    for c in CELL_CLASSES:
        out[f"n_whole_{CLASS_NAMES[c]}"] = float(sum(1 for i, v in cls_of.items() if v == c and i not in cut))
    for c in range(N_CLASSES):
        out[f"frac_{CLASS_NAMES[c]}"] = float(np.mean(labels == c))
    return out


def class_composition(labels: np.ndarray) -> pd.DataFrame:
    """Per class over a stack of masks: cells, share of cells, pixel fraction, masks containing it.

    Parameters
    ----------
    labels : numpy.ndarray
        (n, H, W) class maps 0..4.

    Returns
    -------
    pandas.DataFrame
        One row per class (background included), columns class, cells, cell_share,
        pixel_fraction, masks_with_class (NaN for background except the pixel fraction).
    """
    per = pd.DataFrame([mask_counts(m) for m in labels])
    total_cells = sum(per[f"n_{CLASS_NAMES[c]}"].sum() for c in CELL_CLASSES)
    rows = []
    for c in range(N_CLASSES):
        name = CLASS_NAMES[c]
        n = per[f"n_{name}"].sum() if c in CELL_CLASSES else np.nan
        rows.append({"class": name, "cells": n,
                     "cell_share": n / total_cells if c in CELL_CLASSES and total_cells else np.nan,
                     "pixel_fraction": per[f"frac_{name}"].mean(),
                     "masks_with_class": int((per[f"n_{name}"] > 0).sum()) if c in CELL_CLASSES else np.nan})
    return pd.DataFrame(rows)


def class_purity(labels: np.ndarray) -> float:
    """Share of cell pixels carrying the majority class of their cell blob.

    Parameters
    ----------
    labels : numpy.ndarray
        (H, W) class map 0..4; a blob is an 8-connected component of labels > 0.

    Returns
    -------
    float
        1 when every blob holds one class, as a real cell does; lower for the mixed-class
        blobs a poorly trained mask generator draws. 1 without cells.
    """
    labels = np.asarray(labels)
    blobs, n = ndi.label(labels > 0, structure=np.ones((3, 3), bool))
    if n == 0:
        return 1.0
    votes = np.zeros((n + 1, int(labels.max()) + 1), np.int64)
    np.add.at(votes, (blobs.ravel(), labels.ravel()), 1)
    return float(votes[1:].max(axis=1).sum() / (labels > 0).sum())


def consistency_score(phase: np.ndarray, labels: np.ndarray, *, threshold_rad: float = CELL_THRESHOLD_RAD) -> float:
    """Agreement of a mask with its phase and with itself, in [0, 1]: the Dice of
    (labels > 0) vs (smoothed phase > threshold) times :func:`class_purity`.

    1: cells exactly where the phase rises above the medium, one class per cell; 0: none.
    A patch with neither cells nor raised phase scores 1. Used to reject broken generated
    pairs. (Touching real cells of different classes lower the purity a little: 95 % of
    real quick-profile patches score purity >= 0.62, 90 % exactly 1.)

    Parameters
    ----------
    phase : numpy.ndarray
        (H, W) phase [rad].
    labels : numpy.ndarray
        (H, W) class map 0..4.
    threshold_rad : float, optional
        Phase above which a (smoothed) pixel counts as cell [rad], default :data:`CELL_THRESHOLD_RAD`.

    Returns
    -------
    float
        The score in [0, 1].
    """
    cell_phase = ndi.gaussian_filter(np.asarray(phase, np.float64), 1.0) > threshold_rad
    cell_mask = np.asarray(labels) > 0
    denom = cell_phase.sum() + cell_mask.sum()
    dice = 1.0 if denom == 0 else float(2.0 * np.logical_and(cell_phase, cell_mask).sum() / denom)
    return dice * class_purity(labels)


def real_patches(phases: list[np.ndarray], labels: list[np.ndarray], *, patch_px: int, n: int, seed: int,
                 cell_fraction: float = 0.9, class_balanced: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """n real patches cropped the way the DDGAN saw them in training (no rotation).

    Parameters
    ----------
    phases : list of numpy.ndarray
        (H, W) real phase fields [rad].
    labels : list of numpy.ndarray
        (H, W) their class maps 0..4.
    patch_px : int
        Patch side [px].
    n : int
        Number of patches.
    seed : int
        Seed of the crop positions.
    cell_fraction : float, optional
        Share of crops centred on a cell (:class:`rbclib.seg.datasets.CropPicker`), default 0.9.
    class_balanced : bool, optional
        Draw the cell class uniformly, default True.

    Returns
    -------
    phase : numpy.ndarray
        (n, patch_px, patch_px) float32 phase [rad].
    labels : numpy.ndarray
        (n, patch_px, patch_px) uint8 class maps.
    """
    rng = np.random.default_rng(seed)
    picker = CropPicker(labels, cell_fraction=cell_fraction, class_balanced=class_balanced)
    ph, lab = [], []
    for _ in range(n):
        i, y, x = picker.pick(rng, patch_px)
        ph.append(phases[i][y:y + patch_px, x:x + patch_px])
        lab.append(labels[i][y:y + patch_px, x:x + patch_px])
    return np.stack(ph).astype(np.float32), np.stack(lab).astype(np.uint8)

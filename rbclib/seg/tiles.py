"""Cutting images into square patches and blending patch predictions back together.

Two layouts:
- ``"paper"``: the paper's non-overlapping grid from the top-left corner, floor(H/patch) x
  floor(W/patch) patches (3 x 3 of 256 px in a 900 x 900 image, covering only 768 x 768);
- ``"cover"``: overlapping tiles, evenly spaced, whose union is the whole image (at least
  ``overlap`` px shared by neighbours). Images smaller than a tile are padded first with
  :func:`pad_to_min` (by the caller); :func:`tile_positions` refuses them with a clear error.
Positions are (y, x) of the top-left corner, in pixels.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np

Mode = Literal["paper", "cover"]


def _axis_positions(length: int, patch: int, overlap: int) -> list[int]:
    if length == patch:
        return [0]
    n = math.ceil((length - overlap) / (patch - overlap))
    n = max(n, 2)
    return [int(round(v)) for v in np.linspace(0, length - patch, n)]


def tile_positions(shape: tuple[int, ...], patch: int, overlap: int = 32) -> list[tuple[int, int]]:
    """Top-left corners of overlapping ``patch`` x ``patch`` tiles covering a 2-D ``shape``.

    Neighbouring tiles share at least ``overlap`` px; the last tile ends at the border.

    Parameters
    ----------
    shape : tuple of int
        Image shape; the first two entries (H, W) [px] are used.
    patch : int
        Tile side [px].
    overlap : int, optional
        Minimum overlap of neighbouring tiles [px], in [0, patch); default 32.

    Returns
    -------
    list of tuple of (int, int)
        (y, x) top-left corners [px].

    Raises
    ------
    ValueError
        When ``overlap`` is outside [0, patch) or the image is smaller than a tile (pad it first).
    """
    h, w = int(shape[0]), int(shape[1])
    if not 0 <= overlap < patch:
        raise ValueError(f"overlap must be in [0, patch={patch}), got {overlap}")
    if h < patch or w < patch:
        raise ValueError(f"image of {h} x {w} px is smaller than a {patch} x {patch} tile; pad it (tiles.pad_to_min) or use a smaller tile")
    return [(y, x) for y in _axis_positions(h, patch, overlap) for x in _axis_positions(w, patch, overlap)]


def paper_positions(shape: tuple[int, ...], patch: int = 256) -> list[tuple[int, int]]:
    """The paper's non-overlapping grid: floor(H/patch) x floor(W/patch) tiles from (0, 0).

    Parameters
    ----------
    shape : tuple of int
        Image shape; the first two entries (H, W) [px] are used.
    patch : int, optional
        Tile side [px], default 256.

    Returns
    -------
    list of tuple of (int, int)
        (y, x) top-left corners [px], row by row.

    Raises
    ------
    ValueError
        When the image is smaller than one patch.
    """
    h, w = int(shape[0]), int(shape[1])
    if h < patch or w < patch:
        raise ValueError(f"image of {h} x {w} px is smaller than one {patch} x {patch} patch of the paper's protocol")
    return [(y, x) for y in range(0, h - patch + 1, patch) for x in range(0, w - patch + 1, patch)]


def pad_to_min(image: np.ndarray, size: int, *, value: float = 0.0) -> np.ndarray:
    """Pad the first two axes at the bottom/right up to at least ``size`` px.

    Parameters
    ----------
    image : numpy.ndarray
        (H, W[, ...]) array.
    size : int
        Minimum height and width [px].
    value : float, optional
        Constant fill: 0 rad is the medium for phase, 0 is background for labels; default 0.

    Returns
    -------
    numpy.ndarray
        The padded array, or ``image`` itself when it is already large enough.
    """
    h, w = image.shape[:2]
    ph, pw = max(0, size - h), max(0, size - w)
    if not (ph or pw):
        return image
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, pad, mode="constant", constant_values=value)


def extract_patches(image: np.ndarray, patch: int = 256, *, mode: Mode = "paper",
                    overlap: int = 32) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Cut ``image`` into patches.

    Parameters
    ----------
    image : numpy.ndarray
        (H, W[, ...]) array.
    patch : int, optional
        Patch side [px], default 256.
    mode : {"paper", "cover"}, optional
        ``"paper"`` (default): non-overlapping grid, 3 x 3 of 256 px patches in a 900 px
        image (:func:`paper_positions`); ``"cover"``: overlapping tiles covering the whole
        image (:func:`tile_positions`).
    overlap : int, optional
        Minimum overlap of neighbouring tiles in ``"cover"`` mode [px], default 32.

    Returns
    -------
    patches : numpy.ndarray
        (N, patch, patch[, ...]) array.
    positions : list of tuple of (int, int)
        (y, x) top-left positions [px].

    Raises
    ------
    ValueError
        On an unknown ``mode``, or an image too small for the layout.
    """
    if mode == "paper":
        pos = paper_positions(image.shape, patch)
    elif mode == "cover":
        pos = tile_positions(image.shape, patch, overlap)
    else:
        raise ValueError(f"unknown patch mode {mode!r}; use 'paper' or 'cover'")
    return np.stack([image[y:y + patch, x:x + patch] for y, x in pos]), pos


def blend_window(patch: int, overlap: int) -> np.ndarray:
    """Weights for blending overlapping tiles.

    Parameters
    ----------
    patch : int
        Tile side [px].
    overlap : int
        Width of the linear ramp at each edge [px] (at least 1 is used).

    Returns
    -------
    numpy.ndarray
        (patch, patch) float32 weights: 1 in the centre, falling linearly to ~0 (never 0)
        across the ``overlap`` px at each edge.
    """
    ramp = max(overlap, 1)
    i = np.arange(patch, dtype=np.float32) + 0.5
    w1 = np.minimum(1.0, np.minimum(i, patch - i) / ramp)
    return np.outer(w1, w1).astype(np.float32)


def rotations4(*arrays: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """The x4 rotation augmentation: each of 0, 90, 180, 270 degrees applied to all arrays together.

    Parameters
    ----------
    *arrays : numpy.ndarray
        Arrays rotated in their first two axes.

    Returns
    -------
    list of tuple of numpy.ndarray
        4 tuples (one per angle) of contiguous rotated copies, in the order of ``arrays``.
    """
    return [tuple(np.ascontiguousarray(np.rot90(a, k, axes=(0, 1))) for a in arrays) for k in range(4)]

"""Class ids, names and colours (the paper's), one-hot encoding and instances.

Masks are uint8 class maps 0..4; colours are for display only. Training pairs may also hold
:data:`IGNORE` where their label is not to be learnt.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

BACKGROUND, DISCOCYTE, SPHEROCYTE, ECHINOCYTE, STOMATOCYTE = 0, 1, 2, 3, 4
CLASS_NAMES: dict[int, str] = {
    BACKGROUND: "background",
    DISCOCYTE: "discocyte",
    SPHEROCYTE: "spherocyte",
    ECHINOCYTE: "echinocyte",
    STOMATOCYTE: "stomatocyte",
}
CLASS_IDS: dict[str, int] = {name: cid for cid, name in CLASS_NAMES.items()}
CELL_CLASSES: tuple[int, ...] = (DISCOCYTE, SPHEROCYTE, ECHINOCYTE, STOMATOCYTE)
CELL_CLASS_NAMES: tuple[str, ...] = tuple(CLASS_NAMES[c] for c in CELL_CLASSES)
N_CLASSES = 5
IGNORE = 255
"""Label of pixels left out of the training loss: in curated synthetic pairs, the cells cut by
the patch border (:func:`border_cut_cells`), whose class and shape the patch does not show."""
# Paper colours (RGB 0..1): black, red, blue, green, yellow.
CLASS_COLOURS: dict[int, tuple[float, float, float]] = {
    BACKGROUND: (0.0, 0.0, 0.0),
    DISCOCYTE: (1.0, 0.0, 0.0),
    SPHEROCYTE: (0.0, 0.0, 1.0),
    ECHINOCYTE: (0.0, 0.8, 0.0),
    STOMATOCYTE: (1.0, 1.0, 0.0),
}


def check_labels(labels: np.ndarray, *, source: str = "label map", allow_ignore: bool = False) -> np.ndarray:
    """Return ``labels`` as uint8 after checking it is 2-D with values in 0..4.

    Parameters
    ----------
    labels : numpy.ndarray
        (H, W) class map, integer (or integer-valued) values.
    source : str, optional
        What the map is (e.g. its file), named in the error (default "label map").
    allow_ignore : bool, optional
        Also accept :data:`IGNORE` (training pairs; default False).

    Returns
    -------
    numpy.ndarray
        (H, W) uint8 class map.

    Raises
    ------
    ValueError
        ``labels`` is not 2-D, holds non-integer values or values outside 0..4 (and
        :data:`IGNORE` where ``allow_ignore``).
    """
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"{source}: expected a 2-D class map, got shape {arr.shape}")
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) and not np.issubdtype(arr.dtype, np.bool_)):
        if not np.all(np.mod(arr, 1) == 0):
            raise ValueError(f"{source}: class map holds non-integer values")
    bad_px = (arr < 0) | (arr >= N_CLASSES)
    if allow_ignore:
        bad_px &= arr != IGNORE
    if arr.size and bad_px.any():
        bad = sorted(set(np.unique(arr[bad_px]).tolist()))[:5]
        also = f" or {IGNORE} (ignored in training)" if allow_ignore else ""
        raise ValueError(f"{source}: labels outside 0..{N_CLASSES - 1}{also}: {bad}")
    return arr.astype(np.uint8, copy=False)


def edge_ids(instances: np.ndarray) -> np.ndarray:
    """The instances that reach the image border (cells cut by it).

    Parameters
    ----------
    instances : numpy.ndarray
        (H, W) instance map, 0 background.

    Returns
    -------
    numpy.ndarray
        Sorted ids (> 0) of the instances that reach the first or last row or column.
    """
    inst = np.asarray(instances)
    edge = np.unique(np.concatenate([inst[0], inst[-1], inst[:, 0], inst[:, -1]]))
    return edge[edge > 0]


def border_cut_cells(labels: np.ndarray) -> np.ndarray:
    """The pixels of cells cut by the image border.

    Parameters
    ----------
    labels : numpy.ndarray
        (H, W) class map.

    Returns
    -------
    numpy.ndarray
        (H, W) bool: the 8-connected components of ``labels`` > 0 that reach the first or last
        row or column.
    """
    comp, _ = ndi.label(np.asarray(labels) > 0, structure=np.ones((3, 3), dtype=bool))
    return np.isin(comp, edge_ids(comp))


def to_onehot(labels: np.ndarray, n_classes: int = N_CLASSES) -> np.ndarray:
    """One-hot encoding of a class map.

    Parameters
    ----------
    labels : numpy.ndarray
        (H, W) class map.
    n_classes : int, optional
        Number of classes (default :data:`N_CLASSES`).

    Returns
    -------
    numpy.ndarray
        (n_classes, H, W) float32 one-hot.
    """
    labels = np.asarray(labels)
    return (np.arange(n_classes)[:, None, None] == labels[None]).astype(np.float32)


def colourize(labels: np.ndarray) -> np.ndarray:
    """A class map in the paper's colours.

    Parameters
    ----------
    labels : numpy.ndarray
        (H, W) class map, values 0..4.

    Returns
    -------
    numpy.ndarray
        (H, W, 3) float32 RGB image, values 0..1 (:data:`CLASS_COLOURS`).
    """
    lut = np.array([CLASS_COLOURS[c] for c in range(N_CLASSES)], dtype=np.float32)
    return lut[np.asarray(labels, dtype=np.intp)]


def overlay_rgb(phase: np.ndarray, labels: np.ndarray, *, instances: np.ndarray | None = None,
                alpha: float = 0.4, phase_range: tuple[float, float] | None = None) -> np.ndarray:
    """A phase image in grey with the class map tinted in the paper's colours.

    Parameters
    ----------
    phase : numpy.ndarray
        (H, W) phase [rad].
    labels : numpy.ndarray
        (H, W) class map.
    instances : numpy.ndarray, optional
        (H, W) instance map; given, the cell outlines are drawn in white.
    alpha : float, optional
        Weight of the class colour over the grey in cell pixels (default 0.4).
    phase_range : tuple of (float, float), optional
        (lo, hi) [rad] mapped to black and white (default: the 1st-99.5th percentile of ``phase``).

    Returns
    -------
    numpy.ndarray
        (H, W, 3) uint8 picture.
    """
    from skimage.segmentation import find_boundaries

    phase = np.asarray(phase, dtype=np.float32)
    lo, hi = phase_range or (float(np.percentile(phase, 1)), float(np.percentile(phase, 99.5)))
    grey = np.clip((phase - lo) / max(hi - lo, 1e-6), 0, 1)[..., None].repeat(3, axis=-1)
    colour = colourize(labels)
    cell = (np.asarray(labels) > 0)[..., None]
    rgb = np.where(cell, (1 - alpha) * grey + alpha * colour, grey)
    if instances is not None:
        edge = find_boundaries(np.asarray(instances), mode="inner")
        rgb[edge] = 1.0
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def instances_from_labels(labels: np.ndarray) -> np.ndarray:
    """Instances as connected components (8-connected) of each cell class.

    Parameters
    ----------
    labels : numpy.ndarray
        (H, W) class map.

    Returns
    -------
    numpy.ndarray
        (H, W) int32 map, 0 for background, ids 1..N; components of different classes never
        share an id even when they touch.
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=np.int32)
    next_id = 0
    structure = np.ones((3, 3), dtype=bool)
    for cls in CELL_CLASSES:
        comp, n = ndi.label(labels == cls, structure=structure)
        if n:
            mask = comp > 0
            out[mask] = comp[mask] + next_id
            next_id += n
    return out


def instance_classes(labels: np.ndarray, instances: np.ndarray) -> dict[int, int]:
    """Majority class of each instance.

    Parameters
    ----------
    labels : numpy.ndarray
        (H, W) class map.
    instances : numpy.ndarray
        (H, W) instance map, 0 background.

    Returns
    -------
    dict of int to int
        Instance id (> 0) -> its majority class id; empty when there is no instance.
    """
    labels = np.asarray(labels).ravel()
    inst = np.asarray(instances).ravel()
    sel = inst > 0
    if not sel.any():
        return {}
    counts = np.zeros((int(inst.max()) + 1, N_CLASSES), dtype=np.int64)
    np.add.at(counts, (inst[sel], labels[sel]), 1)
    ids = np.flatnonzero(counts.sum(1))
    return {int(i): int(np.argmax(counts[i])) for i in ids}

"""Segmentation metrics of the paper: Dice (eq. 13), AJI (eq. 14) and per-cell accuracy.

All functions take (H, W) class maps with values 0..4 (0 background, 1 discocyte,
2 spherocyte, 3 echinocyte, 4 stomatocyte; ``rbclib.core.labels``) and return plain dicts
keyed by class name plus ``"overall"``, the mean of the four cell classes (the paper's
"Overall" column is the mean of the four class columns).

Conventions (fixed here, used by every table):
- A class absent from both prediction and ground truth of an image scores NaN for that
  image and is left out of every mean. A class present in only one of them scores 0.
- ``overall`` of one image is the NaN-aware mean of its four class scores.
- Over a test set (:func:`mean_scores`) each class is the NaN-aware mean of its
  per-image scores (the paper averages over the n = 40 test images), and ``overall`` is
  the mean of those four class means, as in Tables 1 and 2.

AJI matching rule (Kumar et al., IEEE TMI 36, 1550 (2017)), per class: the ground-truth
instances of class c are the pixels of class c of each true instance; the predicted ones
likewise. Each ground-truth instance G_i is paired with the predicted instance S_j of the
same class with the largest IoU (ties: the lowest predicted id); a predicted instance may
be paired with several G_i, as in Kumar's definition. Paired: |G_i n S_j| joins the
numerator, |G_i u S_j| the denominator. A G_i that overlaps no prediction adds |G_i| to
the denominator; every predicted instance paired with no G_i (the set R of eq. 14) adds
|S_k|. Instances are 8-connected components of each class unless instance maps are given.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from rbclib.core.labels import (BACKGROUND, CELL_CLASS_NAMES, CELL_CLASSES, CLASS_NAMES, N_CLASSES, check_labels,
                           instances_from_labels)



def _check_pair(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = check_labels(pred, source="predicted class map")
    true = check_labels(true, source="ground-truth class map")
    if pred.shape != true.shape:
        raise ValueError(f"predicted class map {pred.shape} and ground truth {true.shape} differ in shape")
    return pred, true


def _with_overall(scores: dict[str, float]) -> dict[str, float]:
    vals = [scores[n] for n in CELL_CLASS_NAMES if not math.isnan(scores[n])]
    scores["overall"] = float(np.mean(vals)) if vals else math.nan
    return scores


def dice_per_class(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Dice 2|G n S| / (|G| + |S|) per cell class (eq. 13) and their mean ``overall``.

    Parameters
    ----------
    pred, true : numpy.ndarray
        (H, W) predicted and ground-truth class maps 0..4.

    Returns
    -------
    dict[str, float]
        Cell class name -> Dice, NaN for a class absent from both; plus ``overall``.

    Raises
    ------
    ValueError
        When the maps differ in shape (or hold values outside 0..4).
    """
    pred, true = _check_pair(pred, true)
    code = pred.ravel().astype(np.intp) * N_CLASSES + true.ravel()
    table = np.bincount(code, minlength=N_CLASSES * N_CLASSES).reshape(N_CLASSES, N_CLASSES)
    n_pred, n_true = table.sum(1), table.sum(0)
    scores: dict[str, float] = {}
    for cls in CELL_CLASSES:
        denom = n_pred[cls] + n_true[cls]
        scores[CLASS_NAMES[cls]] = float(2.0 * table[cls, cls] / denom) if denom else math.nan
    return _with_overall(scores)


def _compact(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabel non-negative ids to 0..N (0 stays 0) through a lookup table; also the N sorted ids."""
    present = _present_ids(ids)
    if present.size == 0:
        return np.zeros(ids.shape, dtype=np.intp), present
    lut = np.zeros(int(ids.max()) + 1, dtype=np.int32 if present.size < 40_000 else np.intp)
    lut[present] = np.arange(1, present.size + 1)
    return lut[ids], present


def _present_ids(ids: np.ndarray) -> np.ndarray:
    """Sorted positive ids present in an id map."""
    if ids.size == 0 or ids.max() <= 0:
        return np.zeros(0, dtype=np.intp)
    present = np.flatnonzero(np.bincount(ids.ravel()))
    return present[present > 0]


def _pair_table(pred_ids: np.ndarray, true_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Intersection table (N_true, N_pred), the areas of both and their sorted ids."""
    t, t_ids = _compact(true_ids)
    p, p_ids = _compact(pred_ids)
    n_t, n_p = t_ids.size, p_ids.size
    counts = np.bincount((t * (n_p + 1) + p).ravel(), minlength=(n_t + 1) * (n_p + 1)).reshape(n_t + 1, n_p + 1)
    return counts[1:, 1:], counts[1:, :].sum(1), counts[:, 1:].sum(0), t_ids, p_ids


def _aji_from_table(inter: np.ndarray, area_t: np.ndarray, area_p: np.ndarray) -> tuple[int, int]:
    """(numerator, denominator) of eq. 14 from an intersection table and the instance areas."""
    n_t, n_p = inter.shape
    if n_t == 0 or n_p == 0:
        return 0, int(area_t.sum() + area_p.sum())
    union = area_t[:, None] + area_p[None, :] - inter
    best = np.argmax(inter / union, axis=1)
    rows = np.arange(n_t)
    paired = inter[rows, best] > 0
    num = int(inter[rows[paired], best[paired]].sum())
    den = int(union[rows[paired], best[paired]].sum()) + int(area_t[~paired].sum())
    used = np.zeros(n_p, dtype=bool)
    used[best[paired]] = True
    return num, den + int(area_p[~used].sum())


def aji(pred_instances: np.ndarray, true_instances: np.ndarray) -> float:
    """Class-agnostic AJI (eq. 14) of two instance maps.

    Parameters
    ----------
    pred_instances, true_instances : numpy.ndarray
        (H, W) predicted and ground-truth instance maps, 0 background.

    Returns
    -------
    float
        The AJI; NaN if both are empty.

    Raises
    ------
    ValueError
        When the maps differ in shape or hold negative ids.
    """
    pred_instances, true_instances = np.asarray(pred_instances), np.asarray(true_instances)
    if pred_instances.shape != true_instances.shape:
        raise ValueError(f"instance maps differ in shape: {pred_instances.shape} vs {true_instances.shape}")
    if (pred_instances < 0).any() or (true_instances < 0).any():
        raise ValueError("instance ids must be >= 0")
    num, den = _aji_from_table(*_pair_table(pred_instances.astype(np.intp), true_instances.astype(np.intp))[:3])
    return float(num / den) if den else math.nan


def _class_keys(inst: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """instance id * N_CLASSES + class where both are > 0, else 0."""
    key = inst.astype(np.int32) * N_CLASSES + labels
    key[(inst == 0) | (labels == 0)] = 0
    return key


def aji_per_class(pred: np.ndarray, true: np.ndarray, *, pred_instances: np.ndarray | None = None,
                  true_instances: np.ndarray | None = None) -> dict[str, float]:
    """AJI (eq. 14) per cell class and their mean ``overall``; matching rule in the module doc.

    Parameters
    ----------
    pred, true : numpy.ndarray
        (H, W) predicted and ground-truth class maps 0..4.
    pred_instances, true_instances : numpy.ndarray, optional
        (H, W) instance maps (0 background); without them instances are the 8-connected
        components of each class.

    Returns
    -------
    dict[str, float]
        Cell class name -> AJI, NaN for a class absent from both maps; plus ``overall``.

    Raises
    ------
    ValueError
        When shapes differ or an instance map holds negative ids.
    """
    pred, true = _check_pair(pred, true)
    p_inst = instances_from_labels(pred) if pred_instances is None else np.asarray(pred_instances)
    t_inst = instances_from_labels(true) if true_instances is None else np.asarray(true_instances)
    for name, arr in (("pred_instances", p_inst), ("true_instances", t_inst)):
        if arr.shape != pred.shape:
            raise ValueError(f"{name} has shape {arr.shape}, class maps have {pred.shape}")
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name} holds negative ids")
    # one id per (instance, class) pair, so one pass of bincount serves all classes
    t_key, p_key = _class_keys(t_inst, true), _class_keys(p_inst, pred)
    inter, area_t, area_p, t_ids, p_ids = _pair_table(p_key, t_key)
    t_cls, p_cls = t_ids % N_CLASSES, p_ids % N_CLASSES
    scores: dict[str, float] = {}
    for cls in CELL_CLASSES:
        rows, cols = t_cls == cls, p_cls == cls
        num, den = _aji_from_table(inter[np.ix_(rows, cols)], area_t[rows], area_p[cols])
        scores[CLASS_NAMES[cls]] = float(num / den) if den else math.nan
    return _with_overall(scores)


def match_instances(pred_instances: np.ndarray, true_instances: np.ndarray) -> pd.DataFrame:
    """Best predicted match of every true instance (max IoU, ties to the lowest id).

    Parameters
    ----------
    pred_instances, true_instances : numpy.ndarray
        (H, W) predicted and ground-truth instance maps, 0 background.

    Returns
    -------
    pandas.DataFrame
        One row per true instance: ``true_id``, ``pred_id`` (0 when it overlaps no
        prediction), ``intersection_px``, ``union_px``, ``iou``.

    Raises
    ------
    ValueError
        When the maps differ in shape.
    """
    t = np.asarray(true_instances).astype(np.intp)
    p = np.asarray(pred_instances).astype(np.intp)
    if t.shape != p.shape:
        raise ValueError(f"instance maps differ in shape: {p.shape} vs {t.shape}")
    inter, area_t, area_p, t_ids, p_ids = _pair_table(p, t)
    if inter.shape[1]:
        union = area_t[:, None] + area_p[None, :] - inter
        iou = inter / union
        best = np.argmax(iou, axis=1)
        rows = np.arange(inter.shape[0])
        hit = inter[rows, best] > 0
        pred_id = np.where(hit, p_ids[best], 0)
        inter_b = np.where(hit, inter[rows, best], 0)
        union_b = np.where(hit, union[rows, best], area_t)
    else:
        pred_id = np.zeros(t_ids.size, dtype=int)
        inter_b, union_b = np.zeros(t_ids.size, dtype=int), area_t
    return pd.DataFrame({"true_id": t_ids.astype(int), "pred_id": pred_id.astype(int),
                         "intersection_px": inter_b.astype(int), "union_px": union_b.astype(int),
                         "iou": (inter_b / np.maximum(union_b, 1)).astype(float)})


def mean_scores(per_image: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Average per-image score dicts over a test set (NaN-aware); see the module doc.

    Parameters
    ----------
    per_image : Iterable[Mapping[str, float]]
        One score dict per image (class name -> score; an ``overall`` key is ignored).

    Returns
    -------
    dict[str, float]
        Each class: the mean of its non-NaN per-image values (NaN if none); ``overall``
        (when all four cell classes are present): the mean of the four class means (the
        paper's Overall).

    Raises
    ------
    ValueError
        When no per-image scores are given.
    """
    rows = list(per_image)
    if not rows:
        raise ValueError("mean_scores: no per-image scores given")
    out: dict[str, float] = {}
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "overall"]
    for key in keys:
        vals = np.array([r.get(key, math.nan) for r in rows], dtype=float)
        vals = vals[~np.isnan(vals)]
        out[key] = float(vals.mean()) if vals.size else math.nan
    if all(n in out for n in CELL_CLASS_NAMES):
        return _with_overall(out)
    return out


CONFUSION_COLUMNS: tuple[str, ...] = ("missed",) + CELL_CLASS_NAMES
NO_CELL = "no cell"
"""Confusion row of false detections: predicted cells lying mostly on true background."""


def cell_confusion(pred_labels: np.ndarray, true_labels: np.ndarray, *, true_instances: np.ndarray | None = None,
                   pred_instances: np.ndarray | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per-cell classification (the paper's Figure 9) by instance matching.

    Each true cell (an instance of ``true_instances``, else an 8-connected component of
    a cell class of ``true_labels``; its true class is its majority class) takes as
    predicted class the majority of ``pred_labels`` over its pixels; a cell whose pixels
    are mostly predicted background counts as ``missed``. A predicted cell (an instance of
    ``pred_instances``, else a component of ``pred_labels``) with most of its pixels on true
    background is a false detection: row :data:`NO_CELL`, column its predicted class.
    Sum the counts of several images and call :func:`confusion_accuracy` for a data set.

    Parameters
    ----------
    pred_labels, true_labels : numpy.ndarray
        (H, W) predicted and ground-truth class maps 0..4.
    true_instances : numpy.ndarray, optional
        (H, W) true cells; default: 8-connected components of each cell class.
    pred_instances : numpy.ndarray, optional
        (H, W) predicted cells; default: components of ``pred_labels``.

    Returns
    -------
    confusion : pandas.DataFrame
        Counts, rows = true class names + ``no cell``, columns ``missed`` + class names.
    accuracy : dict[str, float]
        Per-class accuracy = correct / cells of that class, NaN for a class with no cells,
        plus ``overall`` = correct / all cells.
    """
    pred, true = _check_pair(pred_labels, true_labels)
    t_counts, p_counts = _class_counts(true_instances, "true_instances", true, pred)
    t_counts[:, BACKGROUND] = 0  # an instance's true class is its majority cell class
    true_cls = np.argmax(t_counts, axis=1)
    pred_cls = np.argmax(p_counts, axis=1)
    keep = t_counts.sum(1) > 0
    conf = np.zeros((len(CELL_CLASSES), N_CLASSES), dtype=np.int64)
    np.add.at(conf, (true_cls[keep] - 1, pred_cls[keep]), 1)
    false = _false_detections(pred, true, pred_instances)
    conf = np.vstack([conf, false[None]])
    frame = pd.DataFrame(conf, index=pd.Index(CELL_CLASS_NAMES + (NO_CELL,), name="true"),
                         columns=pd.Index(CONFUSION_COLUMNS, name="predicted"))
    return frame, confusion_accuracy(frame)


def _class_counts(instances: np.ndarray | None, name: str, of: np.ndarray,
                  *class_maps: np.ndarray) -> list[np.ndarray]:
    """Pixel counts per class (n, N_CLASSES) of each instance of ``instances`` (else of the
    components of class map ``of``), one array per class map in ``(of, *class_maps)``."""
    inst = instances_from_labels(of) if instances is None else np.asarray(instances)
    if inst.shape != of.shape:
        raise ValueError(f"{name} has shape {inst.shape}, class maps have {of.shape}")
    ids, present = _compact(inst.astype(np.intp))
    n = present.size
    sel = ids.ravel() > 0
    idx = ids.ravel()[sel]
    return [np.bincount(idx * N_CLASSES + m.ravel()[sel], minlength=(n + 1) * N_CLASSES).reshape(n + 1, N_CLASSES)[1:]
            for m in (of, *class_maps)]


def _false_detections(pred: np.ndarray, true: np.ndarray, pred_instances: np.ndarray | None) -> np.ndarray:
    """Counts per confusion column of predicted cells whose pixels lie mostly on true background."""
    p_counts, t_counts = _class_counts(pred_instances, "pred_instances", pred, true)
    on_background = t_counts[:, BACKGROUND]
    size = t_counts.sum(1)
    p_counts[:, BACKGROUND] = 0
    pred_cls = np.argmax(p_counts, axis=1)
    false = (size > 0) & (on_background > 0.5 * size) & (p_counts.sum(1) > 0)
    return np.bincount(pred_cls[false], minlength=N_CLASSES).astype(np.int64)


def confusion_accuracy(confusion: pd.DataFrame) -> dict[str, float]:
    """Per-class accuracy over the true cells.

    False detections, row ``no cell``, are scored by :func:`confusion_precision`.

    Parameters
    ----------
    confusion : pandas.DataFrame
        Counts as :func:`cell_confusion` returns them (or a sum of several).

    Returns
    -------
    dict[str, float]
        Class name -> diagonal / row total (NaN for empty rows), and ``overall`` = correct /
        all true cells.
    """
    acc: dict[str, float] = {}
    for name in CELL_CLASS_NAMES:
        total = int(confusion.loc[name].sum())
        acc[name] = float(confusion.loc[name, name] / total) if total else math.nan
    total = int(confusion.loc[list(CELL_CLASS_NAMES)].to_numpy().sum())
    correct = int(sum(confusion.loc[n, n] for n in CELL_CLASS_NAMES))
    acc["overall"] = float(correct / total) if total else math.nan
    return acc


def confusion_precision(confusion: pd.DataFrame) -> dict[str, float]:
    """Per-class precision of the predicted cells.

    Parameters
    ----------
    confusion : pandas.DataFrame
        Counts as :func:`cell_confusion` returns them (or a sum of several).

    Returns
    -------
    dict[str, float]
        Class name -> diagonal / column total, the column holding the false detections (row
        ``no cell``) too; NaN for a class never predicted.
    """
    prec: dict[str, float] = {}
    for name in CELL_CLASS_NAMES:
        total = int(confusion[name].sum())
        prec[name] = float(confusion.loc[name, name] / total) if total else math.nan
    return prec

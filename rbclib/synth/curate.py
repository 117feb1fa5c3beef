"""Curating generated (phase, mask) pairs into a class-balanced synthetic training set.

Park et al. 2025 (section 5.1) generated 5,000 pairs, kept 500 chosen for a balanced
and diverse representation of the four RBC types (favouring the rare spherocytes and
stomatocytes) and rotated each by 0/90/180/270 degrees. Here the choice is made either
by hand in the gallery of :mod:`rbclib.synth.curate_widget` (best cells first) or by
:func:`auto_select_balanced`, whose rule is ``SELECTION_RULE``: the requested class
balance, and within it the pairs whose cells look most like real cells
(:mod:`rbclib.synth.morphology`). Every decision is written at once (atomic JSON), so
curation can stop and resume at any time.

Candidate folder: ``phase/<id>.tif`` (float32 rad), ``labels/<id>.png`` (uint8 0..4),
``candidates.csv`` (one row per pair: id, consistency, mean_confidence, n_<class> cell
counts, n_whole_<class> counts of the cells not cut by the patch border, frac_<class> pixel
fractions, whole_cells, cell_quality).

The class balance counts whole cells only: in the training pairs written from the accepted
candidates, the cells cut by the patch border are labelled ``rbclib.core.labels.IGNORE`` and
stay out of the training loss. A border fragment shows neither the cell's class nor its
shape, and the generated patches hold many of them (mostly discocyte neighbours of the cell
asked for), so they would tip the set back towards the commonest class.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from rbclib.core.config import Optics
from rbclib.physics.simulate import parse_mixture
from rbclib.synth.morphology import cell_quality, cell_table
from rbclib.synth.scores import CELL_THRESHOLD_RAD, consistency_score, mask_counts
from rbclib.core.io import read_labels, read_phase, write_labels, write_phase
from rbclib.core.files import write_csv
from rbclib.core.labels import CELL_CLASS_NAMES, IGNORE, border_cut_cells

COUNT_COLS = tuple(f"n_{name}" for name in CELL_CLASS_NAMES)
"""Candidate columns: cells per class, border fragments included."""
WHOLE_COLS = tuple(f"n_whole_{name}" for name in CELL_CLASS_NAMES)
"""Candidate columns: cells per class not cut by the patch border, the cells training learns
from (:func:`write_synthetic_train`) and the class balance counts."""

SELECTION_RULE = (
    "The requested class balance, best cells first. Candidates must pass the active filters, "
    "reach the minimum consistency score and hold at least one whole cell (cells cut by the patch "
    "border are left out of training and of the balance). Of all sets of the target "
    "number of pairs, the one whose accepted whole cells come closest to the requested class "
    "shares is taken (summed differences between each class's cells and its requested share of "
    "all accepted cells; found exactly by mixed-integer programming). Among sets that come as "
    "close, the one with the higher cell quality: the share of a pair's whole cells that look "
    "like real ones (area and peak phase inside the real cells' 5-95 % range of their class, "
    "one class per cell, mask fitting the phase with IoU >= 0.8; rbclib.synth.morphology). "
    "Ties: higher consistency, then id."
)
EQUAL_SHARES = {name: 1.0 / len(CELL_CLASS_NAMES) for name in CELL_CLASS_NAMES}
"""The default request: the four cell classes in equal shares (the paper's "balanced"
synthetic set, which favours the rare spherocytes and stomatocytes)."""


# ----------------------------------------------------------------------------- candidates
def write_candidates(phase: np.ndarray, labels: np.ndarray, confidence: np.ndarray, folder: str | Path, *,
                     optics: Optics | None = None, threshold_rad: float = CELL_THRESHOLD_RAD,
                     ranges: dict[str, dict[str, tuple[float, float]]] | None = None,
                     progress: bool = True) -> pd.DataFrame:
    """Write generated pairs as candidates ``phase/cand_<i>.tif`` + ``labels/cand_<i>.png``.

    Parameters
    ----------
    phase : numpy.ndarray
        (n, H, W) generated phase [rad].
    labels : numpy.ndarray
        (n, H, W) generated class maps 0..4.
    confidence : numpy.ndarray
        (n, H, W) per-pixel confidence of the masks.
    folder : str or pathlib.Path
        The candidate folder.
    optics : rbclib.core.config.Optics, optional
        Written with the phase; its pixel size scales the morphology (default ``Optics()``).
    threshold_rad : float, optional
        Cell threshold of the phase [rad], default :data:`rbclib.synth.scores.CELL_THRESHOLD_RAD`.
    ranges : dict[str, dict[str, tuple of (float, float)]], optional
        The real cells' :func:`~rbclib.synth.morphology.real_ranges`; ``cell_quality`` is 0
        without them.
    progress : bool, optional
        Show a progress bar, default True.

    Returns
    -------
    pandas.DataFrame
        The table also written as ``candidates.csv``: ids, consistency score, mean
        confidence, cells per class (all, and not cut by the patch border;
        :func:`rbclib.synth.scores.mask_counts`), pixel fraction per class, ``whole_cells``
        (cells of the phase not cut by the patch border, as the morphology score finds them)
        and ``cell_quality`` (:func:`rbclib.synth.morphology.cell_quality` against ``ranges``).
    """
    folder = Path(folder)
    pixel_size_m = (optics or Optics()).pixel_size_m
    rows = []
    for i in tqdm(range(len(phase)), desc="writing candidates", disable=not progress):
        cid = f"cand_{i:05d}"
        write_phase(folder / "phase" / f"{cid}.tif", phase[i], optics)
        write_labels(folder / "labels" / f"{cid}.png", labels[i])
        rows.append({"id": cid, "consistency": consistency_score(phase[i], labels[i], threshold_rad=threshold_rad),
                     "mean_confidence": float(np.mean(confidence[i])), **mask_counts(labels[i]),
                     **_cell_scores(phase[i], labels[i], ranges, pixel_size_m=pixel_size_m, threshold_rad=threshold_rad)})
    table = pd.DataFrame(rows)
    write_csv(folder / "candidates.csv", table)
    return table


def _cell_scores(phase: np.ndarray, labels: np.ndarray, ranges: dict | None, *, pixel_size_m: float,
                 threshold_rad: float) -> dict[str, float]:
    cells = cell_table(phase[None], labels[None], pixel_size_m=pixel_size_m, threshold_rad=threshold_rad)
    return {"whole_cells": len(cells), "cell_quality": cell_quality(cells, ranges) if ranges else 0.0}


def rescore_candidates(folder: str | Path, ranges: dict[str, dict[str, tuple[float, float]]], *,
                       optics: Optics | None = None, threshold_rad: float = CELL_THRESHOLD_RAD,
                       progress: bool = True) -> pd.DataFrame:
    """Score the candidates of a folder written by an earlier version (or against other ``ranges``).

    Adds or replaces the cell counts of :func:`rbclib.synth.scores.mask_counts`,
    ``whole_cells`` and ``cell_quality`` in ``candidates.csv`` (rewritten atomically; pairs
    and decisions untouched).

    Parameters
    ----------
    folder : str or pathlib.Path
        The candidate folder.
    ranges : dict[str, dict[str, tuple of (float, float)]]
        The real cells' :func:`~rbclib.synth.morphology.real_ranges`.
    optics : rbclib.core.config.Optics, optional
        Its pixel size scales the morphology (default ``Optics()``).
    threshold_rad : float, optional
        Cell threshold of the phase [rad], default :data:`rbclib.synth.scores.CELL_THRESHOLD_RAD`.
    progress : bool, optional
        Show a progress bar, default True.

    Returns
    -------
    pandas.DataFrame
        The updated table (index: id).
    """
    folder = Path(folder)
    table = read_candidates(folder)
    pixel_size_m = (optics or Optics()).pixel_size_m
    scores = []
    for cid in tqdm(table["id"], desc="scoring candidates", disable=not progress):
        phase, labels = load_candidate(folder, cid)
        scores.append({**mask_counts(labels), **_cell_scores(phase, labels, ranges, pixel_size_m=pixel_size_m,
                                                             threshold_rad=threshold_rad)})
    table = table.assign(**pd.DataFrame(scores, index=table.index))
    write_csv(folder / "candidates.csv", table.reset_index(drop=True))
    return table


def read_candidates(folder: str | Path) -> pd.DataFrame:
    """The candidates table of a candidate folder.

    Parameters
    ----------
    folder : str or pathlib.Path
        The candidate folder.

    Returns
    -------
    pandas.DataFrame
        ``candidates.csv`` (index: id, also kept as column).

    Raises
    ------
    FileNotFoundError
        When there is no candidates table (run notebook 04's generation step).
    ValueError
        When columns are missing or an id is not a plain candidate id.
    """
    path = Path(folder) / "candidates.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no candidates table (run notebook 04's generation step)")
    table = pd.read_csv(path, dtype={"id": str})
    missing = {"id", "consistency", *COUNT_COLS} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    for cid in table["id"]:
        check_candidate_id(cid, str(path))
    return table.set_index("id", drop=False)


CANDIDATE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""A candidate id: a plain file stem (ids name files, so no separators and no "..")."""


def check_candidate_id(cid: Any, where: str) -> str:
    """Check a plain candidate id (:data:`CANDIDATE_ID`).

    Parameters
    ----------
    cid : Any
        The id to check.
    where : str
        Named in the error (a file or folder).

    Returns
    -------
    str
        ``cid`` itself.

    Raises
    ------
    ValueError
        Naming ``where``, when ``cid`` is not a plain candidate id.
    """
    if not isinstance(cid, str) or not CANDIDATE_ID.fullmatch(cid) or ".." in cid:
        raise ValueError(f"{where}: {cid!r} is not a candidate id (letters, digits, '_', '-', '.'; no path)")
    return cid


def load_candidate(folder: str | Path, cid: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one candidate.

    Parameters
    ----------
    folder : str or pathlib.Path
        The candidate folder.
    cid : str
        The candidate id.

    Returns
    -------
    phase : numpy.ndarray
        (H, W) phase [rad].
    labels : numpy.ndarray
        (H, W) uint8 class map 0..4.
    """
    folder = Path(folder)
    check_candidate_id(cid, str(folder))
    return read_phase(folder / "phase" / f"{cid}.tif").data, read_labels(folder / "labels" / f"{cid}.png")


def filter_candidates(table: pd.DataFrame, *, classes_present: Iterable[str] = (), count_class: str | None = None,
                      min_count: int = 0, min_consistency: float = 0.0) -> pd.DataFrame:
    """Filter candidates.

    Parameters
    ----------
    table : pandas.DataFrame
        The candidates table.
    classes_present : Iterable[str], optional
        Cell classes every kept row holds (default: none).
    count_class : str, optional
        Class whose cells are counted against ``min_count``.
    min_count : int, optional
        Minimum cells of ``count_class`` (0, the default: no limit).
    min_consistency : float, optional
        Minimum consistency score, default 0.

    Returns
    -------
    pandas.DataFrame
        The rows holding every class in ``classes_present``, >= min_count cells of
        ``count_class`` and a consistency score >= min_consistency.
    """
    keep = table["consistency"] >= min_consistency
    for name in classes_present:
        keep &= table[f"n_{name}"] > 0
    if count_class is not None and min_count > 0:
        keep &= table[f"n_{count_class}"] >= min_count
    return table[keep]


def class_balance(table: pd.DataFrame, ids: Iterable[str] | None = None) -> pd.DataFrame:
    """Whole cells (not cut by the patch border) per cell class, and share of all of them.

    Parameters
    ----------
    table : pandas.DataFrame
        The candidates table (index: id).
    ids : Iterable[str], optional
        The rows counted (default: all rows).

    Returns
    -------
    pandas.DataFrame
        Columns class, cells, share (0 when there are no cells), one row per cell class.
    """
    sub = table if ids is None else table.loc[list(ids)]
    counts = np.array([sub[c].sum() if len(sub) else 0 for c in WHOLE_COLS], dtype=float)
    share = counts / counts.sum() if counts.sum() else np.zeros_like(counts)
    return pd.DataFrame({"class": CELL_CLASS_NAMES, "cells": counts.astype(int), "share": share})


def class_request(request: dict[str, float] | str | None) -> np.ndarray:
    """Requested class shares, checked by :func:`rbclib.physics.simulate.parse_mixture`.

    Parameters
    ----------
    request : dict[str, float] or str or None
        Class name -> weight mapping or ``"discocyte=0.4,..."`` (None: :data:`EQUAL_SHARES`).

    Returns
    -------
    numpy.ndarray
        Shares of the cell classes in ``CELL_CLASS_NAMES`` order, summing to 1.
    """
    shares = parse_mixture(EQUAL_SHARES if request is None else request)
    return np.array([shares[name] for name in CELL_CLASS_NAMES])


def balance_deviation_pp(table: pd.DataFrame, ids: Iterable[str], request: dict[str, float] | None = None) -> float:
    """Largest difference between the class shares of the whole cells in ``ids`` and the request.

    Parameters
    ----------
    table : pandas.DataFrame
        The candidates table (index: id).
    ids : Iterable[str]
        The selected ids.
    request : dict[str, float], optional
        Requested shares (:func:`class_request`); default equal shares.

    Returns
    -------
    float
        The difference [percentage points]; nan when ``ids`` hold no whole cell.
    """
    got = class_balance(table, ids)
    if got["cells"].sum() == 0:
        return float("nan")
    return float(100 * np.abs(got["share"].to_numpy() - class_request(request)).max())


def auto_select_balanced(table: pd.DataFrame, n_select: int, *, request: dict[str, float] | None = None,
                         already: Iterable[str] = (), exclude: Iterable[str] = (),
                         pool: Iterable[str] | None = None, min_consistency: float = 0.0) -> list[str]:
    """Ids chosen by ``SELECTION_RULE`` until ``n_select`` pairs are accepted in total, best
    cells first.

    Cells are counted whole (:data:`WHOLE_COLS`).

    Parameters
    ----------
    table : pandas.DataFrame
        All candidates (index id).
    n_select : int
        Pairs accepted in total, ``already`` included.
    request : dict[str, float], optional
        Class name -> share of the accepted cells (default equal shares).
    already : Iterable[str], optional
        Ids accepted before (they count towards the shares and n_select).
    exclude : Iterable[str], optional
        Ids never to pick (rejected ones).
    pool : Iterable[str], optional
        Ids that may be picked (default all, e.g. those passing a filter).
    min_consistency : float, optional
        Minimum consistency score of a pick, default 0.

    Returns
    -------
    list of str
        The ids picked now, best cells first.

    Raises
    ------
    RuntimeError
        When the solver finds no solution.

    Notes
    -----
    The set is found exactly, by mixed-integer programming (``scipy.optimize.milp``): it
    minimises the summed differences between the cells of each class and the requested share
    of all accepted cells; among sets that are as close, it takes the higher cell quality, then
    consistency, then the earlier id. A greedy pick lay 10.1
    points from an equal request on a quick run's 600 candidates, where the exact set lies
    6.6; on the run before, 2.6-4.0 against 1.4 (largest difference of a class share, every
    cell counted, border fragments too, as then).

    It is one function because the whole program is built in one place: the variables (one
    0/1 per candidate, then one slack per class), the balance constraints and the tie-break
    costs all index the same filtered candidate arrays. Most of its length is this text.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    already, excluded = list(already), set(exclude) | set(already)
    ok = (table["consistency"] >= min_consistency) & ~table["id"].isin(excluded)
    if pool is not None:
        ok &= table["id"].isin(set(pool))
    pool = table[ok]
    counts = pool[list(WHOLE_COLS)].to_numpy(float)
    keep = counts.sum(1) > 0
    ids, counts = pool["id"].to_numpy()[keep], counts[keep]
    consistency = pool["consistency"].to_numpy(float)[keep]
    quality = (pool["cell_quality"] if "cell_quality" in pool else pd.Series(0.0, index=pool.index)
               ).fillna(0.0).to_numpy(float)[keep]
    target = class_request(request)
    n_pick = min(max(n_select - len(already), 0), len(ids))
    if n_pick == 0:
        return []
    accepted = table.loc[already, list(WHOLE_COLS)].to_numpy(float).sum(0) if already else np.zeros(len(CELL_CLASS_NAMES))
    # variables: x (one 0/1 per candidate), then e_c >= |cells_c - target_c * all cells| per class
    n, k = len(ids), len(target)
    excess = counts - np.outer(counts.sum(1), target)        # a candidate's part in cells_c - target_c * all
    offset = accepted - target * accepted.sum()
    order = np.lexsort((ids, -consistency, -quality))         # rank 0: best cells, then consistency, then id
    rank = np.empty(n)
    rank[order] = np.arange(n)
    # tie-breaks by rank: together at most 1e-3 x the smallest requested share, far below the
    # change of balance one cell makes
    tie = 1e-3 * np.min(target[target > 0]) * (rank + 1) / (n + 1) / n_pick
    cost = np.concatenate([tie, np.ones(k)])
    constraints = [LinearConstraint(np.hstack([excess.T, -np.eye(k)]), -np.inf, -offset),
                   LinearConstraint(np.hstack([-excess.T, -np.eye(k)]), -np.inf, offset),
                   LinearConstraint(np.concatenate([np.ones(n), np.zeros(k)])[None], n_pick, n_pick)]
    result = milp(cost, constraints=constraints, integrality=np.concatenate([np.ones(n), np.zeros(k)]),
                  bounds=Bounds(0, np.concatenate([np.ones(n), np.full(k, np.inf)])),
                  options={"time_limit": 60, "mip_rel_gap": 0.0})
    if result.x is None:
        raise RuntimeError(f"class-balanced selection found no solution ({result.message})")
    chosen = np.flatnonzero(result.x[:n] > 0.5)
    return [str(ids[i]) for i in chosen[np.argsort(rank[chosen])]]


def write_synthetic_train(candidates: str | Path, ids: Iterable[str], out_dir: str | Path, *,
                          optics: Optics | None = None, progress: bool = True) -> list[str]:
    """Accepted pairs with x4 rotations (0, 90, 180, 270 deg) as training pairs.

    The cells cut by the patch border are labelled ``IGNORE`` (left out of the training loss).

    Parameters
    ----------
    candidates : str or pathlib.Path
        The candidate folder.
    ids : Iterable[str]
        The accepted ids.
    out_dir : str or pathlib.Path
        Receives ``phase/<id>_r<k>.tif`` + ``labels/<id>_r<k>.png``.
    optics : rbclib.core.config.Optics, optional
        Written with the phase.
    progress : bool, optional
        Show a progress bar, default True.

    Returns
    -------
    list of str
        The written ids ``<id>_r<k>``.
    """
    out, written = Path(out_dir), []
    for cid in tqdm(list(ids), desc="writing synthetic pairs", disable=not progress):
        phase, labels = load_candidate(candidates, cid)
        labels = np.where(border_cut_cells(labels), IGNORE, labels).astype(np.uint8)
        for k in range(4):
            rid = f"{cid}_r{k}"
            write_phase(out / "phase" / f"{rid}.tif", np.rot90(phase, k), optics)
            write_labels(out / "labels" / f"{rid}.png", np.rot90(labels, k), allow_ignore=True)
            written.append(rid)
    return written

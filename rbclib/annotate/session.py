"""The annotation session (stage 02).

Decisions are replayable actions (label, merge, split) kept in a JSON file
(:class:`rbclib.annotate.decisions.DecisionStore`, written atomically after every decision,
earlier versions backed up); :func:`rbclib.annotate.decisions.apply_decisions` turns them into
a class map and an instance map; :class:`AnnotationSession` is what the widget
(``rbclib.annotate.widget``) drives: proposals of each image, the cursor, undo. Proposals are
:mod:`rbclib.annotate.proposals`; exports and the split are :mod:`rbclib.annotate.export`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from rbclib.annotate.decisions import (Annotation, DecisionStore, _check_class, apply_decisions, phase_fingerprint,
                                       replay)
from rbclib.annotate.export import write_annotations
from rbclib.annotate.proposals import Proposals, merge_cells, propose_cells, split_cell
from rbclib.core.config import Optics
from rbclib.core.io import read_phase
from rbclib.core.labels import CELL_CLASSES, CLASS_NAMES


# ------------------------------------------------------------------------------- session
class AnnotationSession:
    """The annotation state of a set of phase images, behind the widget (no display code).

    Proposals are computed when an image is first visited. Every change is saved to the
    decisions file before the call returns.

    Parameters
    ----------
    phase_paths : iterable of str or pathlib.Path
        Phase images (``<run>/phase/*.tif``), with unique stems.
    decisions_path : str or pathlib.Path
        The JSON decisions file (created, or resumed after checking it belongs to these images).
    threshold_rad, smooth_sigma_px, edge_fraction, min_separation_um, min_area_um2 : float
        Proposal options as in :func:`propose_cells` (``threshold_rad`` None: Otsu's).
    suggest : callable, optional
        ``(phase [rad] (H, W), pixel size [m]) -> (5, H, W)`` class probabilities of a model
        (:func:`rbclib.study.suggest.model_suggestions`); each proposed cell is then pre-filled
        with the class its pixels' mean probability favours, and undecided cells are reviewed
        least confident first.

    Raises
    ------
    ValueError
        No phase images, or two with the same stem.
    DecisionsError
        A decisions file made for other images or proposal parameters.
    """

    def __init__(self, phase_paths: Iterable[str | Path], decisions_path: str | Path, *,
                 threshold_rad: float | None = None, smooth_sigma_px: float = 1.0, edge_fraction: float = 0.5,
                 min_separation_um: float = 2.5, min_area_um2: float = 8.0,
                 suggest: Callable[[np.ndarray, float], np.ndarray] | None = None):
        paths = sorted(Path(p) for p in phase_paths)
        if not paths:
            raise ValueError("no phase images to annotate")
        stems = [p.stem for p in paths]
        dupes = sorted({s for s in stems if stems.count(s) > 1})
        if dupes:
            raise ValueError(f"phase images share the stem(s) {dupes}; stems must be unique")
        self.paths = dict(zip(stems, paths))
        self.stems = stems
        self._phase: dict[str, np.ndarray] = {}
        self.optics: dict[str, Optics] = {}
        fingerprints = {}
        for stem, path in self.paths.items():
            img = read_phase(path)
            fingerprints[stem] = phase_fingerprint(img.data)
            self.optics[stem] = img.optics()
        self.params = {"threshold_rad": threshold_rad, "smooth_sigma_px": smooth_sigma_px, "edge_fraction": edge_fraction,
                       "min_separation_um": min_separation_um, "min_area_um2": min_area_um2}
        self.store = DecisionStore(decisions_path, fingerprints, proposal_params=self.params)
        self._proposals: dict[str, Proposals] = {}
        self._state: dict[str, tuple[np.ndarray, dict[int, int]]] = {}
        self.suggest = suggest
        self._probs: dict[str, np.ndarray] = {}

    def phase(self, stem: str) -> np.ndarray:
        """Phase image [rad] of ``stem`` (the last few are kept in memory).

        Parameters
        ----------
        stem : str
            The image.

        Returns
        -------
        numpy.ndarray
            (H, W) float32 phase [rad].
        """
        if stem not in self._phase:
            if len(self._phase) >= 4:
                self._phase.pop(next(iter(self._phase)))
            self._phase[stem] = read_phase(self.paths[stem]).data
        return self._phase[stem]

    def proposals(self, stem: str) -> Proposals:
        """The proposals of an image, computed on first use.

        Parameters
        ----------
        stem : str
            The image.

        Returns
        -------
        Proposals
            Its proposals, with the session's options and the image's pixel size.
        """
        if stem not in self._proposals:
            self._proposals[stem] = propose_cells(self.phase(stem), pixel_size_m=self.optics[stem].pixel_size_m,
                                                  **self.params)
        return self._proposals[stem]

    def state(self, stem: str) -> tuple[np.ndarray, dict[int, int]]:
        """The state of an image after the decisions so far.

        Parameters
        ----------
        stem : str
            The image.

        Returns
        -------
        tuple of (numpy.ndarray, dict of int to int)
            (current instance map, {cell id: class}).
        """
        if stem not in self._state:
            self._state[stem] = replay(self.proposals(stem).instances, self.store.actions_for(stem))
        return self._state[stem]

    def cells(self, stem: str) -> list[int]:
        """The current cell ids of an image.

        Parameters
        ----------
        stem : str
            The image.

        Returns
        -------
        list of int
            Sorted ids (> 0) of its current instance map.
        """
        inst, _ = self.state(stem)
        ids = np.unique(inst)
        return [int(i) for i in ids if i > 0]

    def _check_cell(self, stem: str, cell: int) -> None:
        if stem not in self.paths:
            raise ValueError(f"unknown image {stem!r}")
        if int(cell) not in self.cells(stem):
            raise ValueError(f"image {stem}: no cell {cell}")

    def label(self, stem: str, cell: int, label: int) -> None:
        """Give ``cell`` the class ``label``.

        Parameters
        ----------
        stem : str
            The image.
        cell : int
            The cell id.
        label : int
            0 not a cell, 1..4 the cell classes.

        Raises
        ------
        DecisionsError
            ``label`` outside 0..4.
        ValueError
            An unknown image or cell.
        """
        label = _check_class(label, f"image {stem}, cell {cell}")
        self._check_cell(stem, cell)
        self.store.record({"op": "label", "image": stem, "cell": int(cell), "label": label})
        self._state.pop(stem, None)

    def suggestions(self, stem: str) -> dict[int, tuple[int, float]]:
        """The model's class for each current cell of an image ({} without a model).

        Parameters
        ----------
        stem : str
            The image.

        Returns
        -------
        dict of int to (int, float)
            Cell id -> (class 0..4, confidence): the class whose probability, averaged over
            the cell's pixels, is highest, and that average.
        """
        if self.suggest is None:
            return {}
        if stem not in self._probs:
            if len(self._probs) >= 4:
                self._probs.pop(next(iter(self._probs)))
            self._probs[stem] = np.asarray(self.suggest(self.phase(stem), self.optics[stem].pixel_size_m))
        probs, (inst, _) = self._probs[stem], self.state(stem)
        cells = self.cells(stem)
        if not cells:
            return {}
        means = np.stack([ndi.mean(p, inst, cells) for p in probs], axis=1)   # (cells, classes)
        best = means.argmax(axis=1)
        return {c: (int(k), float(means[i, k])) for i, (c, k) in enumerate(zip(cells, best))}

    def review_order(self, stem: str) -> list[int]:
        """The undecided cells of an image in the order to review them.

        Parameters
        ----------
        stem : str
            The image.

        Returns
        -------
        list of int
            Least confident suggestion first; by id without a model.
        """
        _, labels = self.state(stem)
        todo = [c for c in self.cells(stem) if c not in labels]
        hints = self.suggestions(stem)
        return sorted(todo, key=lambda c: (hints[c][1], c)) if hints else todo

    def confident_cells(self, stem: str, *, confidence: float, limit: int | None = None) -> list[int]:
        """Undecided cells whose suggestion is at least ``confidence``, most confident first.

        Parameters
        ----------
        stem : str
            The image.
        confidence : float
            Lowest confidence accepted (0..1).
        limit : int, optional
            At most this many (a page).

        Returns
        -------
        list of int
            Cell ids.
        """
        hints = self.suggestions(stem)
        sure = sorted((c for c in self.review_order(stem) if hints[c][1] >= confidence),
                      key=lambda c: (-hints[c][1], c)) if hints else []
        return sure[:limit] if limit is not None else sure

    def accept(self, stem: str, cells: Iterable[int]) -> int:
        """Label cells with their suggested classes, as one decision (one undo takes it back).

        Parameters
        ----------
        stem : str
            The image.
        cells : iterable of int
            Cells to accept.

        Returns
        -------
        int
            Cells labelled.

        Raises
        ------
        ValueError
            No model gives suggestions, or an unknown cell.
        """
        hints = self.suggestions(stem)
        if not hints:
            raise ValueError("no model suggestions to accept (start the session with suggest=...)")
        cells = [int(c) for c in cells]
        for c in cells:
            self._check_cell(stem, c)
        self.store.record_all({"op": "label", "image": stem, "cell": c, "label": hints[c][0], "suggested": True}
                              for c in cells)
        self._state.pop(stem, None)
        return len(cells)

    def merge(self, stem: str, a: int, b: int) -> int:
        """Merge two cells.

        Parameters
        ----------
        stem : str
            The image.
        a, b : int
            The two cells' ids.

        Returns
        -------
        int
            The surviving id (the lower one).

        Raises
        ------
        ValueError
            Equal or unknown ids (before anything is saved).
        """
        merge_cells(self.state(stem)[0], a, b)  # raises on bad ids before anything is saved
        self.store.record({"op": "merge", "image": stem, "cells": [int(a), int(b)]})
        self._state.pop(stem, None)
        return min(int(a), int(b))

    def split(self, stem: str, cell: int) -> tuple[int, int]:
        """Split one cell in two.

        Parameters
        ----------
        stem : str
            The image.
        cell : int
            The cell id.

        Returns
        -------
        tuple of (int, int)
            The two ids (``cell``, new id).

        Raises
        ------
        ValueError
            The cell does not exist or cannot be split (:func:`split_cell`).
        """
        new = split_cell(self.state(stem)[0], cell)
        self.store.record({"op": "split", "image": stem, "cell": int(cell)})
        self._state.pop(stem, None)
        return int(cell), int(new.max())

    def undo(self) -> dict[str, Any] | None:
        """Undo the last decision of any image.

        Returns
        -------
        dict or None
            The undone action; None if there was none.
        """
        act = self.store.undo()
        if act is not None:
            self._state.pop(act["image"], None)
        return act

    def next_unlabelled(self, after: tuple[str, int] | None = None) -> tuple[str, int] | None:
        """First undecided cell after position ``after`` (image order, then id), wrapping once.

        Parameters
        ----------
        after : tuple of (str, int), optional
            (image, cell) to start after; None: from the first image.

        Returns
        -------
        tuple of (str, int) or None
            (image, cell); None when every cell is decided.
        """
        start = self.stems.index(after[0]) if after else 0
        order = self.stems[start:] + self.stems[:start] + ([self.stems[start]] if after else [])
        if self.suggest is not None:  # least confident first: the first undecided cell in review order
            for stem in order:
                todo = self.review_order(stem)
                if todo:
                    return stem, todo[0]
            return None
        for k, stem in enumerate(order):
            _, labels = self.state(stem)
            for cell in self.cells(stem):
                if after and k == 0 and cell <= after[1]:
                    continue
                if after and k == len(order) - 1 and cell > after[1]:
                    continue
                if cell not in labels:
                    return stem, cell
        return None

    def resume_position(self) -> tuple[str, int] | None:
        """Where to continue.

        Returns
        -------
        tuple of (str, int) or None
            (image, cell): the saved cursor if that cell still exists, else the first undecided
            cell, else the first cell; None when no image has cells.
        """
        cur = self.store.cursor
        if cur and cur[0] in self.paths and cur[1] in self.cells(cur[0]):
            return cur
        return self.next_unlabelled() or next(((s, self.cells(s)[0]) for s in self.stems if self.cells(s)), None)

    def class_counts(self) -> dict[str, int]:
        """Cells decided so far per class name.

        Returns
        -------
        dict of str to int
            Class name (``not a cell`` for 0) -> number of cells.
        """
        counts = {"not a cell": 0, **{CLASS_NAMES[c]: 0 for c in CELL_CLASSES}}
        for stem in dict.fromkeys(a["image"] for a in self.store.actions):
            for cls in self.state(stem)[1].values():
                counts["not a cell" if cls == 0 else CLASS_NAMES[cls]] += 1
        return counts

    def annotation(self, stem: str) -> Annotation:
        """The outcome of the decisions for one image (:func:`apply_decisions`).

        Parameters
        ----------
        stem : str
            The image.

        Returns
        -------
        Annotation
            Its class map, instance map and undecided cells.
        """
        return apply_decisions(self.proposals(stem).instances, self.store.actions_for(stem))

    def export(self, run_paths: Any, *, include_incomplete: bool = False) -> tuple[pd.DataFrame, list[str]]:
        """Write labels/, instances/, cells.csv for the annotated images (see :func:`write_annotations`).

        Parameters
        ----------
        run_paths : rbclib.core.paths.RunPaths
            The run folder to write into.
        include_incomplete : bool, optional
            Also write images with undecided cells (their undecided cells would become
            background); default False: skip them.

        Returns
        -------
        tuple of (pandas.DataFrame, list of str)
            (cell table, skipped stems).
        """
        done, skipped = {}, []
        for stem in self.stems:
            ann = self.annotation(stem)
            if ann.complete or include_incomplete:
                done[stem] = (ann.labels, ann.instances)
            else:
                skipped.append(stem)
        optics = self.optics[self.stems[0]]
        table = write_annotations(run_paths, done, self.phase, optics=optics)
        return table, skipped

"""Annotation decisions and the annotation session (stage 02).

Decisions are replayable actions (label, merge, split) kept in a JSON file
(:class:`DecisionStore`, written atomically after every decision, earlier versions backed
up); :func:`apply_decisions` turns them into a class map and an instance map;
:class:`AnnotationSession` is what the widget (``rbclib.annotate.widget``) drives: proposals
of each image, the cursor, undo. Proposals are :mod:`rbclib.annotate.proposals`; exports and
the split are :mod:`rbclib.annotate.export`.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
from skimage.segmentation import relabel_sequential

from rbclib.annotate.export import write_annotations
from rbclib.annotate.proposals import Proposals, merge_cells, propose_cells, split_cell
from rbclib.core.config import Optics
from rbclib.core.files import back_up, read_json, write_json
from rbclib.core.io import read_phase
from rbclib.core.labels import CELL_CLASSES, CLASS_NAMES, N_CLASSES

DECISIONS_FORMAT = "rbc-holo-decisions/1"


# ---------------------------------------------------------------------------- decisions
class DecisionsError(ValueError):
    """A decisions file cannot be used (another image set, bad labels, bad format)."""


def phase_fingerprint(phase: np.ndarray) -> str:
    """Short SHA-1 of a phase image's float32 pixels and shape (ties decisions to images)."""
    arr = np.ascontiguousarray(np.asarray(phase, dtype=np.float32))
    return hashlib.sha1(arr.tobytes() + str(arr.shape).encode()).hexdigest()[:16]


def _check_class(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) < N_CLASSES:
        raise DecisionsError(f"{where}: label {value!r} outside 0..{N_CLASSES - 1} "
                             "(0 not a cell, 1 discocyte, 2 spherocyte, 3 echinocyte, 4 stomatocyte)")
    return int(value)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")




class DecisionStore:
    """Annotation decisions of one image set, persisted to JSON after every change.

    The file holds the image set (stem -> :func:`phase_fingerprint`), the proposal
    parameters, an ordered list of actions (``label`` / ``merge`` / ``split``, each with
    its image) and a cursor (where the person stopped). Opening an existing file checks
    it was made for the same images and proposal parameters (:class:`DecisionsError`
    otherwise) and copies it to ``<name>.<UTC time>.bak.json`` before anything is written,
    unless the newest backup already holds the same content; the :data:`rbclib.core.files.KEEP_BACKUPS` newest
    backups are kept.
    """

    def __init__(self, path: str | Path, images: Mapping[str, str], *, proposal_params: Mapping[str, Any]):
        self.path = Path(path)
        self.images = dict(images)
        params = {k: (None if v is None else float(v)) for k, v in dict(proposal_params).items()}
        if self.path.exists():
            data = read_json(self.path)
            self._validate(data, params)
            self.backup = back_up(self.path)
            self.data = data
        else:
            self.backup = None
            self.data = {"format": DECISIONS_FORMAT, "created": _now(), "updated": _now(), "images": self.images,
                         "proposal_params": params, "actions": [], "cursor": None}
            self.save()

    def _validate(self, data: Any, params: dict[str, Any]) -> None:
        where = str(self.path)
        if not isinstance(data, dict) or data.get("format") != DECISIONS_FORMAT:
            raise DecisionsError(f"{where}: not an rbc-holo decisions file (expected format {DECISIONS_FORMAT!r})")
        stored = data.get("images", {})
        if set(stored) != set(self.images):
            missing, extra = sorted(set(stored) - set(self.images)), sorted(set(self.images) - set(stored))
            raise DecisionsError(f"{where}: made for another image set (images only in the file: {missing[:5]}; "
                                 f"only in the current set: {extra[:5]}). Use another decisions_path.")
        changed = sorted(s for s in stored if stored[s] != self.images[s])
        if changed:
            raise DecisionsError(f"{where}: made for different pixel data of image(s) {changed[:5]} "
                                 "(the phase images changed since annotation). Use another decisions_path.")
        if data.get("proposal_params") != params and data.get("actions"):
            raise DecisionsError(f"{where}: decisions were made on proposals with parameters "
                                 f"{data.get('proposal_params')}, not {params}; use the same parameters")
        data["proposal_params"] = params
        for k, act in enumerate(data.get("actions", [])):
            self._check_action(act, f"{where}: action {k}")

    def _check_action(self, act: Any, where: str) -> None:
        if not isinstance(act, dict) or act.get("image") not in self.images:
            raise DecisionsError(f"{where}: action {act!r} names no image of this set")
        op = act.get("op")
        if op == "label":
            _check_class(act.get("label"), where)
            cells = [act.get("cell")]
        elif op == "merge":
            cells = act.get("cells") or []
            if len(cells) != 2:
                raise DecisionsError(f"{where}: a merge needs two cells, got {cells!r}")
        elif op == "split":
            cells = [act.get("cell")]
        else:
            raise DecisionsError(f"{where}: unknown action {op!r}")
        if not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in cells):
            raise DecisionsError(f"{where}: cell ids must be positive integers, got {cells!r}")

    @property
    def actions(self) -> list[dict[str, Any]]:
        return self.data["actions"]

    @property
    def proposal_params(self) -> dict[str, Any]:
        return dict(self.data["proposal_params"])

    @property
    def cursor(self) -> tuple[str, int] | None:
        cur = self.data.get("cursor")
        return (cur["image"], int(cur["cell"])) if cur else None

    def save(self) -> None:
        self.data["updated"] = _now()
        write_json(self.path, self.data)

    def record(self, action: dict[str, Any]) -> None:
        """Append one action (checked) and save at once."""
        self._check_action(action, str(self.path))
        self.actions.append(dict(action))
        self.save()

    def undo(self) -> dict[str, Any] | None:
        """Remove and return the last action (None when there is none); saves at once."""
        if not self.actions:
            return None
        act = self.actions.pop()
        self.save()
        return act

    def set_cursor(self, image: str, cell: int) -> None:
        self.data["cursor"] = {"image": image, "cell": int(cell)}
        self.save()

    def actions_for(self, image: str) -> list[dict[str, Any]]:
        return [a for a in self.actions if a["image"] == image]


def replay(proposal_instances: np.ndarray, actions: Iterable[Mapping[str, Any]]) -> tuple[np.ndarray, dict[int, int]]:
    """Apply the actions of one image to its proposals -> (instance map, {cell id: class})."""
    inst = np.asarray(proposal_instances).astype(np.int32, copy=True)
    labels: dict[int, int] = {}
    for act in actions:
        op = act["op"]
        if op == "label":
            cell = int(act["cell"])
            if not (inst == cell).any():
                raise DecisionsError(f"image {act['image']}: labelled cell {cell} does not exist")
            labels[cell] = _check_class(act["label"], f"image {act['image']}")
        elif op == "merge":
            a, b = (int(c) for c in act["cells"])
            inst = merge_cells(inst, a, b)
            labels.pop(a, None)
            labels.pop(b, None)
        elif op == "split":
            inst = split_cell(inst, int(act["cell"]))
            labels.pop(int(act["cell"]), None)
    return inst, labels


@dataclass
class Annotation:
    """The outcome for one image: class map, instance map, still-undecided cell ids."""

    labels: np.ndarray
    instances: np.ndarray
    unlabelled: list[int] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.unlabelled


def apply_decisions(proposal_instances: np.ndarray, actions: Iterable[Mapping[str, Any]]) -> Annotation:
    """Class map (uint8 0..4) + instance map (ids 1..N of the cells labelled 1..4).

    Cells labelled 0 ("not a cell") become background; undecided cells are listed in
    ``unlabelled`` and left out of both maps.
    """
    inst, labels = replay(proposal_instances, actions)
    ids = np.unique(inst)
    ids = ids[ids > 0]
    lut = np.zeros(int(inst.max(initial=0)) + 1, dtype=np.uint8)
    for cell, cls in labels.items():
        lut[cell] = cls
    class_map = lut[inst]
    kept = np.where(class_map > 0, inst, 0)
    return Annotation(labels=class_map, instances=relabel_sequential(kept)[0].astype(np.int32),
                      unlabelled=[int(c) for c in ids if int(c) not in labels])


# ------------------------------------------------------------------------------- session
class AnnotationSession:
    """The annotation state of a set of phase images, behind the widget (no display code).

    phase_paths: phase images (``<run>/phase/*.tif``); decisions_path: the JSON decisions
    file (created, or resumed after checking it belongs to these images);
    proposal options as in :func:`propose_cells`. Proposals are computed when an image is
    first visited. Every change is saved to the decisions file before the call returns.
    """

    def __init__(self, phase_paths: Iterable[str | Path], decisions_path: str | Path, *,
                 threshold_rad: float | None = None, smooth_sigma_px: float = 1.0, edge_fraction: float = 0.5,
                 min_separation_um: float = 2.5, min_area_um2: float = 8.0):
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

    def phase(self, stem: str) -> np.ndarray:
        """Phase image [rad] of ``stem`` (the last few are kept in memory)."""
        if stem not in self._phase:
            if len(self._phase) >= 4:
                self._phase.pop(next(iter(self._phase)))
            self._phase[stem] = read_phase(self.paths[stem]).data
        return self._phase[stem]

    def proposals(self, stem: str) -> Proposals:
        if stem not in self._proposals:
            self._proposals[stem] = propose_cells(self.phase(stem), pixel_size_m=self.optics[stem].pixel_size_m,
                                                  **self.params)
        return self._proposals[stem]

    def state(self, stem: str) -> tuple[np.ndarray, dict[int, int]]:
        """(current instance map, {cell id: class}) after the decisions so far."""
        if stem not in self._state:
            self._state[stem] = replay(self.proposals(stem).instances, self.store.actions_for(stem))
        return self._state[stem]

    def cells(self, stem: str) -> list[int]:
        inst, _ = self.state(stem)
        ids = np.unique(inst)
        return [int(i) for i in ids if i > 0]

    def _check_cell(self, stem: str, cell: int) -> None:
        if stem not in self.paths:
            raise ValueError(f"unknown image {stem!r}")
        if int(cell) not in self.cells(stem):
            raise ValueError(f"image {stem}: no cell {cell}")

    def label(self, stem: str, cell: int, label: int) -> None:
        """Give ``cell`` the class ``label`` (0 not a cell, 1..4 the cell classes)."""
        label = _check_class(label, f"image {stem}, cell {cell}")
        self._check_cell(stem, cell)
        self.store.record({"op": "label", "image": stem, "cell": int(cell), "label": label})
        self._state.pop(stem, None)

    def merge(self, stem: str, a: int, b: int) -> int:
        """Merge two cells; returns the surviving id (the lower one)."""
        merge_cells(self.state(stem)[0], a, b)  # raises on bad ids before anything is saved
        self.store.record({"op": "merge", "image": stem, "cells": [int(a), int(b)]})
        self._state.pop(stem, None)
        return min(int(a), int(b))

    def split(self, stem: str, cell: int) -> tuple[int, int]:
        """Split one cell in two; returns the two ids (``cell``, new id)."""
        new = split_cell(self.state(stem)[0], cell)
        self.store.record({"op": "split", "image": stem, "cell": int(cell)})
        self._state.pop(stem, None)
        return int(cell), int(new.max())

    def undo(self) -> dict[str, Any] | None:
        """Undo the last decision of any image; returns it (None if there was none)."""
        act = self.store.undo()
        if act is not None:
            self._state.pop(act["image"], None)
        return act

    def next_unlabelled(self, after: tuple[str, int] | None = None) -> tuple[str, int] | None:
        """First undecided cell after position ``after`` (image order, then id), wrapping once."""
        start = self.stems.index(after[0]) if after else 0
        order = self.stems[start:] + self.stems[:start] + ([self.stems[start]] if after else [])
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
        """Where to continue: the saved cursor if that cell still exists, else the first undecided cell."""
        cur = self.store.cursor
        if cur and cur[0] in self.paths and cur[1] in self.cells(cur[0]):
            return cur
        return self.next_unlabelled() or next(((s, self.cells(s)[0]) for s in self.stems if self.cells(s)), None)

    def class_counts(self) -> dict[str, int]:
        """Cells decided so far per class name (``not a cell`` for 0)."""
        counts = {"not a cell": 0, **{CLASS_NAMES[c]: 0 for c in CELL_CLASSES}}
        for stem in dict.fromkeys(a["image"] for a in self.store.actions):
            for cls in self.state(stem)[1].values():
                counts["not a cell" if cls == 0 else CLASS_NAMES[cls]] += 1
        return counts

    def annotation(self, stem: str) -> Annotation:
        return apply_decisions(self.proposals(stem).instances, self.store.actions_for(stem))

    def export(self, run_paths: Any, *, include_incomplete: bool = False) -> tuple[pd.DataFrame, list[str]]:
        """Write labels/, instances/, cells.csv for the annotated images (see :func:`write_annotations`).

        Images with undecided cells are skipped unless ``include_incomplete`` (their
        undecided cells would become background). Returns (cell table, skipped stems).
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

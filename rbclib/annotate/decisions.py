"""Annotation decisions (stage 02): replayable actions (label, merge, split) kept in a JSON
file (:class:`DecisionStore`, written atomically after every decision, earlier versions backed
up); :func:`replay` and :func:`apply_decisions` turn them into a class map and an instance map.
The session the widget drives is :mod:`rbclib.annotate.session`.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from skimage.segmentation import relabel_sequential

from rbclib.annotate.proposals import merge_cells, split_cell
from rbclib.core.files import back_up, read_json, write_json
from rbclib.core.labels import N_CLASSES

DECISIONS_FORMAT = "rbc-holo-decisions/1"


# ---------------------------------------------------------------------------- decisions
class DecisionsError(ValueError):
    """A decisions file cannot be used (another image set, bad labels, bad format)."""


def phase_fingerprint(phase: np.ndarray) -> str:
    """Short SHA-1 of a phase image's float32 pixels and shape (ties decisions to images).

    Parameters
    ----------
    phase : numpy.ndarray
        (H, W) phase [rad]; hashed as float32.

    Returns
    -------
    str
        The first 16 hex digits of the SHA-1.
    """
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

    Parameters
    ----------
    path : str or pathlib.Path
        The JSON decisions file; created (and saved at once) when missing.
    images : mapping of str to str
        The image set: stem -> :func:`phase_fingerprint`.
    proposal_params : mapping of str to float or None
        The proposal parameters (stored as floats); an existing file with decisions must hold
        the same.

    Raises
    ------
    DecisionsError
        An existing file of another format, image set, pixel data or proposal parameters, or
        holding a bad action.
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
        """The recorded actions, oldest first (the stored list itself)."""
        return self.data["actions"]

    @property
    def proposal_params(self) -> dict[str, Any]:
        """A copy of the stored proposal parameters."""
        return dict(self.data["proposal_params"])

    @property
    def cursor(self) -> tuple[str, int] | None:
        """(image, cell) where the person stopped; None when not set."""
        cur = self.data.get("cursor")
        return (cur["image"], int(cur["cell"])) if cur else None

    def save(self) -> None:
        """Stamp the update time and write the file atomically."""
        self.data["updated"] = _now()
        write_json(self.path, self.data)

    def record(self, action: dict[str, Any]) -> None:
        """Append one action (checked) and save at once.

        Parameters
        ----------
        action : dict
            ``{"op": "label", "image", "cell", "label"}``, ``{"op": "merge", "image", "cells": [a, b]}``
            or ``{"op": "split", "image", "cell"}``; cell ids positive integers.

        Raises
        ------
        DecisionsError
            An action of an unknown image or kind, a label outside 0..4, or bad cell ids.
        """
        self._check_action(action, str(self.path))
        self.actions.append(dict(action))
        self.save()

    def record_all(self, actions: Iterable[dict[str, Any]]) -> None:
        """Append several actions as one decision (one save; one :meth:`undo` removes them all).

        Parameters
        ----------
        actions : iterable of dict
            Actions as for :meth:`record`.

        Raises
        ------
        DecisionsError
            A bad action (nothing is recorded then).
        """
        actions = [dict(a) for a in actions]
        for act in actions:
            self._check_action(act, str(self.path))
        batch = 1 + max((int(a.get("batch", 0)) for a in self.actions), default=0)
        self.actions.extend({**a, "batch": batch} for a in actions)
        self.save()

    def undo(self) -> dict[str, Any] | None:
        """Remove the last decision (an action, or every action of the last :meth:`record_all`); saves at once.

        Returns
        -------
        dict or None
            The removed action (the first of a batch); None when there is none.
        """
        if not self.actions:
            return None
        act = self.actions.pop()
        while act.get("batch") is not None and self.actions and self.actions[-1].get("batch") == act["batch"]:
            act = self.actions.pop()
        self.save()
        return act

    def set_cursor(self, image: str, cell: int) -> None:
        """Store where the person stopped and save at once.

        Parameters
        ----------
        image : str
            The image's stem.
        cell : int
            The cell id.
        """
        self.data["cursor"] = {"image": image, "cell": int(cell)}
        self.save()

    def actions_for(self, image: str) -> list[dict[str, Any]]:
        """The actions of one image, oldest first.

        Parameters
        ----------
        image : str
            The image's stem.

        Returns
        -------
        list of dict
            Its actions.
        """
        return [a for a in self.actions if a["image"] == image]


def replay(proposal_instances: np.ndarray, actions: Iterable[Mapping[str, Any]]) -> tuple[np.ndarray, dict[int, int]]:
    """Apply the actions of one image to its proposals.

    Parameters
    ----------
    proposal_instances : numpy.ndarray
        (H, W) proposed instance map; not changed.
    actions : iterable of mapping
        The image's actions, oldest first (:meth:`DecisionStore.record`).

    Returns
    -------
    tuple of (numpy.ndarray, dict of int to int)
        (H, W) int32 instance map after the merges and splits, and {cell id: class}; a merged
        or split cell loses its label.

    Raises
    ------
    DecisionsError
        A label of a cell that does not exist, or outside 0..4.
    ValueError
        A merge or split of a cell that does not exist (:func:`merge_cells`, :func:`split_cell`).
    """
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
    """The outcome for one image.

    Attributes
    ----------
    labels : numpy.ndarray
        (H, W) uint8 class map 0..4.
    instances : numpy.ndarray
        (H, W) int32 instance map, ids 1..N of the labelled cells.
    unlabelled : list of int
        Still-undecided cell ids.
    """

    labels: np.ndarray
    instances: np.ndarray
    unlabelled: list[int] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Whether every cell is decided."""
        return not self.unlabelled


def apply_decisions(proposal_instances: np.ndarray, actions: Iterable[Mapping[str, Any]]) -> Annotation:
    """Class map (uint8 0..4) + instance map (ids 1..N of the cells labelled 1..4).

    Cells labelled 0 ("not a cell") become background; undecided cells are listed in
    ``unlabelled`` and left out of both maps.

    Parameters
    ----------
    proposal_instances : numpy.ndarray
        (H, W) proposed instance map.
    actions : iterable of mapping
        The image's actions, oldest first.

    Returns
    -------
    Annotation
        The class map, the instance map and the undecided cell ids.
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

"""Cell proposals, an annotation decisions store, exports and the train/test split (stage 02).

Workflow: :func:`propose_cells` cuts a phase image into candidate cells (threshold, then
a distance-transform watershed that splits touching cells). A person (the
``AnnotationWidget`` of ``rbclib.annotate.widget``) or the simulator's ground truth then
decides the class of every candidate, merging or splitting candidates where needed.
Decisions are replayable actions kept in a JSON file (:class:`DecisionStore`, written
atomically after every decision); :func:`apply_decisions` turns them into a class map and
an instance map; :func:`write_annotations` exports ``labels/``, ``instances/`` and
``cells.csv``; :func:`make_splits` draws the image-level train/test split.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import apply_hysteresis_threshold, threshold_otsu
from skimage.segmentation import relabel_sequential, watershed

from rbclib.core.config import Optics
from rbclib.core.io import read_phase, write_instances, write_labels
from rbclib.core.files import read_json, write_json, write_text
from rbclib.core.labels import CELL_CLASSES, CLASS_NAMES, N_CLASSES, check_labels
from rbclib.physics.measure import MEASUREMENT_COLUMNS, measure_cells
from rbclib.seg.metrics import aji, match_instances

DECISIONS_FORMAT = "rbc-holo-decisions/1"


# ----------------------------------------------------------------------------- proposals
@dataclass
class Proposals:
    """Candidate cells of one phase image.

    instances: (H, W) int32, 0 background, ids 1..N; threshold_rad: threshold used;
    flags: one row per id with ``cell_id``, ``area_px``, ``touches_edge``, ``tiny``.
    """

    instances: np.ndarray
    threshold_rad: float
    flags: pd.DataFrame


def propose_cells(phase: np.ndarray, *, threshold_rad: float | None = None, pixel_size_m: float = Optics().pixel_size_m,
                  smooth_sigma_px: float = 1.0, edge_fraction: float = 0.5, min_separation_um: float = 2.5,
                  min_area_um2: float = 8.0) -> Proposals:
    """Threshold (``threshold_rad`` [rad], or Otsu when None) then split touching cells.

    Objects are the pixels of the smoothed phase above the threshold, grown (hysteresis)
    over connected pixels above ``edge_fraction`` x threshold, so the faint cell rims
    are kept (on simulated fields 0.5 raises the proposal AJI from ~0.91 to ~0.98).
    The foreground (holes filled) is split by a watershed on the negative distance
    transform from seeds at distance maxima at least ``min_separation_um`` apart. Objects
    touching the image edge or smaller than ``min_area_um2`` are flagged, never dropped.
    """
    phase = np.asarray(phase, dtype=np.float32)
    if phase.ndim != 2:
        raise ValueError(f"phase must be a 2-D map, got shape {phase.shape}")
    if not np.all(np.isfinite(phase)):
        raise ValueError("phase holds NaN or infinite values")
    smooth = ndi.gaussian_filter(phase, smooth_sigma_px) if smooth_sigma_px > 0 else phase
    if threshold_rad is None:
        threshold_rad = float(threshold_otsu(smooth)) if smooth.min() < smooth.max() else math.inf
    if not 0 < edge_fraction <= 1:
        raise ValueError(f"edge_fraction must lie in (0, 1], got {edge_fraction}")
    mask = ndi.binary_fill_holes(apply_hysteresis_threshold(smooth, edge_fraction * threshold_rad, threshold_rad))
    dist = ndi.distance_transform_edt(mask)
    comps, _ = ndi.label(mask, structure=np.ones((3, 3), bool))
    sep_px = max(1, int(round(min_separation_um * 1e-6 / pixel_size_m)))
    peaks = peak_local_max(ndi.gaussian_filter(dist, 1.0), min_distance=sep_px, labels=comps, exclude_border=False)
    markers = np.zeros(phase.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # a component without a seed (tiny or flat) gets one at its first pixel
    seeded = np.unique(comps[markers > 0])
    for comp_id in np.setdiff1d(np.arange(1, comps.max() + 1), seeded):
        y, x = np.argwhere(comps == comp_id)[0]
        markers[y, x] = markers.max() + 1
    inst = watershed(-dist, markers, mask=mask) if mask.any() else np.zeros(phase.shape, np.int32)
    inst = relabel_sequential(inst.astype(np.int32))[0]
    return Proposals(instances=inst, threshold_rad=float(threshold_rad),
                     flags=_flags(inst, pixel_size_m=pixel_size_m, min_area_um2=min_area_um2))


def _flags(inst: np.ndarray, *, pixel_size_m: float, min_area_um2: float) -> pd.DataFrame:
    ids = np.arange(1, int(inst.max(initial=0)) + 1)
    area = np.bincount(inst.ravel(), minlength=ids.size + 1)[1:]
    border = np.unique(np.concatenate([inst[0], inst[-1], inst[:, 0], inst[:, -1]]))
    min_px = min_area_um2 * 1e-12 / pixel_size_m ** 2
    return pd.DataFrame({"cell_id": ids, "area_px": area, "touches_edge": np.isin(ids, border), "tiny": area < min_px})


def proposal_quality(proposed: np.ndarray, true_instances: np.ndarray) -> dict[str, float]:
    """Compare proposal instances with true instances (class-agnostic).

    Returns ``aji`` (eq. 14), ``n_true``, ``n_proposed``, ``matched_iou50`` (fraction
    of true cells whose best proposal has IoU > 0.5) and ``mean_iou``.
    """
    m = match_instances(proposed, true_instances)
    return {"aji": aji(proposed, true_instances), "n_true": int(len(m)),
            "n_proposed": int(len(np.unique(proposed)) - (1 if (np.asarray(proposed) == 0).any() else 0)),
            "matched_iou50": float((m["iou"] > 0.5).mean()) if len(m) else math.nan,
            "mean_iou": float(m["iou"].mean()) if len(m) else math.nan}


# ------------------------------------------------------------------------ edit operations
def merge_cells(instances: np.ndarray, a: int, b: int) -> np.ndarray:
    """Merge cell ``b`` into ``a`` (the lower id survives); returns a new instance map."""
    a, b = int(a), int(b)
    if a == b:
        raise ValueError(f"cannot merge cell {a} with itself")
    for c in (a, b):
        if c <= 0 or not (instances == c).any():
            raise ValueError(f"no cell {c} in this image")
    keep, gone = min(a, b), max(a, b)
    out = instances.copy()
    out[out == gone] = keep
    return out


def split_cell(instances: np.ndarray, cell: int) -> np.ndarray:
    """Split one cell in two by a watershed from its two main distance maxima.

    Without two maxima the seeds sit on the major axis, half an equivalent radius from
    the centroid. The first part keeps ``cell``, the second gets ``max id + 1``.
    """
    cell = int(cell)
    mask = instances == cell
    if cell <= 0 or not mask.any():
        raise ValueError(f"no cell {cell} in this image")
    if mask.sum() < 4:
        raise ValueError(f"cell {cell} has {int(mask.sum())} pixel(s); too small to split")
    ys, xs = np.nonzero(mask)
    y0, x0 = ys.min(), xs.min()
    crop = np.pad(mask[y0:ys.max() + 1, x0:xs.max() + 1], 1)
    dist = ndi.distance_transform_edt(crop)
    r_eq = math.sqrt(mask.sum() / math.pi)
    peaks = peak_local_max(dist, min_distance=max(2, int(r_eq / 3)), num_peaks=2, labels=crop.astype(int),
                           exclude_border=False)
    if len(peaks) < 2:
        pts = np.argwhere(crop).astype(float)
        centre = pts.mean(0)
        _, vecs = np.linalg.eigh(np.cov((pts - centre).T))
        axis = vecs[:, -1] * 0.5 * r_eq
        peaks = np.array([centre + axis, centre - axis])
        peaks = np.array([pts[np.argmin(((pts - p) ** 2).sum(1))] for p in peaks]).astype(int)
    markers = np.zeros(crop.shape, np.int32)
    markers[peaks[0][0], peaks[0][1]] = 1
    markers[peaks[1][0], peaks[1][1]] = 2
    parts = watershed(-dist, markers, mask=crop)[1:-1, 1:-1]
    if not (parts == 2).any() or not (parts == 1).any():
        raise ValueError(f"cell {cell} could not be split in two")
    out = instances.copy()
    region = out[y0:ys.max() + 1, x0:xs.max() + 1]
    region[(parts == 2)] = int(instances.max()) + 1
    return out


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


KEEP_BACKUPS = 10
"""Backups of a decisions file kept beside it (the newest ones)."""


class DecisionStore:
    """Annotation decisions of one image set, persisted to JSON after every change.

    The file holds the image set (stem -> :func:`phase_fingerprint`), the proposal
    parameters, an ordered list of actions (``label`` / ``merge`` / ``split``, each with
    its image) and a cursor (where the person stopped). Opening an existing file checks
    it was made for the same images and proposal parameters (:class:`DecisionsError`
    otherwise) and copies it to ``<name>.<UTC time>.bak.json`` before anything is written,
    unless the newest backup already holds the same content; the :data:`KEEP_BACKUPS` newest
    backups are kept.
    """

    def __init__(self, path: str | Path, images: Mapping[str, str], *, proposal_params: Mapping[str, Any]):
        self.path = Path(path)
        self.images = dict(images)
        params = {k: (None if v is None else float(v)) for k, v in dict(proposal_params).items()}
        if self.path.exists():
            data = read_json(self.path)
            self._validate(data, params)
            self.backup = self._back_up()
            self.data = data
        else:
            self.backup = None
            self.data = {"format": DECISIONS_FORMAT, "created": _now(), "updated": _now(), "images": self.images,
                         "proposal_params": params, "actions": [], "cursor": None}
            self.save()

    def _back_up(self) -> Path:
        """Copy the file to a new timestamped backup unless the newest one is identical; prune
        to :data:`KEEP_BACKUPS`. Returns the backup holding the current content."""
        backups = sorted(self.path.parent.glob(f"{self.path.stem}.*.bak.json"))
        if backups and backups[-1].read_bytes() == self.path.read_bytes():
            return backups[-1]
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        backup = self.path.with_name(f"{self.path.stem}.{stamp}.bak.json")
        shutil.copy2(self.path, backup)
        for old in [*backups, backup][:-KEEP_BACKUPS]:
            old.unlink(missing_ok=True)
        return backup

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


# ------------------------------------------------------------------------------- exports
def _backup_if_changed(path: Path, unchanged: bool, root: Path, backup_dir: Path) -> Path | None:
    """Copy ``path`` (below ``root``) to the same relative place under ``backup_dir`` unless unchanged."""
    if path.exists() and not unchanged:
        target = backup_dir / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        return target
    return None


def write_annotations(run_paths: Any, annotations: Mapping[str, tuple[np.ndarray, np.ndarray]],
                      phases: Mapping[str, np.ndarray] | Callable[[str], np.ndarray], *, optics: Optics) -> pd.DataFrame:
    """Write ``labels/<stem>.png``, ``instances/<stem>.png`` and ``cells.csv`` of a run.

    run_paths: a :class:`rbclib.core.paths.RunPaths`; annotations: stem -> (class map uint8
    0..4, instance map); phases: stem -> phase [rad], a mapping or a function (read lazily).
    An existing label/instance file or cells.csv with different content is first copied
    to ``<run>/annotations/backup/<UTC time>/``. Returns the cell table (columns
    ``image``, ``cell_id``, ``class_id``, ``class_name`` and the measurements).
    """
    from rbclib.core.io import read_instances, read_labels

    backup_dir = run_paths.annotations / "backup" / _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    frames = []
    for stem, (labels, inst) in annotations.items():
        labels = check_labels(labels, source=f"class map of {stem}")
        inst = np.asarray(inst)
        phase = np.asarray(phases(stem) if callable(phases) else phases[stem])
        if labels.shape != phase.shape or inst.shape != phase.shape:
            raise ValueError(f"{stem}: phase {phase.shape}, class map {labels.shape} and instance map "
                             f"{inst.shape} must have one shape")
        lab_path, inst_path = run_paths.labels / f"{stem}.png", run_paths.instances / f"{stem}.png"
        _backup_if_changed(lab_path, lab_path.exists() and np.array_equal(read_labels(lab_path), labels),
                           run_paths.root, backup_dir)
        _backup_if_changed(inst_path, inst_path.exists() and np.array_equal(read_instances(inst_path), inst),
                           run_paths.root, backup_dir)
        write_labels(lab_path, labels)
        write_instances(inst_path, inst)
        df = measure_cells(phase, inst.astype(np.int32), optics=optics, labels=labels)
        df.insert(0, "image", stem)
        frames.append(df)
    first = ["image", "cell_id", "class_id", "class_name"]
    table = pd.concat(frames, ignore_index=True) if frames else \
        pd.DataFrame(columns=first + [c for c in MEASUREMENT_COLUMNS if c != "cell_id"])
    table = table[first + [c for c in table.columns if c not in first]]
    if frames:
        table.attrs = dict(frames[0].attrs)
    text = table.to_csv(index=False)
    csv = run_paths.cells_csv
    _backup_if_changed(csv, csv.exists() and csv.read_text() == text, run_paths.root, backup_dir)
    write_text(csv, text)
    return table


# ------------------------------------------------------------------ simulated ground truth
def truth_annotations(run_paths: Any, stems: Iterable[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The simulator's labels and instances (``<run>/truth/``) as annotations: stem -> (class map, instances)."""
    from rbclib.core.io import read_instances, read_labels

    out = {}
    for stem in stems:
        lab, inst = run_paths.truth / "labels" / f"{stem}.png", run_paths.truth / "instances" / f"{stem}.png"
        for path in (lab, inst):
            if not path.exists():
                raise FileNotFoundError(f"{path}: ground truth missing for phase image {stem}")
        out[stem] = (read_labels(lab), read_instances(inst))
    return out


def evaluate_proposals(run_paths: Any, stems: Iterable[str], *, threshold_rad: float | None = None,
                       progress: bool = True, **proposal_options: Any) -> pd.DataFrame:
    """Proposal quality against the simulator's instances, one row per image.

    Proposals are made on the reconstructed phase (``<run>/phase``) and, where it exists,
    on the true phase (``<run>/truth/phase``). Columns: ``image``, ``threshold_rad``,
    ``n_true``, ``n_proposed``, ``aji``, ``matched_iou50``, ``mean_iou`` (reconstructed
    phase) and ``aji_true_phase``.
    """
    from tqdm.auto import tqdm

    from rbclib.core.io import read_instances

    rows = []
    for stem in tqdm(list(stems), desc="proposal quality", disable=not progress):
        img = read_phase(run_paths.phase / f"{stem}.tif")
        true_inst = read_instances(run_paths.truth / "instances" / f"{stem}.png")
        if true_inst.shape != img.data.shape:
            raise ValueError(f"{stem}: phase {img.data.shape} and true instances {true_inst.shape} differ in shape")
        px = img.optics().pixel_size_m
        prop = propose_cells(img.data, threshold_rad=threshold_rad, pixel_size_m=px, **proposal_options)
        row = {"image": stem, "threshold_rad": prop.threshold_rad, **proposal_quality(prop.instances, true_inst)}
        true_phase = run_paths.truth / "phase" / f"{stem}.tif"
        if true_phase.exists():
            p_true = propose_cells(read_phase(true_phase).data, threshold_rad=threshold_rad, pixel_size_m=px,
                                   **proposal_options)
            row["aji_true_phase"] = aji(p_true.instances, true_inst)
        rows.append(row)
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------------- splits
def make_splits(stems: Iterable[str], labels_by_stem: Mapping[str, Any], *, test_fraction: float, seed: int,
                n_draws: int = 2000) -> dict[str, Any]:
    """Seeded image-level train/test split, stratified so every class is in both parts.

    labels_by_stem: stem -> class map (array) or the iterable of class ids present.
    Draws ``n_draws`` random splits of size round(test_fraction * n) (at least 1 each)
    and keeps the one covering the most cell classes in both train and test, ties broken
    by the closest test class frequencies to those of the whole set. Returns the dict of
    ``splits.json``: train, test, seed, method, and ``classes_not_in_both`` (empty when
    stratification succeeded).
    """
    stems = list(stems)
    n = len(stems)
    if n < 2:
        raise ValueError(f"need at least 2 images to split, got {n}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    pres = np.zeros((n, len(CELL_CLASSES)), dtype=bool)
    for i, s in enumerate(stems):
        if s not in labels_by_stem:
            raise ValueError(f"no labels for image {s!r}")
        v = labels_by_stem[s]
        present = set(np.unique(v).tolist()) if isinstance(v, np.ndarray) else set(int(c) for c in v)
        pres[i] = [c in present for c in CELL_CLASSES]
    n_test = min(n - 1, max(1, int(round(test_fraction * n))))
    rng = np.random.default_rng(seed)
    overall = pres.mean(0)
    best, best_key = None, None
    for _ in range(n_draws):
        perm = rng.permutation(n)
        test, train = perm[:n_test], perm[n_test:]
        both = pres[test].any(0) & pres[train].any(0)
        key = (int(both.sum()), -float(np.abs(pres[test].mean(0) - overall).sum()))
        if best_key is None or key > best_key:
            best, best_key = (sorted(train.tolist()), sorted(test.tolist())), key
    train_i, test_i = best
    both = pres[test_i].any(0) & pres[train_i].any(0)
    return {"train": [stems[i] for i in train_i], "test": [stems[i] for i in test_i], "seed": int(seed),
            "method": f"image-level, seeded; best of {n_draws} random draws covering every cell class in train and "
                      f"test (then closest class frequencies); test_fraction={test_fraction}",
            "classes_not_in_both": [CLASS_NAMES[c] for c, ok in zip(CELL_CLASSES, both) if not ok and pres[:, CELL_CLASSES.index(c)].any()]}

"""Exports of stage 02: ``labels/``, ``instances/`` and ``cells.csv`` from decided annotations
(:func:`write_annotations`), the simulator's ground truth as annotations
(:func:`truth_annotations`) and the image-level train/test split (:func:`make_splits`)."""
from __future__ import annotations

import datetime as _dt
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from rbclib.core.config import Optics
from rbclib.core.files import write_text
from rbclib.core.io import write_instances, write_labels
from rbclib.core.labels import CELL_CLASSES, CLASS_NAMES, check_labels
from rbclib.physics.measure import MEASUREMENT_COLUMNS, measure_cells


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

    An existing label/instance file or cells.csv with different content is first copied
    to ``<run>/annotations/backup/<UTC time>/``.

    Parameters
    ----------
    run_paths : rbclib.core.paths.RunPaths
        The run folder.
    annotations : mapping of str to (numpy.ndarray, numpy.ndarray)
        Stem -> (class map uint8 0..4, instance map), each (H, W).
    phases : mapping of str to numpy.ndarray, or callable
        Stem -> (H, W) phase [rad], a mapping or a function (read lazily).
    optics : Optics
        The optics the measurements use.

    Returns
    -------
    pandas.DataFrame
        The cell table (columns ``image``, ``cell_id``, ``class_id``, ``class_name`` and the
        measurements).

    Raises
    ------
    ValueError
        A class map with values outside 0..4, or a phase, class map and instance map of
        different shapes.
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
    """The simulator's labels and instances (``<run>/truth/``) as annotations.

    Parameters
    ----------
    run_paths : rbclib.core.paths.RunPaths
        The run folder.
    stems : iterable of str
        The phase images' stems.

    Returns
    -------
    dict of str to (numpy.ndarray, numpy.ndarray)
        Stem -> (class map, instances).

    Raises
    ------
    FileNotFoundError
        The ground truth of a stem is missing.
    """
    from rbclib.core.io import read_instances, read_labels

    out = {}
    for stem in stems:
        lab, inst = run_paths.truth / "labels" / f"{stem}.png", run_paths.truth / "instances" / f"{stem}.png"
        for path in (lab, inst):
            if not path.exists():
                raise FileNotFoundError(f"{path}: ground truth missing for phase image {stem}")
        out[stem] = (read_labels(lab), read_instances(inst))
    return out


# -------------------------------------------------------------------------------- splits
def make_splits(stems: Iterable[str], labels_by_stem: Mapping[str, Any], *, test_fraction: float, seed: int,
                n_draws: int = 2000) -> dict[str, Any]:
    """Seeded image-level train/test split, stratified so every class is in both parts.

    Draws ``n_draws`` random splits of size round(test_fraction * n) (at least 1 each)
    and keeps the one covering the most cell classes in both train and test, ties broken
    by the closest test class frequencies to those of the whole set.

    Parameters
    ----------
    stems : iterable of str
        The images, at least 2.
    labels_by_stem : mapping of str to numpy.ndarray or iterable of int
        Stem -> class map (array) or the iterable of class ids present.
    test_fraction : float
        Share of the images in the test part, in (0, 1).
    seed : int
        Seed of the random draws.
    n_draws : int, optional
        Number of random splits drawn (default 2000).

    Returns
    -------
    dict
        The dict of ``splits.json``: train, test, seed, method, and ``classes_not_in_both``
        (empty when stratification succeeded).

    Raises
    ------
    ValueError
        Fewer than 2 images, ``test_fraction`` outside (0, 1), or an image without labels.
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

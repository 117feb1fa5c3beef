"""What ``rbc assess`` works on: its inputs, their storage days and the model.

Inputs (:func:`discover_inputs`):

- one image file, or a folder of images (one blood unit);
- a *dataset folder* as the simulator writes it: ``holograms/`` (with optional
  ``backgrounds/<same stem>``) or else ``phase/``, plus optional ground truth
  ``labels/`` and ``instances/`` (same stems);
- a *storage series*: sub-folders whose names carry the day (``day_08``, ``Day 13``,
  ``d16``), each a dataset folder or a plain folder of images;
- any of these with a day-map CSV (columns ``file`` and ``day``; ``file`` is a path
  relative to the input, a file name or a stem), which overrides days from folder names.

The model (:func:`resolve_model`): without ``--model`` the default model shipped inside the
package; ``--model latest`` the best arm (:func:`best_model_in`) of the most recent finished
run (:func:`find_latest_model`); else the model folder given.
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import pandas as pd

from rbclib.core.files import ImageFileError, read_json
from rbclib.core.io import IMAGE_SUFFIXES
from rbclib.core.markdown import md_code
from rbclib.core.paths import SEG_ARMS
from rbclib.core.paths import runs_roots as default_runs_roots

ARM_PREFERENCE: tuple[str, ...] = ("da_ssl", "ssl", "da", "backbone")
"""Order in which arms are preferred when validation Dice ties (:func:`best_model_in`)."""
_DAY_RE = re.compile(r"^(?:day|d)[ _-]?(\d+(?:\.\d+)?)(?:$|[ _-])", re.IGNORECASE)


_DATASET_DIRS = ("holograms", "backgrounds", "phase", "labels", "instances", "truth")


@dataclass(frozen=True)
class ImageJob:
    """One image to assess.

    Attributes
    ----------
    image : str
        Unique id (path relative to the input without suffix, POSIX, dataset sub-folders
        dropped, e.g. ``day_08/field_0000``).
    path : pathlib.Path
        The image file.
    day : float
        Storage day (NaN if unknown).
    background : pathlib.Path or None
        Background hologram file.
    truth_labels, truth_instances : pathlib.Path or None
        Ground truth class map and instance map.
    optics_json : pathlib.Path or None
        The dataset folder's ``optics.json`` (default optics for its images).
    """

    image: str
    path: Path
    day: float = math.nan
    background: Path | None = None
    truth_labels: Path | None = None
    truth_instances: Path | None = None
    optics_json: Path | None = None


def parse_day(name: str) -> float | None:
    """Storage day from a folder name (``day_08``, ``Day 13``, ``d16`` -> 8.0, 13.0, 16.0).

    Parameters
    ----------
    name : str
        A folder name.

    Returns
    -------
    float or None
        The day; None when the name carries none.
    """
    m = _DAY_RE.match(name.strip())
    return float(m.group(1)) if m else None


def read_day_map(path: str | Path) -> dict[str, float]:
    """A CSV mapping files to storage days.

    Columns ``file`` (or ``image``/``path``) and ``day`` (or ``storage_day``). A row repeated
    with the same day is dropped with a warning.

    Parameters
    ----------
    path : str or pathlib.Path
        The CSV file (UTF-8).

    Returns
    -------
    dict of str to float
        {key as written: day}.

    Raises
    ------
    rbclib.core.files.ImageFileError
        Naming the file and the rows for: an unreadable file or encoding, missing columns, a
        day that is not a finite number >= 0, and one file given two different days.
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImageFileError(path, f"the day map is not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV") from exc
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ImageFileError(path, f"cannot read the day map ({exc})") from exc
    fcol = next((c for c in ("file", "image", "path", "filename") if c in frame.columns), None)
    dcol = next((c for c in ("day", "storage_day", "days") if c in frame.columns), None)
    if fcol is None or dcol is None:
        raise ImageFileError(path, f"day map needs columns 'file' and 'day'; has {list(frame.columns)}")
    files = frame[fcol].str.strip()
    days = pd.to_numeric(frame[dcol].str.strip(), errors="coerce")
    bad = [f"row {i + 2} ({f!r}: {d!r})" for i, (f, d, v) in enumerate(zip(files, frame[dcol], days))
           if not (math.isfinite(v) and v >= 0)]
    if bad:
        raise ImageFileError(path, f"storage days must be finite numbers >= 0: {', '.join(bad[:5])}"
                             + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
    mapping: dict[str, float] = {}
    first_row: dict[str, int] = {}
    for i, (f, d) in enumerate(zip(files, days)):
        if f in mapping and mapping[f] != d:
            raise ImageFileError(path, f"{f!r} has two days: {mapping[f]:g} (row {first_row[f]}) and {d:g} "
                                 f"(row {i + 2}); keep one")
        if f in mapping:
            warnings.warn(f"{path}: row {i + 2} repeats {f!r} (row {first_row[f]}); used once", stacklevel=2)
            continue
        mapping[f], first_row[f] = float(d), i + 2
    return mapping


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _match_stem(folder: Path, stem: str) -> Path | None:
    if not folder.is_dir():
        return None
    hits = [p for p in _images(folder) if p.stem == stem]
    return hits[0] if hits else None


def _dataset_jobs(folder: Path, root: Path, day: float) -> list[ImageJob]:
    """Jobs of one dataset folder (holograms/ or phase/ + truth) or plain image folder."""
    if (folder / "holograms").is_dir():
        source = folder / "holograms"
    elif (folder / "phase").is_dir():
        source = folder / "phase"
    else:
        source = folder
    optics_json = next((f for f in (source / "optics.json", folder / "optics.json") if f.is_file()), None)
    jobs = []
    for p in _images(source):
        rel = folder.relative_to(root) / p.stem
        bg = _match_stem(folder / "backgrounds", p.stem) if source.name == "holograms" else None
        tl = _match_stem(folder / "labels", p.stem) if source != folder else None
        ti = _match_stem(folder / "instances", p.stem) if source != folder else None
        jobs.append(ImageJob(image=rel.as_posix(), path=p, day=day, background=bg, truth_labels=tl,
                             truth_instances=ti if tl is not None else None, optics_json=optics_json))
    return jobs


def discover_inputs(input_path: str | Path, *, day_map: Mapping[str, float] | str | Path | None = None) -> list[ImageJob]:
    """Every image to assess under ``input_path`` (file or folder), with its storage day.

    See the module doc for the layouts understood.

    Parameters
    ----------
    input_path : str or pathlib.Path
        An image file or a folder.
    day_map : mapping of str to float, str or pathlib.Path, optional
        Days by file (a mapping, or a CSV read by :func:`read_day_map`); overrides days from
        folder names.

    Returns
    -------
    list of ImageJob
        One job per image, in folder order.

    Raises
    ------
    rbclib.core.files.ImageFileError
        If the input does not exist or holds no images, when two images share an id, or on a
        bad day map.
    """
    root = Path(input_path).expanduser()
    if not root.exists():
        raise ImageFileError(root, "input not found")
    map_source = "the day map"
    if day_map is not None and not isinstance(day_map, Mapping):
        map_source = str(day_map)
        day_map = read_day_map(day_map)
    if root.is_file():
        day = parse_day(root.parent.name)
        optics_json = root.parent / "optics.json"
        jobs = [ImageJob(image=root.stem, path=root, day=math.nan if day is None else day,
                         optics_json=optics_json if optics_json.is_file() else None)]
    else:
        day_dirs = sorted((d for d in root.iterdir() if d.is_dir() and parse_day(d.name) is not None),
                          key=lambda d: (parse_day(d.name), d.name))
        own = parse_day(root.name)
        jobs = _dataset_jobs(root, root, math.nan if own is None else own)
        for d in day_dirs:
            jobs += _dataset_jobs(d, root, parse_day(d.name))
    if day_map:
        jobs = _apply_day_map(jobs, root, day_map, Path(map_source))
    if not jobs:
        raise ImageFileError(root, f"no images found (looked for {', '.join(IMAGE_SUFFIXES)} files, in "
                             "holograms/ or phase/ sub-folders and in day_NN/ folders)")
    ids = [j.image for j in jobs]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ImageFileError(root, f"several files share the image name(s) {dupes[:5]} (same stem, different suffix)")
    return jobs


def _day_map_matches(job: ImageJob, root: Path, key: str) -> bool:
    """Whether day-map entry ``key`` names ``job``: a path relative to the input folder (with or
    without its suffix, or the image id) when it holds a ``/``, else a file name or stem."""
    rel = job.path.relative_to(root).as_posix() if root.is_dir() else job.path.name
    if "/" in key.strip("/"):
        key = key.strip("/")
        return key in (rel, rel.rsplit(".", 1)[0], job.image)
    return key in (job.path.name, job.path.stem)


def _apply_day_map(jobs: list[ImageJob], root: Path, day_map: Mapping[str, float], source: Path) -> list[ImageJob]:
    """``jobs`` with the days of ``day_map``. ImageFileError naming ``source`` when a bare name
    matches several images (give their paths), when one image gets two days, or when no entry
    matches any image; a warning names the entries that match no image (case differs, typo)."""
    days: dict[str, tuple[float, str]] = {}
    unmatched = []
    for key, day in day_map.items():
        hits = [j for j in jobs if _day_map_matches(j, root, key)]
        if not hits:
            unmatched.append(key)
        elif len(hits) > 1 and "/" not in key.strip("/"):
            raise ImageFileError(source, f"{key!r} names {len(hits)} images ({', '.join(j.image for j in hits[:3])}"
                                 f"{', ...' if len(hits) > 3 else ''}); give each one's path relative to {root}, "
                                 f"e.g. {hits[0].path.relative_to(root).as_posix() if root.is_dir() else key!r}")
        for j in hits:
            if j.image in days and days[j.image][0] != day:
                raise ImageFileError(source, f"image {j.image} gets day {days[j.image][0]:g} from "
                                     f"{days[j.image][1]!r} and day {day:g} from {key!r}; keep one")
            days[j.image] = (float(day), key)
    if jobs and not days:
        raise ImageFileError(source, f"no entry matches an image under {root} (entries such as "
                             f"{list(day_map)[:3]}; images such as {[j.image for j in jobs[:3]]})")
    if unmatched:
        warnings.warn(f"{source}: {len(unmatched)} entr{'y' if len(unmatched) == 1 else 'ies'} match no image "
                      f"under {root} and are ignored: {', '.join(map(repr, unmatched[:5]))}"
                      f"{' ...' if len(unmatched) > 5 else ''} (names are case-sensitive)", stacklevel=3)
    missing = [j.image for j in jobs if j.image not in days]
    if missing:
        warnings.warn(f"{source}: {len(missing)} image(s) have no entry and keep the day of their folder name (or "
                      f"none): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}", stacklevel=3)
    return [dataclasses.replace(j, day=days[j.image][0]) if j.image in days else j for j in jobs]


def training_finished(model_dir: str | Path) -> bool:
    """Whether the training that writes ``model_dir`` has run all its epochs.

    One ``log.csv`` row per epoch against ``epochs`` in ``config.json``.

    Parameters
    ----------
    model_dir : str or pathlib.Path
        A model folder.

    Returns
    -------
    bool
        True when finished; False when unfinished or either file is missing or unreadable.
    """
    folder = Path(model_dir)
    try:
        epochs = int(read_json(folder / "config.json")["epochs"])
        return len(pd.read_csv(folder / "log.csv")) >= epochs
    except (OSError, KeyError, TypeError, ValueError, ImageFileError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return False


def best_model_in(models_dir: str | Path) -> Path:
    """The segmentation model of one run's ``models/`` folder to deploy.

    Among the ``seg_<arm>`` folders with a ``best.pt``, the one with the highest validation Dice
    (``val_dice_overall`` in its ``log.csv``; validation images come from the train split,
    so the test split never chooses); ties and missing logs fall back to the order
    ``seg_da_ssl`` > ``seg_ssl`` > ``seg_da`` > ``seg_backbone``. A model still training
    (fewer ``log.csv`` rows than its ``config.json`` epochs) is passed over.

    Parameters
    ----------
    models_dir : str or pathlib.Path
        A run's ``models/`` folder.

    Returns
    -------
    pathlib.Path
        The chosen ``seg_<arm>`` folder.

    Raises
    ------
    FileNotFoundError
        When no arm has a finished, trained model.
    """
    models_dir = Path(models_dir)
    present = [models_dir / f"seg_{arm}" for arm in ARM_PREFERENCE if (models_dir / f"seg_{arm}" / "best.pt").is_file()]
    candidates = [folder for folder in present if training_finished(folder)]
    if not candidates:
        still = f" ({', '.join(f.name for f in present)} still training)" if present else ""
        raise FileNotFoundError(f"{models_dir}: no trained segmentation model{still} (looked for "
                                f"{', '.join(f'seg_{a}/best.pt' for a in ARM_PREFERENCE)})")

    def validation_dice(folder: Path) -> float:
        try:
            log = pd.read_csv(folder / "log.csv")
            return float(log["val_dice_overall"].max())
        except (OSError, KeyError, ValueError, pd.errors.ParserError):
            return float("-inf")

    return max(candidates, key=lambda folder: (validation_dice(folder), -candidates.index(folder)))


def find_latest_model(runs_roots: list[str | Path] | None = None) -> tuple[Path, str]:
    """Best model of the most recent run.

    Looks for ``<root>/*/models/seg_*/best.pt`` under each root; the run whose newest
    ``best.pt`` is most recent wins, and within it :func:`best_model_in` picks the arm.

    Parameters
    ----------
    runs_roots : list of str or pathlib.Path, optional
        Folders holding runs (default: :func:`rbclib.core.paths.runs_roots`: ``$RBC_RUNS``,
        ``./runs`` and a source checkout's ``runs/``).

    Returns
    -------
    model : pathlib.Path
        The model folder.
    why : str
        A sentence saying why (Markdown, for the report).

    Raises
    ------
    FileNotFoundError
        When no finished trained model is found.
    """
    roots = [Path(r) for r in runs_roots] if runs_roots else default_runs_roots()
    runs: dict[Path, float] = {}
    for root in roots:
        for pt in root.glob("*/models/seg_*/best.pt"):
            if pt.parent.name[len("seg_"):] in SEG_ARMS and training_finished(pt.parent):
                run = pt.parents[2].resolve()
                runs[run] = max(runs.get(run, 0.0), pt.stat().st_mtime)
    if not runs:
        raise FileNotFoundError("no trained model found for --model latest (looked for runs/*/models/seg_*/best.pt "
                                f"under {', '.join(str(r) for r in roots)}); run `make run` first, pass --model DIR or set $RBC_RUNS")
    run = max(runs, key=runs.get)
    model = best_model_in(run / "models")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(runs[run]))
    return model, (f"`--model latest`: {md_code(model)}, the arm with the highest validation Dice of the "
                   f"most recent run {md_code(run)} (trained {when})")


LATEST = "latest"
"""``--model latest``: the best arm of the most recent run (:func:`find_latest_model`)."""


def resolve_model(model: str | Path | None, runs_roots: list[str | Path] | None = None) -> tuple[Path, str]:
    """The model folder to use and a sentence for the report saying which it is.

    Parameters
    ----------
    model : str or pathlib.Path or None
        None: the default model shipped inside the package
        (:data:`rbclib.study.default_model.SHIPPED_MODEL_DIR`, named with its card);
        ``"latest"``: :func:`find_latest_model` under ``runs_roots``; anything else: that model folder.
    runs_roots : list of str or pathlib.Path, optional
        Folders searched for ``"latest"``.

    Returns
    -------
    model_dir : pathlib.Path
        The model folder.
    why : str
        A sentence for the report (Markdown).

    Raises
    ------
    FileNotFoundError
        When the shipped model is missing or ``"latest"`` finds no model.
    """
    from rbclib.study.default_model import SHIPPED_MODEL_DIR

    if model is None:
        if not (SHIPPED_MODEL_DIR / "best.pt").is_file():
            raise FileNotFoundError(f"{SHIPPED_MODEL_DIR}: the shipped default model is missing from this installation "
                                    "(reinstall rbc-holo, run `make default-model`, or pass --model DIR / --model latest)")
        return SHIPPED_MODEL_DIR, (f"the shipped default model `rbclib/models/default` (model card: "
                                   f"{md_code(SHIPPED_MODEL_DIR / 'MODEL_CARD.md')})")
    if str(model) == LATEST:
        return find_latest_model(runs_roots)
    folder = Path(model).expanduser()
    return folder, f"{md_code(folder)} (given with --model)"

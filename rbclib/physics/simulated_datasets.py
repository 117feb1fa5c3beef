"""The digital twin's dataset folders on disk: :func:`simulate_dataset` writes fields of
:func:`rbclib.physics.simulate.simulate_field` (images, tables, splits and the parameters),
:func:`simulate_storage_series` one such folder per storage day, and :func:`drew_flat_discocytes`
reads back what a folder's simulation drew."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from rbclib.core.config import Optics
from rbclib.physics.simulate import (
    CELL_COLUMNS,
    DEFAULT_FIELD_PX,
    STORAGE_DAYS,
    _check_field_args,
    _resolve_mixture,
    simulate_field,
    storage_mixture,
)

def _json_ready(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return _json_ready(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items() if k != "provenance"}
    if isinstance(value, (tuple, list)):
        return [_json_ready(v) for v in value]
    return value


def _write_fields(out_dir: Path, seeds: Sequence[np.random.SeedSequence], *, progress: bool, desc: str,
                  split_seed: int, test_fraction: float, **field_kw: Any) -> pd.DataFrame:
    from tqdm.auto import tqdm

    from rbclib.core import files, io

    out_dir = Path(out_dir)
    optics = field_kw.get("optics") or Optics()
    tables, stems, conditions = [], [], []
    for i, ss in enumerate(tqdm(seeds, desc=desc, disable=not progress)):
        f = simulate_field(np.random.default_rng(ss), **field_kw)
        stem = f"field_{i:04d}"
        io.write_camera_image(out_dir / "holograms" / f"{stem}.png", f.hologram)
        io.write_camera_image(out_dir / "backgrounds" / f"{stem}.png", f.background)
        io.write_phase(out_dir / "phase" / f"{stem}.tif", f.phase, optics)
        io.write_labels(out_dir / "labels" / f"{stem}.png", f.labels)
        io.write_instances(out_dir / "instances" / f"{stem}.png", f.instances)
        tables.append(f.cells.assign(image=stem))
        stems.append(stem)
        cond = {k: v for k, v in f.conditions.items() if k != "carrier"}
        carrier = f.conditions.get("carrier", f.carrier)
        conditions.append({"image": stem, **cond, "carrier_fy": carrier[0], "carrier_fx": carrier[1]})
    cells = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["image", *CELL_COLUMNS])
    cells = cells[["image", *CELL_COLUMNS]]
    files.write_csv(out_dir / "cells.csv", cells)
    files.write_csv(out_dir / "fields.csv", pd.DataFrame(conditions))
    optics.to_json(out_dir / "optics.json")
    order = np.random.default_rng(split_seed).permutation(len(stems))
    n_test = int(round(test_fraction * len(stems))) if len(stems) > 1 else 0
    test = sorted(stems[j] for j in order[:n_test])
    files.write_json(out_dir / "splits.json", {"train": [s for s in stems if s not in test], "test": test,
                                            "seed": split_seed, "method": f"random, test fraction {test_fraction:.3f}"})
    files.write_json(out_dir / "simulation.json", {
        "generator": "rbclib.physics.simulate", "seed": split_seed, "n_fields": len(stems),
        "per_field_conditions": "fields.csv (carrier [cycles/px], defocus, noise, density, ... each field drew)",
        "sign_convention": "+1 order at +carrier (fx > 0) holds exp(+i*phase): cells positive after background division",
        **{k: _json_ready(v) for k, v in field_kw.items() if k != "optics"}})
    return cells


def drew_flat_discocytes(dataset_dir: str | Path) -> bool:
    """Whether the twin dataset in ``dataset_dir`` drew a share of its discocytes flat-topped.

    Parameters
    ----------
    dataset_dir : str or pathlib.Path
        A folder written by :func:`simulate_dataset` (its ``simulation.json`` is read).

    Returns
    -------
    bool
        True when ``flat_discocyte_fraction`` > 0 there; False without that record.
    """
    from rbclib.core import files

    try:
        flat = files.read_json(Path(dataset_dir) / "simulation.json").get("flat_discocyte_fraction") or 0.0
    except (OSError, ValueError, AttributeError):
        return False
    return float(np.max(flat)) > 0


DATASET_ENTRIES = ("holograms", "backgrounds", "phase", "labels", "instances", "cells.csv", "fields.csv",
                   "optics.json", "splits.json", "simulation.json")
"""What :func:`simulate_dataset` writes into its folder (and only these are replaced)."""


def _clear_previous(out_dir: Path, entries: Sequence[Path], *, overwrite: bool) -> None:
    """Refuse to mix a new simulation with an earlier one in ``out_dir`` (stale fields that
    ``cells.csv`` no longer lists); with ``overwrite``, remove the earlier ``entries`` first."""
    import shutil

    present = [e for e in entries if e.exists()]
    if not present:
        return
    if not overwrite:
        raise ValueError(f"{out_dir}: already holds a simulation ({', '.join(e.name for e in present[:4])}); "
                         "choose a new folder, or overwrite it (overwrite=True, rbc simulate --overwrite)")
    for e in present:
        shutil.rmtree(e) if e.is_dir() else e.unlink()


def simulate_dataset(out_dir: str | Path, *, n_fields: int, seed: int, field_px: int = DEFAULT_FIELD_PX,
                     test_fraction: float = 40 / 219, progress: bool = True, overwrite: bool = False,
                     **field_kw: Any) -> Path:
    """Write ``n_fields`` simulated fields to ``out_dir`` and return it.

    Layout: ``holograms/`` and ``backgrounds/`` (PNG camera images), ``phase/`` (float32 TIFF
    [rad]), ``labels/`` (uint8 PNG), ``instances/`` (uint16 PNG), stems ``field_0000``...;
    ``cells.csv`` (``image`` = stem + :data:`rbclib.physics.simulate.CELL_COLUMNS`), ``fields.csv``
    (what each field drew: density, defocus, noise, carrier...), ``optics.json``, ``splits.json``
    and ``simulation.json`` (parameters). Everything is checked before anything is written.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Output folder.
    n_fields : int
        Number of fields, 1..100000.
    seed : int
        Field i uses child i of ``SeedSequence(seed)``, so a field does not depend on how many
        are written; also seeds the split.
    field_px : int, optional
        Side of each field [px], default :data:`rbclib.physics.simulate.DEFAULT_FIELD_PX`.
    test_fraction : float, optional
        Share of fields in the random test split of ``splits.json``; default the paper's 40/219.
    progress : bool, optional
        Show a progress bar (default True).
    overwrite : bool, optional
        A folder that already holds a simulation is refused, or with ``overwrite`` cleared of it
        (only :data:`DATASET_ENTRIES`) first. Default False.
    **field_kw
        Go to :func:`rbclib.physics.simulate.simulate_field` (mixture, day, optics,
        cells_per_field, density_per_1000um2, touching_fraction, overlap_fraction, defocus_um,
        settings, ...; defaults: that module's ranges).

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    ValueError
        On ``n_fields`` out of range, a bad field setting or mixture, an output path that cannot
        be a folder, or an earlier simulation there without ``overwrite``.
    """
    from rbclib.core import files

    if not isinstance(n_fields, (int, np.integer)) or not 1 <= n_fields <= 100_000:
        raise ValueError(f"n_fields={n_fields!r} is outside the allowed range 1..100000 (an integer)")
    _resolve_mixture(field_kw.get("mixture"), field_kw.get("day"))  # fail before writing anything
    _check_field_args(field_px, **field_kw)
    files.check_output_dir(out_dir)
    _clear_previous(Path(out_dir), [Path(out_dir) / e for e in DATASET_ENTRIES], overwrite=overwrite)
    seeds = np.random.SeedSequence(int(seed)).spawn(int(n_fields))
    _write_fields(Path(out_dir), seeds, progress=progress, desc="simulate", split_seed=int(seed),
                  test_fraction=test_fraction, field_px=field_px, **field_kw)
    return Path(out_dir)


def simulate_storage_series(out_dir: str | Path, *, seed: int, images_per_day: int = 6, days: Iterable[int] = STORAGE_DAYS,
                            field_px: int = DEFAULT_FIELD_PX, progress: bool = True, overwrite: bool = False,
                            **field_kw: Any) -> Path:
    """The storage study: one dataset folder per day (``day_08/``, ...).

    Each day's folder is a :func:`simulate_dataset` layout without a test split, its fields drawn
    with :func:`rbclib.physics.simulate.storage_mixture` (a modelling assumption); ``out_dir``
    also gets ``cells.csv`` of all days with ``storage_day`` and ``dataset`` columns.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Output folder.
    seed : int
        Day d's fields use the children of ``SeedSequence([seed, d])``.
    images_per_day : int, optional
        Fields per day (>= 1), default 6.
    days : iterable of int, optional
        Storage days [days], each within 8..57; default
        :data:`rbclib.physics.simulate.STORAGE_DAYS`.
    field_px : int, optional
        Side of each field [px], default :data:`rbclib.physics.simulate.DEFAULT_FIELD_PX`.
    progress : bool, optional
        Show a progress bar over the days (default True).
    overwrite : bool, optional
        An earlier series there (``day_*/``, ``cells.csv``) is refused, or removed first with
        ``overwrite``. Default False.
    **field_kw
        Other keywords as in :func:`simulate_dataset` (not ``day``, which each folder sets).

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Raises
    ------
    ValueError
        On a day outside the storage table, ``images_per_day`` < 1, a bad field setting, an
        output path that cannot be a folder, or an earlier series there without ``overwrite``.
    """
    from tqdm.auto import tqdm

    from rbclib.core import files

    out_dir = Path(out_dir)
    days = [int(d) for d in days]
    for d in days:
        storage_mixture(d)
    if not isinstance(images_per_day, (int, np.integer)) or images_per_day < 1:
        raise ValueError(f"images_per_day={images_per_day!r} must be a positive integer")
    _check_field_args(field_px, **field_kw)
    files.check_output_dir(out_dir)
    earlier = sorted(out_dir.glob("day_*")) + [out_dir / "cells.csv"] if out_dir.is_dir() else []
    _clear_previous(out_dir, earlier, overwrite=overwrite)
    tables = []
    for d in tqdm(days, desc="storage days", disable=not progress):
        seeds = np.random.SeedSequence([int(seed), d]).spawn(int(images_per_day))
        cells = _write_fields(out_dir / f"day_{d:02d}", seeds, progress=False, desc=f"day {d}", split_seed=int(seed),
                              test_fraction=0.0, field_px=field_px, day=d, **field_kw)
        tables.append(cells.assign(storage_day=d, dataset=f"day_{d:02d}"))
    files.write_csv(out_dir / "cells.csv", pd.concat(tables, ignore_index=True))
    return out_dir

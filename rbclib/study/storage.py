"""Storage-quality statistics of a blood unit: class ratios per storage day with 95 % CIs,
morphology indices, measurement trends, accuracy against ground truth.
Figures, the study summary and the Markdown report are :mod:`rbclib.study.storage_report`.

Input everywhere is a per-cell table (one row per segmented cell) with at least the
columns ``day`` (storage day, NaN for a single unit), ``image`` (which image the cell came
from) and ``class_name`` (one of :data:`rbclib.core.labels.CELL_CLASSES`' names); measurement
columns (``area_um2``, ``dry_mass_pg``, ``sphericity``, ...) are used when present.

Confidence intervals. Cells of one image are not independent (same smear, focus and
field), so the default interval is a *cluster bootstrap over images*: images of a day are
resampled with replacement, the pooled class ratio is recomputed per replicate and the
2.5 / 97.5 percentiles are reported. A day with a single image has no between-image
spread to resample; it falls back to the Wilson score interval of the pooled counts
(which treats cells as independent, hence is narrower than the truth when images differ).
Each row of the ratio table names the method it used (``ci_method``).

Morphology indices (:data:`MORPHOLOGY_SCHEMES`) are weighted class shares
``I = sum_k w_k p_k`` with weights in [0, 1]; they are always reported beside the plain
ratios, never instead of them, and their weights are assumptions that a user can replace.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from rbclib.core.labels import CELL_CLASS_NAMES, CLASS_NAMES

LATE_STAGE_CLASSES: tuple[str, ...] = ("spherocyte", "echinocyte")


# Measurements followed over storage (column -> axis label); missing columns are skipped.
TREND_MEASUREMENTS: dict[str, str] = {
    "area_um2": "projected area [um^2]",
    "dry_mass_pg": "dry mass [pg]",
    "sphericity": "sphericity [-]",
}


@dataclass(frozen=True)
class IndexScheme:
    """A named morphology index: weights (class name -> weight in [0, 1]) and what it means.

    Attributes
    ----------
    name : str
        Name of the index.
    weights : mapping of str to float
        Class name -> weight in [0, 1], for exactly the four cell classes.
    description : str
        What the index means and where its weights come from.

    Raises
    ------
    ValueError
        When the weights do not name exactly the cell classes or a weight is outside 0..1.
    """

    name: str
    weights: Mapping[str, float]
    description: str

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(CELL_CLASS_NAMES)
        missing = set(CELL_CLASS_NAMES) - set(self.weights)
        if unknown or missing:
            raise ValueError(f"index scheme {self.name!r}: weights must name exactly {list(CELL_CLASS_NAMES)}"
                             f" (unknown {sorted(unknown)}, missing {sorted(missing)})")
        for cls, w in self.weights.items():
            if not (isinstance(w, (int, float)) and 0.0 <= w <= 1.0):
                raise ValueError(f"index scheme {self.name!r}: weight of {cls} is {w!r}, expected 0..1")

    def vector(self) -> np.ndarray:
        """Weights in the order of :data:`CELL_CLASS_NAMES`.

        Returns
        -------
        numpy.ndarray
            (4,) float weights.
        """
        return np.array([float(self.weights[c]) for c in CELL_CLASS_NAMES])


MORPHOLOGY_SCHEMES: dict[str, IndexScheme] = {
    "morphology_index": IndexScheme(
        "morphology_index",
        {"discocyte": 0.0, "stomatocyte": 0.4, "echinocyte": 0.5, "spherocyte": 1.0},
        "Storage-lesion shape score in the style of Usry et al. (Vox Sang 1975) and Marikovsky "
        "(shape scoring of stored RBCs): each cell scores by how far along the irreversible "
        "discocyte -> echinocyte -> spherocyte sequence it is (0 = all discocytes, 1 = all "
        "spherocytes). The original scales grade echinocytes I-III and spheroechinocytes "
        "separately (about 0.2-0.8); with four classes the echinocyte stages collapse to their "
        "mean 0.5, and stomatocytes (reversible, like early echinocytes) score 0.4. The weights "
        "are this project's coarsening, an assumption."),
    "late_stage_share": IndexScheme(
        "late_stage_share",
        {"discocyte": 0.0, "stomatocyte": 0.0, "echinocyte": 1.0, "spherocyte": 1.0},
        "Equal-weight late-stage share: fraction of cells that are spherocytes or echinocytes, "
        "the two classes the paper reports rising after ~40 days of storage."),
}


def schemes_from_mapping(data: Mapping[str, Mapping[str, Any]]) -> dict[str, IndexScheme]:
    """Index schemes from a mapping ``{name: {"weights": {class: w}, "description": str}}``
    (e.g. a TOML file read with tomllib).

    Parameters
    ----------
    data : mapping of str to mapping
        One entry per scheme; ``description`` is optional.

    Returns
    -------
    dict of str to IndexScheme
        The schemes by name.

    Raises
    ------
    ValueError
        When a scheme has no ``weights``, its weights are invalid, or ``data`` is empty.
    """
    out = {}
    for name, spec in data.items():
        if "weights" not in spec:
            raise ValueError(f"index scheme {name!r}: no 'weights' table")
        out[name] = IndexScheme(name, dict(spec["weights"]), str(spec.get("description", "user-defined weights")))
    if not out:
        raise ValueError("no index schemes given")
    return out


def _check_cells(cells: pd.DataFrame) -> None:
    missing = [c for c in ("day", "image", "class_name") if c not in cells.columns]
    if missing:
        raise ValueError(f"cell table lacks column(s) {missing}; has {list(cells.columns)}")
    bad = sorted(set(cells["class_name"]) - set(CELL_CLASS_NAMES))
    if bad:
        raise ValueError(f"cell table has unknown class names {bad}; expected {list(CELL_CLASS_NAMES)}")


def days_in(cells: pd.DataFrame) -> list[float]:
    """Distinct days in order (NaN, i.e. 'no day', last).

    Parameters
    ----------
    cells : pandas.DataFrame
        Per-cell table with a ``day`` column.

    Returns
    -------
    list of float
        The days, ascending, NaN last when present.
    """
    vals = pd.unique(cells["day"])
    finite = sorted(v for v in vals if pd.notna(v))
    return finite + ([math.nan] if any(pd.isna(v) for v in vals) else [])


def _day_mask(cells: pd.DataFrame, day: float) -> pd.Series:
    return cells["day"].isna() if pd.isna(day) else cells["day"] == day


def count_matrix(cells: pd.DataFrame, *, images: Iterable[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Cell counts per image and class.

    Parameters
    ----------
    cells : pandas.DataFrame
        Per-cell table (``image``, ``class_name``).
    images : iterable of str, optional
        Adds images that produced no cells (they count, with zeros, as clusters).

    Returns
    -------
    names : list of str
        Image names, those of ``images`` first.
    counts : numpy.ndarray
        (n_images, 4) int64 counts, columns in the order of :data:`CELL_CLASS_NAMES`.
    """
    names = list(dict.fromkeys([*(images or []), *cells["image"].astype(str)]))
    table = (cells.assign(image=cells["image"].astype(str))
             .groupby(["image", "class_name"]).size().unstack(fill_value=0)
             .reindex(index=names, columns=list(CELL_CLASS_NAMES), fill_value=0))
    return names, table.to_numpy(dtype=np.int64)


def wilson_interval(k: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n.

    Parameters
    ----------
    k : int
        Successes.
    n : int
        Trials.
    confidence : float, optional
        Confidence level; default 0.95.

    Returns
    -------
    tuple of float
        (low, high); NaNs when n == 0.
    """
    if n == 0:
        return math.nan, math.nan
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def bootstrap_shares(counts: np.ndarray, *, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Cluster bootstrap of pooled class shares, rows of resampled images.

    Replicates whose resampled images hold no cell are NaN.

    Parameters
    ----------
    counts : numpy.ndarray
        (n_images, 4) counts per image and class (:func:`count_matrix`).
    n_boot : int
        Replicates.
    rng : numpy.random.Generator
        Source of the resampling.

    Returns
    -------
    numpy.ndarray
        (n_boot, 4) pooled shares per replicate.
    """
    n_img = counts.shape[0]
    idx = rng.integers(0, n_img, size=(n_boot, n_img))
    sums = counts[idx].sum(axis=1).astype(float)
    tot = sums.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, sums / tot, np.nan)


def class_ratios(cells: pd.DataFrame, *, images_by_day: Mapping[float, list[str]] | None = None,
                 confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Class ratios per storage day with confidence intervals.

    Parameters
    ----------
    cells : pandas.DataFrame
        Per-cell table (``day``, ``image``, ``class_name``).
    images_by_day : mapping of float to list of str, optional
        Every image analysed per day, so that images without cells count as clusters.
    confidence : float, optional
        Confidence level of the intervals; default 0.95.
    n_boot : int, optional
        Bootstrap replicates; default 2000.
    seed : int, optional
        Seed of the bootstrap; default 0.

    Returns
    -------
    pandas.DataFrame
        A long table, one row per (day, class): ``day, class_name, count, n_cells, n_images,
        ratio, ci_low, ci_high, ci_method`` (ratios as fractions 0..1).

    Raises
    ------
    ValueError
        When ``cells`` lacks a column or holds unknown class names.
    """
    _check_cells(cells)
    rng = np.random.default_rng(seed)
    alpha = (1.0 - confidence) / 2.0
    rows = []
    days = days_in(cells)
    for day in images_by_day or {}:
        if not any((pd.isna(d) and pd.isna(day)) or d == day for d in days):
            days.append(day)
    for day in days:
        sub = cells[_day_mask(cells, day)]
        extra = _lookup_day(images_by_day, day)
        names, counts = count_matrix(sub, images=extra)
        total = counts.sum(axis=0)
        n = int(total.sum())
        if counts.shape[0] >= 2 and n > 0:
            boot = bootstrap_shares(counts, n_boot=n_boot, rng=rng)
            lo = np.nanquantile(boot, alpha, axis=0)
            hi = np.nanquantile(boot, 1 - alpha, axis=0)
            method = f"cluster bootstrap over {counts.shape[0]} images ({n_boot} replicates)"
        else:
            bounds = [wilson_interval(int(k), n, confidence=confidence) for k in total]
            lo, hi = np.array([b[0] for b in bounds]), np.array([b[1] for b in bounds])
            method = "Wilson score (single image: cells treated as independent)"
        for j, cls in enumerate(CELL_CLASS_NAMES):
            rows.append({"day": day, "class_name": cls, "count": int(total[j]), "n_cells": n,
                         "n_images": len(names), "ratio": total[j] / n if n else math.nan,
                         "ci_low": float(lo[j]), "ci_high": float(hi[j]), "ci_method": method})
    return pd.DataFrame(rows, columns=["day", "class_name", "count", "n_cells", "n_images", "ratio",
                                       "ci_low", "ci_high", "ci_method"])


def _lookup_day(mapping: Mapping[float, list[str]] | None, day: float) -> list[str]:
    if not mapping:
        return []
    for key, value in mapping.items():
        if (pd.isna(key) and pd.isna(day)) or key == day:
            return list(value)
    return []


def morphology_indices(cells: pd.DataFrame, *, schemes: Mapping[str, IndexScheme] | None = None,
                       images_by_day: Mapping[float, list[str]] | None = None,
                       confidence: float = 0.95, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Each index scheme per storage day.

    The interval comes from the same cluster bootstrap over images as :func:`class_ratios`
    (a single-image day gets a multinomial bootstrap of its cells instead).

    Parameters
    ----------
    cells : pandas.DataFrame
        Per-cell table (``day``, ``image``, ``class_name``).
    schemes : mapping of str to IndexScheme, optional
        The indices (default :data:`MORPHOLOGY_SCHEMES`).
    images_by_day : mapping of float to list of str, optional
        Every image analysed per day (images without cells count as clusters).
    confidence : float, optional
        Confidence level; default 0.95.
    n_boot : int, optional
        Bootstrap replicates; default 2000.
    seed : int, optional
        Seed of the bootstrap; default 0.

    Returns
    -------
    pandas.DataFrame
        ``day, scheme, value, ci_low, ci_high, n_cells``; days without cells are left out.

    Raises
    ------
    ValueError
        When ``cells`` lacks a column or holds unknown class names.
    """
    _check_cells(cells)
    schemes = dict(schemes or MORPHOLOGY_SCHEMES)
    rng = np.random.default_rng(seed)
    alpha = (1.0 - confidence) / 2.0
    rows = []
    for day in days_in(cells):
        _, counts = count_matrix(cells[_day_mask(cells, day)], images=_lookup_day(images_by_day, day))
        total = counts.sum(axis=0)
        n = int(total.sum())
        if n == 0:
            continue
        share = total / n
        if counts.shape[0] >= 2:
            boot = bootstrap_shares(counts, n_boot=n_boot, rng=rng)
        else:
            boot = rng.multinomial(n, share, size=n_boot) / n
        for name, scheme in schemes.items():
            w = scheme.vector()
            vals = boot @ w
            rows.append({"day": day, "scheme": name, "value": float(share @ w),
                         "ci_low": float(np.nanquantile(vals, alpha)),
                         "ci_high": float(np.nanquantile(vals, 1 - alpha)), "n_cells": n})
    return pd.DataFrame(rows, columns=["day", "scheme", "value", "ci_low", "ci_high", "n_cells"])


def measurement_trends(cells: pd.DataFrame, *, columns: Iterable[str] | None = None) -> pd.DataFrame:
    """Per day and class (plus ``all``): ``n, mean, sd, median`` of each measurement column.

    Parameters
    ----------
    cells : pandas.DataFrame
        Per-cell table (``day``, ``image``, ``class_name`` and measurement columns).
    columns : iterable of str, optional
        Measurement columns (default those of :data:`TREND_MEASUREMENTS`); columns absent
        from ``cells`` are skipped.

    Returns
    -------
    pandas.DataFrame
        A long table ``day, class_name, measurement, n, mean, sd, median``.

    Raises
    ------
    ValueError
        When ``cells`` lacks a column or holds unknown class names.
    """
    _check_cells(cells)
    cols = [c for c in (columns or TREND_MEASUREMENTS) if c in cells.columns]
    rows = []
    for day in days_in(cells):
        sub = cells[_day_mask(cells, day)]
        groups = [("all", sub)] + [(cls, sub[sub["class_name"] == cls]) for cls in CELL_CLASS_NAMES]
        for cls, g in groups:
            for col in cols:
                v = pd.to_numeric(g[col], errors="coerce").dropna()
                rows.append({"day": day, "class_name": cls, "measurement": col, "n": int(v.size),
                             "mean": float(v.mean()) if v.size else math.nan,
                             "sd": float(v.std(ddof=1)) if v.size > 1 else math.nan,
                             "median": float(v.median()) if v.size else math.nan})
    return pd.DataFrame(rows, columns=["day", "class_name", "measurement", "n", "mean", "sd", "median"])


def ratio_errors(estimated: pd.DataFrame, truth: pd.DataFrame, *, target_pp: float = 3.0) -> pd.DataFrame:
    """Estimated minus true class ratio per day and class, in percentage points.

    Parameters
    ----------
    estimated, truth : pandas.DataFrame
        :func:`class_ratios` tables.
    target_pp : float, optional
        Largest accepted absolute error [percentage points]; default 3.

    Returns
    -------
    pandas.DataFrame
        ``day, class_name, estimated_pct, true_pct, error_pp, abs_error_pp, within_target``.
    """
    est = estimated[["day", "class_name", "ratio"]].rename(columns={"ratio": "est"})
    tru = truth[["day", "class_name", "ratio"]].rename(columns={"ratio": "true"})
    merged = est.merge(tru, on=["day", "class_name"], how="outer")
    out = pd.DataFrame({
        "day": merged["day"], "class_name": merged["class_name"],
        "estimated_pct": 100 * merged["est"], "true_pct": 100 * merged["true"],
    })
    out["error_pp"] = out["estimated_pct"] - out["true_pct"]
    out["abs_error_pp"] = out["error_pp"].abs()
    out["within_target"] = out["abs_error_pp"] <= target_pp
    order = {c: i for i, c in enumerate(CELL_CLASS_NAMES)}
    return out.sort_values(["day", "class_name"], key=lambda s: s.map(order) if s.name == "class_name" else s,
                           ignore_index=True)


def accuracy_by_attribute(series_dir: str | Path, labels_dir: str | Path, *, class_name: str = "echinocyte",
                          column: str = "echinocyte_stage",
                          bins: Iterable[float] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)) -> pd.DataFrame:
    """Per-cell accuracy of one true class, split by a ground-truth attribute of the cells.

    For a simulated series and its predicted class maps, each true cell of ``class_name`` takes
    the majority predicted class over its pixels. The default splits echinocytes by the
    simulator's crenation stage (0: crenated disc, 1: sphero-echinocyte).

    Parameters
    ----------
    series_dir : str or pathlib.Path
        A simulated series: ``series_dir/cells.csv`` with ``dataset``, ``image``, ``cell_id``,
        ``class_name`` and ``column``; true cell maps in ``series_dir/<dataset>/instances/<image>.png``.
    labels_dir : str or pathlib.Path
        Predicted class maps ``labels_dir/<dataset>/<image>.png`` (as written by
        :func:`rbclib.study.assess.assess`).
    class_name : str, optional
        The true class; default "echinocyte".
    column : str, optional
        The attribute; default "echinocyte_stage".
    bins : iterable of float, optional
        Bin edges of the attribute; default 0, 0.2, ..., 1.

    Returns
    -------
    pandas.DataFrame
        One row per ``column`` bin: ``cells``, ``accuracy`` and the share predicted as each
        class (``as_<name>``, ``as_background``).

    Raises
    ------
    ValueError
        When ``cells.csv`` lacks a needed column.
    """
    from rbclib.core.io import read_instances, read_labels

    series_dir, labels_dir = Path(series_dir), Path(labels_dir)
    truth = pd.read_csv(series_dir / "cells.csv")
    missing = {"dataset", "image", "cell_id", "class_name", column} - set(truth.columns)
    if missing:
        raise ValueError(f"{series_dir / 'cells.csv'}: missing columns {sorted(missing)}")
    rows = []
    for (dataset, image), group in truth[truth["class_name"] == class_name].groupby(["dataset", "image"]):
        pred_path = labels_dir / str(dataset) / f"{image}.png"
        if not pred_path.is_file():
            continue  # image not assessed (failed or skipped)
        inst = read_instances(series_dir / str(dataset) / "instances" / f"{image}.png")
        pred = read_labels(pred_path)
        for cell_id, value in zip(group["cell_id"], group[column]):
            votes = np.bincount(pred[inst == cell_id], minlength=len(CLASS_NAMES))
            if votes.sum():
                rows.append((float(value), CLASS_NAMES[int(votes.argmax())]))
    cells = pd.DataFrame(rows, columns=[column, "predicted"])
    binned = pd.cut(cells[column], list(bins), include_lowest=True)
    counts = pd.crosstab(binned, cells["predicted"], dropna=False).reindex(
        index=binned.cat.categories, columns=["background", *CELL_CLASS_NAMES], fill_value=0)
    shares = counts.div(counts.sum(axis=1), axis=0)  # an empty bin gives NaN shares
    out = pd.DataFrame({column: counts.index, "cells": counts.sum(axis=1).to_numpy(),
                        "accuracy": shares[class_name].to_numpy()})
    for name in shares.columns.drop(class_name):
        out[f"as_{name}"] = shares[name].to_numpy()
    return out


def wide_ratio_table(ratios: pd.DataFrame, *, digits: int = 1) -> pd.DataFrame:
    """Ratios as ``"92.0 (89.1-94.3)"`` percent strings, one row per day, one column per class,
    plus ``cells`` and ``images``.

    Parameters
    ----------
    ratios : pandas.DataFrame
        A :func:`class_ratios` table.
    digits : int, optional
        Decimals of the percentages; default 1.

    Returns
    -------
    pandas.DataFrame
        ``day`` (:func:`day_label`), the class names, ``cells`` and ``images``.
    """
    rows = []
    for day, g in ratios.groupby("day", sort=True, dropna=False):
        row: dict[str, Any] = {"day": day_label(day)}
        for _, r in g.iterrows():
            row[r["class_name"]] = (f"{100 * r['ratio']:.{digits}f} ({100 * r['ci_low']:.{digits}f}-"
                                    f"{100 * r['ci_high']:.{digits}f})" if r["n_cells"] else "-")
        row["cells"] = int(g["n_cells"].iloc[0])
        row["images"] = int(g["n_images"].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows, columns=["day", *CELL_CLASS_NAMES, "cells", "images"])


def day_label(day: float) -> str:
    """A storage day as text: ``"8"``, ``"8.5"``, or ``"unit"`` for NaN (a single unit).

    Parameters
    ----------
    day : float
        Storage day, NaN for none.

    Returns
    -------
    str
        The label.
    """
    if pd.isna(day):
        return "unit"
    return f"{int(day)}" if float(day).is_integer() else f"{day:g}"

"""Storage-quality statistics of a blood unit: class ratios per storage day with 95 % CIs,
morphology indices, measurement trends, accuracy against ground truth, figures, report.

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

from rbclib.core.labels import CELL_CLASS_NAMES, CELL_CLASSES, CLASS_COLOURS, CLASS_NAMES
from rbclib.core.markdown import markdown_table

LATE_STAGE_CLASSES: tuple[str, ...] = ("spherocyte", "echinocyte")
# Measurements followed over storage (column -> axis label); missing columns are skipped.
TREND_MEASUREMENTS: dict[str, str] = {
    "area_um2": "projected area [um^2]",
    "dry_mass_pg": "dry mass [pg]",
    "sphericity": "sphericity [-]",
}


@dataclass(frozen=True)
class IndexScheme:
    """A named morphology index: weights (class name -> weight in [0, 1]) and what it means."""

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
        """Weights in the order of :data:`CELL_CLASS_NAMES`."""
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
    (e.g. a TOML file read with tomllib)."""
    out = {}
    for name, spec in data.items():
        if "weights" not in spec:
            raise ValueError(f"index scheme {name!r}: no 'weights' table")
        out[name] = IndexScheme(name, dict(spec["weights"]), str(spec.get("description", "user-defined weights")))
    if not out:
        raise ValueError("no index schemes given")
    return out


# ---------------------------------------------------------------- counting and intervals


def _check_cells(cells: pd.DataFrame) -> None:
    missing = [c for c in ("day", "image", "class_name") if c not in cells.columns]
    if missing:
        raise ValueError(f"cell table lacks column(s) {missing}; has {list(cells.columns)}")
    bad = sorted(set(cells["class_name"]) - set(CELL_CLASS_NAMES))
    if bad:
        raise ValueError(f"cell table has unknown class names {bad}; expected {list(CELL_CLASS_NAMES)}")


def _days(cells: pd.DataFrame) -> list[float]:
    """Distinct days in order (NaN, i.e. 'no day', last)."""
    vals = pd.unique(cells["day"])
    finite = sorted(v for v in vals if pd.notna(v))
    return finite + ([math.nan] if any(pd.isna(v) for v in vals) else [])


def _day_mask(cells: pd.DataFrame, day: float) -> pd.Series:
    return cells["day"].isna() if pd.isna(day) else cells["day"] == day


def count_matrix(cells: pd.DataFrame, *, images: Iterable[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Cell counts per image and class: (image names, (n_images, 4) int array).

    ``images`` adds images that produced no cells (they count, with zeros, as clusters).
    """
    names = list(dict.fromkeys([*(images or []), *cells["image"].astype(str)]))
    table = (cells.assign(image=cells["image"].astype(str))
             .groupby(["image", "class_name"]).size().unstack(fill_value=0)
             .reindex(index=names, columns=list(CELL_CLASS_NAMES), fill_value=0))
    return names, table.to_numpy(dtype=np.int64)


def wilson_interval(k: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (NaNs when n == 0)."""
    if n == 0:
        return math.nan, math.nan
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def bootstrap_shares(counts: np.ndarray, *, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Cluster bootstrap of pooled class shares: (n_boot, 4), rows of resampled images.

    Replicates whose resampled images hold no cell are NaN.
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

    cells: per-cell table (``day``, ``image``, ``class_name``). images_by_day: every image
    analysed per day, so that images without cells count as clusters (optional).
    Returns a long table, one row per (day, class): ``day, class_name, count, n_cells,
    n_images, ratio, ci_low, ci_high, ci_method`` (ratios as fractions 0..1).
    """
    _check_cells(cells)
    rng = np.random.default_rng(seed)
    alpha = (1.0 - confidence) / 2.0
    rows = []
    days = _days(cells)
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
    """Each index scheme per storage day: ``day, scheme, value, ci_low, ci_high, n_cells``.

    The interval comes from the same cluster bootstrap over images as :func:`class_ratios`
    (a single-image day gets a multinomial bootstrap of its cells instead).
    """
    _check_cells(cells)
    schemes = dict(schemes or MORPHOLOGY_SCHEMES)
    rng = np.random.default_rng(seed)
    alpha = (1.0 - confidence) / 2.0
    rows = []
    for day in _days(cells):
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

    Returns a long table ``day, class_name, measurement, n, mean, sd, median``; columns
    absent from ``cells`` are skipped.
    """
    _check_cells(cells)
    cols = [c for c in (columns or TREND_MEASUREMENTS) if c in cells.columns]
    rows = []
    for day in _days(cells):
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

    Both inputs are :func:`class_ratios` tables. Returns ``day, class_name, estimated_pct,
    true_pct, error_pp, abs_error_pp, within_target``.
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

    For a simulated series (``series_dir/cells.csv`` with ``dataset``, ``image``,
    ``cell_id``, ``class_name`` and ``column``; true cell maps in
    ``series_dir/<dataset>/instances/<image>.png``) and predicted class maps
    ``labels_dir/<dataset>/<image>.png`` (as written by :func:`rbclib.study.assess.assess`), each
    true cell of ``class_name`` takes the majority predicted class over its pixels. Returns
    one row per ``column`` bin: ``cells``, ``accuracy`` and the share predicted as each
    class (``as_<name>``, ``as_background``). The default splits echinocytes by the
    simulator's crenation stage (0: crenated disc, 1: sphero-echinocyte).
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
    plus ``cells`` and ``images``."""
    rows = []
    for day, g in ratios.groupby("day", sort=True, dropna=False):
        row: dict[str, Any] = {"day": _day_text(day)}
        for _, r in g.iterrows():
            row[r["class_name"]] = (f"{100 * r['ratio']:.{digits}f} ({100 * r['ci_low']:.{digits}f}-"
                                    f"{100 * r['ci_high']:.{digits}f})" if r["n_cells"] else "-")
        row["cells"] = int(g["n_cells"].iloc[0])
        row["images"] = int(g["n_images"].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows, columns=["day", *CELL_CLASS_NAMES, "cells", "images"])


def _day_text(day: float) -> str:
    if pd.isna(day):
        return "unit"
    return f"{int(day)}" if float(day).is_integer() else f"{day:g}"


# ---------------------------------------------------------------- figures


def _x_positions(days: Iterable[float]) -> tuple[np.ndarray, list[str], bool]:
    days = list(days)
    if all(pd.notna(d) for d in days):
        return np.asarray(days, float), [_day_text(d) for d in days], True
    return np.arange(len(days), dtype=float), [_day_text(d) for d in days], False


def plot_ratio_trends(ratios: pd.DataFrame, *, truth: pd.DataFrame | None = None, title: str | None = None):
    """Figure 8: class ratio [%] over storage day, one line per class with its 95 % CI band;
    ``truth`` (a class_ratios table) is drawn dashed. Returns a matplotlib Figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.0, 4.5), layout="constrained")
    days = _days(ratios)
    x, ticks, numeric = _x_positions(days)
    for cid, cls in zip(CELL_CLASSES, CELL_CLASS_NAMES):
        colour = _line_colour(cid)
        sub = ratios[ratios["class_name"] == cls].set_index("day").reindex(days)
        ax.plot(x, 100 * sub["ratio"], "o-", color=colour, label=f"{cls} (estimated)")
        ax.fill_between(x, 100 * sub["ci_low"], 100 * sub["ci_high"], color=colour, alpha=0.18, lw=0)
        if truth is not None:
            t = truth[truth["class_name"] == cls].set_index("day").reindex(days)
            ax.plot(x, 100 * t["ratio"], "s--", color=colour, alpha=0.7, ms=4, label=f"{cls} (ground truth)")
    ax.set_xticks(x, ticks)
    ax.set_xlabel("storage day" if numeric else "unit")
    ax.set_ylabel("share of cells [%]")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title or "RBC class ratios over storage (bands: 95 % CI)")
    return fig


def _line_colour(cid: int) -> tuple[float, float, float]:
    # The paper's yellow is unreadable as a line on white; darken it for lines only.
    r, g, b = CLASS_COLOURS[cid]
    return (0.85, 0.65, 0.0) if (r, g, b) == (1.0, 1.0, 0.0) else (r, g, b)


def plot_confusion(confusion: pd.DataFrame, *, title: str | None = None):
    """Figure 9: confusion matrix (rows true class, columns predicted), coloured by the row
    share (per-class accuracy on the diagonal), annotated with share and count."""
    import matplotlib.pyplot as plt

    rows = [c for c in CELL_CLASS_NAMES if c in confusion.index]
    cols = [c for c in CELL_CLASS_NAMES if c in confusion.columns] + \
           [c for c in confusion.columns if c not in CELL_CLASS_NAMES]
    counts = confusion.reindex(index=rows, columns=cols, fill_value=0).to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = counts / counts.sum(axis=1, keepdims=True)
    fig, ax = plt.subplots(figsize=(1.3 * len(cols) + 2.5, 1.1 * len(rows) + 1.8), layout="constrained")
    im = ax.imshow(np.nan_to_num(share), cmap="Blues", vmin=0, vmax=1)
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, f"{share[i, j]:.2f}\n({int(counts[i, j])})", ha="center", va="center",
                    fontsize=8, color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [f"{r} (n={int(counts[i].sum())})" for i, r in enumerate(rows)])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(im, ax=ax, label="share of the true class")
    ax.set_title(title or "Per-class accuracy (diagonal) over all storage days")
    return fig


def plot_measurement_trends(trends: pd.DataFrame, *, classes: Iterable[str] = ("all", *CELL_CLASS_NAMES)):
    """Mean of each measurement over storage day: one panel per measurement, all cells in
    black with a +-1 SD band, one thin line per class. Returns a Figure."""
    import matplotlib.pyplot as plt

    measures = list(dict.fromkeys(trends["measurement"]))
    fig, axes = plt.subplots(1, max(len(measures), 1), figsize=(4.2 * max(len(measures), 1), 3.8),
                             layout="constrained", squeeze=False)
    days = _days(trends) if len(trends) else []
    x, ticks, numeric = _x_positions(days)
    for ax, m in zip(axes[0], measures):
        for cls in classes:
            sub = trends[(trends["measurement"] == m) & (trends["class_name"] == cls)].set_index("day").reindex(days)
            if sub["n"].fillna(0).sum() == 0:
                continue
            if cls == "all":
                ax.plot(x, sub["mean"], "o-", color="black", lw=2, ms=4, label="all cells (band: +-1 SD)")
                ax.fill_between(x, sub["mean"] - sub["sd"], sub["mean"] + sub["sd"], color="grey", alpha=0.2, lw=0)
            else:
                ax.plot(x, sub["mean"], "o-", color=_line_colour(CELL_CLASSES[CELL_CLASS_NAMES.index(cls)]),
                        lw=1, ms=3, label=cls)
        ax.set_xticks(x, ticks)
        ax.set_xlabel("storage day" if numeric else "unit")
        ax.set_ylabel(TREND_MEASUREMENTS.get(m, m))
        ax.grid(alpha=0.3)
    if measures:
        axes[0][0].legend(fontsize=8)
    fig.suptitle("Cell measurements over storage (means per day)")
    return fig


def plot_indices(indices: pd.DataFrame, *, schemes: Mapping[str, IndexScheme] | None = None):
    """Morphology indices over storage day with 95 % CI bars. Returns a Figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8), layout="constrained")
    days = _days(indices) if len(indices) else []
    x, ticks, numeric = _x_positions(days)
    for k, name in enumerate(dict.fromkeys(indices["scheme"])):
        sub = indices[indices["scheme"] == name].set_index("day").reindex(days)
        ax.errorbar(x, sub["value"], yerr=[sub["value"] - sub["ci_low"], sub["ci_high"] - sub["value"]],
                    fmt="o-", capsize=3, color=f"C{k}", label=name)
    ax.set_xticks(x, ticks)
    ax.set_xlabel("storage day" if numeric else "unit")
    ax.set_ylabel("index (0 = all discocytes)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Morphology indices (bars: 95 % CI)")
    return fig


# ---------------------------------------------------------------- whole study


@dataclass
class StorageSummary:
    """Every table of a storage study (all pandas DataFrames; see the functions above).

    ratios / indices / trends: estimates from the segmented cells; truth_ratios,
    errors, confusion, accuracy: only when ground truth exists (else None / {}).
    target_pp: ratio errors up to this many percentage points count as within target.
    """

    ratios: pd.DataFrame
    indices: pd.DataFrame
    trends: pd.DataFrame
    schemes: dict[str, IndexScheme]
    truth_ratios: pd.DataFrame | None = None
    errors: pd.DataFrame | None = None
    confusion: pd.DataFrame | None = None
    accuracy: dict[str, float] | None = None
    ci_confidence: float = 0.95
    target_pp: float = 3.0


def summarise(cells: pd.DataFrame, *, images_by_day: Mapping[float, list[str]] | None = None,
              truth_cells: pd.DataFrame | None = None, confusion: pd.DataFrame | None = None,
              schemes: Mapping[str, IndexScheme] | None = None, confidence: float = 0.95,
              n_boot: int = 2000, seed: int = 0, target_pp: float = 3.0) -> StorageSummary:
    """All storage tables from a per-cell table (and optional ground truth).

    truth_cells: per-cell ground-truth table (``day``, ``image``, ``class_name``);
    confusion: summed :func:`rbclib.seg.metrics.cell_confusion` counts over all images.
    """
    from rbclib.seg.metrics import confusion_accuracy

    schemes = dict(schemes or MORPHOLOGY_SCHEMES)
    kw = dict(confidence=confidence, n_boot=n_boot, seed=seed)
    ratios = class_ratios(cells, images_by_day=images_by_day, **kw)
    summary = StorageSummary(
        ratios=ratios,
        indices=morphology_indices(cells, schemes=schemes, images_by_day=images_by_day, **kw),
        trends=measurement_trends(cells), schemes=schemes, ci_confidence=confidence,
        target_pp=target_pp)
    if truth_cells is not None and len(truth_cells):
        summary.truth_ratios = class_ratios(truth_cells, images_by_day=images_by_day, **kw)
        summary.errors = ratio_errors(ratios, summary.truth_ratios, target_pp=target_pp)
    if confusion is not None and int(confusion.to_numpy().sum()) > 0:
        summary.confusion = confusion
        summary.accuracy = confusion_accuracy(confusion)
    return summary


def summary_figures(summary: StorageSummary) -> dict[str, Any]:
    """The study's figures by short name (``ratios`` = Figure 8, ``confusion`` = Figure 9,
    ``indices``, ``measurements``); matplotlib Figures, not saved."""
    figs = {"ratios": plot_ratio_trends(summary.ratios, truth=summary.truth_ratios),
            "indices": plot_indices(summary.indices, schemes=summary.schemes)}
    if len(summary.trends):
        figs["measurements"] = plot_measurement_trends(summary.trends)
    if summary.confusion is not None:
        figs["confusion"] = plot_confusion(summary.confusion)
    return figs


@dataclass
class ReportContext:
    """What the report says about the run besides the tables.

    input: what was analysed; model: which model and why; sources: lines on image type,
    optics and resampling; failures: (file, problem) pairs of skipped files; figures:
    short name -> path relative to the report; files: output name -> what it holds.
    """

    input: str
    model: str
    n_images: int
    sources: list[str]
    failures: list[tuple[str, str]]
    figures: dict[str, str]
    files: dict[str, str]
    generated: str


def _md_table(frame: pd.DataFrame) -> str:
    return markdown_table(frame, fmt=_md_cell).rstrip("\n")


def _md_cell(v: Any) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.3g}"
    return str(v)


def _headline(summary: StorageSummary) -> list[str]:
    r = summary.ratios
    days = [d for d in _days(r) if pd.notna(d)]
    lines = []
    if len(days) >= 2:
        first, last = days[0], days[-1]
        disc = r[r["class_name"] == "discocyte"].set_index("day")["ratio"]
        late = summary.indices[summary.indices["scheme"] == "late_stage_share"].set_index("day")["value"] \
            if "late_stage_share" in summary.schemes else None
        lines.append(f"- Discocytes (healthy biconcave cells) make up {100 * disc[first]:.1f} % of the cells on day "
                     f"{_day_text(first)} and {100 * disc[last]:.1f} % on day {_day_text(last)}.")
        if late is not None and first in late.index and last in late.index:
            lines.append(f"- Late-stage cells (spherocytes + echinocytes) rise from {100 * late[first]:.1f} % to "
                         f"{100 * late[last]:.1f} %.")
    elif len(r):
        g = r[r["day"].isna()] if not days else r[r["day"] == days[0]]
        parts = [f"{row.class_name} {100 * row.ratio:.1f} %" for row in g.itertuples() if row.n_cells]
        if parts:
            lines.append("- Class shares: " + ", ".join(parts) + ".")
    return lines


def render_report(summary: StorageSummary, context: ReportContext) -> str:
    """The Markdown report of a storage study, written for a reader who has not seen the code."""
    conf = int(round(100 * summary.ci_confidence))
    n_cells = int(summary.ratios.groupby("day", dropna=False)["n_cells"].first().sum()) if len(summary.ratios) else 0
    days = [d for d in _days(summary.ratios) if pd.notna(d)]
    out = ["# Stored red blood cell quality report", "",
           f"Generated {context.generated} by `rbc assess` (rbc-holo), after Park et al., "
           "Adv. Sensor Res. 2025 (doi:10.1002/adsr.202500073).", "", "## In short", "",
           f"- {context.n_images} image(s) analysed, {len(context.failures)} skipped because of a problem, "
           f"{n_cells} cells segmented and classified"
           + (f", {len(days)} storage day(s) ({', '.join(_day_text(d) for d in days)})." if days else
              " (one blood unit, no storage days given)."),
           *_headline(summary)]
    if summary.accuracy:
        acc = ", ".join(f"{k} {v:.2f}" for k, v in summary.accuracy.items() if not math.isnan(v))
        out.append(f"- Ground truth was available: per-class accuracy {acc}.")
    if summary.errors is not None and len(summary.errors):
        e = summary.errors.dropna(subset=["abs_error_pp"])
        out.append(f"- Estimated class ratios differ from the ground truth by at most {e['abs_error_pp'].max():.1f} "
                   f"percentage points (mean {e['abs_error_pp'].mean():.1f}); {int(e['within_target'].sum())} of "
                   f"{len(e)} day/class pairs lie within {summary.target_pp:g} points.")
    out += ["", "## What was analysed", "", f"- Input: {context.input}", f"- Model: {context.model}",
            *[f"- {s}" for s in context.sources], "",
            "Each image was turned into a phase map (radians; holograms are reconstructed first), resampled "
            "to the pixel size the model was trained at, segmented patch by patch and merged; every connected "
            "cell region is one cell (small regions of another class on a cell's rim are merged into it, tiny "
            "specks dropped, touching cells split at their neck), its class is the class the model gave "
            "most of its pixels and its "
            "*class confidence* is the model's mean probability of that class over the cell.", "",
            "## Class ratios per storage day", "",
            f"Share of each class among the segmented cells, in percent, with the {conf} % confidence interval in "
            "brackets. Discocytes are the healthy biconcave shape; echinocytes (spiky) and stomatocytes (cup-"
            "shaped) are intermediate storage lesions; spherocytes are the end stage.", "",
            _md_table(wide_ratio_table(summary.ratios)), "",
            "Confidence intervals: " + _ci_text(summary.ratios), ""]
    if "ratios" in context.figures:
        out += [f"![Class ratios over storage]({context.figures['ratios']})", "",
                "*Figure: share of each class per storage day (solid, with the confidence band)"
                + ("; dashed: ground truth" if summary.truth_ratios is not None else "") + ".*", ""]
    out += ["## Morphology indices", "",
            "Single numbers that summarise the class mix, reported beside the ratios above (never instead of "
            "them). Each is a weighted share, index = sum over classes of weight x share; 0 means all "
            "discocytes. The weights are choices, listed here:", ""]
    weights = pd.DataFrame([{"index": s.name, **{c: s.weights[c] for c in CELL_CLASS_NAMES}}
                            for s in summary.schemes.values()])
    out += [_md_table(weights), ""]
    out += [f"- `{s.name}`: {s.description}" for s in summary.schemes.values()]
    if len(summary.indices):
        tab = summary.indices.assign(
            day=summary.indices["day"].map(_day_text),
            text=[f"{v:.3f} ({lo:.3f}-{hi:.3f})" for v, lo, hi in
                  summary.indices[["value", "ci_low", "ci_high"]].itertuples(index=False)])
        wide = tab.pivot(index="day", columns="scheme", values="text").reindex(
            [_day_text(d) for d in _days(summary.indices)]).reset_index()
        out += ["", _md_table(wide)]
    if "indices" in context.figures:
        out += ["", f"![Morphology indices]({context.figures['indices']})"]
    if len(summary.trends):
        out += ["", "## Cell measurements", "",
                "Mean (SD) over all cells of a day. Projected area from the cell mask; dry mass from the "
                "integrated phase (specific refraction increment 0.19 mL/g); sphericity needs the assumed "
                "refractive index difference between cell and medium recorded in `cells.csv` and is "
                "therefore approximate.", ""]
        allc = summary.trends[summary.trends["class_name"] == "all"]
        allc = allc.assign(day=allc["day"].map(_day_text),
                           text=[f"{m:.3g} ({s:.2g})" if not math.isnan(m) else "-"
                                 for m, s in allc[["mean", "sd"]].itertuples(index=False)])
        wide = allc.pivot(index="day", columns="measurement", values="text").reindex(
            [_day_text(d) for d in _days(summary.trends)]).reset_index()
        out += [_md_table(wide), ""]
        if "measurements" in context.figures:
            out += [f"![Cell measurements over storage]({context.figures['measurements']})", ""]
    if summary.confusion is not None:
        out += ["## Accuracy against ground truth", "",
                "Each true cell is assigned the class predicted for most of its pixels (`missed`: mostly "
                "background). Rows: true class; columns: predicted class; counts.", "",
                _md_table(summary.confusion.reset_index()), ""]
        if "confusion" in context.figures:
            out += [f"![Confusion matrix]({context.figures['confusion']})", ""]
    if summary.errors is not None and len(summary.errors):
        err = summary.errors.assign(day=summary.errors["day"].map(_day_text))
        out += ["### Ratio error per day (estimated minus true, percentage points)", "",
                _md_table(err.pivot(index="day", columns="class_name", values="error_pp")
                          .reindex(columns=list(CELL_CLASS_NAMES))
                          .reindex([_day_text(d) for d in _days(summary.errors)]).reset_index()), ""]
    out += ["## Files skipped", ""]
    if context.failures:
        out += ["These files could not be analysed and are left out of every number above:", "",
                _md_table(pd.DataFrame(context.failures, columns=["file", "problem"])), ""]
    else:
        out += ["None: every input image was analysed.", ""]
    out += ["## Output files", "", *[f"- `{k}`: {v}" for k, v in context.files.items()], "",
            "## Caveats", "",
            "- Ratios count segmented cells only: cells cut by the image border, overlapping cells and cells the "
            "model misses change the counts.",
            "- The morphology-index weights are assumptions (see above); compare units with the plain ratios.",
            "- A model trained on one microscope (or on simulated data) can misclassify cells from another; "
            "check the overlays before trusting the numbers.", ""]
    return "\n".join(out)


def _ci_text(ratios: pd.DataFrame) -> str:
    methods = sorted(set(ratios["ci_method"])) if len(ratios) else []
    text = ("cells of one image are not independent (same smear, focus and field), so images are resampled with "
            "replacement (cluster bootstrap) and the 2.5 / 97.5 percentiles of the pooled ratio are reported; a "
            "day with a single image falls back to the Wilson score interval, which treats cells as independent "
            "and is then too narrow.")
    return text + (" Used here: " + "; ".join(methods) + "." if methods else "")

"""The storage study as a reader sees it: figures (ratio trends with CIs, confusion,
measurement trends, indices), the summary against the ratio target, and the Markdown report of
``rbc assess`` (:func:`render_report`). The statistics are :mod:`rbclib.study.storage`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from rbclib.core.labels import CELL_CLASS_NAMES, CELL_CLASSES, CLASS_COLOURS
from rbclib.core.markdown import markdown_table
from rbclib.seg.metrics import NO_CELL
from rbclib.study.storage import (
    MORPHOLOGY_SCHEMES,
    TREND_MEASUREMENTS,
    IndexScheme,
    day_label,
    days_in,
    class_ratios,
    measurement_trends,
    morphology_indices,
    ratio_errors,
    wide_ratio_table,
)


def _x_positions(days: Iterable[float]) -> tuple[np.ndarray, list[str], bool]:
    days = list(days)
    if all(pd.notna(d) for d in days):
        return np.asarray(days, float), [day_label(d) for d in days], True
    return np.arange(len(days), dtype=float), [day_label(d) for d in days], False


def plot_ratio_trends(ratios: pd.DataFrame, *, truth: pd.DataFrame | None = None, title: str | None = None):
    """Figure 8: class ratio [%] over storage day, one line per class with its 95 % CI band.

    Parameters
    ----------
    ratios : pandas.DataFrame
        A :func:`~rbclib.study.storage.class_ratios` table.
    truth : pandas.DataFrame, optional
        A class_ratios table of the ground truth, drawn dashed.
    title : str, optional
        Title (default: a description of the figure).

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.0, 4.5), layout="constrained")
    days = days_in(ratios)
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
    """Figure 9: confusion matrix (rows true class, columns predicted).

    Coloured by the row share (per-class accuracy on the diagonal), annotated with share and count.

    Parameters
    ----------
    confusion : pandas.DataFrame
        Counts, index true class, columns predicted class
        (:func:`rbclib.seg.metrics.cell_confusion`).
    title : str, optional
        Title (default: a description of the figure).

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    import matplotlib.pyplot as plt

    rows = [c for c in confusion.index if c in CELL_CLASS_NAMES] + \
           [c for c in confusion.index if c not in CELL_CLASS_NAMES and confusion.loc[c].sum() > 0]
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
    """Mean of each measurement over storage day.

    One panel per measurement, all cells in black with a +-1 SD band, one thin line per class.

    Parameters
    ----------
    trends : pandas.DataFrame
        A :func:`~rbclib.study.storage.measurement_trends` table.
    classes : iterable of str, optional
        Classes drawn (default ``all`` and the four cell classes).

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    import matplotlib.pyplot as plt

    measures = list(dict.fromkeys(trends["measurement"]))
    fig, axes = plt.subplots(1, max(len(measures), 1), figsize=(4.2 * max(len(measures), 1), 3.8),
                             layout="constrained", squeeze=False)
    days = days_in(trends) if len(trends) else []
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
    """Morphology indices over storage day with 95 % CI bars.

    Parameters
    ----------
    indices : pandas.DataFrame
        A :func:`~rbclib.study.storage.morphology_indices` table.
    schemes : mapping of str to IndexScheme, optional
        The index schemes (not used by the drawing; the table names its schemes).

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8), layout="constrained")
    days = days_in(indices) if len(indices) else []
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


@dataclass
class StorageSummary:
    """Every table of a storage study (all pandas DataFrames; see the functions above).

    Attributes
    ----------
    ratios, indices, trends : pandas.DataFrame
        Estimates from the segmented cells (:func:`~rbclib.study.storage.class_ratios`,
        :func:`~rbclib.study.storage.morphology_indices`,
        :func:`~rbclib.study.storage.measurement_trends`).
    schemes : dict of str to IndexScheme
        The morphology index schemes used.
    truth_ratios, errors, confusion : pandas.DataFrame or None
        Only when ground truth exists (else None / {}): true class ratios, ratio errors, confusion counts.
    accuracy, precision : dict of str to float or None
        Per-class accuracy and precision, only when ground truth exists (else None / {}).
    ci_confidence : float
        Confidence level of the intervals.
    target_pp : float
        Ratio errors up to this many percentage points count as within target.
    """

    ratios: pd.DataFrame
    indices: pd.DataFrame
    trends: pd.DataFrame
    schemes: dict[str, IndexScheme]
    truth_ratios: pd.DataFrame | None = None
    errors: pd.DataFrame | None = None
    confusion: pd.DataFrame | None = None
    accuracy: dict[str, float] | None = None
    precision: dict[str, float] | None = None
    ci_confidence: float = 0.95
    target_pp: float = 3.0


def summarise(cells: pd.DataFrame, *, images_by_day: Mapping[float, list[str]] | None = None,
              truth_cells: pd.DataFrame | None = None, confusion: pd.DataFrame | None = None,
              schemes: Mapping[str, IndexScheme] | None = None, confidence: float = 0.95,
              n_boot: int = 2000, seed: int = 0, target_pp: float = 3.0) -> StorageSummary:
    """All storage tables from a per-cell table (and optional ground truth).

    Parameters
    ----------
    cells : pandas.DataFrame
        Per-cell table (``day``, ``image``, ``class_name``, measurements).
    images_by_day : mapping of float to list of str, optional
        Every image analysed per day (images without cells count as clusters).
    truth_cells : pandas.DataFrame, optional
        Per-cell ground-truth table (``day``, ``image``, ``class_name``).
    confusion : pandas.DataFrame, optional
        Summed :func:`rbclib.seg.metrics.cell_confusion` counts over all images.
    schemes : mapping of str to IndexScheme, optional
        Morphology index schemes (default :data:`~rbclib.study.storage.MORPHOLOGY_SCHEMES`).
    confidence : float, optional
        Confidence level of the intervals; default 0.95.
    n_boot : int, optional
        Bootstrap replicates; default 2000.
    seed : int, optional
        Seed of the bootstraps; default 0.
    target_pp : float, optional
        Ratio error target [percentage points]; default 3.

    Returns
    -------
    StorageSummary
        The tables; the ground-truth ones only when given.

    Notes
    -----
    Nine parameters because it forwards the statistics' options (confidence, bootstrap size,
    seed, target) and the optional ground truth to the functions of
    :mod:`rbclib.study.storage`; ``rbc assess`` passes them one to one.
    """
    from rbclib.seg.metrics import confusion_accuracy, confusion_precision

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
        summary.precision = confusion_precision(confusion)
    return summary


def summary_figures(summary: StorageSummary) -> dict[str, Any]:
    """The study's figures by short name, matplotlib Figures, not saved.

    Parameters
    ----------
    summary : StorageSummary
        The study's tables.

    Returns
    -------
    dict of str to matplotlib.figure.Figure
        ``ratios`` = Figure 8, ``indices``, ``measurements`` (with trends) and ``confusion``
        = Figure 9 (with ground truth).
    """
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

    Attributes
    ----------
    input : str
        What was analysed.
    model : str
        Which model and why.
    n_images : int
        Images analysed.
    sources : list of str
        Lines on image type, optics and resampling.
    failures : list of tuple of str
        (file, problem) pairs of skipped files.
    figures : dict of str to str
        Short name -> path relative to the report.
    files : dict of str to str
        Output name -> what it holds.
    generated : str
        When the report was made (text).
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
    days = [d for d in days_in(r) if pd.notna(d)]
    lines = []
    if len(days) >= 2:
        first, last = days[0], days[-1]
        disc = r[r["class_name"] == "discocyte"].set_index("day")["ratio"]
        late = summary.indices[summary.indices["scheme"] == "late_stage_share"].set_index("day")["value"] \
            if "late_stage_share" in summary.schemes else None
        lines.append(f"- Discocytes (healthy biconcave cells) make up {100 * disc[first]:.1f} % of the cells on day "
                     f"{day_label(first)} and {100 * disc[last]:.1f} % on day {day_label(last)}.")
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
    """The Markdown report of a storage study, written for a reader who has not seen the code.

    Parameters
    ----------
    summary : StorageSummary
        The study's tables.
    context : ReportContext
        Input, model, failures, figures and files of the run.

    Returns
    -------
    str
        The report, Markdown.

    Notes
    -----
    Long because the report is one document read top to bottom: its sections (in short,
    what was analysed, ratios, indices, measurements, accuracy, skipped files, caveats) are
    written in reading order into one list, each guarded by whether its table exists.
    """
    conf = int(round(100 * summary.ci_confidence))
    n_cells = int(summary.ratios.groupby("day", dropna=False)["n_cells"].first().sum()) if len(summary.ratios) else 0
    days = [d for d in days_in(summary.ratios) if pd.notna(d)]
    out = ["# Stored red blood cell quality report", "",
           f"Generated {context.generated} by `rbc assess` (rbc-holo), after Park et al., "
           "Adv. Sensor Res. 2025 (doi:10.1002/adsr.202500073).", "", "## In short", "",
           f"- {context.n_images} image(s) analysed, {len(context.failures)} skipped because of a problem, "
           f"{n_cells} cells segmented and classified"
           + (f", {len(days)} storage day(s) ({', '.join(day_label(d) for d in days)})." if days else
              " (one blood unit, no storage days given)."),
           *_headline(summary)]
    if summary.accuracy:
        acc = ", ".join(f"{k} {v:.2f}" for k, v in summary.accuracy.items() if not math.isnan(v))
        prec = ", ".join(f"{k} {v:.2f}" for k, v in (summary.precision or {}).items() if not math.isnan(v))
        false = int(summary.confusion.loc[NO_CELL].sum()) if NO_CELL in summary.confusion.index else 0
        out.append(f"- Ground truth was available: per-class accuracy {acc}; per-class precision {prec or 'n/a'} "
                   f"({false} detection(s) on true background, row `{NO_CELL}` of the confusion table).")
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
            day=summary.indices["day"].map(day_label),
            text=[f"{v:.3f} ({lo:.3f}-{hi:.3f})" for v, lo, hi in
                  summary.indices[["value", "ci_low", "ci_high"]].itertuples(index=False)])
        wide = tab.pivot(index="day", columns="scheme", values="text").reindex(
            [day_label(d) for d in days_in(summary.indices)]).reset_index()
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
        allc = allc.assign(day=allc["day"].map(day_label),
                           text=[f"{m:.3g} ({s:.2g})" if not math.isnan(m) else "-"
                                 for m, s in allc[["mean", "sd"]].itertuples(index=False)])
        wide = allc.pivot(index="day", columns="measurement", values="text").reindex(
            [day_label(d) for d in days_in(summary.trends)]).reset_index()
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
        err = summary.errors.assign(day=summary.errors["day"].map(day_label))
        out += ["### Ratio error per day (estimated minus true, percentage points)", "",
                _md_table(err.pivot(index="day", columns="class_name", values="error_pp")
                          .reindex(columns=list(CELL_CLASS_NAMES))
                          .reindex([day_label(d) for d in days_in(summary.errors)]).reset_index()), ""]
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

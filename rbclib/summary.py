"""The measured summary of a run: a few headline numbers in ``<run>/summary.json`` and the
Markdown table the README shows between markers, generated from it (never typed by hand).

``rbc report`` writes ``summary.json``; ``rbc report --readme README.md`` replaces the block
between ``<!-- measured:<profile>:start -->`` and ``<!-- measured:<profile>:end -->`` with
:func:`render_summary` of it. A copy of the file is committed as ``docs/results/<profile>.json``
and ``tests/test_summary.py`` checks the README against it.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from rbclib.core.files import ImageFileError, read_json, write_json, write_text
from rbclib.core.paths import RunPaths

STAGE_LABELS = {"01": "reconstruct", "02": "annotate", "03": "diffusion GANs", "04": "curation", "05": "SSL",
                "06": "fine-tune", "07": "evaluate", "08": "storage study"}


_TEXT_COLUMNS = {"probe_set", "encoder", "within_target"}


def _csv(path: Path, columns: tuple[str, ...] = ()) -> pd.DataFrame | None:
    """The table at ``path`` if it can be read, holds ``columns`` and has rows; else None.
    ImageFileError naming the file, column and row when a number column holds text."""
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    if not (len(table) and set(columns) <= set(table.columns)):
        return None
    for column in set(columns) - _TEXT_COLUMNS:
        numbers = pd.to_numeric(table[column], errors="coerce")
        bad = numbers.isna() & table[column].notna()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise ImageFileError(path, f"column {column!r} holds {table[column].iloc[row]!r} in row {row + 2}, "
                                       "not a number")
        table[column] = numbers
    return table


def _overall(path: Path) -> dict[str, float]:
    table = _csv(path, ("Overall",))
    if table is None:
        return {}
    return {str(m): round(float(v), 3) for m, v in zip(table.iloc[:, 0], table["Overall"])}


def run_summary(run_dir: str | Path) -> dict[str, Any]:
    """Headline numbers of a run folder (what exists of them).

    Parameters
    ----------
    run_dir : str or pathlib.Path
        The run folder.

    Returns
    -------
    dict
        ``profile``, ``finished``, ``minutes`` per stage and ``minutes_total``, test ``dice``
        and ``aji`` overall per method, ``reconstruction_rmse_rad`` (cells, medium),
        ``storage`` ratio errors [pp] and ``ssl_probe`` k-NN accuracies (pretrained, random);
        keys whose artefacts are missing, unreadable or empty are left out.

    Raises
    ------
    ImageFileError
        A number column of a table holds text (the message names the file, column and row).
    """
    paths = RunPaths(run_dir)
    out: dict[str, Any] = {}
    timings = read_json(paths.timings_json) if paths.timings_json.exists() else {}
    if timings:
        out["profile"] = sorted({t.get("profile", "") for t in timings.values()})[-1]
        out["finished"] = max(t.get("finished", "") for t in timings.values())
        out["minutes"] = {k[:2]: round(float(t["seconds"]) / 60, 1) for k, t in sorted(timings.items())}
        out["minutes_total"] = round(sum(out["minutes"].values()), 1)
    rec = _csv(paths.tables / "reconstruction_error.csv", ("rmse_cells_rad", "rmse_background_rad"))
    if rec is not None:
        out["reconstruction_rmse_rad"] = {"cells": round(float(rec["rmse_cells_rad"].mean()), 3),
                                          "medium": round(float(rec["rmse_background_rad"].mean()), 3)}
    for name in ("dice", "aji"):
        scores = _overall(paths.tables / f"{name}.csv")
        if scores:
            out[name] = scores
    err = _csv(paths.storage / "ratio_errors.csv", ("abs_error_pp", "within_target"))
    if err is not None and len(err.dropna(subset=["abs_error_pp"])):
        e = err.dropna(subset=["abs_error_pp"])
        out["storage"] = {"pairs": int(len(e)), "within_target": int(e["within_target"].sum()),
                          "mean_error_pp": round(float(e["abs_error_pp"].mean()), 1),
                          "max_error_pp": round(float(e["abs_error_pp"].max()), 1)}
    probe = _csv(paths.tables / "ssl_probe.csv", ("probe_set", "encoder", "knn_accuracy"))
    if probe is not None:
        first = probe[probe["probe_set"] == probe["probe_set"].iloc[0]].set_index("encoder")["knn_accuracy"]
        out["ssl_probe"] = {"set": str(probe["probe_set"].iloc[0]),
                            **{k: round(float(v), 3) for k, v in first.items()}}
    return out


def write_summary(run_dir: str | Path) -> Path:
    """Write ``<run>/summary.json`` (:func:`run_summary`).

    Parameters
    ----------
    run_dir : str or pathlib.Path
        The run folder.

    Returns
    -------
    pathlib.Path
        The written ``summary.json``.
    """
    path = RunPaths(run_dir).root / "summary.json"
    write_json(path, run_summary(run_dir))
    return path


def _scores(scores: dict[str, float]) -> str:
    return ", ".join(f"{m} {v:.3f}" for m, v in scores.items() if not math.isnan(v))


def render_summary(summary: dict[str, Any]) -> str:
    """The README's table of a run summary.

    Parameters
    ----------
    summary : dict
        A run summary (:func:`run_summary`); missing keys give no row.

    Returns
    -------
    str
        The Markdown table (columns ``measured``, ``value``); ends with a newline.
    """
    from rbclib.core.markdown import markdown_table

    rows = []
    if "minutes" in summary:
        stages = ", ".join(f"{k} {STAGE_LABELS.get(k, k)} {v:g}" for k, v in summary["minutes"].items())
        rows.append(("time [min]", f"{summary['minutes_total']:g} in all ({stages}); finished {summary['finished']}"))
    if "reconstruction_rmse_rad" in summary:
        r = summary["reconstruction_rmse_rad"]
        rows.append(("01 phase RMSE [rad]", f"{r['cells']:.3f} in cells, {r['medium']:.3f} in the medium"))
    for key, label in (("dice", "07 Dice overall (test)"), ("aji", "07 AJI overall (test)")):
        if key in summary:
            rows.append((label, _scores(summary[key])))
    if "storage" in summary:
        s = summary["storage"]
        rows.append(("08 class ratio error", f"{s['within_target']} of {s['pairs']} day x class pairs within target; "
                                             f"mean {s['mean_error_pp']:g} pp, max {s['max_error_pp']:g} pp"))
    if "ssl_probe" in summary:
        p = summary["ssl_probe"]
        rows.append((f"05 SSL k-NN probe ({p['set']})", ", ".join(f"{k} {v:.3f}" for k, v in p.items() if k != "set")))
    return markdown_table(pd.DataFrame(rows, columns=["measured", "value"]))


def _markers(profile: str) -> tuple[str, str]:
    return f"<!-- measured:{profile}:start -->", f"<!-- measured:{profile}:end -->"


def readme_block(text: str, profile: str) -> str:
    """The text between the README markers of ``profile``.

    Parameters
    ----------
    text : str
        The README.
    profile : str
        The profile named in the markers.

    Returns
    -------
    str
        The block, without its surrounding blank lines, ending with one newline.

    Raises
    ------
    ValueError
        The README lacks either marker.
    """
    start, end = _markers(profile)
    if start not in text or end not in text:
        raise ValueError(f"README has no {start} ... {end} block")
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n") + "\n"


def update_readme(readme: str | Path, summary: dict[str, Any], profile: str) -> None:
    """Replace the marked block of ``profile`` in ``readme`` with :func:`render_summary`.

    The file is not written when the block already holds that table.

    Parameters
    ----------
    readme : str or pathlib.Path
        The README file.
    summary : dict
        A run summary (:func:`run_summary`).
    profile : str
        The profile named in the markers.

    Raises
    ------
    ValueError
        The README lacks the markers of ``profile``.
    """
    readme = Path(readme)
    text = readme.read_text()
    start, end = _markers(profile)
    old = readme_block(text, profile)
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    if old == render_summary(summary):
        return
    write_text(readme, f"{before}{start}\n{render_summary(summary)}{end}{after}")

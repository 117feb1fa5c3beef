"""The run report: one page that gathers what every stage left in a run folder.

``write_run_report(run_dir)`` writes ``<run>/report.md`` (figures linked by relative path)
and ``<run>/report.html`` (self-contained: figures embedded as base64 PNG). It reads only
files (tables, figures, JSON) that the notebooks wrote; a section whose artefacts are absent
says which stage did not run and which file it looked for, so a partial run still gets a
report. ``rbclib.pipeline.run_notebooks`` calls it after the last notebook.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import platform
import re
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from rbclib.core.files import ImageFileError, read_json, write_text
from rbclib.core.markdown import markdown_table
from rbclib.core.paths import RunPaths

# Distributions whose versions the report lists (import name differs for some).
SOFTWARE = ("rbc-holo", "torch", "torchvision", "segmentation-models-pytorch", "numpy", "scipy",
            "scikit-image", "pandas", "matplotlib", "tifffile", "papermill", "nbformat",
            "jupyterlab", "ipywidgets", "ipykernel")

MAX_ROWS = 30  # longer tables are summarised (count, mean, sd, min, median, max per column)

FIGURE_NAME = re.compile(r"^(\d\d)_.+\.png$")

MODEL_OWNERS = ("03", "05", "06")  # stages that write model folders (see _model_owner)

OPTICS_UNITS = {"wavelength_m": "m", "pixel_size_m": "m", "n_medium": "", "n_cell": "",
                "alpha_m3_per_kg": "m^3/kg"}


@dataclass(frozen=True)
class _Stage:
    number: str
    title: str
    notebook: str
    tables: tuple[tuple[str, str], ...] = ()  # (path relative to the run folder, caption)


STAGES = (
    _Stage("01", "Reconstruction", "01_reconstruct",
           (("tables/reconstruction_error.csv", "Reconstruction error against the simulator's true phase"),)),
    _Stage("02", "Annotation", "02_annotate",
           (("tables/proposal_quality.csv", "Quality of the automatic cell proposals"),
            ("tables/measurement_errors.csv", "Per-cell measurement errors against the simulator's truth"))),
    _Stage("03", "Diffusion GAN (DDGAN)", "03_train_diffusion"),
    _Stage("04", "Synthetic pairs, curated", "04_curate_synthetic",
           (("synthetic/class_balance.csv", "Class balance: real training masks, all candidates, accepted pairs"),)),
    _Stage("05", "Self-supervised pretraining", "05_ssl_pretrain",
           (("tables/ssl_probe.csv", "Linear probe of the SSL encoder"),)),
    _Stage("06", "Fine-tuning", "06_finetune"),
    _Stage("07", "Evaluation (Tables 1-3)", "07_evaluate",
           (("tables/dice.csv", "Table 1: Dice coefficient per class"),
            ("tables/aji.csv", "Table 2: aggregated Jaccard index (AJI) per class"),
            ("tables/compute.csv", "Table 3: parameters, compute and time"),
            ("tables/protocols.csv", "Tiled inference against the paper's patch protocol"))),
    _Stage("08", "Storage study", "08_storage_study",
           (("storage/ratios.csv", "Morphology class ratios per storage day"),
            ("storage/ratio_errors.csv", "Predicted against reference ratios"),
            ("storage/indices.csv", "Storage-quality indices with 95 % confidence intervals"))),
)


class _Doc:
    """Builds the Markdown and the HTML of the report side by side."""

    def __init__(self, root: Path):
        self.root = root
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, text: str, level: int) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(f"{text}\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def not_run(self, text: str) -> None:
        self.md.append(f"*Not run: {text}.*\n")
        self.html.append(f'<p class="not-run">Not run: {html.escape(text)}.</p>')

    def table(self, df: pd.DataFrame, caption: str | None = None) -> None:
        header = [str(c) for c in df.columns]
        rows = [[_fmt(v) for v in row] for row in df.itertuples(index=False)]
        if caption:
            self.md.append(f"**{caption}**\n")
        self.md.append(markdown_table(df, fmt=_fmt))
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) + "</tr>" for row in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.html.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def preformatted(self, text: str) -> None:
        self.md.append(f"```\n{text.rstrip()}\n```\n")
        self.html.append(f"<pre>{html.escape(text)}</pre>")

    def figure(self, path: Path) -> None:
        rel = path.relative_to(self.root).as_posix()
        caption = path.stem
        self.md.append(f"![{caption}]({rel})\n")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        self.html.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(rel)}</figcaption></figure>")


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ImageFileError(path, f"cannot read CSV ({exc})") from exc


def software_versions() -> dict[str, str]:
    """Python, the platform and the versions of the distributions in ``SOFTWARE``.

    Returns
    -------
    dict of str to str
        ``python``, ``platform`` and distribution name -> version ("not installed" when absent).
    """
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in SOFTWARE:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def write_run_report(run_dir: str | Path, *, profile: str | None = None) -> tuple[Path, Path]:
    """Write ``<run>/report.md`` and ``<run>/report.html``.

    Parameters
    ----------
    run_dir : str or pathlib.Path
        The run folder.
    profile : str, optional
        The profile to describe; by default the one recorded in ``timings.json``.

    Returns
    -------
    tuple of (pathlib.Path, pathlib.Path)
        The Markdown and the HTML report.

    Raises
    ------
    FileNotFoundError
        ``run_dir`` does not exist.
    ValueError
        An artefact that exists cannot be read (the message names the file).
    """
    paths = RunPaths(run_dir)
    if not paths.root.is_dir():
        raise FileNotFoundError(f"{paths.root}: run folder not found")
    doc = _Doc(paths.root)
    timings = read_json(paths.timings_json) if paths.timings_json.exists() else {}
    profiles = sorted({str(t.get("profile")) for t in timings.values() if t.get("profile")})
    profile = profile or (profiles[0] if len(profiles) == 1 else None)

    doc.heading("rbc-holo run report", 1)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    doc.para(f"Run folder: {paths.root}. Report written {now}. "
             f"Profile: {profile or ', '.join(profiles) or 'unknown (no timings.json)'}.")

    _time_section(doc, paths, timings)
    _optics_section(doc, paths)
    _profile_section(doc, profile)
    figures = _figures_by_stage(paths.figures)
    for stage in STAGES:
        _stage_section(doc, paths, stage, timings, figures.pop(stage.number, []))
    leftover = [f for number in sorted(figures) for f in figures[number]]
    if leftover:
        doc.heading("Other figures", 2)
        for fig in leftover:
            doc.figure(fig)
    _software_section(doc)

    md_path = paths.root / "report.md"
    html_path = paths.root / "report.html"
    write_text(md_path, "\n".join(doc.md))
    write_text(html_path, _html_page("rbc-holo run report", "\n".join(doc.html)))
    return md_path, html_path


def _time_section(doc: _Doc, paths: RunPaths, timings: dict[str, Any]) -> None:
    doc.heading("Time per stage", 2)
    if not timings:
        doc.not_run(f"no stage recorded its time ({paths.timings_json.name} absent; `rbc run` writes it)")
        return
    rows = [{"stage": name, "seconds": float(t.get("seconds", float("nan"))),
             "profile": t.get("profile", ""), "finished": t.get("finished", "")}
            for name, t in sorted(timings.items())]
    table = pd.DataFrame(rows)
    total = pd.DataFrame([{"stage": "total", "seconds": table["seconds"].sum(), "profile": "", "finished": ""}])
    doc.table(pd.concat([table, total], ignore_index=True))


def _optics_section(doc: _Doc, paths: RunPaths) -> None:
    doc.heading("Optics", 2)
    if not paths.optics_json.exists():
        doc.not_run(f"{paths.optics_json.name} absent (01_reconstruct writes it)")
        return
    optics = read_json(paths.optics_json)
    provenance = optics.get("provenance", {}) or {}
    rows = [{"quantity": k, "value": str(v), "unit": OPTICS_UNITS.get(k, ""), "provenance": provenance.get(k, "")}
            for k, v in optics.items() if k != "provenance"]
    doc.table(pd.DataFrame(rows, columns=["quantity", "value", "unit", "provenance"]))


def _profile_section(doc: _Doc, profile: str | None) -> None:
    from rbclib.profile import get_profile

    doc.heading("Profile", 2)
    if profile is None:
        doc.not_run("no single profile recorded in timings.json; pass profile= to describe one")
        return
    rows = [{"stage": stage, "setting": key, "value": json.dumps(value) if isinstance(value, (list, dict)) else value}
            for stage, table in sorted(get_profile(profile).items()) for key, value in table.items()]
    doc.para(f"Sizes of the {profile!r} profile (rbclib/profiles/<stage>.toml).")
    doc.table(pd.DataFrame(rows, columns=["stage", "setting", "value"]))


def _figures_by_stage(folder: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if m := FIGURE_NAME.match(path.name):
                out.setdefault(m.group(1), []).append(path)
    return out


def _stage_section(doc: _Doc, paths: RunPaths, stage: _Stage, timings: dict[str, Any],
                   figures: list[Path]) -> None:
    doc.heading(f"{stage.number} {stage.title}", 2)
    seconds = timings.get(stage.notebook, {}).get("seconds")
    if seconds is not None:
        doc.para(f"{stage.notebook} ran in {float(seconds):.1f} s.")
    for rel, caption in stage.tables:
        _table_or_markdown(doc, paths.root / rel, caption, stage)
    extra = {"02": _annotation_summary, "04": _selection_summary}.get(stage.number)
    if extra is not None:
        extra(doc, paths, stage)
    if stage.number in MODEL_OWNERS:
        _model_summary(doc, paths, stage)
    if stage.number == "08" and (paths.storage / "report.md").exists():
        doc.para("The storage-quality report of this series: storage/report.md.")
    for fig in figures:
        doc.figure(fig)
    if not figures and seconds is None:
        doc.not_run(f"no figures/{stage.number}_*.png ({stage.notebook} saves them)")
    elif not figures:
        doc.para(f"{stage.notebook} saved no figures/{stage.number}_*.png.")


def _table_or_markdown(doc: _Doc, csv_path: Path, caption: str, stage: _Stage) -> None:
    """Show a CSV table; fall back to its Markdown twin; else a 'not run' line."""
    md_twin = csv_path.with_suffix(".md")
    if csv_path.exists():
        table = _read_csv(csv_path)
        if len(table) > MAX_ROWS:
            doc.para(f"{caption}: {len(table)} rows, summarised; full table {csv_path.relative_to(doc.root).as_posix()}.")
            table = table.describe().T.reset_index(names="column")
            caption = None
        doc.table(table, caption)
    elif md_twin.exists():
        doc.para(caption)
        doc.preformatted(md_twin.read_text())
    else:
        doc.not_run(f"{caption} ({csv_path.relative_to(doc.root).as_posix()} absent; {stage.notebook} writes it)")


def _annotation_summary(doc: _Doc, paths: RunPaths, stage: _Stage) -> None:
    if paths.cells_csv.exists():
        cells = _read_csv(paths.cells_csv)
        if "class_name" in cells.columns:
            counts = cells["class_name"].value_counts().rename_axis("class").reset_index(name="cells")
            counts["fraction"] = counts["cells"] / counts["cells"].sum()
            doc.table(counts, f"Labelled cells by class ({len(cells)} cells)")
    else:
        doc.not_run(f"cell table ({paths.cells_csv.name} absent; {stage.notebook} writes it)")
    if paths.splits_json.exists():
        splits = read_json(paths.splits_json)
        doc.para(f"Split: {len(splits.get('train', []))} train / {len(splits.get('test', []))} test images "
                 f"(method {splits.get('method', 'unknown')}, seed {splits.get('seed', 'unknown')}).")


def _selection_summary(doc: _Doc, paths: RunPaths, stage: _Stage) -> None:
    path = paths.synthetic / "selection.json"
    if not path.exists():
        doc.not_run(f"selection of synthetic pairs (synthetic/selection.json absent; {stage.notebook} writes it)")
        return
    sel = read_json(path)
    accepted, rejected = sel.get("accepted", []), sel.get("rejected", [])
    by = pd.Series(sel.get("selected_by", {}), dtype=object).value_counts()
    who = ", ".join(f"{n} by {name}" for name, n in by.items()) or "nobody recorded"
    doc.para(f"Selection: {len(accepted)} accepted, {len(rejected)} rejected (mode {sel.get('mode', 'unknown')}; "
             f"accepted {who}).")
    if sel.get("rule"):
        doc.para(f"Rule: {sel['rule']}")
    known = {"accepted", "rejected", "selected_by", "mode", "rule"}
    scalars = {k: v for k, v in sel.items() if k not in known and not isinstance(v, (dict, list))}
    if scalars:
        doc.table(pd.DataFrame([{"key": k, "value": v} for k, v in scalars.items()]), "Selection settings")
    for key, value in sel.items():
        if key not in known and isinstance(value, dict) and value and all(
                not isinstance(v, (dict, list)) for v in value.values()):
            doc.table(pd.DataFrame([{"key": k, "value": v} for k, v in value.items()]), key.replace("_", " "))


def _model_owner(name: str) -> str:
    """The stage that writes the model folder ``models/<name>``."""
    return "03" if name.startswith("ddgan") else "05" if name.startswith("ssl") else "06"


def _model_summary(doc: _Doc, paths: RunPaths, stage: _Stage) -> None:
    folders = sorted(p for p in paths.models.iterdir() if p.is_dir() and _model_owner(p.name) == stage.number) \
        if paths.models.is_dir() else []
    if not folders:
        doc.not_run(f"no model folder of {stage.notebook} under models/")
        return
    rows = []
    for folder in folders:
        row: dict[str, Any] = {"model": folder.name,
                               "best.pt": "yes" if (folder / "best.pt").exists() else "no"}
        log = folder / "log.csv"
        if log.exists():
            table = _read_csv(log)
            row["log rows"] = len(table)
            if len(table):
                row.update({f"last {c}": table[c].iloc[-1] for c in table.columns[:6]})
        rows.append(row)
    doc.table(pd.DataFrame(rows), "Trained model folders (last row of each log.csv)")


def _software_section(doc: _Doc) -> None:
    doc.heading("Software", 2)
    doc.para("Versions in the environment that wrote this report.")
    doc.table(pd.DataFrame([{"software": k, "version": v} for k, v in software_versions().items()]))
    doc.para(f"Interpreter: {sys.executable}")


_CSS = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:0.5rem 0 1rem}th,td{border:1px solid #ccc;padding:0.2rem 0.5rem;
text-align:left;font-size:0.9rem}caption{font-weight:bold;text-align:left;padding:0.3rem 0;white-space:nowrap}
img{max-width:100%}figure{margin:1rem 0}figcaption{color:#555;font-size:0.85rem}
.not-run{color:#8a5a00;font-style:italic}pre{background:#f6f6f6;padding:0.5rem;overflow-x:auto}"""


def _html_page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")

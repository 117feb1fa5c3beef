"""Realism benchmark: the same statistics on the digital twin's and on real phase images.

Both kinds of image are phase maps made by :func:`rbclib.physics.holography.reconstruct`: the
twin's holograms with their background hologram (as notebook 01 does), the real holograms
(no background) with numerical compensation. On each phase image (H, W) [rad]
:mod:`rbclib.physics.image_statistics` measures

* the background noise: robust s.d. of the medium after removing its slow background, in
  rad and as optical path [nm], its radially averaged power spectrum and a correlation length;
* per cell: area, 10-90 % edge width, central dip ratio, outline roughness, peak phase,
  dry mass, and whether it is isolated or touches the image edge;
* cells per 1000 um^2, counted by an independent cell finder
  (:func:`~rbclib.physics.image_statistics.find_cells`).

:func:`comparison_table` sets the twin beside the real holograms, :func:`class_summary`
gives the twin's per-class medians, and :func:`check_targets` checks the realism targets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from rbclib.core.config import Optics
from rbclib.core.labels import CELL_CLASSES, CLASS_COLOURS, CLASS_IDS, CLASS_NAMES
from rbclib.core.paths import source_checkout
from rbclib.physics.image_statistics import (Noise, background_noise, cell_statistics, cells_per_1000um2, find_cells,
                                             foreground_mask)

EQUAL_MIXTURE: dict[str, float] = {CLASS_NAMES[c]: 1 / len(CELL_CLASSES) for c in CELL_CLASSES}
"""The four classes in equal shares (per-class statistics of the twin)."""

REAL_OPTICS: dict[str, dict[str, float]] = {
    "rbc_pydhm_field_2021.png": {"wavelength_m": 532e-9, "pixel_size_m": 0.1465e-6},
    "rbc_pydhm.jpg": {"pixel_size_m": 0.064e-6},
    "rbc_nontelecentric_50x.tiff": {"wavelength_m": 633e-9},
}
"""Real RBC holograms of ``../shared/data/holograms`` (see its README) and the optics assumed
for them, as changes to :class:`~rbclib.core.config.Optics` defaults (undocumented values stay
default). ``rbc_pydhm.jpg`` has no documented pixel size: at the default 0.1441 um/px its
cells measure ~18 um across, so 0.064 um/px is assumed (8 um discocytes), an estimate."""

TARGETS: dict[str, float] = {
    "echinocyte_roughness_min": 0.03, "roughness_auc_min": 0.95, "discocyte_dip_p10_max": 0.25,
    "discocyte_dip_p90_min": 0.45, "dry_mass_rel_max": 0.08,
}
"""Thresholds of the twin-only targets of :func:`check_targets`."""


# ----------------------------------------------------------------------------- small helpers
def rank_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve of a score that should be higher for ``positive`` than for ``negative`` samples.

    P(pos > neg) + P(pos == neg) / 2 (Mann-Whitney, ranks with ties); non-finite scores are left out.

    Parameters
    ----------
    positive, negative : numpy.ndarray
        1-D scores of the two groups.

    Returns
    -------
    float
        The AUC in [0, 1]; NaN when a group is empty.
    """
    from scipy.stats import rankdata

    pos, neg = np.asarray(positive, float), np.asarray(negative, float)
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    if not pos.size or not neg.size:
        return math.nan
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


# ----------------------------------------------------------------------------- twin and real
@dataclass
class PhaseStatistics:
    """Statistics of a set of phase images.

    Attributes
    ----------
    name : str
        What was measured (column title in :func:`comparison_table`).
    cells : pandas.DataFrame
        :func:`~rbclib.physics.image_statistics.cell_statistics` rows of all images plus ``field`` (image index).
    fields : pandas.DataFrame
        One row per image: ``field``, ``noise_rad``, ``noise_nm``, ``corr_length_um``,
        ``cells_per_1000um2`` (cells found by :func:`~rbclib.physics.image_statistics.find_cells`),
        ``cells_per_1000um2_given`` (the instances measured, when given; else NaN).
    noise : list of rbclib.physics.image_statistics.Noise
        The :class:`~rbclib.physics.image_statistics.Noise` of each image.
    """

    name: str
    cells: pd.DataFrame
    fields: pd.DataFrame
    noise: list[Noise]

    @property
    def clean(self) -> pd.DataFrame:
        """Cells used in the summaries: isolated and away from the image edge."""
        return self.cells[self.cells.isolated & ~self.cells.touches_edge]


def phase_statistics(phases: list[np.ndarray], *, optics: list[Optics], name: str,
                     instances: list[np.ndarray] | None = None,
                     classes: list[Mapping[int, str]] | None = None) -> PhaseStatistics:
    """Measure phase images alike.

    Noise around :func:`~rbclib.physics.image_statistics.foreground_mask`, density of
    :func:`~rbclib.physics.image_statistics.find_cells`, per-cell statistics on the given
    ``instances`` or, without them, on the cells found.

    Parameters
    ----------
    phases : list of numpy.ndarray
        Phase images, each (H, W) [rad].
    optics : list of rbclib.core.config.Optics
        The optics of each image.
    name : str
        What was measured (:attr:`PhaseStatistics.name`).
    instances : list of numpy.ndarray, optional
        (H, W) instance map of each image (e.g. ground truth).
    classes : list of mapping of int to str, optional
        Per image: cell id -> class name.

    Returns
    -------
    PhaseStatistics
        Cells, per-image rows and noise of all images.
    """
    cells, fields, noises = [], [], []
    for k, (phase, opt) in enumerate(zip(phases, optics)):
        found = find_cells(phase, pixel_size_m=opt.pixel_size_m)
        inst = instances[k] if instances is not None else found
        cells.append(cell_statistics(phase, inst, optics=opt, classes=classes[k] if classes else None).assign(field=k))
        noise = background_noise(phase, foreground_mask(phase, pixel_size_m=opt.pixel_size_m),
                                 pixel_size_m=opt.pixel_size_m, wavelength_m=opt.wavelength_m)
        noises.append(noise)
        fields.append({"field": k, "noise_rad": noise.noise_rad, "noise_nm": noise.noise_nm,
                       "corr_length_um": noise.corr_length_um,
                       "cells_per_1000um2": cells_per_1000um2(found, pixel_size_m=opt.pixel_size_m),
                       "cells_per_1000um2_given": (cells_per_1000um2(inst, pixel_size_m=opt.pixel_size_m)
                                                   if instances is not None else math.nan)})
    return PhaseStatistics(name=name, cells=pd.concat(cells, ignore_index=True), fields=pd.DataFrame(fields),
                           noise=noises)


def twin_statistics(n_fields: int = 12, *, seed: int = 0, field_px: int = 512, optics: Optics | None = None,
                    mixture: str | dict[str, float] | None = None, **simulate_kw: Any) -> PhaseStatistics:
    """Statistics of ``n_fields`` twin fields.

    Each field (:func:`rbclib.physics.simulate.simulate_field`, seeds ``SeedSequence([seed, i])``)
    is reconstructed with its background hologram like notebook 01 and measured on its
    ground-truth instances and classes.

    Parameters
    ----------
    n_fields : int, optional
        Fields simulated; default 12.
    seed : int, optional
        Seed of the fields; default 0.
    field_px : int, optional
        Side of a field [px]; default 512.
    optics : rbclib.core.config.Optics, optional
        Optics of the twin (default ``Optics()``).
    mixture : str or dict of str to float, optional
        Class mixture (default :data:`EQUAL_MIXTURE`).
    **simulate_kw
        Passed on to ``simulate_field``.

    Returns
    -------
    PhaseStatistics
        Named "twin".
    """
    from rbclib.physics.holography import reconstruct
    from rbclib.physics.simulate import simulate_field

    phases, opts, insts, classes = [], [], [], []
    for i in range(n_fields):
        f = simulate_field(np.random.SeedSequence([seed, i]), field_px=field_px, optics=optics or Optics(),
                           mixture=mixture or EQUAL_MIXTURE, **simulate_kw)
        phases.append(reconstruct(f.hologram, background=f.background, optics=f.optics).phase)
        opts.append(f.optics)
        insts.append(f.instances)
        classes.append(dict(zip(f.cells.cell_id.astype(int), f.cells.class_name)))
    return phase_statistics(phases, optics=opts, name="twin", instances=insts, classes=classes)


def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository (the real data of tests and benchmarks), or
    beside the working directory when rbclib is installed without its repository.

    Returns
    -------
    pathlib.Path
        The resolved folder (it may not exist).
    """
    checkout = source_checkout()
    return (checkout if checkout is not None else Path.cwd()).resolve().parent / "shared" / "data"


def real_hologram_paths(data_dir: str | Path) -> list[Path]:
    """The holograms of :data:`REAL_OPTICS` present in ``data_dir/holograms`` (empty when absent).

    Parameters
    ----------
    data_dir : str or pathlib.Path
        Folder holding ``holograms/``.

    Returns
    -------
    list of pathlib.Path
        The present files, in the order of :data:`REAL_OPTICS`.
    """
    folder = Path(data_dir) / "holograms"
    return [folder / name for name in REAL_OPTICS if (folder / name).is_file()]


def real_statistics(path: str | Path, *, optics: Optics | None = None) -> PhaseStatistics:
    """Statistics of one real hologram, reconstructed without background (numerical compensation).

    Parameters
    ----------
    path : str or pathlib.Path
        The hologram file.
    optics : rbclib.core.config.Optics, optional
        Default: :data:`REAL_OPTICS` for its file name over the defaults.

    Returns
    -------
    PhaseStatistics
        Named after the file, measured on the cells found.
    """
    from rbclib.physics.holography import reconstruct
    from rbclib.core.io import read_image

    path = Path(path)
    optics = optics or Optics().replace(**REAL_OPTICS.get(path.name, {}))
    phase = reconstruct(read_image(path).data, optics=optics, source=str(path)).phase
    return phase_statistics([phase], optics=[optics], name=path.name)


# ----------------------------------------------------------------------------- comparison
_PER_FIELD = {"background noise [nm]": "noise_nm", "background noise [rad]": "noise_rad",
              "noise correlation length [um]": "corr_length_um", "cells per 1000 um^2 (finder)": "cells_per_1000um2"}
_PER_CELL = {"edge width 10-90 % [um]": "edge_width_um", "central dip ratio": "dip_ratio",
             "outline roughness": "roughness", "peak phase [rad]": "peak_phase_rad", "peak OPD [nm]": "peak_opd_nm",
             "area [um^2]": "area_um2", "dry mass [pg]": "dry_mass_pg"}


def _values(stats: PhaseStatistics, row: str) -> tuple[float, float, float]:
    """(value, lo, hi) of one statistic: per-field ones: median, min, max over images; per-cell
    ones: median over the clean cells, min and max of the per-image medians."""
    if row in _PER_FIELD:
        v = stats.fields[_PER_FIELD[row]]
        return float(v.median()), float(v.min()), float(v.max())
    col = _PER_CELL[row]
    per_field = stats.clean.groupby("field")[col].median()
    return float(stats.clean[col].median()), float(per_field.min()), float(per_field.max())


def comparison_table(model: PhaseStatistics, reals: list[PhaseStatistics]) -> pd.DataFrame:
    """Side-by-side table of the twin (or another set) and the real holograms.

    Parameters
    ----------
    model : PhaseStatistics
        The set compared (the twin).
    reals : list of PhaseStatistics
        One per real hologram.

    Returns
    -------
    pandas.DataFrame
        Rows = statistics; columns ``<model.name>`` with ``lo`` and ``hi`` (its range, see
        :func:`_values`), one column per real hologram (its value), then ``real lo`` and
        ``real hi`` (range over the real holograms). The last rows give the density of the
        measured instances (ground truth for the twin) and the clean cells' count.
    """
    rows = {}
    for row in list(_PER_FIELD) + list(_PER_CELL):
        val, lo, hi = _values(model, row)
        real = {r.name: _values(r, row)[0] for r in reals}
        rows[row] = {model.name: val, "lo": lo, "hi": hi, **real,
                     "real lo": min(real.values(), default=math.nan), "real hi": max(real.values(), default=math.nan)}
    given = model.fields.cells_per_1000um2_given
    rows["cells per 1000 um^2 (instances measured)"] = {model.name: given.median(), "lo": given.min(),
                                                        "hi": given.max()}
    rows["cells measured (isolated, inside)"] = {model.name: float(len(model.clean)),
                                                 **{r.name: float(len(r.clean)) for r in reals}}
    return pd.DataFrame.from_dict(rows, orient="index")


def class_summary(twin: PhaseStatistics) -> pd.DataFrame:
    """Per-class medians of the twin's clean cells.

    Parameters
    ----------
    twin : PhaseStatistics
        Statistics measured on ground-truth classes.

    Returns
    -------
    pandas.DataFrame
        Index: class name; ``n``, ``dry_mass_pg``, ``dry_mass_rel`` (to the discocytes' median),
        ``roughness``, ``dip_p10`` / ``dip_median`` / ``dip_p90``, ``edge_width_um``,
        ``peak_phase_rad``.
    """
    g = twin.clean.groupby("class_name")
    out = pd.DataFrame({"n": g.size(), "dry_mass_pg": g.dry_mass_pg.median(), "roughness": g.roughness.median(),
                        "dip_p10": g.dip_ratio.quantile(0.1), "dip_median": g.dip_ratio.median(),
                        "dip_p90": g.dip_ratio.quantile(0.9), "edge_width_um": g.edge_width_um.median(),
                        "peak_phase_rad": g.peak_phase_rad.median()})
    ref = out.dry_mass_pg.get("discocyte", math.nan)
    out.insert(2, "dry_mass_rel", out.dry_mass_pg / ref - 1)
    return out.reindex([n for n in EQUAL_MIXTURE if n in out.index])


def roughness_auc(twin: PhaseStatistics) -> float:
    """AUC of outline roughness, echinocytes against discocytes (clean twin cells).

    Parameters
    ----------
    twin : PhaseStatistics
        Statistics measured on ground-truth classes.

    Returns
    -------
    float
        :func:`rank_auc` of the roughness.
    """
    c = twin.clean
    return rank_auc(c.roughness[c.class_name == "echinocyte"], c.roughness[c.class_name == "discocyte"])


def check_targets(twin: PhaseStatistics, reals: list[PhaseStatistics]) -> pd.DataFrame:
    """The realism targets (:data:`TARGETS`), one row each.

    Parameters
    ----------
    twin : PhaseStatistics
        The twin's statistics.
    reals : list of PhaseStatistics
        One per real hologram (may be empty).

    Returns
    -------
    pandas.DataFrame
        ``target``, ``needs_real`` (it compares with the real holograms), ``value`` (text),
        ``passed`` (True, False, or None when it needs real holograms and there are none).
    """
    table, classes = comparison_table(twin, reals), class_summary(twin)
    t = TARGETS
    rows = []
    noise, edge = table.loc["background noise [nm]"], table.loc["edge width 10-90 % [um]"]
    have_real = bool(reals)
    rows.append(("twin noise range brackets the real holograms'", True,
                 f"twin {noise['lo']:.1f}-{noise['hi']:.1f} nm, real {noise['real lo']:.1f}-{noise['real hi']:.1f} nm",
                 bool(noise["lo"] <= noise["real lo"] and noise["hi"] >= noise["real hi"]) if have_real else None))
    rows.append(("twin edge-width range reaches the real holograms' (overlap)", True,
                 f"twin {edge['lo']:.2f}-{edge['hi']:.2f} um (median {edge[twin.name]:.2f}), "
                 f"real {edge['real lo']:.2f}-{edge['real hi']:.2f} um",
                 bool(edge["lo"] <= edge["real hi"] and edge["hi"] >= edge["real lo"]) if have_real else None))
    echino = classes.roughness.get("echinocyte", math.nan)
    rows.append((f"echinocyte median roughness >= {t['echinocyte_roughness_min']}", False, f"{echino:.4f}",
                 bool(echino >= t["echinocyte_roughness_min"])))
    auc = roughness_auc(twin)
    rows.append((f"roughness AUC echinocyte vs discocyte >= {t['roughness_auc_min']}", False, f"{auc:.3f}",
                 bool(auc >= t["roughness_auc_min"])))
    p10, p90 = classes.dip_p10.get("discocyte", math.nan), classes.dip_p90.get("discocyte", math.nan)
    rows.append((f"discocyte dip 10th percentile <= {t['discocyte_dip_p10_max']}", False, f"{p10:.3f}",
                 bool(p10 <= t["discocyte_dip_p10_max"])))
    rows.append((f"discocyte dip 90th percentile >= {t['discocyte_dip_p90_min']}", False, f"{p90:.3f}",
                 bool(p90 >= t["discocyte_dip_p90_min"])))
    rel = classes.dry_mass_rel.drop("discocyte", errors="ignore")
    rows.append((f"each class's median dry mass within {t['dry_mass_rel_max']:.0%} of discocytes'", False,
                 ", ".join(f"{n} {v:+.1%}" for n, v in rel.items()),
                 bool(len(rel) == len(EQUAL_MIXTURE) - 1 and rel.abs().max() <= t["dry_mass_rel_max"])))
    return pd.DataFrame(rows, columns=["target", "needs_real", "value", "passed"])


def _boxes(ax, groups: dict[str, pd.Series], colours: list, ylabel: str, title: str) -> None:
    """Box plot of ``groups`` (label -> values) on ``ax``, boxes coloured by ``colours``."""
    parts = ax.boxplot([g.dropna() for g in groups.values()], patch_artist=True, widths=0.6)
    for patch, c in zip(parts["boxes"], colours):
        patch.set_facecolor(c)
        patch.set_alpha(0.6)
    ax.set_xticks(range(1, len(groups) + 1), list(groups), fontsize=7, rotation=30)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)


def plot_realism(twin: PhaseStatistics, reals: list[PhaseStatistics]):
    """Figure (2 x 3) of the twin beside the real holograms.

    Per-image noise, medium power spectra, edge widths, dip-ratio distributions, roughness and
    peak optical path per twin class beside the real holograms.

    Parameters
    ----------
    twin : PhaseStatistics
        The twin's statistics.
    reals : list of PhaseStatistics
        One per real hologram.

    Returns
    -------
    matplotlib.figure.Figure
        The figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5), layout="constrained")
    short = [r.name.split(".")[0].replace("rbc_", "") for r in reals]
    real_colours = list(plt.get_cmap("tab10")(np.arange(len(reals)) + 1))
    by_class = dict(list(twin.clean.groupby("class_name")))
    names = [n for n in EQUAL_MIXTURE if n in by_class]
    colours = [CLASS_COLOURS[CLASS_IDS[n]] for n in names] + real_colours

    ax = axes[0, 0]
    ax.plot(np.zeros(len(twin.fields)), twin.fields.noise_nm, "o", color="0.4")
    for k, (r, c) in enumerate(zip(reals, real_colours)):
        ax.plot([k + 1], r.fields.noise_nm, "s", color=c, ms=9)
    ax.set_xticks(range(len(reals) + 1), [twin.name] + short, fontsize=8, rotation=15)
    ax.set(ylabel="background noise [nm]")
    ax.set_title("noise of the medium (slow background removed)", fontsize=9)
    ax = axes[0, 1]
    for k, n in enumerate(twin.noise):
        ax.loglog(n.freq_per_um[1:], n.psd_nm2_um2[1:], color="0.6", lw=0.8, label=twin.name if k == 0 else None)
    for r, c, label in zip(reals, real_colours, short):
        ax.loglog(r.noise[0].freq_per_um[1:], r.noise[0].psd_nm2_um2[1:], color=c, lw=1.6, label=label)
    ax.set(xlabel="spatial frequency [cycles/um]", ylabel="PSD [nm^2 um^2]")
    ax.set_title("medium power spectrum", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1, 0]
    bins = np.linspace(0, 1.2, 25)
    for n, c in zip(names, colours):
        ax.hist(by_class[n].dip_ratio.dropna(), bins, histtype="step", density=True, color=c, label=f"{twin.name} {n}")
    if reals:
        ax.hist(pd.concat([r.clean.dip_ratio for r in reals]).dropna(), bins, histtype="stepfilled", density=True,
                color="k", alpha=0.2, label="real (all)")
    ax.set(xlabel="central dip ratio")
    ax.set_title("dip ratio distributions", fontsize=9)
    ax.legend(fontsize=7)
    for ax, col, ylabel, title in [
            (axes[0, 2], "edge_width_um", "edge width 10-90 % [um]", "edge width"),
            (axes[1, 1], "roughness", "outline roughness", f"roughness (AUC echino/disco {roughness_auc(twin):.2f})"),
            (axes[1, 2], "peak_opd_nm", "peak OPD [nm]", "peak optical path (99th percentile)")]:
        groups = {n[:5]: by_class[n][col] for n in names} | {s: r.clean[col] for s, r in zip(short, reals)}
        _boxes(ax, groups, colours, ylabel, f"{title}: {twin.name} classes | real")
    return fig

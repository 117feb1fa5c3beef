"""The rehearsal twin matched to a microscope: the coherent noise, defocus and discocyte shape
that make the shipped model's twin look like a user's annotated fields.

:func:`field_traits` measures three image statistics of annotated fields (the medium's noise,
the discocytes' edge width and central dip, :mod:`rbclib.physics.image_statistics`);
:func:`match_twin` finds the twin settings that reproduce them, by simulating short calibration
series of the recipe's twin with the microscope's optics and measuring them the same way, so the
statistics' own biases cancel. :func:`rbclib.study.finetune.twin_rehearsal_fields` draws the
matched twin.

The match is one of appearance: the settings under which the twin's cells look like the user's
by these statistics, not the microscope's physical ones. On the real hologram
``rbc_pydhm_field_2021`` (../shared/data, as segmented by the shipped model) it finds noise
20-25 nm, all discocytes flat-topped and the edge blur of 5.7-7.7 um of defocus; autofocus on
its complex field puts the cells 4 um from focus.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from rbclib.core.config import Optics
from rbclib.core.labels import BACKGROUND, DISCOCYTE

DEFOCUS_GRID_UM = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0)
"""Defocus distances [um] of the calibration series of :func:`match_twin` (both signs each)."""
DEFOCUS_HALF_WIDTH_UM = 1.0
"""Half width [um] of the matched defocus range around the estimate."""
MIN_NOISE_SPREAD = 0.1
"""The matched noise range spans at least +-10 % around the fields' median (one field's recorded
noise scatters about +-8 % around its setting: the recording's other settings are drawn per
field)."""
MIN_DISCOCYTES = 5
"""Isolated discocytes needed to match the defocus and the flat-topped share; with fewer those
two stay the recipe's."""
CALIBRATION_FIELDS = 3
"""Simulated fields per calibration setting."""


@dataclass(frozen=True)
class FieldTraits:
    """Image statistics of annotated fields.

    Attributes
    ----------
    noise_nm : tuple of float
        Robust s.d. of each field's medium as optical path [nm] (:func:`background_noise`).
    edge_width_um : float
        Median 10-90 % edge width of the isolated discocytes [um] (NaN: none).
    dip_ratio : float
        Mean central dip ratio of the isolated discocytes (NaN: none): about 0.3-0.4 for the
        twin's biconcave discocytes, 0.8 for flat-topped ones.
    discocytes : int
        Isolated discocytes measured.
    """

    noise_nm: tuple[float, ...]
    edge_width_um: float
    dip_ratio: float
    discocytes: int


def field_traits(phases: Sequence[np.ndarray], class_maps: Sequence[np.ndarray], optics: Optics) -> FieldTraits:
    """Noise, discocyte edge width and dip of annotated fields.

    Discocytes are the connected regions of the discocyte class; those that touch another cell
    or the border, or are more than 1.5 x the median area (touching cells of one class), are
    left out.

    Parameters
    ----------
    phases : sequence of numpy.ndarray
        (H, W) phase maps [rad].
    class_maps : sequence of numpy.ndarray
        (H, W) class maps of the same fields (every label but background counts as cell).
    optics : rbclib.core.config.Optics
        Pixel size and wavelength of the fields.

    Returns
    -------
    FieldTraits
        The fields' statistics.
    """
    import pandas as pd

    from rbclib.physics.image_statistics import background_noise, cell_statistics

    noise, cells = [], []
    for phase, labels in zip(phases, class_maps):
        phase = np.asarray(phase, np.float64)
        noise.append(background_noise(phase, labels != BACKGROUND, pixel_size_m=optics.pixel_size_m,
                                      wavelength_m=optics.wavelength_m).noise_nm)
        discs, _ = ndi.label(labels == DISCOCYTE)
        stats = cell_statistics(phase, discs, optics=optics)
        cells.append(stats[stats.isolated & ~stats.touches_edge])
    table = pd.concat(cells, ignore_index=True)
    if len(table):
        table = table[table.area_um2 <= 1.5 * table.area_um2.median()]
    edge, dip = table.edge_width_um.to_numpy(float), table.dip_ratio.to_numpy(float)
    return FieldTraits(noise_nm=tuple(float(n) for n in noise),
                       edge_width_um=float(np.nanmedian(edge)) if np.isfinite(edge).any() else float("nan"),
                       dip_ratio=float(np.nanmean(dip)) if np.isfinite(dip).any() else float("nan"),
                       discocytes=int(len(table)))


@dataclass(frozen=True)
class TwinMatch:
    """Twin settings matched to a microscope's fields.

    Attributes
    ----------
    noise_nm : tuple of float
        (low, high) coherent noise of the twin's recording [nm].
    defocus_um : tuple of float or None
        (low, high) distance from focus [um], drawn with either sign (a phase image does not
        tell the sign reliably: real cells' phase profile differs from the twin's); None: the
        recipe's defocus.
    flat_discocyte_fraction : float or None
        Share of flat-topped discocytes; None: the recipe's.
    traits : FieldTraits
        The fields' measured statistics.
    """

    noise_nm: tuple[float, float]
    defocus_um: tuple[float, float] | None
    flat_discocyte_fraction: float | None
    traits: FieldTraits

    def twin_tables(self, twin: dict[str, Any]) -> list[dict[str, Any]]:
        """The recipe's ``twin`` table with the matched settings: one per defocus sign.

        Parameters
        ----------
        twin : dict
            The recipe's ``twin`` table.

        Returns
        -------
        list of dict
            Two tables (below and above focus), or one when the defocus stays the recipe's.
        """
        table = {**twin, "noise_nm": list(self.noise_nm)}
        if self.flat_discocyte_fraction is not None:
            table["flat_discocyte_fraction"] = self.flat_discocyte_fraction
        if self.defocus_um is None:
            return [table]
        low, high = self.defocus_um
        return [{**table, "defocus_um": [-high, -low]}, {**table, "defocus_um": [low, high]}]

    def describe(self) -> str:
        """The matched settings and what they were matched on.

        Returns
        -------
        str
            One line.
        """
        t = self.traits
        defocus = "the recipe's defocus" if self.defocus_um is None else \
            f"{self.defocus_um[0]:.1f}-{self.defocus_um[1]:.1f} um from focus"
        flat = "the recipe's flat-topped share" if self.flat_discocyte_fraction is None else \
            f"{self.flat_discocyte_fraction:.0%} flat-topped discocytes"
        return (f"twin matched to {len(t.noise_nm)} field(s) ({t.discocytes} isolated discocytes): noise "
                f"{self.noise_nm[0]:.1f}-{self.noise_nm[1]:.1f} nm, {defocus}, {flat}")


def match_twin(phases: Sequence[np.ndarray], class_maps: Sequence[np.ndarray], optics: Optics, *,
               recipe: dict[str, Any] | None = None, seed: int = 0) -> TwinMatch:
    """The recipe twin's noise, defocus and flat-topped share that reproduce these fields' statistics.

    In turn, each on :data:`CALIBRATION_FIELDS` simulated fields per setting recorded with
    ``optics`` and measured by :func:`field_traits`:
    1. noise: the twin simulated at the fields' median noise; the recorded noise is about
       proportional to the setting, so each field's noise is scaled by (setting / measured);
       the range spans the fields, at least +-:data:`MIN_NOISE_SPREAD`.
    2. flat-topped share: all discocytes biconcave, then all flat-topped (the recipe's defocus,
       the matched noise); the fields' mean dip ratio interpolated between the two (the mean
       is linear in the share), clipped to 0..1.
    3. defocus: the series of :data:`DEFOCUS_GRID_UM`, each at both signs and with the same
       cells; the fields' median edge width interpolated on the series' (made monotone),
       +-:data:`DEFOCUS_HALF_WIDTH_UM`.

    Parameters
    ----------
    phases : sequence of numpy.ndarray
        (H, W) phase maps [rad] of the annotated fields.
    class_maps : sequence of numpy.ndarray
        (H, W) class maps of the same fields.
    optics : rbclib.core.config.Optics
        The microscope's optics.
    recipe : dict, optional
        The twin's recipe (default the shipped model's,
        :func:`rbclib.study.default_model.read_recipe`).
    seed : int
        Seed of the calibration fields.

    Returns
    -------
    TwinMatch
        The matched settings; defocus and flat-topped share stay the recipe's with fewer than
        :data:`MIN_DISCOCYTES` isolated discocytes.
    """
    from rbclib.study.default_model import read_recipe

    recipe = recipe or read_recipe()
    traits = field_traits(phases, class_maps, optics)
    noise = np.asarray(traits.noise_nm, float)
    noise = noise[np.isfinite(noise)]
    if not noise.size:
        raise ValueError("the fields hold no medium to measure the noise on")
    median = float(np.median(noise))

    def simulated(**settings: Any) -> FieldTraits:
        twin = {**recipe["twin"], **settings}
        return _simulated_traits({**recipe, "twin": twin}, optics, seed)

    probe = simulated(noise_nm=[median, median])
    gain = median / float(np.median(probe.noise_nm))
    low = min(float(noise.min()), median * (1 - MIN_NOISE_SPREAD)) * gain
    high = max(float(noise.max()), median * (1 + MIN_NOISE_SPREAD)) * gain
    matched_noise = (round(low, 2), round(high, 2))
    if traits.discocytes < MIN_DISCOCYTES or not np.isfinite([traits.dip_ratio, traits.edge_width_um]).all():
        return TwinMatch(matched_noise, None, None, traits)

    dips = [simulated(noise_nm=list(matched_noise), flat_discocyte_fraction=f).dip_ratio for f in (0.0, 1.0)]
    flat = float(np.clip((traits.dip_ratio - dips[0]) / (dips[1] - dips[0]), 0.0, 1.0))
    edges = []
    for d in DEFOCUS_GRID_UM:
        widths = [simulated(noise_nm=list(matched_noise), flat_discocyte_fraction=flat,
                            defocus_um=[s * d, s * d]).edge_width_um for s in (-1.0, 1.0)]
        edges.append(float(np.mean(widths)))
    distance = float(np.interp(traits.edge_width_um, np.maximum.accumulate(edges), DEFOCUS_GRID_UM))
    defocus = (round(max(distance - DEFOCUS_HALF_WIDTH_UM, 0.0), 2), round(distance + DEFOCUS_HALF_WIDTH_UM, 2))
    return TwinMatch(matched_noise, defocus, round(flat, 3), traits)


def _simulated_traits(recipe: dict[str, Any], optics: Optics, seed: int) -> FieldTraits:
    """:func:`field_traits` of :data:`CALIBRATION_FIELDS` fields of ``recipe``'s twin recorded
    with ``optics`` (the same cells for the same ``seed``)."""
    from rbclib.study.default_model import recipe_fields

    seeds = np.random.SeedSequence([int(seed), 36]).spawn(CALIBRATION_FIELDS)
    pairs = [pair for pair, _ in recipe_fields(recipe, seeds, optics=optics, name="calibration twin")]
    return field_traits([p.phase for p in pairs], [p.labels for p in pairs], optics)

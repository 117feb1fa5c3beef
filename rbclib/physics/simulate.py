"""Digital twin of an off-axis DHM of red blood cells: cells -> phase -> holograms.

A field is built in three steps: (1) draw cells of the four classes with random size,
ellipticity, orientation and haemoglobin content, (2) place them without overlap (a
controlled fraction in touching pairs) and render their thickness, each in its own
bounding box, into the true phase ``phi = 2*pi/lambda * (n_cell - n_medium) * h``,
(3) form a camera hologram and a matching background hologram.

The cell models are :mod:`rbclib.physics.cells`; the microscope and camera (hologram
formation, noise, defocus, per-field setting limits) are :mod:`rbclib.physics.recording`.
Everything is deterministic given the seed (``numpy.random.Generator`` / ``SeedSequence``).
Lengths inside the cell models are in micrometres; :class:`rbclib.core.config.Optics` is SI.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from rbclib.core.config import Optics
from rbclib.core.labels import CELL_CLASSES, CLASS_IDS, CLASS_NAMES
from rbclib.physics.cells import (
    FLAT_DISCOCYTE_FRACTION,
    HB_MOLAR_MASS_G,
    HBO2_EXTINCTION_CM_PER_M,
    draw_cell,
    n_spicules,
    render_cell,
)
from rbclib.physics.recording import (
    CARRIER_CYCLES_PER_PX,
    SETTING_LIMITS,
    FieldConditions,
    HologramSettings,
    check_setting,
    draw,
    form_holograms,
)

STORAGE_DAYS: tuple[int, ...] = (8, 13, 16, 23, 27, 30, 34, 37, 40, 47, 57)
"""Storage periods [days] of the paper's storage study (Park et al. 2025, Sec. 5.4)."""


DEFAULT_FIELD_PX = 900
"""Paper's image size: 900 x 900 px over 129.68 um (0.1441 um/px), Park et al. 2025, Sec. 7."""


DENSITY_PER_1000_UM2 = (2.0, 10.0)
"""Cells per 1000 um^2 of field, drawn per field: from sparse to dense. Real RBC holograms
reconstructed by this project hold up to ~9 cells per 1000 um^2 with most cells touching
(``../shared/data/holograms/rbc_pydhm_field_2021.png``: about 95 cells in 1200 x 1200 px at
~0.1465 um/px); a 900 px field of the paper at 2-10 per 1000 um^2 holds 34-168 cells."""


TOUCHING_FRACTION = (0.1, 0.6)
"""Share of cells placed in contact with another cell, drawn per field (sparse smears to
clusters); a modelling choice bracketing the real fields above."""


OVERLAP_FRACTION = (0.0, 0.12)
"""Share of cells lying partly on top of another cell (their thickness adds; the top cell
owns the shared pixels in the labels), drawn per field; a modelling choice."""


PLATELETS_PER_CELL = (0.0, 0.08)


DEBRIS_PER_1000_UM2 = (0.0, 3.0)
"""Background objects (class 0): platelets (discs 1.5-3.5 um, 0.5-1.2 um thick; normal
blood has 1 platelet per 10-20 RBCs, fewer in a washed RBC unit) and debris (irregular
specks 0.5-3 um, microvesicles and dust on the slide), drawn per field; modelling choices."""


DEFOCUS_UM = (-6.0, 6.0)
"""Object-plane defocus [um], drawn per field: real recordings are out of focus. Measured by
``benchmarks/bench_realism.py`` (10-90 % edge rise, median of an image's cells): the real
RBC holograms 1.8-2.4 um, the twin ~1.15 um in focus and ~1.75 um at 5 um defocus. More
defocus would blur the echinocytes' spicules below visibility (roughness AUC < 0.95 at
+-8 um), so +-6 um is the compromise: the twin's edges span 0.9-2.2 um."""


# ---------------------------------------------------------------------------------------
# Storage model and mixtures
# ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def storage_reference() -> pd.DataFrame:
    """The storage table ``rbclib/data/storage_reference.csv`` (class fractions per day).

    Read off Park et al. 2025, Fig. 8 and Sec. 5.4 (discocytes > 90 % early, drastic change
    after 40 days to echinocytes then spherocytes, cell counts per day from Fig. 8).

    Returns
    -------
    pandas.DataFrame
        One row per storage day: ``storage_day`` (int), ``cells_counted`` (int) and the
        fraction of each cell class (float, columns named by class).
    """
    text = resources.files("rbclib").joinpath("data", "storage_reference.csv").read_text()
    return pd.DataFrame(list(csv.DictReader(text.splitlines()))).astype(float).astype({"storage_day": int, "cells_counted": int})


def storage_mixture(day: float) -> dict[str, float]:
    """Class fractions after ``day`` days of storage.

    Modelling assumption: linear interpolation between the days of
    :func:`storage_reference` (Park et al. 2025, Fig. 8).

    Parameters
    ----------
    day : float
        Storage day [days]; only days 8..57 are covered.

    Returns
    -------
    dict of str to float
        Class name -> fraction, sum 1.

    Raises
    ------
    ValueError
        If ``day`` is not a number inside the table's days.
    """
    table = storage_reference()
    days = table["storage_day"].to_numpy(float)
    if not (isinstance(day, (int, float, np.integer, np.floating)) and days[0] <= float(day) <= days[-1]):
        raise ValueError(f"storage day {day!r} is outside the modelled range {days[0]:g}..{days[-1]:g} days "
                         "(Park et al. 2025 storage study)")
    out = {CLASS_NAMES[c]: float(np.interp(float(day), days, table[CLASS_NAMES[c]].to_numpy(float))) for c in CELL_CLASSES}
    total = sum(out.values())
    return {k: v / total for k, v in out.items()}


def parse_mixture(mixture: str | dict[str, float]) -> dict[str, float]:
    """Validate a class mixture.

    Parameters
    ----------
    mixture : str or dict of str to float
        ``"discocyte=0.7,spherocyte=0.3"`` or a dict class name -> weight; classes left out get 0.

    Returns
    -------
    dict of str to float
        Every cell class name -> fraction, summing to 1.

    Raises
    ------
    ValueError
        On an entry not of the form class=fraction, a value that is not a number, an unknown
        class, or a negative or non-finite weight or a sum that is not positive.
    """
    if isinstance(mixture, str):
        items: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in mixture.split(","))):
            name, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"mixture entry {part!r} is not of the form class=fraction")
            try:
                items[name.strip()] = float(value)
            except ValueError:
                raise ValueError(f"mixture entry {part!r}: {value!r} is not a number") from None
        mixture = items
    known = [CLASS_NAMES[c] for c in CELL_CLASSES]
    unknown = [k for k in mixture if k not in known]
    if unknown:
        raise ValueError(f"unknown cell class(es) {unknown} in mixture; use {known}")
    values = {k: float(mixture.get(k, 0.0)) for k in known}
    if any(not math.isfinite(v) or v < 0 for v in values.values()) or sum(values.values()) <= 0:
        raise ValueError(f"mixture fractions must be >= 0 with a positive sum, got {dict(mixture)}")
    total = sum(values.values())
    return {k: v / total for k, v in values.items()}


def _resolve_mixture(mixture: str | dict[str, float] | None, day: float | None) -> dict[str, float]:
    if mixture is not None and day is not None:
        raise ValueError("give either a class mixture or a storage day, not both")
    if mixture is not None:
        return parse_mixture(mixture)
    return storage_mixture(STORAGE_DAYS[0] if day is None else day)


# ---------------------------------------------------------------------------------------
# Placement
# ---------------------------------------------------------------------------------------
_GAP_PX = 2


_DIL1 = np.ones((3, 3), bool)


def _place(masks: list[np.ndarray], field_px: int, roles: Sequence[str], rng: np.random.Generator,
           max_tries: int = 400) -> tuple[list[tuple[int, int] | None], list[int], dict[int, int]]:
    """Place the masks in a ``field_px`` square by role.

    ``"free"`` cells first (>= ``_GAP_PX`` + 1 px from any other), then ``"contact"`` cells
    (slid in from a random direction until they touch an already placed cell, without
    overlap), then ``"overlap"`` cells (lying on one placed cell, 15-45 % of their summed radii
    into it, clear of every other cell).

    Parameters
    ----------
    masks : list of numpy.ndarray
        (h, w) bool footprint of each cell.
    field_px : int
        Side of the field [px].
    roles : sequence of str
        ``"free"``, ``"contact"`` or ``"overlap"``, one per mask.
    rng : numpy.random.Generator
        Source of the positions and directions.
    max_tries : int, optional
        Random positions tried per free cell (default 400).

    Returns
    -------
    pos : list of tuple of int or None
        Top-left corner (y, x) [px] per mask; None: did not fit, dropped.
    placed : list of int
        Mask indices in placement order (later cells lie on top).
    under : dict of int to int
        {top cell: the cell under it}.

    Notes
    -----
    The three passes share one occupancy grid of instance ids, the padded and dilated masks and
    the cells placed so far; their helpers are closures over that state, hence one function.
    """
    g = _GAP_PX
    occ = np.zeros((field_px + 2 * g, field_px + 2 * g), np.int32)   # instance ids, padded by g
    pad = [np.pad(m, g) for m in masks]
    dil_g = [ndi.binary_dilation(p, _DIL1, iterations=g) for p in pad]
    dil_1 = [ndi.binary_dilation(p, _DIL1) for p in pad]
    pos: list[tuple[int, int] | None] = [None] * len(masks)
    placed: list[int] = []
    under: dict[int, int] = {}

    def window(i: int, y0: int, x0: int) -> np.ndarray:
        h, w = pad[i].shape
        return occ[y0: y0 + h, x0: x0 + w]

    def fits(i: int, y0: int, x0: int) -> bool:
        h, w = masks[i].shape
        return 0 <= y0 <= field_px - h and 0 <= x0 <= field_px - w

    def put(i: int, y0: int, x0: int) -> None:
        window(i, y0, x0)[pad[i]] = i + 1
        pos[i] = (y0, x0)
        placed.append(i)

    def centre(j: int) -> tuple[float, float, float]:
        (py, px), (ph, pw) = pos[j], masks[j].shape
        return py + ph / 2, px + pw / 2, max(ph, pw) / 2

    def place_free(i: int) -> None:
        h, w = masks[i].shape
        for _ in range(max_tries):
            y0, x0 = int(rng.integers(0, field_px - h + 1)), int(rng.integers(0, field_px - w + 1))
            if not window(i, y0, x0)[dil_g[i]].any():
                put(i, y0, x0)
                return

    def place_contact(i: int) -> None:
        h, w = masks[i].shape
        for _ in range(60):
            pcy, pcx, pr = centre(placed[int(rng.integers(len(placed)))])
            theta = rng.uniform(0, 2 * math.pi)
            dist = max(h, w) / 2 + pr + g + 2
            while dist > 0:
                y0, x0 = int(round(pcy + dist * math.sin(theta) - h / 2)), int(round(pcx + dist * math.cos(theta) - w / 2))
                if not fits(i, y0, x0):
                    break
                if window(i, y0, x0)[dil_1[i]].any():
                    if not window(i, y0, x0)[pad[i]].any():
                        put(i, y0, x0)
                        return
                    break
                dist -= 0.5

    def place_overlap(i: int) -> None:
        h, w = masks[i].shape
        for _ in range(60):
            j = placed[int(rng.integers(len(placed)))]
            if j in under or j in under.values():
                continue
            pcy, pcx, pr = centre(j)
            theta = rng.uniform(0, 2 * math.pi)
            dist = (max(h, w) / 2 + pr) * rng.uniform(0.55, 0.85)
            y0, x0 = int(round(pcy + dist * math.sin(theta) - h / 2)), int(round(pcx + dist * math.cos(theta) - w / 2))
            if fits(i, y0, x0) and set(np.unique(window(i, y0, x0)[dil_g[i]]).tolist()) <= {0, j + 1}:
                put(i, y0, x0)
                under[i] = j
                return

    for role, place in (("free", place_free), ("contact", place_contact), ("overlap", place_overlap)):
        for i in [k for k, r in enumerate(roles) if r == role]:
            if max(masks[i].shape) > field_px:
                continue
            if role == "free" or not placed:
                place_free(i)
            else:
                place(i)
    return pos, placed, under


def touching_cells(instances: np.ndarray) -> dict[int, bool]:
    """Which instances touch another instance (8-connected contact).

    Parameters
    ----------
    instances : numpy.ndarray
        (H, W) integer instance ids, 0 background.

    Returns
    -------
    dict of int to bool
        Instance id -> whether it touches another instance.
    """
    out: dict[int, bool] = {}
    for idx, sl in enumerate(ndi.find_objects(instances), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        win = instances[sl]
        ring = ndi.binary_dilation(win == idx, _DIL1)
        out[idx] = bool(np.any((win[ring] != 0) & (win[ring] != idx)))
    return out


# ---------------------------------------------------------------------------------------
# Fields and datasets
# ---------------------------------------------------------------------------------------
CELL_COLUMNS = ("cell_id", "class_id", "class_name", "centre_y_px", "centre_x_px", "diameter_um", "volume_um3",
                "dry_mass_pg", "touching", "overlapping", "peak_phase_rad", "mchc_g_dl", "n_cell", "echinocyte_stage",
                "n_spicules")


@dataclass
class SimulatedField:
    """One simulated field.

    Attributes
    ----------
    hologram, background : numpy.ndarray
        Camera images (uint8 or uint16, (H, W)); empty (0, 0) without hologram formation.
    phase : numpy.ndarray
        True phase [rad] float32 (H, W), medium 0 (cells, platelets and debris).
    labels : numpy.ndarray
        uint8 class map 0..4 (platelets and debris are background, 0).
    instances : numpy.ndarray
        int32 ids 1..N (= ``cells.cell_id``; where cells overlap, the top one).
    cells : pandas.DataFrame
        Per-cell table (:data:`CELL_COLUMNS`; volume_um3 is the integral of the cell's own true
        thickness, dry_mass_pg = optical volume / alpha).
    optics : rbclib.core.config.Optics
        The optics the field was simulated with.
    carrier : tuple of float
        (fy, fx) [cycles/px] of the +1 order.
    thickness : numpy.ndarray
        True thickness [um] float32 (overlapping cells add).
    mixture : dict of str to float
        Class name -> fraction the cells were drawn from.
    conditions : dict of str to Any
        What the field drew (density, touching and overlap shares, background objects,
        :class:`FieldConditions`).
    """

    hologram: np.ndarray
    background: np.ndarray
    phase: np.ndarray
    labels: np.ndarray
    instances: np.ndarray
    cells: pd.DataFrame
    optics: Optics
    carrier: tuple[float, float]
    thickness: np.ndarray
    mixture: dict[str, float] = field(default_factory=dict)
    conditions: dict[str, Any] = field(default_factory=dict)


def _background_objects(rng: np.random.Generator, n_platelets: int, n_debris: int, pixel_um: float,
                        k0: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """(thickness [um], phase [rad]) boxes of platelets (ellipsoidal discs 1.5-3.5 um across,
    0.5-1.2 um thick, index +0.04-0.065 over the medium) and debris (1-4 gaussian specks,
    sigma 0.2-0.8 um, 0.05-0.8 rad)."""
    out = []
    for _ in range(n_platelets):
        a, b = rng.uniform(0.75, 1.75), rng.uniform(0.75, 1.75)
        r = int(math.ceil(max(a, b) / pixel_um)) + 2
        y, x = (np.mgrid[-r: r + 1, -r: r + 1] + rng.uniform(-0.5, 0.5, (2, 1, 1))) * pixel_um
        h = rng.uniform(0.5, 1.2) * np.sqrt(np.clip(1 - (y / a) ** 2 - (x / b) ** 2, 0, None))
        out.append((h.astype(np.float32), (k0 * rng.uniform(0.04, 0.065) * h).astype(np.float32)))
    for _ in range(n_debris):
        r = int(math.ceil(2.5 / pixel_um))
        y, x = np.mgrid[-r: r + 1, -r: r + 1] * pixel_um
        ph = np.zeros(y.shape)
        for _ in range(int(rng.integers(1, 5))):
            sig = rng.uniform(0.2, 0.8)
            cy, cx = rng.uniform(-0.8, 0.8, 2)
            ph += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sig**2))
        ph *= rng.uniform(0.05, 0.8) / ph.max()
        ph[ph < 0.02] = 0
        out.append(((ph / (k0 * 0.05)).astype(np.float32), ph.astype(np.float32)))
    return out


def _check_field_args(field_px: int, **settings: Any) -> None:
    """Refuse an impossible field size or a per-field setting (given by keyword) out of :data:`SETTING_LIMITS`."""
    if not isinstance(field_px, (int, np.integer)) or not 32 <= field_px <= 8192:
        raise ValueError(f"field_px={field_px!r} is outside the allowed range 32..8192 px (an integer)")
    for name, value in settings.items():
        if name in SETTING_LIMITS:
            check_setting(name, value)


def simulate_field(seed_or_rng: int | np.random.Generator | np.random.SeedSequence, *, field_px: int = DEFAULT_FIELD_PX,
                   optics: Optics | None = None, mixture: str | dict[str, float] | None = None, day: float | None = None,
                   n_cells: int | None = None, cells_per_field: Sequence[int] | None = None,
                   density_per_1000um2: float | Sequence[float] = DENSITY_PER_1000_UM2,
                   touching_fraction: float | Sequence[float] = TOUCHING_FRACTION,
                   overlap_fraction: float | Sequence[float] = OVERLAP_FRACTION,
                   platelets_per_cell: float | Sequence[float] = PLATELETS_PER_CELL,
                   debris_per_1000um2: float | Sequence[float] = DEBRIS_PER_1000_UM2,
                   defocus_um: float | Sequence[float] = DEFOCUS_UM, bit_depth: int = 8,
                   flat_discocyte_fraction: float | Sequence[float] = FLAT_DISCOCYTE_FRACTION,
                   holograms: bool = True, settings: HologramSettings | None = None) -> SimulatedField:
    """Simulate one field of ``field_px`` x ``field_px`` pixels.

    Every setting given as a (low, high) pair is drawn per field; a number pins it. Defaults:
    the module's ranges. Cells that do not fit are dropped (the table says which exist).

    Parameters
    ----------
    seed_or_rng : int, numpy.random.Generator or numpy.random.SeedSequence
        A generator is used as it is; a seed or seed sequence starts a new one.
    field_px : int, optional
        Side of the field [px] (32..8192), default :data:`DEFAULT_FIELD_PX`.
    optics : rbclib.core.config.Optics, optional
        Wavelength, pixel size, n_medium and alpha are used; each cell's index is n_medium +
        alpha*MCHC (its own haemoglobin), so ``optics.n_cell`` (the assumed mean used downstream
        for thickness) is not. Default ``Optics()``.
    mixture : str or dict of str to float, optional
        Class fractions (dict or ``"discocyte=0.7,..."``, :func:`parse_mixture`).
    day : float, optional
        Storage day (8..57, :func:`storage_mixture`) instead of ``mixture``; neither: day 8.
    n_cells : int, optional
        Number of cells (>= 0); takes precedence over the two below.
    cells_per_field : sequence of int, optional
        (min, max): the cell count is drawn uniformly from it; takes precedence over the density.
    density_per_1000um2 : float or sequence of float, optional
        Cells per 1000 um^2, times the field area gives the count.
    touching_fraction, overlap_fraction : float or sequence of float, optional
        Shares of cells in contact with / lying on another cell (0..1).
    platelets_per_cell, debris_per_1000um2 : float or sequence of float, optional
        Background objects (class 0): mean counts per placed cell / per 1000 um^2 (Poisson).
    defocus_um : float or sequence of float, optional
        Object-plane defocus [um].
    bit_depth : int, optional
        Camera bit depth, 8 (default) or 12; overrides ``settings.bit_depth``.
    flat_discocyte_fraction : float or sequence of float, optional
        Share of discocytes drawn flat-topped (opt-in, default 0).
    holograms : bool, optional
        False skips hologram formation (the images are then empty arrays); default True.
    settings : rbclib.physics.recording.HologramSettings, optional
        Microscope and camera ranges, default ``HologramSettings()``.

    Returns
    -------
    SimulatedField
        Images, true phase, thickness, labels, instances, the cell table and what was drawn.

    Raises
    ------
    ValueError
        On a field size or setting out of its limits (:data:`SETTING_LIMITS`), both ``mixture``
        and ``day``, a bad mixture or day, a bad ``cells_per_field`` or ``n_cells`` < 0.

    Notes
    -----
    Each range is one physical knob of the twin that the profiles (``profiles/simulate.toml``),
    ``rbc simulate`` and the default-model recipe (``models/recipe.toml``) set one to one by
    keyword, drawn per field, and ``simulation.json`` records the ones given under the same names;
    grouping them would add a second name for each. The body is one pass over one field with one generator:
    the order of its draws (count, classes, cells, placement, background objects, recording)
    fixes what a seed gives, and the render loop fills the maps and the cell table together.
    """
    rng = seed_or_rng if isinstance(seed_or_rng, np.random.Generator) else np.random.default_rng(seed_or_rng)
    optics = optics or Optics()
    _check_field_args(field_px, density_per_1000um2=density_per_1000um2, touching_fraction=touching_fraction,
                      overlap_fraction=overlap_fraction, platelets_per_cell=platelets_per_cell,
                      debris_per_1000um2=debris_per_1000um2, defocus_um=defocus_um,
                      flat_discocyte_fraction=flat_discocyte_fraction)
    settings = dataclasses.replace(settings or HologramSettings(), bit_depth=bit_depth)
    mix = _resolve_mixture(mixture, day)
    pixel_um = optics.pixel_size_m * 1e6
    area_um2 = (field_px * pixel_um) ** 2
    density = draw(rng, density_per_1000um2)
    if n_cells is None:
        if cells_per_field is not None:
            lo, hi = tuple(cells_per_field)
            if not (0 <= lo <= hi):
                raise ValueError(f"cells_per_field must be (min, max) with 0 <= min <= max, got {cells_per_field!r}")
            n_cells = int(rng.integers(lo, hi + 1))
        else:
            n_cells = int(round(density * area_um2 / 1000))
    if n_cells < 0:
        raise ValueError(f"n_cells must be >= 0, got {n_cells}")
    touching, overlap = draw(rng, touching_fraction), draw(rng, overlap_fraction)
    names = list(mix)
    classes = rng.choice([CLASS_IDS[n] for n in names], size=n_cells, p=[mix[n] for n in names])
    flat = draw(rng, flat_discocyte_fraction)
    cells = [draw_cell(int(c), rng, flat_fraction=flat) for c in classes]
    rendered = [render_cell(c, pixel_um, tuple(rng.uniform(0, 1, 2))) for c in cells]
    n_overlap = min(int(round(overlap * n_cells / 2)), n_cells // 2)
    n_contact = min(int(round(touching * n_cells / 2)), n_cells - n_overlap)
    roles = np.array(["free"] * n_cells, dtype=object)
    order = rng.permutation(n_cells)
    roles[order[:n_overlap]] = "overlap"
    roles[order[n_overlap: n_overlap + n_contact]] = "contact"
    pos, stacking, under = _place([r[0] > 0 for r in rendered], field_px, list(roles), rng)

    thickness = np.zeros((field_px, field_px), np.float32)
    phase = np.zeros((field_px, field_px), np.float32)
    labels = np.zeros((field_px, field_px), np.uint8)
    depth = np.zeros((field_px, field_px), np.float32)       # haemoglobin [mol/L] x thickness [um]
    instances = np.zeros((field_px, field_px), np.int32)
    k0 = 2 * math.pi / optics.wavelength_m * 1e-6      # rad per (um of thickness * index difference)
    ids = {i: k + 1 for k, i in enumerate(sorted(stacking))}   # cell ids in drawing order
    rows = {}
    for i in stacking:                                  # bottom to top
        cell, (h, cy, cx), (y0, x0) = cells[i], rendered[i], pos[i]
        cid = ids[i]
        sl = (slice(y0, y0 + h.shape[0]), slice(x0, x0 + h.shape[1]))
        m = h > 0
        dn = optics.alpha_m3_per_kg * cell.mchc_g_dl * 10.0         # alpha [m^3/kg] * C [kg/m^3]
        ph = k0 * dn * h
        thickness[sl] += h.astype(np.float32)
        phase[sl] += ph.astype(np.float32)
        labels[sl][m] = cell.class_id
        instances[sl][m] = cid
        depth[sl] += (cell.mchc_g_dl * 10.0 / HB_MOLAR_MASS_G * h).astype(np.float32)
        vol = float(h.sum()) * pixel_um**2
        rows[cid] = {"cell_id": cid, "class_id": cell.class_id, "class_name": CLASS_NAMES[cell.class_id],
                     "centre_y_px": y0 + cy, "centre_x_px": x0 + cx, "diameter_um": cell.diameter_um,
                     "volume_um3": vol, "dry_mass_pg": vol * dn / (optics.alpha_m3_per_kg * 1e3),
                     "touching": False, "overlapping": i in under or i in under.values(),
                     "peak_phase_rad": float(ph.max()), "mchc_g_dl": cell.mchc_g_dl,
                     "n_cell": optics.n_medium + dn, "echinocyte_stage": cell.params.get("stage", np.nan),
                     "n_spicules": n_spicules(cell)}
    table = pd.DataFrame([rows[k] for k in sorted(rows)], columns=list(CELL_COLUMNS))
    if rows:
        touch = touching_cells(instances)
        table["touching"] = [touch.get(i, False) for i in table["cell_id"]]
    n_platelets = int(rng.poisson(draw(rng, platelets_per_cell) * len(rows)))
    n_debris = int(rng.poisson(draw(rng, debris_per_1000um2) * area_um2 / 1000))
    free = ~ndi.binary_dilation(instances > 0, _DIL1, iterations=_GAP_PX)
    for h, ph in _background_objects(rng, n_platelets, n_debris, pixel_um, k0):
        for _ in range(50):
            y0, x0 = (int(v) for v in rng.integers(0, field_px - np.array(h.shape) + 1))
            sl = (slice(y0, y0 + h.shape[0]), slice(x0, x0 + h.shape[1]))
            if h.shape[0] <= field_px and free[sl][h > 0].all():
                thickness[sl] += h
                phase[sl] += ph
                free[sl] &= ~(h > 0)
                break
    conditions: dict[str, Any] = {"n_cells": len(rows), "density_per_1000um2": len(rows) / area_um2 * 1000,
                                  "touching_fraction": touching, "overlap_fraction": overlap,
                                  "n_platelets": n_platelets, "n_debris": n_debris}
    carrier = settings.carrier or CARRIER_CYCLES_PER_PX
    if holograms:
        cond = FieldConditions.draw(rng, settings, defocus_um)
        carrier = cond.carrier
        conditions.update(dataclasses.asdict(cond))
        mu = math.log(10) * HBO2_EXTINCTION_CM_PER_M * 100.0  # intensity attenuation [1/m per mol/L]
        atten = 0.5 * mu * depth * 1e-6                       # amplitude optical depth
        holo, bg = form_holograms(phase, rng, optics=optics, settings=settings, conditions=cond, attenuation=atten)
    else:
        holo = bg = np.zeros((0, 0), np.uint8)
    return SimulatedField(hologram=holo, background=bg, phase=phase, labels=labels, instances=instances,
                          cells=table, optics=optics, carrier=carrier, thickness=thickness, mixture=mix,
                          conditions=conditions)

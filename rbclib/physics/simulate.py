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
from pathlib import Path
from typing import Any, Iterable, Sequence

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
    after 40 days to echinocytes then spherocytes, cell counts per day from Fig. 8)."""
    text = resources.files("rbclib").joinpath("data", "storage_reference.csv").read_text()
    return pd.DataFrame(list(csv.DictReader(text.splitlines()))).astype(float).astype({"storage_day": int, "cells_counted": int})


def storage_mixture(day: float) -> dict[str, float]:
    """Class fractions (name -> fraction, sum 1) after ``day`` days of storage.

    Modelling assumption: linear interpolation between the days of
    :func:`storage_reference` (Park et al. 2025, Fig. 8); only days 8..57 are covered."""
    table = storage_reference()
    days = table["storage_day"].to_numpy(float)
    if not (isinstance(day, (int, float, np.integer, np.floating)) and days[0] <= float(day) <= days[-1]):
        raise ValueError(f"storage day {day!r} is outside the modelled range {days[0]:g}..{days[-1]:g} days "
                         "(Park et al. 2025 storage study)")
    out = {CLASS_NAMES[c]: float(np.interp(float(day), days, table[CLASS_NAMES[c]].to_numpy(float))) for c in CELL_CLASSES}
    total = sum(out.values())
    return {k: v / total for k, v in out.items()}


def parse_mixture(mixture: str | dict[str, float]) -> dict[str, float]:
    """Validate a class mixture (``"discocyte=0.7,spherocyte=0.3"`` or a dict); returns fractions summing to 1."""
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
    """Place the masks in a ``field_px`` square by role: ``"free"`` cells first (>= ``_GAP_PX``
    + 1 px from any other), then ``"contact"`` cells (slid in from a random direction until
    they touch an already placed cell, without overlap), then ``"overlap"`` cells (lying on
    one placed cell, 15-45 % of their summed radii into it, clear of every other cell).
    Returns top-left corners (None: did not fit, dropped), the placement order (later cells
    lie on top) and {top cell: the cell under it}."""
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
    """Instance id -> whether it touches another instance (8-connected contact)."""
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
    """One simulated field. hologram/background: camera images (uint8 or uint16, (H, W));
    phase: true phase [rad] float32, medium 0 (cells, platelets and debris); labels: uint8
    class map 0..4 (platelets and debris are background, 0); instances: int32 ids 1..N
    (= ``cells.cell_id``; where cells overlap, the top one); cells: per-cell table
    (:data:`CELL_COLUMNS`; volume_um3 is the integral of the cell's own true thickness,
    dry_mass_pg = optical volume / alpha); carrier (fy, fx) [cycles/px] of the +1 order;
    thickness: true thickness [um] float32 (overlapping cells add); conditions: what the field
    drew (density, touching and overlap shares, background objects, :class:`FieldConditions`)."""

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

    Every setting given as a (low, high) pair is drawn per field; a number pins it.
    mixture: class fractions (dict or ``"discocyte=0.7,..."``) or ``day``: storage day (8..57,
    :func:`storage_mixture`); neither: day 8. Cell count: ``n_cells`` if given, else drawn
    uniformly from ``cells_per_field`` (min, max) if given, else ``density_per_1000um2`` [cells
    per 1000 um^2] times the field area. touching_fraction / overlap_fraction: shares of cells
    in contact with / lying on another cell (0..1); platelets_per_cell, debris_per_1000um2:
    background objects (mean counts, Poisson); defocus_um: object-plane defocus [um];
    flat_discocyte_fraction: share of discocytes drawn flat-topped (opt-in, default 0).
    bit_depth (8 or 12) overrides ``settings.bit_depth``. Optics: wavelength, pixel size,
    n_medium and alpha are used; each cell's index is n_medium + alpha*MCHC (its own
    haemoglobin), so ``optics.n_cell`` (the assumed mean used downstream for thickness) is
    not. holograms=False skips hologram formation (the images are then empty arrays). Cells
    that do not fit are dropped (the table says which exist). Defaults: the module's ranges."""
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
    """True when the twin dataset in ``dataset_dir`` (its ``simulation.json``) drew a share of its
    discocytes flat-topped (``flat_discocyte_fraction`` > 0); False without that record."""
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
    ``cells.csv`` (``image`` = stem + :data:`CELL_COLUMNS`), ``fields.csv`` (what each field
    drew: density, defocus, noise, carrier...), ``optics.json``, ``splits.json`` (random,
    paper's 40/219 test share) and ``simulation.json`` (parameters). ``field_kw`` go to
    :func:`simulate_field` (mixture, day, optics, cells_per_field, density_per_1000um2,
    touching_fraction, overlap_fraction, defocus_um, settings, ...; defaults: the module's
    ranges). Field i uses child i of ``SeedSequence(seed)``, so a field does not depend on
    how many are written. Everything is checked before anything is written. A folder that
    already holds a simulation is refused, or with ``overwrite`` cleared of it (only
    :data:`DATASET_ENTRIES`) first."""
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
    """The storage study: one dataset folder per day (``day_08/``, ...) of ``images_per_day`` fields
    with :func:`storage_mixture` (a modelling assumption; other ``field_kw`` as in
    :func:`simulate_dataset`), plus ``cells.csv`` with ``storage_day``
    and ``dataset`` columns. Returns ``out_dir``. An earlier series there (``day_*/``,
    ``cells.csv``) is refused, or removed first with ``overwrite``."""
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

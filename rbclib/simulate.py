"""Digital twin of an off-axis DHM of red blood cells: cells -> phase -> holograms.

A field is built in three steps: (1) draw cells of the four classes with random size,
ellipticity, orientation and haemoglobin content, (2) place them without overlap (a
controlled fraction in touching pairs) and render their thickness, each in its own
bounding box, into the true phase ``phi = 2*pi/lambda * (n_cell - n_medium) * h``,
(3) form a camera hologram and a matching background hologram.

Sign convention (what the reconstruction relies on)
---------------------------------------------------
The hologram is ``I = |O|^2 + |R|^2 + 2*gamma*Re(O * conj(R))`` with the object wave
``O = E_o * exp(i*(phi_cells + phi_aberr))`` (cells *advance* the phase: positive) and
the tilted plane reference ``R = E_r * exp(-i*2*pi*(fy*y + fx*x))``, (y, x) in pixels,
carrier ``(fy, fx)`` in cycles/pixel (default :data:`CARRIER_CYCLES_PER_PX` =
(0.21, 0.26), fringe period 2.99 px). Hence, with numpy's FFT convention
(``np.fft.fft2``, frequency grid ``np.fft.fftfreq``), the +1 order is the sideband
centred at ``(+fy, +fx)`` (the half-plane fx > 0); it holds ``O * exp(+i*2*pi*(fy*y +
fx*x))``. Cropping it, centring it and taking the angle of its inverse FFT gives the object
phase plus aberrations; dividing by the same order of the background hologram (same
reference, envelope and aberrations, no cells) leaves the cell phase, **cells positive,
medium 0**. The -1 order at ``(-fy, -fx)`` holds the conjugate (cells negative).

An object in focus (``defocus_m=0``, the default) is a pure phase object, so its cells are
barely visible in the hologram's intensity (only bent fringes); with a few micrometres of
defocus they show the diffraction rings of real recordings and must be refocused.

Everything is deterministic given the seed (``numpy.random.Generator`` / ``SeedSequence``).
Lengths inside the cell models are in micrometres; :class:`rbclib.config.Optics` is SI.
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
from scipy import fft as sfft
from scipy import ndimage as ndi
from scipy.optimize import brentq

from rbclib.config import Optics
from rbclib.labels import CELL_CLASSES, CLASS_IDS, CLASS_NAMES, DISCOCYTE, ECHINOCYTE, SPHEROCYTE, STOMATOCYTE

STORAGE_DAYS: tuple[int, ...] = (8, 13, 16, 23, 27, 30, 34, 37, 40, 47, 57)
"""Storage periods [days] of the paper's storage study (Park et al. 2025, Sec. 5.4)."""

CARRIER_CYCLES_PER_PX: tuple[float, float] = (0.21, 0.26)
"""Default carrier (fy, fx) [cycles/px]: |k| = 0.334 c/px, 2.3x the imaging cut-off
NA/lambda (0.147 c/px at NA 0.7), so the +-1 orders sit clear of the DC term and inside
the Nyquist square (0.26 + 0.147 < 0.5). A modelling choice."""

DEFAULT_FIELD_PX = 900
"""Paper's image size: 900 x 900 px over 129.68 um (0.1441 um/px), Park et al. 2025, Sec. 7."""
DEFAULT_CELLS_PER_FIELD = (40, 85)
"""Cells per 900 x 900 field; chosen so that 66 storage images hold about 3,200 cells as in
the paper's Fig. 9 (2469 + 335 + 312 + 143 cells) with well-separated cells (Sec. 7)."""

# ---------------------------------------------------------------------------------------
# Cell models (lengths in um)
# ---------------------------------------------------------------------------------------
EVANS_FUNG_R0_UM = 3.91
EVANS_FUNG_C = (0.207161, 2.002558, -1.122762)
"""Evans & Fung, Microvasc. Res. 4, 335 (1972): thickness T(r) = R0*sqrt(1 - x^2)*(C0 +
C2*x^2 + C4*x^4), x = r/R0, R0 = 3.91 um: centre 0.81 um, rim 2.58 um, D = 7.82 um."""

DISCOCYTE_DIAMETER_UM = (7.8, 0.5)
"""Mean, s.d. of discocyte diameter: 7.82 +/- 0.62 um (Evans & Fung 1972); 7.8 +/- 0.5 um
(issue 2, after Canham & Burton, Circ. Res. 22, 405 (1968))."""
DISCOCYTE_CENTRE_UM = (0.8, 1.4)
DISCOCYTE_RIM_UM = (2.4, 2.6)
"""Centre (dimple) and rim thickness ranges: Evans & Fung 1972 (0.81 +/- 0.35 um, 2.58 +/-
0.27 um); Park et al., PNAS 105, 13730 (2008) tomography, 0.8-1.4 um / 2.4-2.6 um."""

SPHEROCYTE_DIAMETER_UM = (5.5, 6.8)
SPHEROCYTE_HEIGHT_UM = (3.3, 4.3)
"""Spherocytes: small dense near-spheres, D 5.5-6.8 um (Bessis, Red Cell Shape, Springer
1973; storage spherocytes, Park et al., Sci. Rep. 6, 34257 (2016)); sedimented on glass
they are domes 3.3-4.3 um high (volume 55-100 fL; a modelling choice matching the MCV
loss reported over storage by Park et al. 2016)."""

STOMATOCYTE_DIAMETER_UM = (7.3, 0.5)
STOMATOCYTE_BASE_UM = (2.0, 2.6)
STOMATOCYTE_RIM_UM = (2.7, 3.2)
STOMATOCYTE_SLIT_BOTTOM_UM = (0.8, 1.4)
"""Stomatocytes (Bessis 1973, stomatocyte I-III): a cup whose single concavity is seen from
above as an elongated central slit (mouth); thicker than a discocyte (rim 2.7-3.2 um, a
modelling choice), the slit floor as thin as a discocyte dimple so both look alike."""

ECHINOCYTE_SPICULES = ((10, 30), (30, 50))
"""Spicule counts: echinocyte II/III 10-30 short spicules, sphero-echinocyte 30-50
(Bessis 1973; Brecher & Bessis, Blood 40, 333 (1972)); the stage s in [0, 1] moves the
range linearly from the first to the second."""

MCHC_G_PER_DL = {DISCOCYTE: (33.0, 1.2), SPHEROCYTE: (35.5, 1.2), ECHINOCYTE: (34.0, 1.2), STOMATOCYTE: (32.0, 1.2)}
"""Mean cell haemoglobin concentration (mean, s.d.) [g/dL]: normal 32-36 g/dL (clinical
reference range); spherocytes are dehydrated (hyperchromic), stomatocytes over-hydrated
(Bessis 1973; Park et al. 2016 for storage). n_cell = n_medium + alpha * MCHC
(Barer, Nature 169, 366 (1952)); 33 g/dL with alpha 0.19 mL/g gives n_cell = 1.396."""

HBO2_EXTINCTION_CM_PER_M = 276.0
HB_MOLAR_MASS_G = 64_500.0
"""Absorption: HbO2 molar extinction at ~680 nm, 276 /cm/M (Prahl, 'Optical absorption of
hemoglobin', OMLC 1999); Hb 64.5 kg/mol. Intensity attenuation mu = ln(10)*eps*c."""

IMAGING_NA = 0.7
"""Objective numerical aperture (coherent cut-off NA/lambda): an assumption; 40x/0.65-0.75
objectives are usual for RBC DHM (Rappaz et al., Cytometry A 73, 895 (2008))."""


@dataclass(frozen=True)
class CellSpec:
    """One drawn cell: class, outline (semi-axes a >= b [um], angle [rad]) and shape params."""

    class_id: int
    a_um: float
    b_um: float
    angle: float
    mchc_g_dl: float
    params: dict[str, Any]

    @property
    def diameter_um(self) -> float:
        """Area-equivalent diameter of the model outline, 2*sqrt(a*b) [um]."""
        return 2.0 * math.sqrt(self.a_um * self.b_um)

    @property
    def extent_um(self) -> float:
        """Radius [um] of a circle holding the whole cell (outline, tilt and spicules)."""
        return self.a_um * 1.08 + float(self.params.get("spicule_reach_um", 0.0)) + 0.2


def _ef_scale(h0: float, hr: float) -> float:
    """Scale s of the Evans-Fung rim term so that max_r sqrt(1-x^2)*(h0 + s*g(x)) = hr."""
    if h0 >= hr:
        return 0.0
    root, g = _EF_ROOT, _EF_G
    return float(brentq(lambda s: float(np.max(root * (h0 + s * g))) - hr, 0.0, 8.0, xtol=1e-6))


_EF_X = np.linspace(0.0, 1.0, 257)[:-1]
_EF_ROOT = np.sqrt(1 - _EF_X**2)
_EF_G = EVANS_FUNG_R0_UM * (EVANS_FUNG_C[1] * _EF_X**2 + EVANS_FUNG_C[2] * _EF_X**4)


def _biconcave(x2: np.ndarray, h0: float, s: float) -> np.ndarray:
    """Evans-Fung profile with centre h0 and rim scale s at x^2 = (r/R)^2 (< 1 inside)."""
    g = EVANS_FUNG_R0_UM * (EVANS_FUNG_C[1] * x2 + EVANS_FUNG_C[2] * x2**2)
    return np.sqrt(np.clip(1 - x2, 0, None)) * (h0 + s * g)


def _outline(rng: np.random.Generator, diameter_um: float, ratio: tuple[float, float]) -> tuple[float, float, float]:
    """Semi-axes (a, b) with b/a in ``ratio`` and area of a disc of ``diameter_um``; random angle.

    Ellipticity of RBCs on glass: aspect ratio 0.85-1.0 (Canham & Burton 1968)."""
    q = rng.uniform(*ratio)
    r = diameter_um / 2
    return r / math.sqrt(q), r * math.sqrt(q), rng.uniform(0, math.pi)


def draw_cell(class_id: int, rng: np.random.Generator) -> CellSpec:
    """Draw the random parameters of one cell of class ``class_id`` (1..4), literature ranges above."""
    mu, sd = MCHC_G_PER_DL[class_id]
    mchc = float(np.clip(rng.normal(mu, sd), mu - 2.5 * sd, mu + 2.5 * sd))
    tilt = (rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08))  # cell lying slightly tilted
    if class_id == DISCOCYTE:
        d = float(np.clip(rng.normal(*DISCOCYTE_DIAMETER_UM), 6.6, 9.0))
        a, b, ang = _outline(rng, d, (0.88, 1.0))
        h0, hr = rng.uniform(*DISCOCYTE_CENTRE_UM), rng.uniform(*DISCOCYTE_RIM_UM)
        params = {"h0_um": h0, "rim_um": hr, "s": _ef_scale(h0, hr), "tilt": tilt}
    elif class_id == STOMATOCYTE:
        d = float(np.clip(rng.normal(*STOMATOCYTE_DIAMETER_UM), 6.3, 8.5))
        a, b, ang = _outline(rng, d, (0.85, 1.0))
        h0, hr = rng.uniform(*STOMATOCYTE_BASE_UM), rng.uniform(*STOMATOCYTE_RIM_UM)
        floor = rng.uniform(*STOMATOCYTE_SLIT_BOTTOM_UM)
        params = {"h0_um": h0, "rim_um": hr, "s": _ef_scale(h0, hr), "tilt": tilt,
                  "slit_depth_um": h0 - floor, "slit_len": rng.uniform(0.30, 0.48),
                  "slit_width": rng.uniform(0.08, 0.22), "slit_angle": rng.uniform(0, math.pi),
                  "slit_offset": rng.uniform(-0.08, 0.08)}
    elif class_id == SPHEROCYTE:
        d = rng.uniform(*SPHEROCYTE_DIAMETER_UM)
        a, b, ang = _outline(rng, d, (0.92, 1.0))
        params = {"height_um": rng.uniform(*SPHEROCYTE_HEIGHT_UM), "power": rng.uniform(0.5, 0.65),
                  "tilt": (tilt[0] / 2, tilt[1] / 2)}
    elif class_id == ECHINOCYTE:
        stage = rng.uniform(0.0, 1.0)
        d = float(np.clip(rng.normal(7.7 - 1.2 * stage, 0.4), 6.0, 8.8))
        a, b, ang = _outline(rng, d, (0.88, 1.0))
        h0, hr = rng.uniform(*DISCOCYTE_CENTRE_UM), rng.uniform(*DISCOCYTE_RIM_UM)
        (lo0, hi0), (lo1, hi1) = ECHINOCYTE_SPICULES
        n = int(rng.integers(round(lo0 + (lo1 - lo0) * stage), round(hi0 + (hi1 - hi0) * stage) + 1))
        n_rim = max(3, int(round(n * (1.0 - 0.6 * stage))))
        n_surf = n - n_rim
        height = rng.uniform(0.25, 0.5, n) * (1 + 0.6 * stage)       # spicule height [um]
        width = rng.uniform(0.18, 0.28, n) * (1 - 0.25 * stage)      # gaussian sigma [um]
        ang_rim = (np.arange(n_rim) + rng.uniform(-0.3, 0.3, n_rim)) * 2 * math.pi / n_rim + rng.uniform(0, 2 * math.pi)
        rho_rim = rng.uniform(0.93, 1.02, n_rim)
        k = np.arange(n_surf) + 0.5  # sunflower (golden-angle) spread over the upper surface
        rho_surf = 0.85 * np.sqrt(k / max(n_surf, 1)) + rng.uniform(-0.04, 0.04, n_surf)
        ang_surf = k * math.pi * (3 - math.sqrt(5)) + rng.uniform(0, 2 * math.pi) + rng.uniform(-0.2, 0.2, n_surf)
        rho = np.concatenate([rho_rim, np.clip(rho_surf, 0, 0.9)])
        phi = np.concatenate([ang_rim, ang_surf])
        params = {"stage": stage, "h0_um": h0, "rim_um": hr, "s": _ef_scale(h0, hr), "tilt": tilt,
                  "dome_um": rng.uniform(2.6, 3.2), "n_spicules": n,
                  "spicules": np.stack([rho * np.cos(phi), rho * np.sin(phi), height, width], axis=1),
                  "spicule_reach_um": float(np.max(2.5 * width) + 0.1)}
    else:
        raise ValueError(f"class id {class_id} is not a cell class; expected one of {list(CELL_CLASSES)}")
    return CellSpec(class_id, a, b, ang, mchc, params)


def cell_thickness(cell: CellSpec, y_um: np.ndarray, x_um: np.ndarray) -> np.ndarray:
    """Thickness h [um] of ``cell`` centred at (0, 0) on coordinates (y, x) [um]; 0 outside."""
    p = cell.params
    c, s = math.cos(cell.angle), math.sin(cell.angle)
    u = (x_um * c + y_um * s) / cell.a_um           # normalised cell frame (outline: u^2+v^2 = 1)
    v = (-x_um * s + y_um * c) / cell.b_um
    x2 = u * u + v * v
    inside = x2 < 1.0
    cid = cell.class_id
    if cid == SPHEROCYTE:
        h = p["height_um"] * np.clip(1 - x2, 0, None) ** p["power"]
    else:
        h = _biconcave(x2, p["h0_um"], p["s"])
        if cid == STOMATOCYTE:
            ca, sa = math.cos(p["slit_angle"]), math.sin(p["slit_angle"])
            su = u * ca + v * sa - p["slit_offset"]
            sv = -u * sa + v * ca
            q = (su / p["slit_len"]) ** 2 + (sv / p["slit_width"]) ** 2
            h = h - p["slit_depth_um"] * np.exp(-(q ** 1.5)) * np.sqrt(np.clip(1 - x2, 0, None))
        elif cid == ECHINOCYTE:
            st = p["stage"]
            dome = p["dome_um"] * np.sqrt(np.clip(1 - x2, 0, None))
            h = (1 - st) * h + st * dome
    h = np.where(inside, h * (1 + p["tilt"][0] * u + p["tilt"][1] * v), 0.0)
    if cid == ECHINOCYTE:
        # spicules: truncated gaussian bumps (radius 2.5 sigma) on the rim and upper surface
        xr = u * cell.a_um
        yr = v * cell.b_um
        for sx, sy, height, width in p["spicules"]:
            d2 = (xr - sx * cell.a_um) ** 2 + (yr - sy * cell.b_um) ** 2
            cut = (2.5 * width) ** 2
            bump = height * (np.exp(-d2 / (2 * width**2)) - math.exp(-cut / (2 * width**2)))
            h = h + np.where(d2 < cut, bump, 0.0)
    return np.clip(h, 0.0, None)


def _render(cell: CellSpec, pixel_um: float, frac: tuple[float, float]) -> tuple[np.ndarray, float, float]:
    """Thickness of ``cell`` in its own box [um]; returns (h cropped to its support, cy, cx in box px)."""
    r_px = int(math.ceil(cell.extent_um / pixel_um)) + 1
    cy, cx = r_px + frac[0], r_px + frac[1]
    yy, xx = np.mgrid[0: 2 * r_px + 2, 0: 2 * r_px + 2].astype(np.float64)
    h = cell_thickness(cell, (yy - cy) * pixel_um, (xx - cx) * pixel_um)
    rows, cols = np.nonzero(h.any(axis=1))[0], np.nonzero(h.any(axis=0))[0]
    y0, x0 = rows[0], cols[0]
    return h[y0: rows[-1] + 1, x0: cols[-1] + 1], cy - y0, cx - x0


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


def _place(masks: list[np.ndarray], field_px: int, pairs: list[tuple[int, int]], rng: np.random.Generator,
           max_tries: int = 400) -> list[tuple[int, int] | None]:
    """Top-left corners of the masks in a ``field_px`` square, no overlap; each (partner, cell)
    pair in ``pairs`` touching (8-connected) and every other pair >= ``_GAP_PX`` + 1 px apart.
    Cells that do not fit are dropped (None)."""
    g = _GAP_PX
    occ = np.zeros((field_px + 2 * g, field_px + 2 * g), np.int32)   # instance ids, padded by g
    pad = [np.pad(m, g) for m in masks]
    dil_g = [ndi.binary_dilation(p, _DIL1, iterations=g) for p in pad]
    dil_1 = [ndi.binary_dilation(p, _DIL1) for p in pad]
    partner_of = {cell: partner for partner, cell in pairs}
    pos: list[tuple[int, int] | None] = [None] * len(masks)
    # pairs first (each second cell right after its partner, while there is room), then the rest
    paired = {i for pair in pairs for i in pair}
    order = [i for pair in pairs for i in pair] + [i for i in range(len(masks)) if i not in paired]

    def window(i: int, y0: int, x0: int) -> np.ndarray:
        h, w = pad[i].shape
        return occ[y0: y0 + h, x0: x0 + w]

    def put(i: int, y0: int, x0: int) -> None:
        window(i, y0, x0)[pad[i]] = i + 1
        pos[i] = (y0, x0)

    for i in order:
        h, w = masks[i].shape
        if h > field_px or w > field_px:
            continue
        partner = partner_of.get(i)
        if partner is not None and pos[partner] is not None:
            py, px = pos[partner]
            ph, pw = masks[partner].shape
            pcy, pcx = py + ph / 2, px + pw / 2
            for _ in range(40):
                theta = rng.uniform(0, 2 * math.pi)
                dy, dx = math.sin(theta), math.cos(theta)
                dist = (max(h, w) + max(ph, pw)) / 2 + g + 2
                while dist > 0:
                    y0, x0 = int(round(pcy + dist * dy - h / 2)), int(round(pcx + dist * dx - w / 2))
                    if not (0 <= y0 <= field_px - h and 0 <= x0 <= field_px - w):
                        break
                    hits = window(i, y0, x0)[dil_1[i]]
                    if hits.any():
                        ids = set(np.unique(window(i, y0, x0)[dil_g[i]]).tolist()) - {0}
                        if ids == {partner + 1} and set(np.unique(hits).tolist()) - {0} == {partner + 1}:
                            put(i, y0, x0)
                        break
                    dist -= 0.5
                if pos[i] is not None:
                    break
            if pos[i] is not None:
                continue
        for _ in range(max_tries):
            y0, x0 = int(rng.integers(0, field_px - h + 1)), int(rng.integers(0, field_px - w + 1))
            if not window(i, y0, x0)[dil_g[i]].any():
                put(i, y0, x0)
                break
    return pos


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
# Hologram formation
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HologramSettings:
    """Camera and interferometer parameters (ranges are drawn per field; assumptions unless cited).

    carrier: (fy, fx) [cycles/px], see the module docstring; na: objective NA (cut-off NA/lambda);
    coherence: fringe contrast factor gamma range (partial coherence, vibration);
    beam_ratio: |R|/|O| range (visibility 2*gamma*beta/(1+beta^2) < 1);
    tilt_rad / curvature_rad: peak low-order aberration phase across the field;
    parasitic: relative amplitude of a parasitic fringe pattern (0 disables);
    full_well_e / read_noise_e: sensor electrons (typical scientific CMOS, an assumption);
    bit_depth: 8 or 12 (12-bit stored in uint16)."""

    carrier: tuple[float, float] = CARRIER_CYCLES_PER_PX
    na: float = IMAGING_NA
    coherence: tuple[float, float] = (0.6, 0.9)
    beam_ratio: tuple[float, float] = (0.8, 1.5)
    tilt_rad: float = 6.0
    curvature_rad: float = 8.0
    parasitic: float = 0.02
    full_well_e: float = 10_000.0
    read_noise_e: float = 6.0
    bit_depth: int = 8

    def __post_init__(self) -> None:
        if self.bit_depth not in (8, 12):
            raise ValueError(f"bit_depth must be 8 or 12, got {self.bit_depth!r}")
        fy, fx = self.carrier
        if not (0 < math.hypot(fy, fx) and max(abs(fy), abs(fx)) < 0.5):
            raise ValueError(f"carrier {self.carrier} must be nonzero and inside the Nyquist square (|f| < 0.5 cycles/px)")


@functools.lru_cache(maxsize=8)
def _transfer(shape: tuple[int, int], pixel_m: float, wavelength_m: float, n_medium: float, na: float,
              defocus_m: float) -> np.ndarray:
    """Coherent transfer function: pupil NA/lambda times angular-spectrum propagation over defocus_m."""
    fy = np.fft.fftfreq(shape[0], d=pixel_m)[:, None]
    fx = np.fft.fftfreq(shape[1], d=pixel_m)[None, :]
    f2 = fy**2 + fx**2
    pupil = f2 <= (na / wavelength_m) ** 2
    kz = np.sqrt(np.clip((n_medium / wavelength_m) ** 2 - f2, 0, None))
    prop = np.exp(2j * np.pi * defocus_m * (kz - n_medium / wavelength_m))
    return (pupil * prop).astype(np.complex64)


def _smooth_envelope(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Beam amplitude: an off-centre Gaussian (waist 0.9-1.6 x the half field) times a few %
    of smooth low-frequency ripple; separable products only, float32 (H, W)."""
    ny = (np.arange(shape[0], dtype=np.float32) - shape[0] / 2) / (shape[0] / 2)
    nx = (np.arange(shape[1], dtype=np.float32) - shape[1] / 2) / (shape[1] / 2)
    c0 = rng.uniform(-0.25, 0.25, 2)
    w = rng.uniform(0.9, 1.6)
    env = np.outer(np.exp(-((ny - c0[0]) ** 2) / (2 * w**2)), np.exp(-((nx - c0[1]) ** 2) / (2 * w**2)))
    for _ in range(3):
        k = rng.uniform(0.3, 1.5, 2) * math.pi
        p = rng.uniform(0, 2 * math.pi)
        ripple = np.outer(np.exp(1j * k[0] * ny), np.exp(1j * (k[1] * nx + p))).real
        env *= 1 + 0.02 * ripple.astype(np.float32)
    return env.astype(np.float32)


def form_holograms(phase: np.ndarray, rng: np.random.Generator, *, optics: Optics, settings: HologramSettings,
                   attenuation: np.ndarray | None = None, defocus_m: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Camera hologram and matching background hologram of an object phase [rad].

    attenuation: amplitude attenuation (optical depth/2, >= 0) per pixel, or None;
    defocus_m: object plane distance from focus [m] (angular-spectrum propagation in the medium).
    Both images share the reference, envelopes, aberrations (tilt, curvature, astigmatism),
    fringe contrast and parasitic fringes; camera noise is drawn independently.
    Camera: Poisson shot noise (approximated by a Gaussian of equal variance, exact enough
    at the >= 100 electrons per pixel of these exposures) plus Gaussian read noise, the
    brightest background pixel at 80 % of full well, quantised to ``settings.bit_depth``.
    Returns two uint8 (8-bit) or uint16 (12-bit) images of ``phase.shape``."""
    shape = tuple(int(s) for s in phase.shape)
    ny = (np.arange(shape[0], dtype=np.float64) - shape[0] / 2) / (shape[0] / 2)
    nx = (np.arange(shape[1], dtype=np.float64) - shape[1] / 2) / (shape[1] / 2)
    obj = np.exp(1j * np.asarray(phase, np.float32))
    if attenuation is not None:
        obj *= np.exp(-np.asarray(attenuation, np.float32))
    tf = _transfer(shape, optics.pixel_size_m, optics.wavelength_m, optics.n_medium, settings.na, float(defocus_m))
    obj = sfft.ifft2(sfft.fft2(obj) * tf)
    # phase of O*conj(R) without the object: carrier + tilt + curvature + astigmatism (separable)
    t = rng.uniform(-1, 1, 2) * settings.tilt_rad / 2
    cc = rng.uniform(-1, 1, 2) * settings.curvature_rad / 2
    fy, fx = settings.carrier
    ay = t[0] * ny + (cc[0] - 0.3 * cc[1]) * ny**2 + 2 * np.pi * fy * np.arange(shape[0])
    ax = t[1] * nx + (cc[0] + 0.3 * cc[1]) * nx**2 + 2 * np.pi * fx * np.arange(shape[1])
    carrier = np.outer(np.exp(1j * ay), np.exp(1j * ax)).astype(np.complex64)
    env_o = _smooth_envelope(rng, shape)
    env_r = _smooth_envelope(rng, shape) * np.float32(rng.uniform(*settings.beam_ratio))
    gamma = np.float32(rng.uniform(*settings.coherence))
    para = np.float32(1.0)
    if settings.parasitic > 0:   # weak low-frequency fringes from a parasitic reflection
        kp = rng.uniform(0.005, 0.03, 2) * rng.choice([-1, 1], 2)
        wave = np.outer(np.exp(2j * np.pi * kp[0] * np.arange(shape[0])),
                        np.exp(1j * (2 * np.pi * kp[1] * np.arange(shape[1]) + rng.uniform(0, 2 * math.pi))))
        para = (1 + settings.parasitic * wave.real).astype(np.float32)
    eo_er = 2 * gamma * env_o * env_r
    i_bg = (env_o**2 + env_r**2 + eo_er * carrier.real) * para
    obj *= carrier
    i_obj = (np.abs(obj) ** 2 * env_o**2 + env_r**2 + eo_er * obj.real) * para
    levels = (1 << settings.bit_depth) - 1
    scale = np.float32(0.8 * settings.full_well_e / float(i_bg.max()))

    def camera(i: np.ndarray) -> np.ndarray:
        e = np.clip(i * scale, 0, None)
        e += np.sqrt(e + settings.read_noise_e**2) * rng.standard_normal(shape, dtype=np.float32)
        dn = np.rint(e * np.float32(levels / settings.full_well_e))
        return np.clip(dn, 0, levels).astype(np.uint8 if settings.bit_depth == 8 else np.uint16)

    return camera(i_obj.astype(np.float32)), camera(i_bg.astype(np.float32))


# ---------------------------------------------------------------------------------------
# Fields and datasets
# ---------------------------------------------------------------------------------------
CELL_COLUMNS = ("cell_id", "class_id", "class_name", "centre_y_px", "centre_x_px", "diameter_um", "volume_um3",
                "dry_mass_pg", "touching", "peak_phase_rad", "mchc_g_dl", "n_cell", "echinocyte_stage", "n_spicules")


@dataclass
class SimulatedField:
    """One simulated field. hologram/background: camera images (uint8 or uint16, (H, W));
    phase: true phase [rad] float32, medium 0; labels: uint8 class map 0..4; instances: int32
    ids 1..N (= ``cells.cell_id``); cells: per-cell table (:data:`CELL_COLUMNS`; volume_um3 is the
    integral of the true thickness, dry_mass_pg = optical volume / alpha); carrier (fy, fx)
    [cycles/px] of the +1 order; thickness: true thickness [um] float32."""

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


def _default_cells_per_field(field_px: int) -> tuple[int, int]:
    """(40, 85) cells per 900 px field, scaled with the field area."""
    f = (field_px / DEFAULT_FIELD_PX) ** 2
    return max(1, int(round(DEFAULT_CELLS_PER_FIELD[0] * f))), max(1, int(round(DEFAULT_CELLS_PER_FIELD[1] * f)))


def simulate_field(seed_or_rng: int | np.random.Generator | np.random.SeedSequence, *, field_px: int = DEFAULT_FIELD_PX,
                   optics: Optics | None = None, mixture: str | dict[str, float] | None = None, day: float | None = None,
                   n_cells: int | None = None, cells_per_field: Sequence[int] | None = None,
                   touching_fraction: float = 0.1, defocus_m: float = 0.0, bit_depth: int = 8,
                   holograms: bool = True, settings: HologramSettings | None = None) -> SimulatedField:
    """Simulate one field of ``field_px`` x ``field_px`` pixels.

    mixture: class fractions (dict or ``"discocyte=0.7,..."``) or ``day``: storage day (8..57,
    :func:`storage_mixture`); neither: day 8. n_cells: exact count, else drawn uniformly from
    ``cells_per_field`` (default (40, 85) scaled to the field area). touching_fraction: share of
    cells placed in touching pairs (0..1). bit_depth (8 or 12) overrides ``settings.bit_depth``.
    Optics: wavelength, pixel size, n_medium and alpha are used; each cell's index is
    n_medium + alpha*MCHC (its own haemoglobin), so ``optics.n_cell`` (the assumed mean used
    downstream for thickness) is not. holograms=False skips hologram formation (the images
    are then empty arrays). Cells that do not fit are dropped (the table says how many exist)."""
    rng = seed_or_rng if isinstance(seed_or_rng, np.random.Generator) else np.random.default_rng(seed_or_rng)
    optics = optics or Optics()
    if not isinstance(field_px, (int, np.integer)) or field_px < 32:
        raise ValueError(f"field_px must be an integer >= 32, got {field_px!r}")
    if not 0.0 <= float(touching_fraction) <= 1.0:
        raise ValueError(f"touching_fraction must lie in 0..1, got {touching_fraction!r}")
    settings = dataclasses.replace(settings or HologramSettings(), bit_depth=bit_depth)
    mix = _resolve_mixture(mixture, day)
    if n_cells is None:
        lo, hi = tuple(cells_per_field) if cells_per_field is not None else _default_cells_per_field(field_px)
        if not (0 <= lo <= hi):
            raise ValueError(f"cells_per_field must be (min, max) with 0 <= min <= max, got {cells_per_field!r}")
        n_cells = int(rng.integers(lo, hi + 1))
    if n_cells < 0:
        raise ValueError(f"n_cells must be >= 0, got {n_cells}")
    names = list(mix)
    classes = rng.choice([CLASS_IDS[n] for n in names], size=n_cells, p=[mix[n] for n in names])
    cells = [draw_cell(int(c), rng) for c in classes]
    pixel_um = optics.pixel_size_m * 1e6
    rendered = [_render(c, pixel_um, tuple(rng.uniform(0, 1, 2))) for c in cells]
    n_pair_f = touching_fraction * n_cells / 2
    n_pairs = min(int(n_pair_f) + int(rng.random() < n_pair_f - int(n_pair_f)), n_cells // 2)
    members = rng.permutation(n_cells)[: 2 * n_pairs]
    pairs = [(int(members[2 * k]), int(members[2 * k + 1])) for k in range(n_pairs)]
    pos = _place([r[0] > 0 for r in rendered], field_px, pairs, rng)

    thickness = np.zeros((field_px, field_px), np.float32)
    phase = np.zeros((field_px, field_px), np.float32)
    labels = np.zeros((field_px, field_px), np.uint8)
    hb_molar = np.zeros((field_px, field_px), np.float32)      # haemoglobin concentration [mol/L]
    instances = np.zeros((field_px, field_px), np.int32)
    k0 = 2 * math.pi / optics.wavelength_m * 1e-6      # rad per (um of thickness * index difference)
    rows = []
    for cell, (h, cy, cx), p in zip(cells, rendered, pos):
        if p is None:
            continue
        cid = len(rows) + 1
        y0, x0 = p
        sl = (slice(y0, y0 + h.shape[0]), slice(x0, x0 + h.shape[1]))
        m = h > 0
        dn = optics.alpha_m3_per_kg * cell.mchc_g_dl * 10.0         # alpha [m^3/kg] * C [kg/m^3]
        ph = k0 * dn * h
        thickness[sl][m] = h[m]
        phase[sl][m] = ph[m]
        labels[sl][m] = cell.class_id
        instances[sl][m] = cid
        hb_molar[sl][m] = cell.mchc_g_dl * 10.0 / HB_MOLAR_MASS_G
        vol = float(h.sum()) * pixel_um**2
        rows.append({"cell_id": cid, "class_id": cell.class_id, "class_name": CLASS_NAMES[cell.class_id],
                     "centre_y_px": y0 + cy, "centre_x_px": x0 + cx, "diameter_um": cell.diameter_um,
                     "volume_um3": vol, "dry_mass_pg": vol * dn / (optics.alpha_m3_per_kg * 1e3),
                     "touching": False, "peak_phase_rad": float(ph.max()), "mchc_g_dl": cell.mchc_g_dl,
                     "n_cell": optics.n_medium + dn,
                     "echinocyte_stage": cell.params.get("stage", np.nan),
                     "n_spicules": int(cell.params.get("n_spicules", 0))})
    table = pd.DataFrame(rows, columns=list(CELL_COLUMNS))
    if rows:
        touch = touching_cells(instances)
        table["touching"] = [touch.get(i, False) for i in table["cell_id"]]
    if holograms:
        mu = math.log(10) * HBO2_EXTINCTION_CM_PER_M * 100.0  # intensity attenuation [1/m per mol/L]
        atten = 0.5 * mu * hb_molar * thickness * 1e-6          # amplitude optical depth
        holo, bg = form_holograms(phase, rng, optics=optics, settings=settings, attenuation=atten, defocus_m=defocus_m)
    else:
        holo = bg = np.zeros((0, 0), np.uint8)
    return SimulatedField(hologram=holo, background=bg, phase=phase, labels=labels, instances=instances,
                          cells=table, optics=optics, carrier=settings.carrier, thickness=thickness, mixture=mix)


def _write_fields(out_dir: Path, seeds: Sequence[np.random.SeedSequence], *, progress: bool, desc: str,
                  split_seed: int, test_fraction: float, **field_kw: Any) -> pd.DataFrame:
    from tqdm.auto import tqdm

    from rbclib import io

    out_dir = Path(out_dir)
    optics = field_kw.get("optics") or Optics()
    tables, stems = [], []
    carrier = None
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
        carrier = f.carrier
    cells = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["image", *CELL_COLUMNS])
    cells = cells[["image", *CELL_COLUMNS]]
    io.write_csv(out_dir / "cells.csv", cells)
    optics.to_json(out_dir / "optics.json")
    order = np.random.default_rng(split_seed).permutation(len(stems))
    n_test = int(round(test_fraction * len(stems))) if len(stems) > 1 else 0
    test = sorted(stems[j] for j in order[:n_test])
    io.write_json(out_dir / "splits.json", {"train": [s for s in stems if s not in test], "test": test,
                                            "seed": split_seed, "method": f"random, test fraction {test_fraction:.3f}"})
    io.write_json(out_dir / "simulation.json", {
        "generator": "rbclib.simulate", "seed": split_seed, "n_fields": len(stems),
        "carrier_cycles_per_px": list(carrier or field_kw.get("settings", HologramSettings()).carrier),
        "sign_convention": "+1 order at +carrier (fx > 0) holds exp(+i*phase): cells positive after background division",
        **{k: v for k, v in field_kw.items() if k in ("field_px", "mixture", "day", "cells_per_field", "touching_fraction",
                                                       "defocus_m", "bit_depth")}})
    return cells


def simulate_dataset(out_dir: str | Path, *, n_fields: int, seed: int, field_px: int = DEFAULT_FIELD_PX,
                     cells_per_field: Sequence[int] | None = None, mixture: str | dict[str, float] | None = None,
                     day: float | None = None, optics: Optics | None = None, touching_fraction: float = 0.1,
                     defocus_m: float = 0.0, bit_depth: int = 8, test_fraction: float = 40 / 219,
                     progress: bool = True) -> Path:
    """Write ``n_fields`` simulated fields to ``out_dir`` and return it.

    Layout: ``holograms/`` and ``backgrounds/`` (PNG camera images), ``phase/`` (float32 TIFF
    [rad]), ``labels/`` (uint8 PNG), ``instances/`` (uint16 PNG), stems ``field_0000``...;
    ``cells.csv`` (``image`` = stem + :data:`CELL_COLUMNS`), ``optics.json``, ``splits.json``
    (random, paper's 40/219 test share) and ``simulation.json`` (parameters, carrier).
    ``cells_per_field=None`` (default) is (40, 85) for 900 px fields, scaled to the field area. Field i uses child i of
    ``SeedSequence(seed)``, so a field does not depend on how many are written."""
    if not isinstance(n_fields, (int, np.integer)) or n_fields < 1:
        raise ValueError(f"n_fields must be a positive integer, got {n_fields!r}")
    _resolve_mixture(mixture, day)  # fail before writing anything
    seeds = np.random.SeedSequence(int(seed)).spawn(int(n_fields))
    _write_fields(Path(out_dir), seeds, progress=progress, desc="simulate", split_seed=int(seed), test_fraction=test_fraction,
                  field_px=field_px, cells_per_field=cells_per_field, mixture=mixture, day=day, optics=optics,
                  touching_fraction=touching_fraction, defocus_m=defocus_m, bit_depth=bit_depth)
    return Path(out_dir)


def simulate_storage_series(out_dir: str | Path, *, seed: int, images_per_day: int = 6, days: Iterable[int] = STORAGE_DAYS,
                            field_px: int = DEFAULT_FIELD_PX, cells_per_field: Sequence[int] | None = None,
                            optics: Optics | None = None, progress: bool = True) -> Path:
    """The storage study: one dataset folder per day (``day_08/``, ...) of ``images_per_day`` fields
    with :func:`storage_mixture` (a modelling assumption; cells_per_field as in
    :func:`simulate_dataset`), plus ``cells.csv`` with ``storage_day``
    and ``dataset`` columns. Returns ``out_dir``."""
    from tqdm.auto import tqdm

    from rbclib import io

    out_dir = Path(out_dir)
    days = [int(d) for d in days]
    for d in days:
        storage_mixture(d)
    tables = []
    for d in tqdm(days, desc="storage days", disable=not progress):
        seeds = np.random.SeedSequence([int(seed), d]).spawn(int(images_per_day))
        cells = _write_fields(out_dir / f"day_{d:02d}", seeds, progress=False, desc=f"day {d}", split_seed=int(seed),
                              test_fraction=0.0, field_px=field_px, cells_per_field=cells_per_field, day=d, optics=optics)
        tables.append(cells.assign(storage_day=d, dataset=f"day_{d:02d}"))
    io.write_csv(out_dir / "cells.csv", pd.concat(tables, ignore_index=True))
    return out_dir

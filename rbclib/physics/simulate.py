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
from scipy import fft as sfft
from scipy import ndimage as ndi
from scipy.optimize import brentq

from rbclib.core.config import Optics
from rbclib.core.labels import CELL_CLASSES, CLASS_IDS, CLASS_NAMES, DISCOCYTE, ECHINOCYTE, SPHEROCYTE, STOMATOCYTE

STORAGE_DAYS: tuple[int, ...] = (8, 13, 16, 23, 27, 30, 34, 37, 40, 47, 57)
"""Storage periods [days] of the paper's storage study (Park et al. 2025, Sec. 5.4)."""

CARRIER_CYCLES_PER_PX: tuple[float, float] = (0.21, 0.26)
"""Default carrier (fy, fx) [cycles/px]: |k| = 0.334 c/px, 2.3x the imaging cut-off
NA/lambda (0.147 c/px at NA 0.7), so the +-1 orders sit clear of the DC term and inside
the Nyquist square (0.26 + 0.147 < 0.5). A modelling choice."""

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
# Cell models (lengths in um)
# ---------------------------------------------------------------------------------------
EVANS_FUNG_R0_UM = 3.91
EVANS_FUNG_C = (0.207161, 2.002558, -1.122762)
"""Evans & Fung, Microvasc. Res. 4, 335 (1972): thickness T(r) = R0*sqrt(1 - x^2)*(C0 +
C2*x^2 + C4*x^4), x = r/R0, R0 = 3.91 um: centre 0.81 um, rim 2.58 um, D = 7.82 um."""

DISCOCYTE_DIAMETER_UM = (7.8, 0.5)
"""Mean, s.d. of discocyte diameter: 7.82 +/- 0.62 um (Evans & Fung 1972); 7.8 +/- 0.5 um
(issue 2, after Canham & Burton, Circ. Res. 22, 405 (1968))."""
DISCOCYTE_CENTRE_UM = (0.2, 1.4)
DISCOCYTE_RIM_UM = (2.3, 2.7)
"""Centre (dimple) and rim thickness ranges: Evans & Fung 1972 (centre 0.81 +/- 0.35 um, i.e.
about 0.2-1.4 um over +-1.7 s.d.; rim 2.58 +/- 0.27 um). The centre/peak phase ratio of real
reconstructed discocytes spans about 0.10-0.48 (10th-90th percentile, issue 13), wider than
Park et al. PNAS 2008's 0.8-1.4 um, so the Evans-Fung spread is used."""

FLAT_DISCOCYTE_FRACTION = 0.0
FLAT_DISCOCYTE_EDGE_POWER = (2.0, 4.0)
FLAT_DISCOCYTE_DIMPLE_DEPTH = (0.1, 0.45)
FLAT_DISCOCYTE_DIMPLE_WIDTH = (0.2, 0.35)
"""Flat-topped discocytes, opt-in (``simulate_field(flat_discocyte_fraction=...)``, ``rbc
simulate --flat-discocyte-fraction``): that share of discocytes is drawn as the fresh cells of
the real holograms look (``benchmarks/bench_realism.py``: a flat top, steep walls and a narrow
round central dimple; centre / peak phase 0.84-0.86 median on all three real RBC holograms,
against 0.1-0.5 for Evans-Fung cells). Thickness rim * sqrt(1 - x^(2k)) * (1 - d * exp(-x^2 /
w^2)), x = r / R: edge power k, dimple depth d (centre / peak 0.55-0.9) and dimple width w
(relative radius, a dimple 1.6-2.8 um across). A stomatocyte differs by its mouth: an
elongated slit, deeper than this dimple. Default 0: a quick run with 0.4 called 95 / 83 / 93 %
of the real fresh cells discocytes (3 / 0 / 22 % before), but its twin echinocyte Dice fell
from 0.47 to 0.05 and its storage study from 33 to 14 of 44 ratios within 3 points
(2026-12-01, README)."""

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
RIM_SPICULES = (8, 16)
RIM_SPICULE_PROTRUSION_UM = (0.6, 1.1)
RIM_SPICULE_HALF_WIDTH_UM = (0.35, 0.6)
"""Spicules seen on the outline of an echinocyte (the others sit on its upper surface):
8-16 of them, 1.4-3 um apart along a ~24 um outline, each sticking out 0.6-1.1 um beyond the
disc (Brecher & Bessis 1972: spicules ~1 um long; real reconstructed echinocytes show them
0.5-1 um beyond the rim after the optics' blur, issue 13), base half-width 0.35-0.6 um."""
CRENATED_DISCOCYTE_FRACTION = 0.15
CRENATED_PROTRUSION_UM = (0.05, 0.2)
"""Labelling rule for the earliest crenation (echinocyte I: an irregular, barely crenated
disc): a cell whose spicules stick out less than 0.25 um (a quarter of the optical
resolution) leaves no visible trace in the phase image, so it is labelled as what it looks
like, a discocyte. The twin draws this share of discocytes with such invisible crenation
(0.05-0.2 um); every cell labelled echinocyte carries visible spicules (0.5-1 um)."""

HB_PER_CELL_PG = (29.5, 2.0)
"""Haemoglobin per cell (MCH, mean, s.d.) [pg], one distribution for every class: normal MCH
27-33 pg (clinical reference range); shape changes in storage do not change a cell's
haemoglobin, so dry mass must not separate the classes (see :data:`MCHC_RANGE_G_PER_DL`)."""

MCHC_RANGE_G_PER_DL = (29.0, 38.0)
"""Range of a cell's haemoglobin concentration [g/dL]: a cell's haemoglobin is fixed
(:data:`HB_PER_CELL_PG`) and its concentration is MCH / volume; normal MCHC is 32-36 g/dL
(clinical reference range), dehydrated spherocytes reach ~38, over-hydrated stomatocytes
~29 (Bessis 1973; Park et al. 2016 for storage). A drawn shape whose volume would leave
this range is scaled in 3-D to its edge. n_cell = n_medium + alpha * MCHC (Barer, Nature
169, 366 (1952)); 33 g/dL with alpha 0.19 mL/g gives n_cell = 1.396."""

HBO2_EXTINCTION_CM_PER_M = 276.0
HB_MOLAR_MASS_G = 64_500.0
"""Absorption: HbO2 molar extinction at ~680 nm, 276 /cm/M (Prahl, 'Optical absorption of
hemoglobin', OMLC 1999); Hb 64.5 kg/mol. Intensity attenuation mu = ln(10)*eps*c."""


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
        rim = self.params.get("rim_spicules")
        protrusion = float(rim[:, 1].max()) * self.a_um if rim is not None and len(rim) else 0.0
        return self.a_um * 1.08 + protrusion + float(self.params.get("spicule_reach_um", 0.0)) + 0.2


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


def _rim_spicules(rng: np.random.Generator, radius_um: float, protrusion_um: tuple[float, float]) -> np.ndarray:
    """(n, 3) spicules of the outline: angle [rad], protrusion and angular half-width, both
    relative to ``radius_um`` (so they scale with the cell); counts and widths as
    :data:`RIM_SPICULES`, :data:`RIM_SPICULE_HALF_WIDTH_UM`."""
    n = int(rng.integers(RIM_SPICULES[0], RIM_SPICULES[1] + 1))
    angle = (np.arange(n) + rng.uniform(-0.25, 0.25, n)) * 2 * math.pi / n + rng.uniform(0, 2 * math.pi)
    protrusion = rng.uniform(*protrusion_um, n) / radius_um
    width = rng.uniform(*RIM_SPICULE_HALF_WIDTH_UM, n) / radius_um
    return np.stack([angle, protrusion, width], axis=1)


def _shape_volume(cell: CellSpec, step_um: float = 0.1) -> float:
    """Volume [um^3] of ``cell``, integrated on a ``step_um`` grid."""
    r = cell.extent_um
    y, x = np.mgrid[-r:r:step_um, -r:r:step_um]
    return float(cell_thickness(cell, y, x).sum()) * step_um**2


def draw_cell(class_id: int, rng: np.random.Generator, *, flat_fraction: float = FLAT_DISCOCYTE_FRACTION) -> CellSpec:
    """Draw the random parameters of one cell of class ``class_id`` (1..4), literature ranges above.

    The shape is drawn first; the cell's haemoglobin (:data:`HB_PER_CELL_PG`) then sets its
    concentration MCH / volume, and a shape too small or too large for
    :data:`MCHC_RANGE_G_PER_DL` is scaled in 3-D (outline and thickness alike) to fit.
    flat_fraction: share of discocytes drawn flat-topped (:data:`FLAT_DISCOCYTE_FRACTION`)."""
    tilt = (rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08))  # cell lying slightly tilted
    if class_id == DISCOCYTE:
        d = float(np.clip(rng.normal(*DISCOCYTE_DIAMETER_UM), 6.6, 9.0))
        a, b, ang = _outline(rng, d, (0.88, 1.0))
        h0, hr = rng.uniform(*DISCOCYTE_CENTRE_UM), rng.uniform(*DISCOCYTE_RIM_UM)
        params = {"h0_um": h0, "rim_um": hr, "s": _ef_scale(h0, hr), "tilt": tilt}
        if flat_fraction > 0 and rng.random() < flat_fraction:
            params.update(edge_power=rng.uniform(*FLAT_DISCOCYTE_EDGE_POWER),
                          dimple_depth=rng.uniform(*FLAT_DISCOCYTE_DIMPLE_DEPTH),
                          dimple_width=rng.uniform(*FLAT_DISCOCYTE_DIMPLE_WIDTH))
        if rng.random() < CRENATED_DISCOCYTE_FRACTION:   # invisible crenation: still a discocyte
            params["rim_spicules"] = _rim_spicules(rng, a, CRENATED_PROTRUSION_UM)
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
        d = float(np.clip(rng.normal(7.5 - 1.2 * stage, 0.4), 5.8, 8.6))
        a, b, ang = _outline(rng, d, (0.88, 1.0))
        h0, hr = rng.uniform(*DISCOCYTE_CENTRE_UM), rng.uniform(*DISCOCYTE_RIM_UM)
        rim = _rim_spicules(rng, a, RIM_SPICULE_PROTRUSION_UM)
        (lo0, hi0), (lo1, hi1) = ECHINOCYTE_SPICULES
        n = int(rng.integers(round(lo0 + (lo1 - lo0) * stage), round(hi0 + (hi1 - hi0) * stage) + 1))
        n_surf = max(n - len(rim), 0)
        height = rng.uniform(0.25, 0.5, n_surf) * (1 + 0.6 * stage)       # surface spicule height [um]
        width = rng.uniform(0.18, 0.28, n_surf) * (1 - 0.25 * stage)      # gaussian sigma [um]
        k = np.arange(n_surf) + 0.5  # sunflower (golden-angle) spread over the upper surface
        rho = np.clip(0.8 * np.sqrt(k / max(n_surf, 1)) + rng.uniform(-0.04, 0.04, n_surf), 0, 0.85)
        phi = k * math.pi * (3 - math.sqrt(5)) + rng.uniform(0, 2 * math.pi) + rng.uniform(-0.2, 0.2, n_surf)
        params = {"stage": stage, "h0_um": h0, "rim_um": hr, "s": _ef_scale(h0, hr), "tilt": tilt,
                  "dome_um": rng.uniform(2.6, 3.2), "rim_spicules": rim,
                  "spicules": np.stack([rho * np.cos(phi), rho * np.sin(phi), height, width], axis=1),
                  "spicule_reach_um": float(np.max(2.5 * width, initial=0.0))}
    else:
        raise ValueError(f"class id {class_id} is not a cell class; expected one of {list(CELL_CLASSES)}")
    mu, sd = HB_PER_CELL_PG
    mch = float(np.clip(rng.normal(mu, sd), mu - 2.5 * sd, mu + 2.5 * sd))
    cell = CellSpec(class_id, a, b, ang, 0.0, params)
    volume = _shape_volume(cell)                                     # [um^3 = fL]
    mchc = float(np.clip(100.0 * mch / volume, *MCHC_RANGE_G_PER_DL))  # MCHC [g/dL] = 100 * MCH [pg] / V [fL]
    scale = (100.0 * mch / mchc / volume) ** (1 / 3)
    return dataclasses.replace(cell, a_um=a * scale, b_um=b * scale, mchc_g_dl=mchc, params={**params, "h_scale": scale})


def n_spicules(cell: CellSpec) -> int:
    """Spicules of ``cell`` (outline and surface; 0 for a smooth cell)."""
    return sum(len(cell.params.get(k, ())) for k in ("rim_spicules", "spicules"))


def cell_thickness(cell: CellSpec, y_um: np.ndarray, x_um: np.ndarray) -> np.ndarray:
    """Thickness h [um] of ``cell`` centred at (0, 0) on coordinates (y, x) [um]; 0 outside.

    Outline spicules (``rim_spicules``) stretch the cell radially within their angular
    width, so the whole profile, rim included, sticks out beyond the disc."""
    p = cell.params
    c, s = math.cos(cell.angle), math.sin(cell.angle)
    u = (x_um * c + y_um * s) / cell.a_um           # normalised cell frame (outline: u^2+v^2 = 1)
    v = (-x_um * s + y_um * c) / cell.b_um
    x2 = u * u + v * v
    rim = p.get("rim_spicules")
    if rim is not None and len(rim):
        theta = np.arctan2(v, u)
        stretch = np.ones_like(x2)
        for angle, protrusion, width in rim:
            stretch += protrusion * np.exp((np.cos(theta - angle) - 1.0) / width**2)
        x2 = x2 / stretch**2
    inside = x2 < 1.0
    cid = cell.class_id
    if cid == SPHEROCYTE:
        h = p["height_um"] * np.clip(1 - x2, 0, None) ** p["power"]
    elif "edge_power" in p:   # flat-topped discocyte
        h = (p["rim_um"] * np.sqrt(np.clip(1 - x2 ** p["edge_power"], 0, None))
             * (1 - p["dimple_depth"] * np.exp(-x2 / p["dimple_width"] ** 2)))
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
        # surface spicules: truncated gaussian bumps (radius 2.5 sigma) on the upper surface
        xr = u * cell.a_um
        yr = v * cell.b_um
        for sx, sy, height, width in p["spicules"]:
            d2 = (xr - sx * cell.a_um) ** 2 + (yr - sy * cell.b_um) ** 2
            cut = (2.5 * width) ** 2
            bump = height * (np.exp(-d2 / (2 * width**2)) - math.exp(-cut / (2 * width**2)))
            h = h + np.where(d2 < cut, bump, 0.0)
    return np.clip(h, 0.0, None) * p.get("h_scale", 1.0)


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
# Hologram formation
# ---------------------------------------------------------------------------------------
def draw(rng: np.random.Generator, value: float | Sequence[float], *, log: bool = False) -> float:
    """One value of a per-field setting: a number pins it, a (low, high) pair draws it
    uniformly (log-uniformly with ``log=True``)."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    lo, hi = (float(v) for v in value)
    if log and lo > 0:
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return float(rng.uniform(lo, hi))


SETTING_LIMITS: dict[str, tuple[float, float, str]] = {
    "density_per_1000um2": (0.0, 20.0, "cells per 1000 um^2"), "touching_fraction": (0.0, 1.0, ""),
    "overlap_fraction": (0.0, 0.5, ""), "platelets_per_cell": (0.0, 2.0, ""),
    "debris_per_1000um2": (0.0, 50.0, "per 1000 um^2"), "defocus_um": (-20.0, 20.0, "um"),
    "noise_nm": (0.0, 200.0, "nm"), "noise_corr_um": (0.05, 20.0, "um"), "na": (0.05, 1.5, ""),
    "coherence": (0.05, 1.0, ""), "beam_ratio": (0.05, 20.0, ""), "dust": (0, 100, ""),
    "flat_discocyte_fraction": (0.0, 1.0, ""),
}
"""Allowed (low, high, unit) of every per-field setting of :func:`simulate_field` and
:class:`HologramSettings` (sane limits, far wider than the defaults)."""


def check_setting(name: str, value: float | Sequence[float], *, label: str | None = None) -> None:
    """:func:`check_range` of setting ``name`` against :data:`SETTING_LIMITS` (``label`` names it in errors)."""
    lo, hi, unit = SETTING_LIMITS[name]
    check_range(label or name, value, lo, hi, unit)


def check_range(name: str, value: float | Sequence[float], lo: float, hi: float, unit: str = "") -> None:
    """Raise ValueError naming ``name`` unless ``value`` (a number or a (low, high) pair) lies in [lo, hi]."""
    values = [value] if isinstance(value, (int, float, np.integer, np.floating)) else list(value)
    ok = len(values) in (1, 2) and all(isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)
                                       and lo <= v <= hi for v in values) and values == sorted(values)
    if not ok:
        raise ValueError(f"{name}={value!r} is outside the allowed range {lo:g}..{hi:g}{' ' + unit if unit else ''} "
                         "(a number, or low,high with low <= high)")


@dataclass(frozen=True)
class HologramSettings:
    """Camera and interferometer parameters; a pair (low, high) is drawn per field (domain
    randomisation), a number pins the setting. Assumptions unless cited.

    carrier: (fy, fx) [cycles/px] of the +1 order, or None: drawn per field with magnitude
    ``carrier_magnitude`` and angle ``carrier_angle_deg`` (+-, from the x axis), inside the
    Nyquist square with room for the pupil; na: the recording objective's NA, drawn per field
    (0.55-0.75: the 40x/0.65-0.75 objectives usual for RBC DHM, Rappaz et al. 2008; the
    reconstruction's filter follows ``Optics.numerical_aperture``, the user's stated value);
    coherence: fringe contrast factor gamma (partial coherence, vibration);
    beam_ratio: |R|/|O| (visibility 2*gamma*beta/(1+beta^2) < 1);
    tilt_rad / curvature_rad: peak low-order aberration phase across the field;
    parasitic: relative amplitude of a parasitic fringe pattern (0 disables);
    noise_nm: optical-path s.d. [nm] of the sample's coherent noise (speckle of the slide,
    medium and optics, spatially correlated over ``noise_corr_um``), drawn log-uniformly;
    3-25 nm, with the camera's noise, gives ~4-40 nm in the reconstructed background,
    bracketing the real RBC holograms' 20-25 nm (``benchmarks/bench_realism.py``);
    dust: count of out-of-focus dust particles (0.5-2.5 um) 15-80 um from the object plane,
    whose diffraction rings are the parasitic ring fringes of real recordings;
    envelope_waist: Gaussian beam waist over the half field (illumination gradient);
    full_well_e / read_noise_e: sensor electrons (typical scientific CMOS);
    bit_depth: 8 or 12 (12-bit stored in uint16)."""

    carrier: tuple[float, float] | None = None
    carrier_magnitude: tuple[float, float] = (0.28, 0.36)
    carrier_angle_deg: tuple[float, float] = (15.0, 75.0)
    na: float | tuple[float, float] = (0.55, 0.75)
    coherence: tuple[float, float] = (0.6, 0.95)
    beam_ratio: tuple[float, float] = (0.6, 1.7)
    tilt_rad: float = 6.0
    curvature_rad: float = 8.0
    parasitic: float = 0.02
    noise_nm: float | tuple[float, float] = (3.0, 25.0)
    noise_corr_um: float | tuple[float, float] = (0.3, 1.5)
    dust: tuple[int, int] = (0, 6)
    envelope_waist: tuple[float, float] = (0.6, 1.6)
    full_well_e: float = 10_000.0
    read_noise_e: float = 6.0
    bit_depth: int = 8

    def __post_init__(self) -> None:
        if self.bit_depth not in (8, 12):
            raise ValueError(f"bit_depth must be 8 or 12, got {self.bit_depth!r}")
        if self.carrier is not None:
            fy, fx = self.carrier
            if not (0 < math.hypot(fy, fx) and max(abs(fy), abs(fx)) < 0.5):
                raise ValueError(f"carrier {self.carrier} must be nonzero and inside the Nyquist square (|f| < 0.5 cycles/px)")
        for name in ("noise_nm", "noise_corr_um", "na", "coherence", "beam_ratio", "dust"):
            check_setting(name, getattr(self, name))

    def draw_carrier(self, rng: np.random.Generator) -> tuple[float, float]:
        """The field's carrier (fy, fx) [cycles/px]: the pinned one, or a random one."""
        if self.carrier is not None:
            return tuple(float(c) for c in self.carrier)
        mag = rng.uniform(*self.carrier_magnitude)
        ang = math.radians(rng.uniform(*self.carrier_angle_deg)) * rng.choice([-1, 1])
        return float(mag * math.sin(ang)), float(mag * math.cos(ang))


def _propagator(shape: tuple[int, int], pixel_m: float, wavelength_m: float, n_medium: float,
                distance_m: float) -> np.ndarray:
    """Angular-spectrum propagation over ``distance_m`` in the medium (complex64, FFT layout)."""
    fy = np.fft.fftfreq(shape[0], d=pixel_m)[:, None]
    fx = np.fft.fftfreq(shape[1], d=pixel_m)[None, :]
    kz = np.sqrt(np.clip((n_medium / wavelength_m) ** 2 - fy**2 - fx**2, 0, None))
    return np.exp(2j * np.pi * distance_m * (kz - n_medium / wavelength_m)).astype(np.complex64)


@functools.lru_cache(maxsize=4)
def _transfer(shape: tuple[int, int], pixel_m: float, wavelength_m: float, n_medium: float, na: float,
              defocus_m: float) -> np.ndarray:
    """Coherent transfer function: pupil NA/lambda times angular-spectrum propagation over defocus_m."""
    fy = np.fft.fftfreq(shape[0], d=pixel_m)[:, None]
    fx = np.fft.fftfreq(shape[1], d=pixel_m)[None, :]
    pupil = fy**2 + fx**2 <= (na / wavelength_m) ** 2
    if not defocus_m:
        return pupil.astype(np.complex64)
    return pupil * _propagator(shape, pixel_m, wavelength_m, n_medium, defocus_m)


def _smooth_envelope(rng: np.random.Generator, shape: tuple[int, int], waist: tuple[float, float]) -> np.ndarray:
    """Beam amplitude: an off-centre Gaussian (waist drawn from ``waist`` x the half field) times
    a few % of smooth low-frequency ripple; separable products only, float32 (H, W)."""
    ny = (np.arange(shape[0], dtype=np.float32) - shape[0] / 2) / (shape[0] / 2)
    nx = (np.arange(shape[1], dtype=np.float32) - shape[1] / 2) / (shape[1] / 2)
    c0 = rng.uniform(-0.25, 0.25, 2)
    w = rng.uniform(*waist)
    env = np.outer(np.exp(-((ny - c0[0]) ** 2) / (2 * w**2)), np.exp(-((nx - c0[1]) ** 2) / (2 * w**2)))
    for _ in range(3):
        k = rng.uniform(0.3, 1.5, 2) * math.pi
        p = rng.uniform(0, 2 * math.pi)
        ripple = np.outer(np.exp(1j * k[0] * ny), np.exp(1j * (k[1] * nx + p))).real
        env *= 1 + 0.02 * ripple.astype(np.float32)
    return env.astype(np.float32)


def coherent_noise(rng: np.random.Generator, shape: tuple[int, int], *, sigma_rad: float, corr_px: float) -> np.ndarray:
    """Complex transmission (H, W) of spatially correlated coherent noise: phase of s.d.
    ``sigma_rad`` and relative amplitude of s.d. ``sigma_rad``/2, both Gaussian random fields
    with a Gaussian correlation of ``corr_px`` pixels (the speckle of slide, medium and optics)."""
    def field() -> np.ndarray:
        f = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), corr_px, mode="wrap")
        return f / (float(f.std()) + 1e-12)
    return ((1 + 0.5 * sigma_rad * field()) * np.exp(1j * sigma_rad * field())).astype(np.complex64)


def dust_rings(rng: np.random.Generator, shape: tuple[int, int], n: int, *, optics: Optics, na: float) -> np.ndarray:
    """Complex transmission (H, W) of ``n`` absorbing dust particles (0.5-2.5 um, opacity
    0.2-0.8) on one plane 15-80 um out of focus, propagated to the object plane: ring fringes."""
    px_um = optics.pixel_size_m * 1e6
    yy, xx = np.mgrid[0: shape[0], 0: shape[1]]
    plane = np.ones(shape, np.float32)
    for _ in range(n):
        r = max(rng.uniform(0.5, 2.5) / 2 / px_um, 0.7)
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        plane -= rng.uniform(0.2, 0.8) * (np.hypot(yy - cy, xx - cx) <= r)
    distance = float(rng.uniform(15e-6, 80e-6) * rng.choice([-1, 1]))
    pupil = _transfer(shape, optics.pixel_size_m, optics.wavelength_m, optics.n_medium, na, 0.0)
    kz = _propagator(shape, optics.pixel_size_m, optics.wavelength_m, optics.n_medium, distance)
    return sfft.ifft2(sfft.fft2(np.clip(plane, 0, 1).astype(np.complex64)) * pupil * kz).astype(np.complex64)


@dataclass(frozen=True)
class FieldConditions:
    """What one field drew from the ranges (recorded in ``fields.csv``): carrier (fy, fx)
    [cycles/px], recording NA, defocus [um], coherent noise s.d. [nm] and correlation [um],
    dust particles, fringe contrast gamma and beam ratio |R|/|O|."""

    carrier: tuple[float, float]
    na: float
    defocus_um: float
    noise_nm: float
    noise_corr_um: float
    dust: int
    coherence: float
    beam_ratio: float

    @classmethod
    def draw(cls, rng: np.random.Generator, settings: HologramSettings, defocus_um: float | Sequence[float]) -> "FieldConditions":
        """Draw every per-field setting of ``settings`` (and the defocus range [um])."""
        return cls(carrier=settings.draw_carrier(rng), na=draw(rng, settings.na), defocus_um=draw(rng, defocus_um),
                   noise_nm=draw(rng, settings.noise_nm, log=True), noise_corr_um=draw(rng, settings.noise_corr_um),
                   dust=int(rng.integers(settings.dust[0], settings.dust[1] + 1)),
                   coherence=draw(rng, settings.coherence), beam_ratio=draw(rng, settings.beam_ratio))


def form_holograms(phase: np.ndarray, rng: np.random.Generator, *, optics: Optics, settings: HologramSettings,
                   conditions: FieldConditions, attenuation: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Camera hologram and matching background hologram of an object phase [rad].

    attenuation: amplitude attenuation (optical depth/2, >= 0) per pixel, or None;
    conditions: the field's drawn carrier, defocus (angular-spectrum propagation in the
    medium), coherent noise, dust and fringe visibility.
    The object wave carries the sample's coherent noise and dust rings (they come with the
    slide, so the background hologram does not hold them); both images share the reference,
    envelopes, aberrations (tilt, curvature, astigmatism), fringe contrast and parasitic
    fringes; camera noise is drawn independently.
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
    sigma_rad = 2 * math.pi * conditions.noise_nm * 1e-9 / optics.wavelength_m
    if sigma_rad > 0:
        obj *= coherent_noise(rng, shape, sigma_rad=sigma_rad,
                              corr_px=conditions.noise_corr_um * 1e-6 / optics.pixel_size_m)
    tf = _transfer(shape, optics.pixel_size_m, optics.wavelength_m, optics.n_medium, conditions.na,
                   conditions.defocus_um * 1e-6)
    obj = sfft.ifft2(sfft.fft2(obj) * tf)
    if conditions.dust:
        obj *= dust_rings(rng, shape, conditions.dust, optics=optics, na=conditions.na)
    # phase of O*conj(R) without the object: carrier + tilt + curvature + astigmatism (separable)
    t = rng.uniform(-1, 1, 2) * settings.tilt_rad / 2
    cc = rng.uniform(-1, 1, 2) * settings.curvature_rad / 2
    fy, fx = conditions.carrier
    ay = t[0] * ny + (cc[0] - 0.3 * cc[1]) * ny**2 + 2 * np.pi * fy * np.arange(shape[0])
    ax = t[1] * nx + (cc[0] + 0.3 * cc[1]) * nx**2 + 2 * np.pi * fx * np.arange(shape[1])
    carrier = np.outer(np.exp(1j * ay), np.exp(1j * ax)).astype(np.complex64)
    env_o = _smooth_envelope(rng, shape, settings.envelope_waist)
    env_r = _smooth_envelope(rng, shape, settings.envelope_waist) * np.float32(conditions.beam_ratio)
    gamma = np.float32(conditions.coherence)
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
    rendered = [_render(c, pixel_um, tuple(rng.uniform(0, 1, 2))) for c in cells]
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

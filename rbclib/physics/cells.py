"""Cell models of the digital twin (lengths in micrometres): discocytes (Evans-Fung, some
flat-topped), spherocytes, echinocytes (rim and surface spicules) and stomatocytes, each with one
haemoglobin-per-cell distribution; :func:`draw_cell` draws one, :func:`cell_thickness` renders it.
Sources of every range are in the constants' docstrings."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import brentq

from rbclib.core.labels import (
    CELL_CLASSES,
    DISCOCYTE,
    ECHINOCYTE,
    SPHEROCYTE,
    STOMATOCYTE,
)

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
elongated slit, deeper than this dimple. Default 0 because of the training budget it needs
(quick backbone, 40 fields, bench_transfer protocol): with 0.4 and 1600 steps the
real fresh cells came out 94 / 100 / 80 % discocytes (1 / 0 / 4 % with 0) and the twin's
echinocytes kept a Dice of 0.79, but after 800 steps echinocytes fell to 0.07; 1600 steps for
the 8 models of a quick run do not fit its 45 min on 2 CPU cores (docs/results.md)."""


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
    """One drawn cell: class, outline (semi-axes a >= b [um], angle [rad]) and shape params.

    Attributes
    ----------
    class_id : int
        Cell class 1..4 (:mod:`rbclib.core.labels`).
    a_um, b_um : float
        Semi-axes of the outline, a >= b [um].
    angle : float
        Orientation of the outline [rad].
    mchc_g_dl : float
        Haemoglobin concentration of the cell, MCH / volume [g/dL].
    params : dict of str to Any
        Shape parameters of the class's model (as :func:`draw_cell` draws them, with
        ``h_scale``, the 3-D scale that fits the MCHC range), read by :func:`cell_thickness`.
    """

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

    Parameters
    ----------
    class_id : int
        Cell class, 1..4 (discocyte, spherocyte, echinocyte, stomatocyte ids of
        :mod:`rbclib.core.labels`).
    rng : numpy.random.Generator
        Source of the random draws.
    flat_fraction : float, optional
        Share of discocytes drawn flat-topped (:data:`FLAT_DISCOCYTE_FRACTION`).

    Returns
    -------
    CellSpec
        The drawn cell.

    Raises
    ------
    ValueError
        When ``class_id`` is not a cell class.
    """
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
    """Spicules of ``cell`` (outline and surface; 0 for a smooth cell).

    Parameters
    ----------
    cell : CellSpec
        A drawn cell.

    Returns
    -------
    int
        Number of outline and surface spicules.
    """
    return sum(len(cell.params.get(k, ())) for k in ("rim_spicules", "spicules"))


def cell_thickness(cell: CellSpec, y_um: np.ndarray, x_um: np.ndarray) -> np.ndarray:
    """Thickness h [um] of ``cell`` centred at (0, 0) on coordinates (y, x) [um]; 0 outside.

    Outline spicules (``rim_spicules``) stretch the cell radially within their angular
    width, so the whole profile, rim included, sticks out beyond the disc.

    Parameters
    ----------
    cell : CellSpec
        A drawn cell.
    y_um, x_um : numpy.ndarray
        Coordinates [um], same (or broadcastable) shapes.

    Returns
    -------
    numpy.ndarray
        Thickness [um], >= 0, the shape of the coordinates.
    """
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


def render_cell(cell: CellSpec, pixel_um: float, frac: tuple[float, float]) -> tuple[np.ndarray, float, float]:
    """Thickness of ``cell`` in its own box [um].

    Parameters
    ----------
    cell : CellSpec
        A drawn cell.
    pixel_um : float
        Pixel size at the sample [um].
    frac : tuple of float
        (dy, dx) sub-pixel offset of the cell's centre in its box [px].

    Returns
    -------
    h : numpy.ndarray
        (h, w) float thickness [um] cropped to its support.
    cy, cx : float
        The cell's centre in the cropped box [px].
    """
    r_px = int(math.ceil(cell.extent_um / pixel_um)) + 1
    cy, cx = r_px + frac[0], r_px + frac[1]
    yy, xx = np.mgrid[0: 2 * r_px + 2, 0: 2 * r_px + 2].astype(np.float64)
    h = cell_thickness(cell, (yy - cy) * pixel_um, (xx - cx) * pixel_um)
    rows, cols = np.nonzero(h.any(axis=1))[0], np.nonzero(h.any(axis=0))[0]
    y0, x0 = rows[0], cols[0]
    return h[y0: rows[-1] + 1, x0: cols[-1] + 1], cy - y0, cx - x0

"""Realism benchmark: the same statistics on the digital twin's and on real phase images.

Both kinds of image are phase maps made by :func:`rbclib.physics.holography.reconstruct`: the
twin's holograms with their background hologram (as notebook 01 does), the real holograms
(no background) with numerical compensation. On each phase image (H, W) [rad] this module
measures

* the background noise: robust s.d. of the medium after removing its slow background, in
  rad and as optical path [nm], its radially averaged power spectrum and a correlation length;
* per cell: area, 10-90 % edge width, central dip ratio, outline roughness, peak phase,
  dry mass, and whether it is isolated or touches the image edge;
* cells per 1000 um^2, counted by an independent cell finder (:func:`find_cells`).

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
from scipy import fft as sfft
from scipy import ndimage as ndi

from rbclib.core.config import Optics
from rbclib.physics.robust_fit import median_and_robust_std, robust_std
from rbclib.core.labels import CELL_CLASSES, CLASS_COLOURS, CLASS_IDS, CLASS_NAMES, edge_ids
from rbclib.core.paths import source_checkout

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
    """Area under the ROC curve of a score that should be higher for ``positive`` (1-D) than
    for ``negative`` samples: P(pos > neg) + P(pos == neg) / 2 (Mann-Whitney, ranks with ties)."""
    from scipy.stats import rankdata

    pos, neg = np.asarray(positive, float), np.asarray(negative, float)
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    if not pos.size or not neg.size:
        return math.nan
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def cells_per_1000um2(instances: np.ndarray, *, pixel_size_m: float) -> float:
    """Cell density of an instance map (H, W) [cells per 1000 um^2]; cells touching the image
    edge count one half (about their share inside the field)."""
    ids = np.unique(instances[instances > 0])
    n = ids.size - 0.5 * edge_ids(instances).size
    return float(n / (instances.size * (pixel_size_m * 1e6) ** 2) * 1000)


def _radius_map(shape: tuple[int, int], centre: tuple[float, float]) -> np.ndarray:
    """Distance [px] of every pixel of an array of ``shape`` from ``centre`` (y, x)."""
    yy, xx = np.indices(shape)
    return np.hypot(yy - centre[0], xx - centre[1])


# ----------------------------------------------------------------------------- background noise
@dataclass
class Noise:
    """Background noise of one phase image.

    noise_rad: robust s.d. of the medium after removing the slow background [rad];
    noise_nm: the same as optical path [nm]; freq_per_um: (n,) centres of the frequency bins
    [cycles/um]; psd_nm2_um2: (n,) radially averaged power spectral density of the medium's
    optical path [nm^2 um^2] (its integral over the frequency plane is the variance);
    corr_length_um: lag at which the medium's autocorrelation falls to 1/e [um]."""

    noise_rad: float
    noise_nm: float
    freq_per_um: np.ndarray
    psd_nm2_um2: np.ndarray
    corr_length_um: float


def medium_mask(cell_mask: np.ndarray, *, pixel_size_m: float, halo_um: float = 1.5, border_px: int = 16) -> np.ndarray:
    """Medium pixels (H, W) bool: farther than ``halo_um`` from every cell pixel of ``cell_mask``
    (H, W) bool and at least ``border_px`` from the image edge (reconstruction rings there)."""
    far = ndi.distance_transform_edt(~cell_mask) * pixel_size_m * 1e6 > halo_um
    far[:border_px], far[-border_px:], far[:, :border_px], far[:, -border_px:] = False, False, False, False
    return far


def _quadratic_fit(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Least-squares surface of order 2 (H, W) fitted to ``image`` (H, W) over ``mask`` (H, W)
    bool (on a grid of every 4th pixel)."""
    y, x = (np.indices(image.shape) / np.array(image.shape)[:, None, None]) - 0.5
    terms = np.stack([np.ones_like(y), y, x, y * y, x * y, x * x], axis=-1)
    sub = (slice(None, None, 4), slice(None, None, 4))
    keep = mask[sub]
    coef, *_ = np.linalg.lstsq(terms[sub][keep], image[sub][keep], rcond=None)
    return terms @ coef


def _radial_mean(values: np.ndarray, radius: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over the rings ``edges`` (n+1,) of ``radius`` (same shape); (n,), 0 where empty."""
    which = np.digitize(radius.ravel(), edges) - 1
    ok = (which >= 0) & (which < len(edges) - 1)
    counts = np.bincount(which[ok], minlength=len(edges) - 1)
    return np.bincount(which[ok], values.ravel()[ok], minlength=len(edges) - 1) / np.maximum(counts, 1)


def _one_over_e(acf: np.ndarray) -> float:
    """Lag [samples] where a decreasing autocorrelation ``acf`` (n,) (lag 0, 1, ...) first
    falls to acf[0] / e, linearly interpolated; NaN if it does not within n."""
    below = np.nonzero(acf < acf[0] / math.e)[0]
    if acf[0] <= 0 or not below.size:
        return math.nan
    j = int(below[0])
    a, b = acf[j - 1] / acf[0], acf[j] / acf[0]
    return j - 1 + (a - 1 / math.e) / (a - b)


def background_noise(phase: np.ndarray, cell_mask: np.ndarray, *, pixel_size_m: float, wavelength_m: float,
                     scale_um: float = 5.0, halo_um: float = 1.5, max_lag_um: float = 8.0, n_bins: int = 48) -> Noise:
    """Noise of the medium of ``phase`` (H, W) [rad] around the cells of ``cell_mask`` (H, W) bool.

    The slow background, removed first, is a least-squares quadratic surface over the medium
    plus a Gaussian (sigma ``scale_um``) average of the rest over the medium alone (normalised
    convolution; medium: cells, a ``halo_um`` halo and the border excluded, :func:`medium_mask`).
    The residual over the medium gives the robust s.d. (:func:`robust_std`), its power
    spectrum (cells and halo weighted 0, i.e. filled with the local background) and its
    autocorrelation (Wiener-Khinchin, divided by the mask's own autocorrelation; radial
    mean up to ``max_lag_um``). All NaN when there is no medium."""
    px_um = pixel_size_m * 1e6
    nm_per_rad = wavelength_m * 1e9 / (2 * math.pi)
    medium = medium_mask(cell_mask, pixel_size_m=pixel_size_m, halo_um=halo_um)
    edges = np.linspace(0, 0.5 / px_um, n_bins + 1)
    freq = 0.5 * (edges[1:] + edges[:-1])
    if not medium.any():
        return Noise(math.nan, math.nan, freq, np.full(n_bins, np.nan), math.nan)
    w = medium.astype(np.float64)
    flat = phase - _quadratic_fit(phase, medium)
    sigma = scale_um / px_um
    resid = flat - ndi.gaussian_filter(flat * w, sigma) / np.maximum(ndi.gaussian_filter(w, sigma), 1e-6)
    noise_rad = robust_std(resid[medium])
    lag = int(math.ceil(max_lag_um / px_um))
    shape = tuple(sfft.next_fast_len(n + lag, real=True) for n in phase.shape)  # padded: no wrap-around
    spec = np.abs(sfft.rfft2(resid * w * nm_per_rad, shape, workers=-1)) ** 2
    freq_r = np.hypot(np.fft.fftfreq(shape[0])[:, None], np.fft.rfftfreq(shape[1])[None, :]) / px_um
    psd = _radial_mean(spec * px_um ** 2 / w.sum(), freq_r, edges)  # |FFT|^2 dx^2 / sum(w^2)
    acf = sfft.irfft2(spec, shape, workers=-1) / np.maximum(
        sfft.irfft2(np.abs(sfft.rfft2(w, shape, workers=-1)) ** 2, shape, workers=-1), 1.0)
    lags = np.hypot(np.fft.fftfreq(shape[0], 1 / shape[0])[:, None], np.fft.fftfreq(shape[1], 1 / shape[1])[None, :])
    acf_r = _radial_mean(acf, lags, np.arange(lag + 1) - 0.5)  # rings around integer lags 0..lag-1
    return Noise(noise_rad=noise_rad, noise_nm=noise_rad * nm_per_rad, freq_per_um=freq, psd_nm2_um2=psd,
                 corr_length_um=_one_over_e(acf_r) * px_um)


# ----------------------------------------------------------------------------- cell finder
def _medium_level(values: np.ndarray, *, n_sigma: float = 3.0, iterations: int = 5) -> tuple[float, float]:
    """(median, robust s.d.) of the medium among ``values`` (any shape): iteratively clipped to
    ``n_sigma`` robust s.d. around the median, so the cells' tail drops out."""
    v = np.asarray(values, np.float64).ravel()
    for _ in range(iterations):
        med, sd = median_and_robust_std(v)
        v = v[np.abs(v - med) <= n_sigma * sd]
    return median_and_robust_std(v)


def foreground_mask(phase: np.ndarray, *, pixel_size_m: float, smooth_um: float = 0.3,
                    edge_fraction: float = 0.3, noise_sigmas: float = 4.0) -> np.ndarray:
    """Cell pixels (H, W) bool of ``phase`` (H, W) [rad], holes filled: hysteresis threshold
    of the phase smoothed by a Gaussian (sigma ``smooth_um``). Against the medium's level and
    robust s.d. (:func:`_medium_level`): the high threshold is Otsu's but at least
    2 x ``noise_sigmas`` s.d. above the medium, the low one (where cells end)
    ``edge_fraction`` of the way from the medium to it, but at least ``noise_sigmas`` s.d. above."""
    from skimage.filters import apply_hysteresis_threshold, threshold_otsu

    smooth = ndi.gaussian_filter(np.asarray(phase, np.float32), smooth_um / (pixel_size_m * 1e6))
    base, sd = _medium_level(smooth[::2, ::2])
    high = max(float(threshold_otsu(smooth)), base + 2 * noise_sigmas * sd)
    low = base + max(edge_fraction * (high - base), noise_sigmas * sd)
    return ndi.binary_fill_holes(apply_hysteresis_threshold(smooth, low, high))


def find_cells(phase: np.ndarray, *, pixel_size_m: float, min_area_um2: float = 8.0,
               min_separation_um: float = 3.0) -> np.ndarray:
    """Instances (H, W) int32, 1..N, of the cells of ``phase`` (H, W) [rad], independent of
    :mod:`rbclib.annotate.proposals`: :func:`foreground_mask`, then a watershed of its distance
    transform from maxima at least ``min_separation_um`` apart (and 1 um deep, so specks
    get no seed) splits touching cells; objects below ``min_area_um2`` are dropped. Cells
    touching the image edge are kept (:func:`cell_statistics` flags them)."""
    from skimage.feature import peak_local_max
    from skimage.segmentation import relabel_sequential, watershed

    px_um = pixel_size_m * 1e6
    fg = foreground_mask(phase, pixel_size_m=pixel_size_m)
    comps, _ = ndi.label(fg)
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(fg), 1.0)
    peaks = peak_local_max(dist, min_distance=max(1, int(round(min_separation_um / px_um))), labels=comps,
                           threshold_abs=1.0 / px_um, exclude_border=False)
    markers = np.zeros(phase.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    inst = watershed(-dist, markers, mask=fg)
    area = np.bincount(inst.ravel())
    inst[(area < min_area_um2 / px_um ** 2)[inst]] = 0
    return relabel_sequential(inst)[0].astype(np.int32)


# ----------------------------------------------------------------------------- per-cell statistics
def radial_profile(phase: np.ndarray, centre: tuple[float, float], *, valid: np.ndarray | None = None,
                   r_max_px: float, bin_px: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Azimuthal mean of ``phase`` (H, W) around ``centre`` (y, x) [px] over ``valid`` (H, W)
    bool pixels, in rings of ``bin_px`` up to ``r_max_px``. Returns (r [px], mean), both (n,),
    NaN where a ring holds no valid pixel."""
    edges = np.arange(0, r_max_px + bin_px, bin_px)
    r = _radius_map(phase.shape, centre)
    keep = (r < edges[-1]) if valid is None else valid & (r < edges[-1])
    which = (r[keep] / bin_px).astype(int)
    sums = np.bincount(which, phase[keep], minlength=len(edges) - 1)
    counts = np.bincount(which, minlength=len(edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 0.5 * (edges[1:] + edges[:-1]), np.where(counts > 0, sums / counts, np.nan)


def edge_width(r: np.ndarray, profile: np.ndarray, medium: float, *, r_peak_max: float | None = None) -> float:
    """10-90 % width of the outer edge of a radial ``profile`` (n,) at radii ``r`` (n,): the
    distance (unit of ``r``) between the 90 % and 10 % levels from the profile's peak (within
    ``r_peak_max``) down to ``medium``, first crossings outward from the peak, interpolated."""
    ok = np.isfinite(profile)
    r, p = r[ok], profile[ok]
    inner = np.nonzero(r <= (r_peak_max if r_peak_max is not None else r[-1]))[0]
    if not inner.size:
        return math.nan
    i_peak = int(inner[np.argmax(p[inner])])
    span = p[i_peak] - medium
    crossings = []
    for frac in (0.9, 0.1):
        level = medium + frac * span
        after = np.nonzero(p[i_peak:] <= level)[0]
        if span <= 0 or not after.size:
            return math.nan
        j = i_peak + int(after[0])
        crossings.append(r[j - 1] + (p[j - 1] - level) / (p[j - 1] - p[j]) * (r[j] - r[j - 1]))
    return float(crossings[1] - crossings[0])


def outline_roughness(image: np.ndarray, level: float, centre: tuple[float, float], *, harmonics: int = 3) -> float:
    """Roughness of the outline of ``image`` (h, w) at ``level``: the longest contour
    (:func:`skimage.measure.find_contours`), as radius r(theta) around ``centre`` (y, x) [px]
    resampled at 1 degree, minus its least-squares fit of harmonics 0..``harmonics``;
    returns the residual s.d. / mean radius (~0 for a circle, 0.003 for an ellipse of axis
    ratio 1.1, whose 4th harmonic is left; a/sqrt(2) for r = R (1 + a cos(k theta)), k > 3)."""
    from skimage.measure import find_contours

    contours = find_contours(np.pad(image, 2, mode="edge"), level)
    if not contours:
        return math.nan
    pts = max(contours, key=len) - 2.0
    theta = np.arctan2(pts[:, 0] - centre[0], pts[:, 1] - centre[1])
    rad = np.hypot(pts[:, 0] - centre[0], pts[:, 1] - centre[1])
    order = np.argsort(theta)
    grid = np.linspace(-np.pi, np.pi, 360, endpoint=False)
    r = np.interp(grid, theta[order], rad[order], period=2 * np.pi)
    waves = [f(k * grid) for k in range(1, harmonics + 1) for f in (np.cos, np.sin)]
    design = np.stack([np.ones_like(grid)] + waves, axis=1)
    coef, *_ = np.linalg.lstsq(design, r, rcond=None)
    return float(np.std(r - design @ coef) / coef[0])


CELL_COLUMNS = ("cell_id", "class_name", "area_um2", "edge_width_um", "dip_ratio", "roughness", "peak_phase_rad",
                "peak_opd_nm", "dry_mass_pg", "isolated", "touches_edge")


def _profile_statistics(ph: np.ndarray, own: np.ndarray, valid: np.ndarray, px_um: float) -> dict[str, float]:
    """Edge width [um], dip ratio, roughness and peak phase [rad] of one cell: ``ph`` (h, w)
    [rad] a crop around it, ``own`` (h, w) bool its pixels, ``valid`` (h, w) bool its and the
    medium's (see :func:`cell_statistics`)."""
    weight = np.clip(ph, 0, None) * own
    centre = ndi.center_of_mass(weight) if weight.sum() > 0 else ndi.center_of_mass(own)
    r_eq = math.sqrt(own.sum() / math.pi)
    dist = _radius_map(ph.shape, centre)
    ring = valid & ~own & (dist >= r_eq + 1.5 / px_um) & (dist <= r_eq + 3.0 / px_um)
    medium = float(np.median(ph[ring])) if ring.any() else 0.0
    r, prof = radial_profile(ph, centre, valid=valid, r_max_px=r_eq + 3.0 / px_um)
    rim = r_eq + 1.0 / px_um
    central = own & (dist <= max(0.15 * r_eq, 1.0))
    peak = float(np.percentile(ph[own], 99))
    return {"medium_rad": medium, "edge_width_um": edge_width(r, prof, medium, r_peak_max=rim) * px_um,
            "dip_ratio": float(ph[central].mean() / np.nanmax(prof[r <= rim])) if central.any() else math.nan,
            "roughness": outline_roughness(np.where(valid, ph, medium), medium + 0.5 * (peak - medium), centre),
            "peak_phase_rad": peak}


def cell_statistics(phase: np.ndarray, instances: np.ndarray, *, optics: Optics,
                    classes: Mapping[int, str] | None = None, isolation_um: float = 1.0) -> pd.DataFrame:
    """One row per cell of ``instances`` (H, W) int on ``phase`` (H, W) [rad], columns
    :data:`CELL_COLUMNS`.

    Around the phase-weighted centroid, over the cell and the medium (other cells' pixels
    excluded): R_eq = sqrt(area / pi); the azimuthal radial profile (0.5 px rings) gives the
    edge width [um] (:func:`edge_width`, medium = median phase 1.5-3 um outside R_eq, peak
    within R_eq + 1 um) and the central dip ratio (mean phase within 0.15 R_eq, at least
    1 px, of the centroid / profile peak); roughness: :func:`outline_roughness` at half the
    peak phase above the medium; peak phase: 99th percentile inside the cell [rad], also as
    optical path [nm]; dry mass = sum(phase - medium) x pixel area x lambda / (2 pi alpha) [pg]
    over the cell grown by 2.5 um into the medium (the band-limited, defocused cell spreads
    its phase beyond its mask);
    isolated: no other cell within ``isolation_um``; touches_edge: the cell reaches the
    image border. ``classes``: cell id -> class name (else ``class_name`` is empty)."""
    px_um = optics.pixel_size_m * 1e6
    pg_per_rad = optics.pixel_size_m ** 2 * optics.wavelength_m / (2 * math.pi * optics.alpha_m3_per_kg) * 1e15
    pad = int(math.ceil(4.0 / px_um)) + 2
    rows = []
    for cid, sl in enumerate(ndi.find_objects(instances), start=1):
        if sl is None:
            continue
        box = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(sl, phase.shape))
        ph, inst = phase[box].astype(np.float64), instances[box]
        own = inst == cid
        stats = _profile_statistics(ph, own, own | (inst == 0), px_um)
        medium = stats.pop("medium_rad")
        dist = ndi.distance_transform_edt(~own)
        near = dist <= isolation_um / px_um
        grown = (dist <= 2.5 / px_um) & (own | (inst == 0))
        rows.append({"cell_id": cid, "class_name": (classes or {}).get(cid, ""), "area_um2": own.sum() * px_um ** 2,
                     **stats, "peak_opd_nm": stats["peak_phase_rad"] * optics.wavelength_m * 1e9 / (2 * math.pi),
                     "dry_mass_pg": float((ph[grown] - medium).sum()) * pg_per_rad,
                     "isolated": not np.any(near & (inst > 0) & ~own),
                     "touches_edge": any(s.start == 0 or s.stop == n for s, n in zip(sl, phase.shape))})
    return pd.DataFrame(rows, columns=list(CELL_COLUMNS))


# ----------------------------------------------------------------------------- twin and real
@dataclass
class PhaseStatistics:
    """Statistics of a set of phase images.

    name: what was measured (column title in :func:`comparison_table`); cells:
    :func:`cell_statistics` rows of all images plus ``field`` (image index); fields: one row
    per image: ``field``, ``noise_rad``, ``noise_nm``, ``corr_length_um``,
    ``cells_per_1000um2`` (cells found by :func:`find_cells`), ``cells_per_1000um2_given``
    (the instances measured, when given; else NaN); noise: the :class:`Noise` of each image."""

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
    """Measure phase images (each (H, W) [rad], with its ``optics``) alike: noise around
    :func:`foreground_mask`, density of :func:`find_cells`, per-cell statistics on the given
    ``instances`` (e.g. ground truth, with ``classes``: cell id -> class name) or, without
    them, on the cells found."""
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
    """Statistics of ``n_fields`` twin fields (:func:`rbclib.physics.simulate.simulate_field`, seeds
    ``SeedSequence([seed, i])``, ``mixture`` default :data:`EQUAL_MIXTURE`, ``simulate_kw``
    passed on), each reconstructed with its background hologram like notebook 01 and
    measured on its ground-truth instances and classes."""
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
    beside the working directory when rbclib is installed without its repository."""
    checkout = source_checkout()
    return (checkout if checkout is not None else Path.cwd()).resolve().parent / "shared" / "data"


def real_hologram_paths(data_dir: str | Path) -> list[Path]:
    """The holograms of :data:`REAL_OPTICS` present in ``data_dir/holograms`` (empty when absent)."""
    folder = Path(data_dir) / "holograms"
    return [folder / name for name in REAL_OPTICS if (folder / name).is_file()]


def real_statistics(path: str | Path, *, optics: Optics | None = None) -> PhaseStatistics:
    """Statistics of one real hologram, reconstructed without background (numerical
    compensation); ``optics`` default: :data:`REAL_OPTICS` for its file name over the defaults."""
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
    """Side-by-side table: rows = statistics; columns ``<model.name>`` with ``lo`` and ``hi``
    (its range, see :func:`_values`), one column per real hologram (its value), then
    ``real lo`` and ``real hi`` (range over the real holograms). The last rows give the
    density of the measured instances (ground truth for the twin) and the clean cells' count."""
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
    """Per-class medians of the twin's clean cells (index: class name): ``n``, ``dry_mass_pg``,
    ``dry_mass_rel`` (to the discocytes' median), ``roughness``, ``dip_p10`` / ``dip_median``
    / ``dip_p90``, ``edge_width_um``, ``peak_phase_rad``."""
    g = twin.clean.groupby("class_name")
    out = pd.DataFrame({"n": g.size(), "dry_mass_pg": g.dry_mass_pg.median(), "roughness": g.roughness.median(),
                        "dip_p10": g.dip_ratio.quantile(0.1), "dip_median": g.dip_ratio.median(),
                        "dip_p90": g.dip_ratio.quantile(0.9), "edge_width_um": g.edge_width_um.median(),
                        "peak_phase_rad": g.peak_phase_rad.median()})
    ref = out.dry_mass_pg.get("discocyte", math.nan)
    out.insert(2, "dry_mass_rel", out.dry_mass_pg / ref - 1)
    return out.reindex([n for n in EQUAL_MIXTURE if n in out.index])


def roughness_auc(twin: PhaseStatistics) -> float:
    """AUC of outline roughness, echinocytes against discocytes (clean twin cells)."""
    c = twin.clean
    return rank_auc(c.roughness[c.class_name == "echinocyte"], c.roughness[c.class_name == "discocyte"])


def check_targets(twin: PhaseStatistics, reals: list[PhaseStatistics]) -> pd.DataFrame:
    """The realism targets, one row each: ``target``, ``value`` (text), ``needs_real`` (it
    compares with the real holograms), ``passed`` (True, False, or None when it needs real
    holograms and there are none)."""
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
    """Figure (2 x 3): per-image noise, medium power spectra, edge widths, dip-ratio
    distributions, roughness and peak optical path per twin class beside the real holograms."""
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

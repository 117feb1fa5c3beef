"""The statistics of one phase image (H, W) [rad] that the realism benchmark
(:mod:`rbclib.physics.realism`) compares between the twin and real holograms: the medium's
background noise (:func:`background_noise`: robust s.d., power spectrum, correlation length), an
independent cell finder (:func:`find_cells`) and the cell density, and per-cell statistics
(:func:`cell_statistics`: edge width, central dip ratio, outline roughness, peak phase, dry mass)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd
from scipy import fft as sfft
from scipy import ndimage as ndi

from rbclib.core.config import Optics
from rbclib.core.labels import edge_ids
from rbclib.physics.robust_fit import median_and_robust_std, robust_std


def cells_per_1000um2(instances: np.ndarray, *, pixel_size_m: float) -> float:
    """Cell density of an instance map (H, W) [cells per 1000 um^2].

    Cells touching the image edge count one half (about their share inside the field).

    Parameters
    ----------
    instances : numpy.ndarray
        (H, W) integer ids, 0 background.
    pixel_size_m : float
        Pixel size at the sample [m].

    Returns
    -------
    float
        Cells per 1000 um^2.
    """
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

    Attributes
    ----------
    noise_rad : float
        Robust s.d. of the medium after removing the slow background [rad].
    noise_nm : float
        The same as optical path [nm].
    freq_per_um : numpy.ndarray
        (n,) centres of the frequency bins [cycles/um].
    psd_nm2_um2 : numpy.ndarray
        (n,) radially averaged power spectral density of the medium's optical path [nm^2 um^2]
        (its integral over the frequency plane is the variance).
    corr_length_um : float
        Lag at which the medium's autocorrelation falls to 1/e [um].
    """

    noise_rad: float
    noise_nm: float
    freq_per_um: np.ndarray
    psd_nm2_um2: np.ndarray
    corr_length_um: float


def medium_mask(cell_mask: np.ndarray, *, pixel_size_m: float, halo_um: float = 1.5, border_px: int = 16) -> np.ndarray:
    """Medium pixels (H, W) bool: away from the cells and from the image edge.

    Parameters
    ----------
    cell_mask : numpy.ndarray
        (H, W) bool, True on cell pixels.
    pixel_size_m : float
        Pixel size at the sample [m].
    halo_um : float, optional
        Least distance [um] from every cell pixel; default 1.5.
    border_px : int, optional
        Least distance [px] from the image edge (reconstruction rings there); default 16.

    Returns
    -------
    numpy.ndarray
        (H, W) bool, True on the medium.
    """
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
    mean up to ``max_lag_um``).

    Parameters
    ----------
    phase : numpy.ndarray
        (H, W) phase [rad].
    cell_mask : numpy.ndarray
        (H, W) bool, True on cell pixels.
    pixel_size_m : float
        Pixel size at the sample [m].
    wavelength_m : float
        Wavelength [m] (phase to optical path).
    scale_um : float, optional
        Sigma [um] of the Gaussian background average; default 5.
    halo_um : float, optional
        Halo [um] around the cells left out of the medium; default 1.5.
    max_lag_um : float, optional
        Largest lag [um] of the autocorrelation; default 8.
    n_bins : int, optional
        Frequency bins of the power spectrum; default 48.

    Returns
    -------
    Noise
        The noise statistics; all NaN when there is no medium.
    """
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
    """Cell pixels (H, W) bool of ``phase`` (H, W) [rad], holes filled.

    Hysteresis threshold of the phase smoothed by a Gaussian (sigma ``smooth_um``). Against the
    medium's level and robust s.d. (:func:`_medium_level`): the high threshold is Otsu's but at
    least 2 x ``noise_sigmas`` s.d. above the medium, the low one (where cells end)
    ``edge_fraction`` of the way from the medium to it, but at least ``noise_sigmas`` s.d. above.

    Parameters
    ----------
    phase : numpy.ndarray
        (H, W) phase [rad].
    pixel_size_m : float
        Pixel size at the sample [m].
    smooth_um : float, optional
        Sigma [um] of the Gaussian smoothing; default 0.3.
    edge_fraction : float, optional
        Where the low threshold lies between medium and high threshold; default 0.3.
    noise_sigmas : float, optional
        Least distance of the thresholds from the medium, in robust s.d.; default 4.

    Returns
    -------
    numpy.ndarray
        (H, W) bool, True on cell pixels.
    """
    from skimage.filters import apply_hysteresis_threshold, threshold_otsu

    smooth = ndi.gaussian_filter(np.asarray(phase, np.float32), smooth_um / (pixel_size_m * 1e6))
    base, sd = _medium_level(smooth[::2, ::2])
    high = max(float(threshold_otsu(smooth)), base + 2 * noise_sigmas * sd)
    low = base + max(edge_fraction * (high - base), noise_sigmas * sd)
    return ndi.binary_fill_holes(apply_hysteresis_threshold(smooth, low, high))


def find_cells(phase: np.ndarray, *, pixel_size_m: float, min_area_um2: float = 8.0,
               min_separation_um: float = 3.0) -> np.ndarray:
    """Instances (H, W) int32, 1..N, of the cells of ``phase`` (H, W) [rad].

    Independent of :mod:`rbclib.annotate.proposals`: :func:`foreground_mask`, then a watershed
    of its distance transform from maxima at least ``min_separation_um`` apart (and 1 um deep,
    so specks get no seed) splits touching cells; objects below ``min_area_um2`` are dropped.
    Cells touching the image edge are kept (:func:`cell_statistics` flags them).

    Parameters
    ----------
    phase : numpy.ndarray
        (H, W) phase [rad].
    pixel_size_m : float
        Pixel size at the sample [m].
    min_area_um2 : float, optional
        Smallest object kept [um^2]; default 8.
    min_separation_um : float, optional
        Least distance between seeds [um]; default 3.

    Returns
    -------
    numpy.ndarray
        (H, W) int32 instance map, 0 background, ids 1..N.
    """
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
    """Azimuthal mean of ``phase`` around ``centre`` over the ``valid`` pixels, in rings of ``bin_px``.

    Parameters
    ----------
    phase : numpy.ndarray
        (H, W) phase [rad].
    centre : tuple of float
        (y, x) [px].
    valid : numpy.ndarray, optional
        (H, W) bool pixels to average (default all).
    r_max_px : float
        Outer radius [px].
    bin_px : float, optional
        Ring width [px]; default 0.5.

    Returns
    -------
    r : numpy.ndarray
        (n,) ring centres [px].
    mean : numpy.ndarray
        (n,) mean phase per ring, NaN where a ring holds no valid pixel.
    """
    edges = np.arange(0, r_max_px + bin_px, bin_px)
    r = _radius_map(phase.shape, centre)
    keep = (r < edges[-1]) if valid is None else valid & (r < edges[-1])
    which = (r[keep] / bin_px).astype(int)
    sums = np.bincount(which, phase[keep], minlength=len(edges) - 1)
    counts = np.bincount(which, minlength=len(edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 0.5 * (edges[1:] + edges[:-1]), np.where(counts > 0, sums / counts, np.nan)


def edge_width(r: np.ndarray, profile: np.ndarray, medium: float, *, r_peak_max: float | None = None) -> float:
    """10-90 % width of the outer edge of a radial ``profile``.

    The distance (unit of ``r``) between the 90 % and 10 % levels from the profile's peak
    (within ``r_peak_max``) down to ``medium``, first crossings outward from the peak, interpolated.

    Parameters
    ----------
    r : numpy.ndarray
        (n,) radii.
    profile : numpy.ndarray
        (n,) profile values (NaNs left out).
    medium : float
        Level of the medium.
    r_peak_max : float, optional
        Largest radius of the peak (default the last radius).

    Returns
    -------
    float
        Edge width in the unit of ``r``; NaN when the profile does not fall through both levels.
    """
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
    """Roughness of the outline of ``image`` (h, w) at ``level``.

    The longest contour (:func:`skimage.measure.find_contours`), as radius r(theta) around
    ``centre`` resampled at 1 degree, minus its least-squares fit of harmonics 0..``harmonics``.

    Parameters
    ----------
    image : numpy.ndarray
        (h, w) image (a cell's phase crop).
    level : float
        Contour level.
    centre : tuple of float
        (y, x) [px].
    harmonics : int, optional
        Highest harmonic fitted; default 3.

    Returns
    -------
    float
        The residual s.d. / mean radius (~0 for a circle, 0.003 for an ellipse of axis
        ratio 1.1, whose 4th harmonic is left; a/sqrt(2) for r = R (1 + a cos(k theta)), k > 3);
        NaN when there is no contour.
    """
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
    """One row per cell of ``instances`` on ``phase``, columns :data:`CELL_COLUMNS`.

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
    image border.

    Parameters
    ----------
    phase : numpy.ndarray
        (H, W) phase [rad].
    instances : numpy.ndarray
        (H, W) int instance map, 0 background.
    optics : rbclib.core.config.Optics
        Pixel size, wavelength and alpha.
    classes : mapping of int to str, optional
        Cell id -> class name (else ``class_name`` is empty).
    isolation_um : float, optional
        Distance [um] within which another cell makes a cell not isolated; default 1.

    Returns
    -------
    pandas.DataFrame
        One row per cell, columns :data:`CELL_COLUMNS`.
    """
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


"""Where an off-axis hologram's sideband lies: its carrier frequency, found on the
Hann-windowed, smoothed log-magnitude spectrum (step 2 of :mod:`rbclib.physics.holography`),
and the spectrum as a figure shows it."""
from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import scipy.fft as sfft
from scipy import ndimage

from rbclib.core.files import ImageFileError
from rbclib.core.io import check_image


_MIN_PEAK_CONTRAST = 3.0  # sideband peak over the spectrum at its radius, in ln units (x20)


_SATURATED_FRACTION = 1e-3  # warn above this fraction of pixels at the dtype maximum


def float_hologram(hologram: np.ndarray, source: str) -> np.ndarray:
    """``hologram`` checked (:func:`rbclib.core.io.check_image`) as float32.

    A warning names ``source`` when more than 0.1 % of an integer image's pixels are saturated.

    Parameters
    ----------
    hologram : numpy.ndarray
        (H, W) hologram, integer or float.
    source : str
        Name of the image (its file) for messages.

    Returns
    -------
    numpy.ndarray
        (H, W) float32 hologram.

    Raises
    ------
    rbclib.core.files.ImageFileError
        When :func:`rbclib.core.io.check_image` rejects the image.
    """
    arr = check_image(hologram, source)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        n_sat = int(np.count_nonzero(arr == info.max))
        if n_sat > _SATURATED_FRACTION * arr.size:
            warnings.warn(f"{source}: {n_sat} pixel(s) ({100 * n_sat / arr.size:.2f} %) saturated at "
                          f"{info.max}; phase near them is unreliable", RuntimeWarning, stacklevel=3)
    return np.asarray(arr, dtype=np.float32)


def spectrum_image(hologram: np.ndarray) -> np.ndarray:
    """log10 |FFT| of a hologram, zero frequency centred, float32 (H, W) (for display).

    Parameters
    ----------
    hologram : numpy.ndarray
        (H, W) hologram.

    Returns
    -------
    numpy.ndarray
        (H, W) float32 log10 magnitude of the mean-subtracted image's spectrum.
    """
    img = np.asarray(hologram, dtype=np.float32)
    spec = sfft.fftshift(np.abs(sfft.fft2(img - img.mean(), workers=-1)))
    return np.log10(spec + 1e-3).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _sideband_search_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(Hann window (H, W) float32, fy (H, 1), fx (1, W // 2 + 1) [cycles/px], radius |f|
    (H, W // 2 + 1)) of the sideband search on an (H, W) hologram, rows from -1/2 to 1/2, kept
    for the next hologram of that shape (4 of a search's 16 ms; read-only arrays)."""
    win = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    fy = (np.arange(h) - h // 2)[:, None] / h
    fx = np.arange(w // 2 + 1)[None, :] / w
    rho = np.hypot(fy, fx)
    for a in (win, fy, fx, rho):
        a.flags.writeable = False
    return win, fy, fx, rho


def find_sideband(hologram: np.ndarray, *, source: str = "<array>", dc_radius: float = 0.04,
                  smooth_bins: float | None = None) -> tuple[float, float]:
    """Carrier (fy, fx) of one sideband [cycles/px], fx >= 0.

    Parameters
    ----------
    hologram : numpy.ndarray
        (H, W) off-axis hologram.
    source : str, optional
        Name of the image for messages; default ``"<array>"``.
    dc_radius : float, optional
        Radius [cycles/px] of the masked DC disk (the low-frequency autocorrelation
        term, plus the bins on the axes near it); default 0.04.
    smooth_bins : float, optional
        Sigma [bins] of the Gaussian smoothing of the log-magnitude (default 0.4 % of the
        image side, >= 1.5).

    Returns
    -------
    tuple of float
        (fy, fx) carrier [cycles/px], sub-bin refined, fx >= 0.

    Raises
    ------
    rbclib.core.files.ImageFileError
        When no sideband stands out of the spectrum.
    """
    img = float_hologram(hologram, source)
    h, w = img.shape
    win, fy, fx, rho = _sideband_search_grid(h, w)
    spec = np.abs(sfft.rfft2((img - img.mean()) * win, workers=-1))
    logmag = np.log(spec + 1e-6 * max(spec.max(), 1e-12))
    logmag = np.fft.fftshift(logmag, axes=0)  # rows: fy from -1/2 to 1/2
    sigma = smooth_bins if smooth_bins is not None else max(1.5, 0.004 * max(h, w))
    # the same width in cycles/px along both axes (a strip has coarser bins along its short side)
    sigma_yx = (max(0.5, sigma * h / max(h, w)), max(0.5, sigma * w / max(h, w)))
    smooth = ndimage.gaussian_filter(logmag, sigma_yx, mode=("wrap", "nearest"))
    valid = rho > dc_radius
    # the edge streaks of the camera frame run along the axes: mask a few bins there
    axis_bins = max(2, int(round(0.005 * max(h, w))))
    valid &= ~((np.abs(fy * h) < axis_bins) & (rho < 4 * dc_radius))
    valid &= ~((np.abs(fx * w) < axis_bins) & (rho < 4 * dc_radius))
    valid[:, -1] &= (w % 2 == 1)  # Nyquist column appears once only for even w
    score = np.where(valid, smooth, -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(score)), score.shape)
    # a sideband stands out of the spectrum at its own radius (natural images do not:
    # their spectrum falls off with radius about equally in every direction)
    ring = valid & (np.abs(rho - rho[iy, ix]) < max(0.02, 2 * sigma / max(h, w)))
    contrast = float(smooth[iy, ix]) - float(np.median(smooth[ring]))
    if not np.isfinite(contrast) or contrast < _MIN_PEAK_CONTRAST:
        raise ImageFileError(source, "no off-axis sideband in the spectrum (strongest peak only "
                             f"{math.exp(max(contrast, 0)):.1f}x above the spectrum at its spatial frequency); "
                             "is this an off-axis hologram?")
    # sub-bin refinement: parabola through the smoothed log-magnitude
    dy = _parabola(smooth, iy, ix, axis=0)
    dx = _parabola(smooth, iy, ix, axis=1)
    carrier_y = (iy - h // 2 + dy) / h
    carrier_x = (ix + dx) / w
    if carrier_x < 0:  # stay in the half-plane
        carrier_y, carrier_x = -carrier_y, -carrier_x
    return float(carrier_y), float(carrier_x)


def _parabola(arr: np.ndarray, iy: int, ix: int, *, axis: int) -> float:
    n = arr.shape[axis]
    i = iy if axis == 0 else ix
    if i <= 0 or i >= n - 1:
        return 0.0
    if axis == 0:
        a, b, c = arr[i - 1, ix], arr[i, ix], arr[i + 1, ix]
    else:
        a, b, c = arr[iy, i - 1], arr[iy, i], arr[iy, i + 1]
    den = a - 2 * b + c
    if not np.isfinite(den) or den >= 0:
        return 0.0
    return float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))

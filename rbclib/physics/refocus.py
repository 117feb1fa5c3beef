"""Refocusing a reconstructed complex field: angular-spectrum propagation and the autofocus
that picks the distance where the amplitude is least structured (a transparent object is in
focus when its amplitude contrast is smallest: nrefocus's "average gradient")."""
from __future__ import annotations

import numpy as np
import scipy.fft as sfft
from scipy import optimize

from rbclib.core.config import Optics


def angular_spectrum(field: np.ndarray, distance_m: float, optics: Optics) -> np.ndarray:
    """Propagate a complex field by ``distance_m`` [m] in the medium (angular spectrum).

    The field is mirror-padded to reduce wrap-around; evanescent waves are dropped and
    the plane-wave phase n*d/lambda is removed (the mean phase does not move).

    Parameters
    ----------
    field : numpy.ndarray
        (H, W) complex field.
    distance_m : float
        Propagation distance [m].
    optics : rbclib.core.config.Optics
        Wavelength, pixel size and medium index of the set-up.

    Returns
    -------
    numpy.ndarray
        (H, W) complex64 propagated field.
    """
    return Propagator(field, optics).propagate(distance_m)


class Propagator:
    """Angular-spectrum propagation of one field to many distances (FFT done once).

    Parameters
    ----------
    field : numpy.ndarray
        (H, W) complex field; mirror-padded by a quarter of each side before its FFT.
    optics : rbclib.core.config.Optics
        Wavelength, pixel size and medium index of the set-up.
    """

    def __init__(self, field: np.ndarray, optics: Optics):
        h, w = field.shape
        self.shape = (h, w)
        self.pad = (h // 4, w // 4)
        padded = np.pad(field, ((self.pad[0],) * 2, (self.pad[1],) * 2), mode="reflect")
        ph, pw = padded.shape
        self.spectrum = sfft.fft2(padded.astype(np.complex64), workers=-1)
        fy = sfft.fftfreq(ph, d=optics.pixel_size_m)[:, None]
        fx = sfft.fftfreq(pw, d=optics.pixel_size_m)[None, :]
        k = optics.n_medium / optics.wavelength_m
        arg = k ** 2 - fy ** 2 - fx ** 2
        self.propagating = arg > 0
        self.kz_minus_k = (np.sqrt(np.where(self.propagating, arg, 0)) - k).astype(np.float64)

    def propagate(self, distance_m: float) -> np.ndarray:
        """The field propagated by ``distance_m`` (evanescent waves dropped, plane-wave phase removed).

        Parameters
        ----------
        distance_m : float
            Propagation distance [m].

        Returns
        -------
        numpy.ndarray
            (H, W) complex64 propagated field, the padding cut off.
        """
        kernel = np.where(self.propagating, np.exp(2j * np.pi * distance_m * self.kz_minus_k), 0)
        out = sfft.ifft2(self.spectrum * kernel.astype(np.complex64), workers=-1)
        (py, px), (h, w) = self.pad, self.shape
        return out[py:py + h, px:px + w]


def average_gradient(field: np.ndarray) -> float:
    """Autofocus metric: mean magnitude of the amplitude gradient (minimal in focus).

    Parameters
    ----------
    field : numpy.ndarray
        (H, W) complex field.

    Returns
    -------
    float
        Mean gradient magnitude of ``abs(field)`` over its mean amplitude.
    """
    amp = np.abs(field)
    gy, gx = np.gradient(amp)
    return float(np.mean(np.hypot(gy, gx)) / max(float(amp.mean()), 1e-12))


def autofocus(field: np.ndarray, optics: Optics, *, interval_m: tuple[float, float] = (-10e-6, 10e-6),
              n_coarse: int = 21) -> float:
    """Distance [m] that brings ``field`` into focus: the minimum of :func:`average_gradient`
    over ``interval_m`` (coarse grid of ``n_coarse`` steps, then bounded Brent refinement).

    Parameters
    ----------
    field : numpy.ndarray
        (H, W) complex field.
    optics : rbclib.core.config.Optics
        Wavelength, pixel size and medium index of the set-up.
    interval_m : tuple of float, optional
        (lo, hi) distances searched [m]; default -10 um to 10 um.
    n_coarse : int, optional
        Points of the coarse grid over ``interval_m``; default 21.

    Returns
    -------
    float
        Refocusing distance [m]: the refined minimum, or the best grid point when the
        refinement found no lower metric.
    """
    prop = Propagator(field, optics)
    grid = np.linspace(*interval_m, n_coarse)
    values = [average_gradient(prop.propagate(d)) for d in grid]
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, n_coarse - 1)]
    res = optimize.minimize_scalar(lambda d: average_gradient(prop.propagate(d)), bounds=(lo, hi),
                                   method="bounded", options={"xatol": 1e-3 * (interval_m[1] - interval_m[0])})
    return float(res.x) if res.fun <= values[i] else float(grid[i])


MAX_REFOCUS_M = 500e-6
"""Largest refocusing distance accepted: a cell layer 0.5 mm out of focus is far beyond what
an objective's working range and a sample chamber allow (and its phase beyond recovery)."""

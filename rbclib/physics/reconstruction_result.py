"""The result of one hologram's reconstruction (:class:`Reconstruction`): the phase, what the
reconstruction found (carrier, filter radius, sign, compensation, refocusing) and the amplitude,
complex field and medium mask, each made when first asked for."""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from rbclib.core.config import Optics


class Reconstruction:
    """Result of one hologram.

    Amplitude, field and the full-size mask are computed when first asked for.

    Parameters
    ----------
    phase : numpy.ndarray
        (H, W) float32 [rad], medium 0, optically denser cells positive.
    amplitude : numpy.ndarray or callable
        (H, W) float32 amplitude, relative to the background field when one was given, else to
        the median amplitude; or a callable making it (called once, on first use).
    sideband : tuple of float
        (fy, fx) carrier of the sideband used [cycles/px], after the sign choice.
    filter_radius : float
        Radius of the sideband filter [cycles/px].
    sign : int
        +1 or -1 as applied.
    compensation : str
        "background", "numerical" or "none".
    refocus_m : float
        Propagation distance applied [m].
    coarse_mask : numpy.ndarray
        Bool medium mask on a grid of ``mask_step`` px (see :attr:`background_mask`).
    mask_step : int
        Step of the coarse grid [px].
    background_std : float
        Phase standard deviation over the medium pixels [rad].
    unwrapped : bool
        Whether 2-pi jumps were removed.
    optics : rbclib.core.config.Optics
        The optics of the reconstruction.
    """

    def __init__(self, *, phase: np.ndarray, amplitude: Any, sideband: tuple[float, float], filter_radius: float,
                 sign: int, compensation: str, refocus_m: float, coarse_mask: np.ndarray, mask_step: int,
                 background_std: float, unwrapped: bool, optics: Optics):
        """Store the result (see the class for the parameters).

        Notes
        -----
        Twelve keyword-only parameters because the result holds one field per quantity the
        reconstruction produced; :class:`rbclib.physics.holography.Reconstructor` fills them all in one call.
        """
        self.phase = phase
        self._amplitude = amplitude  # array or a callable making it
        self.sideband = sideband
        self.filter_radius = filter_radius
        self.sign = sign
        self.compensation = compensation
        self.refocus_m = refocus_m
        self._coarse_mask = coarse_mask
        self.mask_step = mask_step
        self.background_std = background_std
        self.unwrapped = unwrapped
        self.optics = optics

    @functools.cached_property
    def amplitude(self) -> np.ndarray:
        """(H, W) float32 amplitude: relative to the background field when one was given, else to
        the median amplitude (made on first use).

        Returns
        -------
        numpy.ndarray
            (H, W) float32 amplitude.
        """
        amp = self._amplitude() if callable(self._amplitude) else self._amplitude
        self._amplitude = None
        return np.asarray(amp, dtype=np.float32)

    @functools.cached_property
    def field(self) -> np.ndarray:
        """(H, W) complex64 compensated (and refocused) object field, ``amplitude * exp(i * phase)``.

        Returns
        -------
        numpy.ndarray
            (H, W) complex64 field.
        """
        return (self.amplitude * np.exp(1j * self.phase)).astype(np.complex64)

    @functools.cached_property
    def background_mask(self) -> np.ndarray:
        """(H, W) bool, pixels taken as medium (cells and their band-limited halo excluded, on a
        grid of ``mask_step`` px); :attr:`background_std` is the phase s.d. over them.

        Returns
        -------
        numpy.ndarray
            (H, W) bool mask, True on the medium.
        """
        s = self.mask_step
        full = np.repeat(np.repeat(self._coarse_mask, s, axis=0), s, axis=1)
        return full[: self.phase.shape[0], : self.phase.shape[1]]

"""The twin's microscope and camera: true phase -> off-axis hologram and background hologram.

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

Per-field settings are drawn from ranges (:func:`draw`) checked against :data:`SETTING_LIMITS`.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import fft as sfft
from scipy import ndimage as ndi

from rbclib.core.config import Optics

CARRIER_CYCLES_PER_PX: tuple[float, float] = (0.21, 0.26)
"""Default carrier (fy, fx) [cycles/px]: |k| = 0.334 c/px, 2.3x the imaging cut-off
NA/lambda (0.147 c/px at NA 0.7), so the +-1 orders sit clear of the DC term and inside
the Nyquist square (0.26 + 0.147 < 0.5). A modelling choice."""


# ---------------------------------------------------------------------------------------
# Hologram formation
# ---------------------------------------------------------------------------------------
def draw(rng: np.random.Generator, value: float | Sequence[float], *, log: bool = False) -> float:
    """One value of a per-field setting: a number pins it, a (low, high) pair draws it
    uniformly (log-uniformly with ``log=True``).

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the draw.
    value : float or sequence of float
        A number, or a (low, high) pair.
    log : bool, optional
        Draw log-uniformly (when low > 0); default False.

    Returns
    -------
    float
        The pinned or drawn value.
    """
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
    """:func:`check_range` of setting ``name`` against :data:`SETTING_LIMITS`.

    Parameters
    ----------
    name : str
        Key of :data:`SETTING_LIMITS`.
    value : float or sequence of float
        A number or a (low, high) pair.
    label : str, optional
        Names the setting in errors (default ``name``).

    Raises
    ------
    ValueError
        When ``value`` lies outside the setting's limits.
    """
    lo, hi, unit = SETTING_LIMITS[name]
    check_range(label or name, value, lo, hi, unit)


def check_range(name: str, value: float | Sequence[float], lo: float, hi: float, unit: str = "") -> None:
    """Raise ValueError naming ``name`` unless ``value`` (a number or a (low, high) pair) lies in [lo, hi].

    Parameters
    ----------
    name : str
        Name of the setting in the error.
    value : float or sequence of float
        A number or a (low, high) pair with low <= high.
    lo, hi : float
        Allowed range, bounds included.
    unit : str, optional
        Unit shown in the error; default none.

    Raises
    ------
    ValueError
        When ``value`` is not finite, not in [lo, hi], or a pair not in order.
    """
    values = [value] if isinstance(value, (int, float, np.integer, np.floating)) else list(value)
    ok = len(values) in (1, 2) and all(isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)
                                       and lo <= v <= hi for v in values) and values == sorted(values)
    if not ok:
        raise ValueError(f"{name}={value!r} is outside the allowed range {lo:g}..{hi:g}{' ' + unit if unit else ''} "
                         "(a number, or low,high with low <= high)")


@dataclass(frozen=True)
class HologramSettings:
    """Camera and interferometer parameters.

    A pair (low, high) is drawn per field (domain randomisation), a number pins the setting.
    Assumptions unless cited.

    Attributes
    ----------
    carrier : tuple of float or None
        (fy, fx) [cycles/px] of the +1 order, or None: drawn per field with magnitude
        ``carrier_magnitude`` and angle ``carrier_angle_deg``.
    carrier_magnitude : tuple of float
        Range of the drawn carrier's magnitude [cycles/px].
    carrier_angle_deg : tuple of float
        Range of the drawn carrier's angle [deg] (+-, from the x axis), inside the Nyquist
        square with room for the pupil.
    na : float or tuple of float
        The recording objective's NA, drawn per field (0.55-0.75: the 40x/0.65-0.75 objectives
        usual for RBC DHM, Rappaz et al. 2008; the reconstruction's filter follows
        ``Optics.numerical_aperture``, the user's stated value).
    coherence : tuple of float
        Fringe contrast factor gamma (partial coherence, vibration).
    beam_ratio : tuple of float
        |R|/|O| (visibility 2*gamma*beta/(1+beta^2) < 1).
    tilt_rad, curvature_rad : float
        Peak low-order aberration phase across the field [rad].
    parasitic : float
        Relative amplitude of a parasitic fringe pattern (0 disables).
    noise_nm : float or tuple of float
        Optical-path s.d. [nm] of the sample's coherent noise (speckle of the slide, medium and
        optics, spatially correlated over ``noise_corr_um``), drawn log-uniformly; 3-25 nm, with
        the camera's noise, gives ~4-40 nm in the reconstructed background, bracketing the real
        RBC holograms' 20-25 nm (``benchmarks/bench_realism.py``).
    noise_corr_um : float or tuple of float
        Correlation length of the coherent noise [um].
    dust : tuple of int
        Count of out-of-focus dust particles (0.5-2.5 um) 15-80 um from the object plane,
        whose diffraction rings are the parasitic ring fringes of real recordings.
    envelope_waist : tuple of float
        Gaussian beam waist over the half field (illumination gradient).
    full_well_e, read_noise_e : float
        Sensor electrons (typical scientific CMOS).
    bit_depth : int
        8 or 12 (12-bit stored in uint16).

    Raises
    ------
    ValueError
        When ``bit_depth`` is not 8 or 12, ``carrier`` is zero or outside the Nyquist square,
        or a drawn setting lies outside :data:`SETTING_LIMITS`.
    """

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
        """The field's carrier (fy, fx) [cycles/px]: the pinned one, or a random one.

        Parameters
        ----------
        rng : numpy.random.Generator
            Source of the draw.

        Returns
        -------
        tuple of float
            (fy, fx) [cycles/px].
        """
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
    """Complex transmission (H, W) of spatially correlated coherent noise.

    Phase of s.d. ``sigma_rad`` and relative amplitude of s.d. ``sigma_rad``/2, both Gaussian
    random fields with a Gaussian correlation of ``corr_px`` pixels (the speckle of slide,
    medium and optics).

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the random fields.
    shape : tuple of int
        (H, W) of the field.
    sigma_rad : float
        Phase s.d. [rad].
    corr_px : float
        Correlation length [px].

    Returns
    -------
    numpy.ndarray
        (H, W) complex64 transmission.
    """
    def field() -> np.ndarray:
        f = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), corr_px, mode="wrap")
        return f / (float(f.std()) + 1e-12)
    return ((1 + 0.5 * sigma_rad * field()) * np.exp(1j * sigma_rad * field())).astype(np.complex64)


def dust_rings(rng: np.random.Generator, shape: tuple[int, int], n: int, *, optics: Optics, na: float) -> np.ndarray:
    """Complex transmission (H, W) of ``n`` absorbing dust particles.

    The particles (0.5-2.5 um, opacity 0.2-0.8) lie on one plane 15-80 um out of focus,
    propagated to the object plane: ring fringes.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of the draws.
    shape : tuple of int
        (H, W) of the field.
    n : int
        Number of particles.
    optics : rbclib.core.config.Optics
        Wavelength, pixel size and medium index.
    na : float
        Numerical aperture of the recording pupil.

    Returns
    -------
    numpy.ndarray
        (H, W) complex64 transmission.
    """
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
    """What one field drew from the ranges (recorded in ``fields.csv``).

    Attributes
    ----------
    carrier : tuple of float
        (fy, fx) [cycles/px].
    na : float
        Recording NA.
    defocus_um : float
        Defocus [um].
    noise_nm : float
        Coherent noise s.d. [nm].
    noise_corr_um : float
        Coherent noise correlation [um].
    dust : int
        Dust particles.
    coherence : float
        Fringe contrast gamma.
    beam_ratio : float
        Beam ratio |R|/|O|.
    """

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
        """Draw every per-field setting of ``settings`` (and the defocus range [um]).

        Parameters
        ----------
        rng : numpy.random.Generator
            Source of the draws.
        settings : HologramSettings
            The ranges (or pinned values).
        defocus_um : float or sequence of float
            Defocus [um]: a number or a (low, high) range.

        Returns
        -------
        FieldConditions
            The field's drawn conditions.
        """
        return cls(carrier=settings.draw_carrier(rng), na=draw(rng, settings.na), defocus_um=draw(rng, defocus_um),
                   noise_nm=draw(rng, settings.noise_nm, log=True), noise_corr_um=draw(rng, settings.noise_corr_um),
                   dust=int(rng.integers(settings.dust[0], settings.dust[1] + 1)),
                   coherence=draw(rng, settings.coherence), beam_ratio=draw(rng, settings.beam_ratio))


def form_holograms(phase: np.ndarray, rng: np.random.Generator, *, optics: Optics, settings: HologramSettings,
                   conditions: FieldConditions, attenuation: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Camera hologram and matching background hologram of an object phase [rad].

    The object wave carries the sample's coherent noise and dust rings (they come with the
    slide, so the background hologram does not hold them); both images share the reference,
    envelopes, aberrations (tilt, curvature, astigmatism), fringe contrast and parasitic
    fringes; camera noise is drawn independently.
    Camera: Poisson shot noise (approximated by a Gaussian of equal variance, exact enough
    at the >= 100 electrons per pixel of these exposures) plus Gaussian read noise, the
    brightest background pixel at 80 % of full well, quantised to ``settings.bit_depth``.

    Parameters
    ----------
    phase : numpy.ndarray
        (H, W) object phase [rad].
    rng : numpy.random.Generator
        Source of the noise and the drawn aberrations.
    optics : rbclib.core.config.Optics
        Wavelength, pixel size and medium index.
    settings : HologramSettings
        Camera and interferometer parameters.
    conditions : FieldConditions
        The field's drawn carrier, defocus (angular-spectrum propagation in the
        medium), coherent noise, dust and fringe visibility.
    attenuation : numpy.ndarray, optional
        (H, W) amplitude attenuation (optical depth/2, >= 0) per pixel, or None.

    Returns
    -------
    hologram, background : numpy.ndarray
        Two uint8 (8-bit) or uint16 (12-bit) images of ``phase.shape``.
    """
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

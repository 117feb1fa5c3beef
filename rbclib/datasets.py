"""Phase normalisation and training datasets of phase/mask patches.

Phase is mapped to [-1, 1] by a fixed physical range (not per-image min-max), so that
absolute phase, which tells a spherocyte from a discocyte, survives normalisation.
"""
from __future__ import annotations

import numpy as np

# Fixed physical phase range [rad] mapped to [-1, 1]. At 682.5 nm and dn ~ 0.066 a 4 um
# thick spherocyte peaks near 2.4 rad; the margin keeps noise and thicker cells in range.
PHASE_RANGE_RAD: tuple[float, float] = (-0.5, 3.5)


def normalise_phase(phase: np.ndarray, phase_range: tuple[float, float] = PHASE_RANGE_RAD) -> np.ndarray:
    """Phase [rad] -> float32 in [-1, 1] (values outside the range are clipped)."""
    lo, hi = phase_range
    out = (np.asarray(phase, dtype=np.float32) - lo) / (hi - lo) * 2.0 - 1.0
    return np.clip(out, -1.0, 1.0)


def denormalise_phase(x: np.ndarray, phase_range: tuple[float, float] = PHASE_RANGE_RAD) -> np.ndarray:
    """Inverse of :func:`normalise_phase` (for values that were inside the range)."""
    lo, hi = phase_range
    return ((np.asarray(x, dtype=np.float32) + 1.0) / 2.0 * (hi - lo) + lo).astype(np.float32)

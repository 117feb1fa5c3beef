"""Compiled per-pixel passes of the phase reconstruction (numba, one thread, no GIL).

Each kernel does in one loop what took a chain of numpy passes over a whole image (a
temporary array each), which made most of a no-background reconstruction's time beyond its
FFTs. Numbers: ``benchmarks/bench_reconstruct.py`` and docs/performance.md.
Compiled on first use and cached on disk (``cache=True``), so only the first call of a fresh
installation pays the compilation (seconds).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

_PI32 = np.float32(np.pi)  # numpy compares float32 differences with np.pi in float32

JUMP_BLOCK_PX = 8
"""Side of the blocks :func:`jump_blocks` marks: 8, so that a block row's 8 flags are one 64-bit word."""


@njit(cache=True, nogil=True)
def subtract_poly_and_wrap(phase: np.ndarray, coef: np.ndarray, y: np.ndarray, x: np.ndarray,
                           order: int) -> None:
    """In place: phase (H, W) float32 [rad] <- phase - P(y_i, x_j), wrapped into [-pi, pi).

    P is the polynomial of total order ``order`` with coefficients ``coef`` in the order
    x^i y^(k-i) for k = 0..order, i = 0..k (``rbclib.physics.robust_fit.poly_terms``).

    Parameters
    ----------
    phase : numpy.ndarray
        (H, W) float32 phase [rad], overwritten.
    coef : numpy.ndarray
        Coefficients of P, in the order above.
    y : numpy.ndarray
        (H,) coordinates of the rows.
    x : numpy.ndarray
        (W,) coordinates of the columns.
    order : int
        Total order of P.
    """
    h, w = phase.shape
    powers = np.empty((order + 1, w))  # x ** p
    for j in range(w):
        powers[0, j] = 1.0
        for p in range(1, order + 1):
            powers[p, j] = powers[p - 1, j] * x[j]
    row_coef = np.empty(order + 1)  # the row's polynomial in x
    surface = np.empty(w)
    two_pi = 2 * math.pi
    for i in range(h):
        row_coef[:] = 0.0
        n = 0
        for k in range(order + 1):
            for p in range(k + 1):
                row_coef[p] += coef[n] * y[i] ** (k - p)
                n += 1
        surface[:] = row_coef[0]
        for p in range(1, order + 1):
            c = row_coef[p]
            for j in range(w):
                surface[j] += c * powers[p, j]
        for j in range(w):
            v = phase[i, j] - surface[j]
            phase[i, j] = v - two_pi * math.floor((v + math.pi) / two_pi)


@njit(cache=True, nogil=True)
def jump_blocks(phase: np.ndarray) -> np.ndarray:
    """Blocks of 8 x 8 px near a phase jump of more than pi.

    The blocks of 8 x 8 px (:data:`JUMP_BLOCK_PX`) of ``phase`` within one block (8-connected)
    of a block holding the first pixel of a pair of neighbours (down or right) whose phase
    differs by more than pi (float32 pi, as numpy compares float32).
    One pass, 8 flags read as one 64-bit word: 8x faster than numpy's differences and
    reductions; the growth replaces ``scipy.ndimage.binary_dilation`` on the grid.

    Parameters
    ----------
    phase : numpy.ndarray
        (H, W) phase [rad].

    Returns
    -------
    numpy.ndarray
        Bool (ceil(H / 8), ceil(W / 8)): True on the marked blocks.
    """
    h, w = phase.shape
    nby, nbx = -(-h // JUMP_BLOCK_PX), -(-w // JUMP_BLOCK_PX)
    hits = np.zeros((nby, nbx), np.bool_)
    jumps = np.zeros(nbx * JUMP_BLOCK_PX, np.uint8)  # one row's flags, padded to whole blocks
    words = jumps.view(np.uint64)  # a block's 8 flags read as one word
    for i in range(h):
        row = phase[i]
        for j in range(w - 1):
            jumps[j] = abs(row[j + 1] - row[j]) > _PI32
        jumps[w - 1] = 0
        if i + 1 < h:
            below = phase[i + 1]
            for j in range(w):
                jumps[j] |= abs(below[j] - row[j]) > _PI32
        bi = i // JUMP_BLOCK_PX
        for b in range(nbx):
            hits[bi, b] |= words[b] != 0
    grown = np.zeros((nby, nbx), np.bool_)
    for bi in range(nby):
        for b in range(nbx):
            if hits[bi, b]:
                grown[max(bi - 1, 0):bi + 2, max(b - 1, 0):b + 2] = True
    return grown


@njit(cache=True, nogil=True)
def block_means(image: np.ndarray, size: int) -> np.ndarray:
    """Means of ``image`` over blocks of ``size`` x ``size`` px.

    The rows and columns beyond whole blocks are left out; 6x faster than numpy's mean over
    the reshaped axes on a 297 x 297 complex field (blocks of 5 px).

    Parameters
    ----------
    image : numpy.ndarray
        (H, W) float or complex image.
    size : int
        Side of the blocks [px].

    Returns
    -------
    numpy.ndarray
        (H // size, W // size) block means, in the dtype of ``image``.
    """
    by, bx = image.shape[0] // size, image.shape[1] // size
    out = np.zeros((by, bx), image.dtype)
    for i in range(by * size):
        row = image[i]
        sums = out[i // size]
        for b in range(bx):
            s = row[b * size]
            for k in range(1, size):
                s += row[b * size + k]
            sums[b] += s
    return out / (size * size)


_SELECT_BINS = 2048  # histogram bins per pass of the selection
_SELECT_SORT = 2048  # values few enough to sort


@njit(cache=True, nogil=True)
def _middle_values(values: np.ndarray) -> tuple[float, float]:
    """The values of ranks (n - 1) // 2 and n // 2 (0-based) of ``values`` (1-D), exactly; NaNs
    when a value is NaN or there is none (as ``np.median``). Each pass histograms the values
    and keeps those in the bins holding the two ranks (the bin is monotonic in the value),
    until few enough are left to sort."""
    if values.size == 0:
        return math.nan, math.nan
    k1, k2 = (values.size - 1) // 2, values.size // 2
    left = values
    lo = hi = values[0]
    for v in values:
        if v != v:
            return math.nan, math.nan
        lo, hi = min(lo, v), max(hi, v)
    while left.size > _SELECT_SORT:
        if left is not values:
            lo, hi = left.min(), left.max()
        if lo == hi:
            return lo, lo
        scale = (_SELECT_BINS - 1) / (float(hi) - float(lo))
        if not 0.0 < scale < math.inf:  # a range that overflows, or of subnormals: sort
            break
        counts = np.zeros(_SELECT_BINS, np.int64)
        for v in left:
            counts[min(int((float(v) - float(lo)) * scale), _SELECT_BINS - 1)] += 1
        below = 0  # values in the bins before ``first``
        first = 0
        while below + counts[first] <= k1:
            below += counts[first]
            first += 1
        last = first
        upto = below + counts[first]
        while upto <= k2:
            last += 1
            upto += counts[last]
        if upto - below == left.size:  # the two ranks in the extreme bins: sort
            break
        picked = np.empty(upto - below, values.dtype)
        m = 0
        for v in left:
            b = min(int((float(v) - float(lo)) * scale), _SELECT_BINS - 1)
            if first <= b <= last:
                picked[m] = v
                m += 1
        left, k1, k2 = picked, k1 - below, k2 - below
    ordered = np.sort(left)
    return ordered[k1], ordered[k2]


@njit(cache=True, nogil=True)
def median(values: np.ndarray) -> float:
    """The value ``np.median`` gives for ``values``.

    2x faster on 4 k values, 4-6x on the 25 k-90 k values of a reconstruction's robust
    statistics (exact selection, :func:`_middle_values`).

    Parameters
    ----------
    values : numpy.ndarray
        1-D values.

    Returns
    -------
    float
        The middle value; the mean of the two middle values, in their dtype, for an even
        count; NaN when empty.
    """
    a, b = _middle_values(values)
    if values.size % 2:
        return float(a)
    return float((values.dtype.type(a) + values.dtype.type(b)) * values.dtype.type(0.5))


@njit(cache=True, nogil=True)
def median_and_mad(values: np.ndarray) -> tuple[float, float]:
    """(median, median absolute deviation) of ``values``, as ``np.median`` computes them (:func:`median`).

    Parameters
    ----------
    values : numpy.ndarray
        1-D values.

    Returns
    -------
    tuple of float
        (median, median absolute deviation); NaNs when empty.
    """
    med = median(values)
    return med, median(np.abs(values - values.dtype.type(med)))


MAD_TO_STD = 1.482602218505602
"""1 / Phi^-1(3/4): the median absolute deviation of a normal sample times this is its s.d."""


@njit(cache=True, nogil=True, fastmath=True)
def masked_normal_equations(terms_t: np.ndarray, values: np.ndarray,
                            weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted normal equations (A^T W A, A^T W b) of a least-squares fit.

    A = terms_t.T, b = values, W = diag(weight), without copying the weighted rows; the sums
    are reassociated (vectorised).

    Parameters
    ----------
    terms_t : numpy.ndarray
        (K, N) transposed design matrix.
    values : numpy.ndarray
        (N,) values b.
    weight : numpy.ndarray
        (N,) weights, the diagonal of W.

    Returns
    -------
    ata : numpy.ndarray
        (K, K) A^T W A.
    atb : numpy.ndarray
        (K,) A^T W b.
    """
    k, n = terms_t.shape
    ata = np.empty((k, k))
    atb = np.empty(k)
    for a in range(k):
        s = 0.0
        for i in range(n):
            s += weight[i] * terms_t[a, i] * values[i]
        atb[a] = s
        for b in range(a + 1):
            s = 0.0
            for i in range(n):
                s += weight[i] * terms_t[a, i] * terms_t[b, i]
            ata[a, b] = ata[b, a] = s
    return ata, atb


@njit(cache=True, nogil=True)
def robust_inliers(values: np.ndarray, n_sigma: float, iterations: int) -> np.ndarray:
    """The ``values`` within ``n_sigma`` robust s.d. of the median.

    The statistics are taken again over the kept values up to ``iterations`` times (stops when
    the mask no longer changes or would keep under 5 %). Compared in the values' dtype, as numpy
    compares a float32 array with a Python float.

    Parameters
    ----------
    values : numpy.ndarray
        (N,) values.
    n_sigma : float
        Inlier band in robust s.d. (:data:`MAD_TO_STD` x MAD).
    iterations : int
        Most passes.

    Returns
    -------
    numpy.ndarray
        Bool (N,): True on the kept values.
    """
    n = values.size
    mask = np.ones(n, np.bool_)
    for _ in range(iterations):
        med, mad = median_and_mad(values[mask])
        centre = values.dtype.type(med)
        limit = values.dtype.type(n_sigma * (MAD_TO_STD * mad + 1e-9))
        new = np.abs(values - centre) < limit
        if new.sum() < 0.05 * n or (new == mask).all():
            break
        mask = new
    return mask

"""The compiled kernels of the reconstruction give what the numpy passes they replace give."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage

from rbclib.physics import phase_kernels as K
from rbclib.physics.robust_fit import eval_poly, iterative_fit, poly_terms


def _numpy_wrap(phase):
    return phase - (2 * np.pi) * np.floor((phase + np.pi) / (2 * np.pi))


@pytest.mark.parametrize("order", [1, 2, 3])
def test_subtract_poly_and_wrap_matches_numpy(order):
    rng = np.random.default_rng(order)
    h, w = 37, 53  # not multiples of anything
    y, x = (np.arange(h) - h / 2) / (h / 2), (np.arange(w) - w / 2) / (w / 2)
    coef = rng.normal(0, 5, (order + 1) * (order + 2) // 2)
    phase = rng.uniform(-np.pi, np.pi, (h, w)).astype(np.float32)
    expected = _numpy_wrap(phase.astype(np.float64) - eval_poly(coef, y, x, order))
    got = phase.copy()
    K.subtract_poly_and_wrap(got, coef, y, x, order)
    assert got.dtype == np.float32
    assert np.all((got >= -np.pi) & (got < np.pi + 1e-6))
    diff = np.abs(got - expected)
    assert np.minimum(diff, 2 * np.pi - diff).max() < 1e-5  # the same angle, to float32 rounding


def _numpy_jump_blocks(phase):
    h, w = phase.shape
    jumps = np.zeros((-(-h // 8) * 8, -(-w // 8) * 8), bool)
    jumps[:h - 1, :w] |= np.abs(np.diff(phase, axis=0)) > np.pi
    jumps[:h, :w - 1] |= np.abs(np.diff(phase, axis=1)) > np.pi
    blocks = jumps.reshape(jumps.shape[0] // 8, 8, jumps.shape[1] // 8, 8).any(axis=(1, 3))
    return ndimage.binary_dilation(blocks, structure=np.ones((3, 3), bool))


@pytest.mark.parametrize("shape", [(64, 64), (61, 77), (9, 130)])
def test_jump_blocks_matches_numpy(shape):
    rng = np.random.default_rng(sum(shape))
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    smooth = 0.02 * xx + 0.01 * yy
    cell = 6 * np.exp(-((yy - shape[0] / 2) ** 2 + (xx - shape[1] / 3) ** 2) / 30)  # wraps twice
    phase = np.angle(np.exp(1j * (smooth + cell))).astype(np.float32)
    phase[rng.random(shape) < 0.002] += 3.5  # isolated spikes as well
    got = K.jump_blocks(phase)
    assert got.any()
    np.testing.assert_array_equal(got, _numpy_jump_blocks(phase))
    assert not K.jump_blocks(smooth.astype(np.float32)).any()


_values = st.one_of(
    hnp.arrays(np.float64, st.integers(1, 6000), elements=st.floats(-1e6, 1e6)),
    hnp.arrays(np.float64, st.integers(1, 6000), elements=st.floats(allow_nan=False, allow_infinity=False)),
    hnp.arrays(np.float32, st.integers(1, 6000), elements=st.floats(-1e3, 1e3, width=32)),
    hnp.arrays(np.float64, st.integers(1, 6000), elements=st.sampled_from([0.0, 1.0, 2.5, -7.0])),  # ties
)


@settings(max_examples=150, deadline=None)
@given(_values)
def test_median_and_mad_equal_numpy_exactly(values):
    with np.errstate(over="ignore"):  # |v - median| beyond the float range: inf, for both
        med = np.median(values)
        mad = np.median(np.abs(values - med))
    assert K.median(values) == float(med)
    assert K.median_and_mad(values) == (float(med), float(mad))


def test_median_large_skewed_and_nan():
    rng = np.random.default_rng(0)
    spectrum = np.abs(rng.standard_normal(90_000) + 1j * rng.standard_normal(90_000)).astype(np.float32)
    spectrum[17] = 1e7  # one sideband peak: nearly all values in the first histogram bin
    assert K.median(spectrum) == float(np.median(spectrum))
    halves = np.concatenate([np.zeros(5000), np.ones(5000)])  # ranks in the two extreme bins
    assert K.median(halves) == 0.5
    assert np.isnan(K.median(np.array([1.0, np.nan, 3.0])))


def test_block_means_match_numpy():
    rng = np.random.default_rng(1)
    field = (rng.standard_normal((23, 31)) + 1j * rng.standard_normal((23, 31))).astype(np.complex64)
    expected = field[:20, :30].reshape(4, 5, 6, 5).mean(axis=(1, 3))
    np.testing.assert_allclose(K.block_means(field, 5), expected, rtol=1e-5, atol=1e-6)


def test_masked_normal_equations_and_robust_fit():
    rng = np.random.default_rng(2)
    y, x = np.meshgrid(np.linspace(-1, 1, 50), np.linspace(-1, 1, 60), indexing="ij")
    terms = np.stack([t.ravel() for t in poly_terms(y, x, 2)], axis=1)
    weight = (rng.random(len(terms)) < 0.7).astype(np.float64)
    values = rng.normal(size=len(terms))
    ata, atb = K.masked_normal_equations(np.ascontiguousarray(terms.T), values, weight)
    kept = terms[weight > 0]
    np.testing.assert_allclose(ata, kept.T @ kept, rtol=1e-10)
    np.testing.assert_allclose(atb, kept.T @ values[weight > 0], rtol=1e-10)
    # a surface under 20 % of strong outliers (cells) is found again
    true = np.array([0.3, -1.0, 2.0, 0.5, -0.7, 1.2])
    values = terms @ true + rng.normal(0, 0.02, len(terms))
    cells = rng.random(len(terms)) < 0.2
    values[cells] += rng.uniform(1, 4, cells.sum())
    valid = np.ones(len(terms), bool)
    coef, mask = iterative_fit(terms, values, valid, valid)
    np.testing.assert_allclose(coef, true, atol=0.01)
    assert mask[cells].mean() < 0.05 and mask[~cells].mean() > 0.95


def test_robust_inliers_match_the_numpy_loop():
    rng = np.random.default_rng(3)
    phase = rng.normal(0, 0.1, 25_600).astype(np.float32)
    phase[:3000] += rng.uniform(0.5, 4, 3000).astype(np.float32)  # cells
    mask = np.ones(phase.size, bool)
    for _ in range(4):  # the loop it replaces, in numpy
        med = np.median(phase[mask])
        sigma = K.MAD_TO_STD * np.median(np.abs(phase[mask] - med))
        new = np.abs(phase - float(med)) < 3.0 * (float(sigma) + 1e-9)
        if new.sum() < 0.05 * phase.size or np.array_equal(new, mask):
            break
        mask = new
    got = K.robust_inliers(phase, 3.0, 4)
    np.testing.assert_array_equal(got, mask)
    assert got[:3000].mean() < 0.3  # most cell pixels left out


def test_jump_blocks_threshold_is_pi():
    phase = np.zeros((64, 64), np.float32)
    phase[10, 10] = 3.1  # a step just under pi: no jump
    phase[40, 50] = 3.2  # just over: a jump
    got = K.jump_blocks(phase)
    np.testing.assert_array_equal(got, _numpy_jump_blocks(phase))
    assert got[40 // 8, 50 // 8] and not got[10 // 8, 10 // 8]


def test_median_of_nothing_is_nan():
    assert np.isnan(K.median(np.zeros(0)))
    assert all(np.isnan(v) for v in K.median_and_mad(np.zeros(0, np.float32)))


def test_median_of_subnormal_and_huge_ranges():
    tiny = np.zeros(5000)
    tiny[::3] = 5e-324  # the range's reciprocal overflows
    huge = np.full(2049, 1e302)
    huge[:3] = -1.79e308  # the range itself overflows
    for values in (tiny, huge, np.concatenate([tiny, [1e300]])):
        assert K.median(values) == float(np.median(values))

"""The int8 weight (one scale per row) and its matmul, with float activations and with
activations quantized to int8 (exact integer sums on every kernel path), against NumPy."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import seqkern
from seqkern import _native
from seqkern.reference import ternary as ref
from seqkern.ternary import Int8Weight, int8_matmul


@pytest.fixture(params=["scalar", "avx2", "avx512"])
def isa(request, simd_path):
    """Runs a test on each SIMD path this CPU has."""
    active = simd_path(request.param)
    if active != request.param or seqkern.build_info()["simd"] != request.param:
        pytest.skip(f"this CPU has no {request.param} path (runs {active})")
    return active


def matmul_tolerance(x, weight, dtype):
    """Float rounding of K products: relative eps * K on the sum of |terms| (a loose bound
    on the 64-chain pairwise sum, still orders of magnitude below a wrong code's effect)."""
    eps = np.finfo(dtype).eps
    k = x.shape[-1]
    terms = np.abs(x.astype(np.float64)) @ np.abs(weight.dequantize(np.float64)).T
    return 2 * eps * (k**0.5 + 4) * terms + 1e-30


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_quantize_matches_reference_with_ties_zero_rows_and_extremes(rng, dtype):
    W = rng.standard_normal((37, 301)).astype(dtype)
    W[3] = 0.0  # a zero row: scale 0, codes 0
    W[5, :20] = np.arange(20) * 0.5  # absmax 9.5: code steps of 9.5 / 127, ties at 0.5
    W[7, 0] = -1e30  # one huge weight: the rest of its row rounds to 0
    w = Int8Weight.from_float(W)
    codes, scales = ref.int8_quantize_rows(W)
    np.testing.assert_array_equal(w.codes, codes)
    np.testing.assert_array_equal(w.scales, scales)
    assert w.scales[3] == 0 and not w.codes[3].any()
    assert w.codes[7, 0] == -127 and not w.codes[7, 1:].any()
    assert np.abs(w.codes).max() == 127
    # Each weight is within half a step of its code.
    err = np.abs(w.dequantize(np.float64) - W.astype(np.float64))
    assert np.all(err <= w.scales.astype(np.float64)[:, None] * (0.5 + 1e-6))


def test_quantize_float32_and_float64_agree(rng):
    W = rng.standard_normal((20, 100)).astype(np.float32)
    a, b = Int8Weight.from_float(W), Int8Weight.from_float(W.astype(np.float64))
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.scales, b.scales)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "m, n, k",
    [(1, 1, 1), (1, 5, 63), (1, 200, 64), (2, 17, 65), (3, 100, 257), (7, 33, 1000), (1, 3, 2560)],
)
def test_matmul_matches_reference_on_every_path(rng, isa, dtype, m, n, k):
    W = rng.standard_normal((n, k))
    w = Int8Weight.from_float(W)
    x = rng.standard_normal((m, k)).astype(dtype)
    y = int8_matmul(x, w, activations="float")
    assert y.shape == (m, n) and y.dtype == dtype
    want = ref.int8_matmul(x.astype(np.float64), w.codes, w.scales, "float")
    assert np.all(np.abs(y - want) <= matmul_tolerance(x, w, dtype))


def test_paths_agree(rng, simd_path):
    w = Int8Weight.from_float(rng.standard_normal((50, 700)))
    x = rng.standard_normal((3, 700)).astype(np.float32)
    simd_path("scalar")
    scalar = int8_matmul(x, w, activations="float")
    simd_path("auto")
    fast = int8_matmul(x, w, activations="float")
    np.testing.assert_allclose(fast, scalar, rtol=1e-5, atol=1e-5 * np.abs(scalar).max())


def test_matmul_is_close_to_the_float_product(rng):
    """The head's use: logits within the weights' rounding of x @ W.T, same greedy token."""
    W = (0.02 * rng.standard_normal((5000, 256))).astype(np.float32)
    x = rng.standard_normal((4, 256)).astype(np.float32)
    w = Int8Weight.from_float(W)
    y = int8_matmul(x, w, activations="float")
    exact = x.astype(np.float64) @ W.T.astype(np.float64)
    # |error| <= sum_k |x_k| scales[n] / 2, per row and column.
    bound = np.abs(x).astype(np.float64).sum(-1)[:, None] / 2 * w.scales.astype(np.float64)
    assert np.all(np.abs(y - exact) <= bound * 1.01 + 1e-5)
    np.testing.assert_array_equal(y.argmax(-1), exact.argmax(-1))


def test_batch_dims_strides_and_empty(rng):
    w = Int8Weight.from_float(rng.standard_normal((9, 40)))
    x = rng.standard_normal((2, 3, 80))[..., ::2]
    y = int8_matmul(x, w, activations="float")
    assert y.shape == (2, 3, 9)
    want = ref.int8_matmul(x, w.codes, w.scales, "float")
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(int8_matmul(x, w), ref.int8_matmul(x, w.codes, w.scales))
    assert int8_matmul(np.zeros((0, 40)), w).shape == (0, 9)
    assert int8_matmul(np.zeros(40, np.float32), w).shape == (9,)


def test_rows_are_independent_and_threads_do_not_matter(rng, threads):
    w = Int8Weight.from_float(rng.standard_normal((300, 129)))
    x = rng.standard_normal((5, 129)).astype(np.float32)
    for activations in ("float", "int8"):
        threads(1)
        one = int8_matmul(x, w, activations=activations)
        threads(2)
        np.testing.assert_array_equal(int8_matmul(x, w, activations=activations), one)
        np.testing.assert_array_equal(int8_matmul(x[2:3], w, activations=activations), one[2:3])


def test_properties_and_pickle(rng):
    W = rng.standard_normal((6, 10)).astype(np.float32)
    w = Int8Weight.from_float(W)
    assert w.shape == (6, 10)
    assert w.nbytes == 6 * 10 + 4 * 6
    assert not w.codes.flags.writeable and not w.scales.flags.writeable
    assert "Int8Weight(out_features=6, in_features=10" in repr(w)
    clone = pickle.loads(pickle.dumps(w))
    np.testing.assert_array_equal(clone.codes, w.codes)
    same = Int8Weight.from_codes(w.codes, w.scales)
    np.testing.assert_array_equal(same.dequantize(), w.dequantize())


@given(
    m=st.integers(1, 4),
    n=st.integers(1, 40),
    k=st.integers(1, 200),
    seed=st.integers(0, 2**32 - 1),
)
def test_matmul_property(m, n, k, seed):
    rng = np.random.default_rng(seed)
    w = Int8Weight.from_float(rng.standard_normal((n, k)))
    x = rng.standard_normal((m, k)).astype(np.float32)
    want = ref.int8_matmul(x.astype(np.float64), w.codes, w.scales, "float")
    y = int8_matmul(x, w, activations="float")
    assert np.all(np.abs(y - want) <= matmul_tolerance(x, w, np.float32))
    np.testing.assert_array_equal(int8_matmul(x, w), ref.int8_matmul(x, w.codes, w.scales))


def test_bad_inputs(rng):
    w = Int8Weight.from_float(rng.standard_normal((4, 8)))
    with pytest.raises(ValueError, match="x: expected last dimension in_features = 8, got 7"):
        int8_matmul(np.zeros((2, 7)), w)
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int64"):
        int8_matmul(np.zeros((2, 8), np.int64), w)
    with pytest.raises(TypeError, match="weight: expected an Int8Weight, got ndarray"):
        int8_matmul(np.zeros((2, 8)), np.zeros((4, 8)))
    with pytest.raises(ValueError, match="activations: expected 'int8' or 'float', got 'int4'"):
        int8_matmul(np.zeros((2, 8)), w, activations="int4")
    x = np.zeros((2, 8), np.float32)
    x[1, 3] = np.nan
    with pytest.raises(ValueError, match="x: contains NaN or infinity"):
        int8_matmul(x, w)
    wide = Int8Weight.from_codes(np.ones((1, 132105), np.int8), np.ones(1, np.float32))
    with pytest.raises(ValueError, match="x: expected in_features <= 132104 for int8"):
        int8_matmul(np.ones((1, 132105), np.float32), wide)
    with pytest.raises(ValueError, match=r"W: expected finite values, got .*inf.* at \(1, 2\)"):
        W = np.zeros((3, 4))
        W[1, 2] = np.inf
        Int8Weight.from_float(W)
    with pytest.raises(ValueError, match=r"W: expected finite values, got NaN at \(0, 0\)"):
        Int8Weight.from_float(np.full((1, 1), np.nan, np.float32))
    with pytest.raises(TypeError, match="W: expected dtype float32 or float64, got float16"):
        Int8Weight.from_float(np.zeros((2, 2), np.float16))
    with pytest.raises(ValueError, match=r"W: expected \(out_features, in_features\)"):
        Int8Weight.from_float(np.zeros(3))
    with pytest.raises(TypeError, match="codes: expected dtype int8, got int16"):
        Int8Weight.from_codes(np.zeros((2, 2), np.int16), np.ones(2, np.float32))
    with pytest.raises(ValueError, match=r"scales: expected shape \(out_features,\) = \(2,\)"):
        Int8Weight.from_codes(np.zeros((2, 2), np.int8), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="scales: expected finite values >= 0"):
        Int8Weight.from_codes(np.zeros((2, 2), np.int8), np.array([1, -1], np.float32))


# --- int8 activations: exact integer sums


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "m, n, k",
    [
        (1, 1, 1),
        (1, 1, 64),
        (1, 5, 63),
        (1, 200, 65),
        (2, 17, 127),
        (3, 100, 257),
        (4, 9, 320),
        (5, 33, 1000),
        (9, 7, 129),
        (1, 3, 2560),
    ],
)
def test_int8_activations_equal_the_reference_on_every_kernel_path(
    rng, each_simd_path, dtype, m, n, k
):
    """The integer sums are exact and the rescale is one float64 expression, so every path
    gives the reference's bits."""
    w = Int8Weight.from_float(rng.standard_normal((n, k)))
    x = rng.standard_normal((m, k)).astype(dtype)
    x[0, k // 2] *= 50  # an outlier sets its row's scale
    if m > 1:
        x[1] = 0.0  # a zero row: codes 0, logits 0
    y = int8_matmul(x, w)
    assert y.shape == (m, n) and y.dtype == dtype
    np.testing.assert_array_equal(
        y, ref.int8_matmul(x, w.codes, w.scales), err_msg=_native.ternary_kernel_path()
    )


def test_int8_activations_extremes_are_exact(each_simd_path):
    """Codes of +-127 against activations of +-127 (and -128 is unreachable: |x a| <= 127)."""
    k = 4099
    codes = np.where(np.arange(2 * k).reshape(2, k) % 3 == 0, -127, 127).astype(np.int8)
    w = Int8Weight.from_codes(codes, np.array([1.0, 0.5], np.float32))
    x = np.stack([np.full(k, -3.0), np.where(np.arange(k) % 2 == 0, 3.0, -3.0)])
    np.testing.assert_array_equal(int8_matmul(x, w), ref.int8_matmul(x, w.codes, w.scales))


def int8_activation_bound(x, w):
    """|y_int8 - y_float| per element: each activation moves by at most max|x| / 254 (half a
    step of its row's scale a = 127 / max|x|), and each moves its output by |scales codes|;
    plus float32 rounding of both products (matmul_tolerance)."""
    step = np.abs(x).max(-1, keepdims=True).astype(np.float64) / 254
    return step * np.abs(w.dequantize(np.float64)).sum(-1) * (1 + 1e-6)


def test_int8_activations_stay_within_their_rounding_of_the_float_path(rng):
    """The head's use: logits within the activations' rounding of the float-activation
    product, and the same greedy token (a head of 5000 rows, as in the float test)."""
    W = (0.02 * rng.standard_normal((5000, 256))).astype(np.float32)
    x = rng.standard_normal((4, 256)).astype(np.float32)
    w = Int8Weight.from_float(W)
    y, y_float = int8_matmul(x, w), int8_matmul(x, w, activations="float")
    bound = int8_activation_bound(x, w) + matmul_tolerance(x, w, np.float32)
    assert np.all(np.abs(y - y_float) <= bound)
    np.testing.assert_array_equal(y.argmax(-1), y_float.argmax(-1))


@given(
    m=st.integers(1, 5),
    n=st.integers(1, 40),
    k=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
)
def test_int8_activations_property(m, n, k, seed):
    rng = np.random.default_rng(seed)
    w = Int8Weight.from_float(rng.standard_normal((n, k)))
    x = rng.standard_normal((m, k)).astype(np.float32)
    y = int8_matmul(x, w)
    np.testing.assert_array_equal(y, ref.int8_matmul(x, w.codes, w.scales))
    y_float = int8_matmul(x, w, activations="float")
    bound = int8_activation_bound(x, w) + matmul_tolerance(x, w, np.float32)
    assert np.all(np.abs(y - y_float) <= bound)

"""Tests of seqkern.ternary: exact BitNet quantizers, packed formats, int8 x ternary matmul."""

from __future__ import annotations

import math
import pickle
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import SIMD_PATHS
from hypothesis import given
from hypothesis import strategies as st

from seqkern import _native
from seqkern.reference import ternary as ref
from seqkern.ternary import (
    TernaryWeight,
    bitlinear,
    quantize_activations,
    quantize_weights,
    ternary_matmul_int,
)

FORMATS = ("i2", "t1")
FLOATS = (np.float32, np.float64)


# --- NumPy ports of BitNet's published functions (the b1.58 training-tips FAQ) -------------
#
#   def activation_quant(x):
#       scale = 127.0 / x.abs().max(dim=-1, keepdim=True).values.clamp_(min=1e-5)
#       return (x * scale).round().clamp_(-128, 127) / scale
#   def weight_quant(w):
#       scale = 1.0 / w.abs().mean().clamp_(min=1e-5)
#       return (w * scale).round().clamp_(-1, 1) / scale
#
# PyTorch evaluates `number / tensor` as `tensor.reciprocal() * number`, and `round` rounds
# half to even (np.rint). Everything stays in the input's dtype.


def activation_quant(x):
    t = x.dtype.type
    amax = np.maximum(np.abs(x).max(axis=-1, keepdims=True), t(1e-5))
    scale = (t(1) / amax) * t(127.0)
    return np.clip(np.rint(x * scale), -128, 127) / scale


def weight_quant(w, mean=None):
    """``mean`` defaults to the correctly rounded float64 sum of |w| over the count, rounded to
    w's dtype (the documented choice); pass NumPy's own float32 mean to compare with that."""
    t = w.dtype.type
    if mean is None:
        mean = t(math.fsum(np.abs(w, dtype=np.float64).ravel().tolist()) / w.size)
    scale = (t(1) / np.maximum(mean, t(1e-5))) * t(1.0)
    return np.clip(np.rint(w * scale), -1, 1) / scale


def ours_dequantized_activations(x):
    q, scale = quantize_activations(x)
    return q.astype(x.dtype) / scale


def ours_dequantized_weights(w: TernaryWeight, dtype):
    t = np.dtype(dtype).type
    return w.codes().astype(dtype) / (t(1) / t(w.gamma))


def hf_pack(codes):
    """transformers' BitNet layout: row r of (N/4, K) holds code + 1 of rows r + i N/4 at
    bits 2i."""
    rows = codes.shape[0] // 4
    shifted = (codes + 1).astype(np.uint8)
    packed = np.zeros((rows, codes.shape[1]), np.uint8)
    for i in range(4):
        packed |= shifted[i * rows : (i + 1) * rows] << np.uint8(2 * i)
    return packed


def expected_row_bytes(k, format):
    """Blocks of 64 bytes holding 4 ("i2") or 5 ("t1") planes, plus a narrower tail."""
    planes = 4 if format == "i2" else 5
    full, rest = divmod(k, 64 * planes)
    return 64 * full + -(-rest // planes)


def random_codes(rng, n, k):
    return rng.integers(-1, 2, size=(n, k)).astype(np.int8)


def random_q(rng, *shape):
    return rng.integers(-128, 128, size=shape).astype(np.int8)


def exact_product(q, codes):
    return q.astype(np.int64) @ codes.astype(np.int64).T


@pytest.fixture
def kernel_path(each_simd_path):
    """Runs a test on each SIMD path up to the session's (see conftest.each_simd_path)."""
    return _native.ternary_kernel_path()


# --- quantizers ---------------------------------------------------------------------------


def tie_rows(rng, dtype, rows=40, k=64):
    """Rows whose products x * scale land exactly on n + 0.5 (built and then verified)."""
    t = np.dtype(dtype).type
    out = []
    for _ in range(rows):
        amax = t(rng.uniform(0.1, 10.0))
        scale = (t(1) / amax) * t(127)
        halves = rng.integers(-127, 127, size=k - 1) + t(0.5)
        candidates = (halves / scale).astype(dtype)
        ok = ((candidates * scale) == halves) & (np.abs(candidates) <= amax)
        out.append(np.concatenate([[amax], np.where(ok, candidates, t(0))]).astype(dtype))
    return np.stack(out)


def edge_rows(dtype, k=9):
    tiny = np.finfo(dtype).tiny
    rows = [
        np.zeros(k),  # all zero: amax clamps to eps
        np.r_[100.0, np.full(k - 1, 1e-3)],  # one spike
        np.r_[-5.0, 1.0, 2.0, np.zeros(k - 3)],  # negative maximum
        np.r_[np.full(k - 1, 0.25), -7.5],  # negative maximum last
        np.full(k, 3e-6),  # below eps
        np.r_[tiny, -tiny / 2, np.zeros(k - 2)],  # subnormals
        np.full(k, -1.0),  # constant negative
        np.r_[np.finfo(dtype).max, -1.0, np.zeros(k - 2)],  # largest finite
        np.linspace(-1, 1, k),
    ]
    return np.array(rows, dtype=dtype)


@pytest.mark.parametrize("dtype", FLOATS)
def test_activation_quant_matches_published_on_random_ties_and_edges(rng, dtype, each_simd_path):
    ties = tie_rows(rng, dtype)
    x_random = (rng.standard_normal((37, 301)) * rng.uniform(0.01, 100, (37, 1))).astype(dtype)
    for x in (x_random, ties, edge_rows(dtype)):
        q, scale = quantize_activations(x)
        assert q.dtype == np.int8 and scale.dtype == dtype and scale.shape == (x.shape[0], 1)
        with np.errstate(over="ignore"):  # q / scale of the largest-finite row is inf
            np.testing.assert_array_equal(q.astype(dtype) / scale, activation_quant(x))
        t = np.dtype(dtype).type
        expected_scale = (t(1) / np.maximum(np.abs(x).max(-1, keepdims=True), t(1e-5))) * t(127)
        np.testing.assert_array_equal(scale, expected_scale)
    # The tie rows really hold ties, and they went to the even neighbour.
    q, scale = quantize_activations(ties)
    is_tie = (ties * scale) % 1 == 0.5
    assert is_tie.sum() > 500
    assert (q[is_tie] % 2 == 0).all()


def test_activation_scale_is_rounded_like_pytorch():
    # 127 * (1 / m) and 127 / m differ for some m; the published code computes the former.
    m = np.arange(1, 2000, dtype=np.float32) * np.float32(0.37)
    torch_like = (np.float32(1) / m) * np.float32(127)
    direct = np.float32(127) / m
    assert (torch_like != direct).any()
    x = np.stack([m, np.zeros_like(m)], axis=1)
    _, scale = quantize_activations(x)
    np.testing.assert_array_equal(scale[:, 0], torch_like)


@pytest.mark.parametrize("dtype", FLOATS)
def test_weight_quant_matches_published_on_random_ties_and_edges(rng, dtype, each_simd_path):
    # mean|W| = 1 exactly: W * scale = W, so 0.5 -> 0, 1.5 -> 2 -> 1, 2.5 -> 2 -> 1.
    magnitudes = rng.permutation(np.repeat([0.5, 1.5, 1.0, 0.0, 2.0], 120))
    ties = (magnitudes * rng.choice([-1.0, 1.0], size=600)).reshape(20, 30)
    ties = ties * (1.0 / np.abs(ties).mean())
    cases = [
        (rng.standard_normal((67, 129)) * 0.02).astype(dtype),
        ties.astype(dtype),
        (ties * 0.25).astype(dtype),  # mean 1/4, still exact
        np.zeros((3, 5), dtype),  # gamma clamps to eps, codes 0
        np.pad(np.array([[1000.0]]), ((0, 4), (2, 6))).astype(dtype),  # one spike
        np.pad(np.array([[-1000.0]]), ((1, 3), (0, 8))).astype(dtype),  # one negative spike
        np.full((2, 3), 1e-30, dtype),  # below eps
        np.full((2, 2), -3.0, dtype),
    ]
    for W in cases:
        for format in FORMATS:
            w = quantize_weights(W, format=format)
            np.testing.assert_array_equal(ours_dequantized_weights(w, dtype), weight_quant(W))
    w = quantize_weights(ties.astype(dtype))
    assert w.gamma == 1.0
    np.testing.assert_array_equal(w.codes(), np.clip(np.rint(ties), -1, 1))
    assert (w.codes()[np.abs(ties) == 0.5] == 0).all()


def test_weight_codes_agree_with_float32_summation_on_typical_data(rng):
    # NumPy sums float32 pairwise in float32, which may move gamma by an ulp; on ordinary
    # weights no weight lies within that ulp of gamma / 2, so the codes are the same.
    W = (rng.standard_normal((256, 512)) * 0.05).astype(np.float32)
    scale = np.float32(1) / np.maximum(np.abs(W).mean(), np.float32(1e-5))
    np.testing.assert_array_equal(quantize_weights(W).codes(), np.clip(np.rint(W * scale), -1, 1))


def test_reference_quantizers_agree_with_the_kernels(rng):
    W = rng.standard_normal((13, 70)).astype(np.float32)
    codes, gamma = ref.quantize_weights(W)
    w = quantize_weights(W)
    np.testing.assert_array_equal(w.codes(), codes)
    assert w.gamma == gamma
    x = rng.standard_normal((4, 70)).astype(np.float32)
    for ours, theirs in zip(quantize_activations(x), ref.quantize_activations(x)):
        np.testing.assert_array_equal(ours, theirs)


@given(
    st.lists(
        st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=True, width=32),
        min_size=1,
        max_size=70,
    ),
    st.sampled_from(FLOATS),
)
def test_activation_quant_property(values, dtype):
    x = np.array(values, dtype=dtype).reshape(1, -1)
    np.testing.assert_array_equal(ours_dequantized_activations(x), activation_quant(x))


def test_quantizers_reject_non_finite_and_bad_eps():
    for bad in (np.nan, np.inf, -np.inf):
        x = np.array([[1.0, bad, 2.0]], np.float32)
        with pytest.raises(ValueError, match="x: contains NaN or infinity"):
            quantize_activations(x)
        with pytest.raises(ValueError, match="W: contains NaN or infinity"):
            quantize_weights(x)
    with pytest.raises(ValueError, match="eps"):
        quantize_activations(np.ones((1, 2), np.float32), eps=0.0)


def test_quantize_activations_shapes(rng):
    x = rng.standard_normal((2, 3, 5)).astype(np.float64)
    q, scale = quantize_activations(x)
    assert q.shape == (2, 3, 5) and scale.shape == (2, 3, 1)
    q0, scale0 = quantize_activations(np.zeros((0, 5), np.float32))
    assert q0.shape == (0, 5) and scale0.shape == (0, 1)
    q_empty, scale_empty = quantize_activations(np.zeros((2, 0), np.float32))
    assert q_empty.shape == (2, 0)
    empty_scale = (np.float32(1) / np.float32(1e-5)) * np.float32(127)
    np.testing.assert_array_equal(scale_empty, np.full((2, 1), empty_scale))
    np.testing.assert_array_equal(quantize_activations(x[0, 1])[0], q[0, 1])


# --- formats -------------------------------------------------------------------------------

ROUND_TRIP_K = (1, 3, 17, 127, 128, 129, 255, 256, 257, 1000, 2560, 3200, 6912, 8640)
ROUND_TRIP_N = (1, 3, 7, 64, 65)


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("k", ROUND_TRIP_K)
def test_pack_round_trip(rng, format, k):
    for n in ROUND_TRIP_N:
        codes = random_codes(rng, n, k)
        w = TernaryWeight.from_codes(codes, 0.5, format=format)
        np.testing.assert_array_equal(w.codes(), codes)
        assert w.shape == (n, k) and w.format == format and w.gamma == 0.5
        assert w.nbytes == n * expected_row_bytes(k, format)
        assert w.packed.shape == (n, expected_row_bytes(k, format))
        np.testing.assert_array_equal(w.dequantize(np.float64), codes * 0.5)


def test_bits_per_weight():
    codes = np.zeros((4, 2560), np.int8)
    assert TernaryWeight.from_codes(codes, 1.0, format="i2").bits_per_weight == 2.0
    assert TernaryWeight.from_codes(codes, 1.0, format="t1").bits_per_weight == 1.6
    big = np.zeros((1, 4096), np.int8)
    assert TernaryWeight.from_codes(big, 1.0, format="i2").bits_per_weight == 2.0
    assert TernaryWeight.from_codes(big, 1.0, format="t1").bits_per_weight == pytest.approx(
        1.6016, abs=1e-4
    )


def test_padding_decodes_to_zero():
    # K = 1: one real weight per row, the rest of the byte is padding.
    codes = np.array([[1], [-1], [0]], np.int8)
    for format in FORMATS:
        w = TernaryWeight.from_codes(codes, 1.0, format=format)
        q = np.array([[100]], np.int8)
        np.testing.assert_array_equal(ternary_matmul_int(q, w), [[100, -100, 0]])


def test_from_codes_accepts_wider_integers_and_rejects_bad_codes():
    codes = np.array([[1, 0, -1]], np.int64)
    np.testing.assert_array_equal(TernaryWeight.from_codes(codes, 1.0).codes(), codes)
    with pytest.raises(ValueError, match=r"codes: expected values in \{-1, 0, 1\}, got 2"):
        TernaryWeight.from_codes(np.array([[0, 2]]), 1.0)
    with pytest.raises(ValueError, match="codes: expected values"):
        TernaryWeight.from_codes(np.array([[0, -2]], np.int8), 1.0)
    with pytest.raises(TypeError, match="codes: expected an integer dtype"):
        TernaryWeight.from_codes(np.zeros((2, 2)), 1.0)
    with pytest.raises(ValueError, match="codes: expected a non-empty matrix"):
        TernaryWeight.from_codes(np.zeros((0, 4), np.int8), 1.0)
    with pytest.raises(ValueError, match="codes: expected"):
        TernaryWeight.from_codes(np.zeros(4, np.int8), 1.0)
    for gamma in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="gamma"):
            TernaryWeight.from_codes(np.zeros((1, 4), np.int8), gamma)
    with pytest.raises(ValueError, match="format"):
        TernaryWeight.from_codes(np.zeros((1, 4), np.int8), 1.0, format="i4")


def test_from_hf_packed(rng):
    n, k = 64, 200
    codes = random_codes(rng, n, k)
    packed = hf_pack(codes)
    assert packed.shape == (n // 4, k)
    weight_scale = np.array([2.5], np.float32)
    for format in FORMATS:
        w = TernaryWeight.from_hf_packed(packed, weight_scale, format=format)
        np.testing.assert_array_equal(w.codes(), codes)
        assert w.gamma == 1 / 2.5
    # transformers' forward: y = (q @ codes.T) / (scale_x * weight_scale)
    x = rng.standard_normal((3, k)).astype(np.float32)
    q, scale_x = quantize_activations(x)
    expected = exact_product(q, codes) / (scale_x.astype(np.float64) * 2.5)
    np.testing.assert_allclose(bitlinear(x, w), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="holds 3 at bits 4..5"):
        TernaryWeight.from_hf_packed(np.full((1, 2), 0b110000, np.uint8), 1.0)
    with pytest.raises(TypeError, match="packed: expected dtype uint8"):
        TernaryWeight.from_hf_packed(packed.astype(np.int8), 1.0)
    with pytest.raises(ValueError, match="weight_scale: expected one per-tensor value"):
        TernaryWeight.from_hf_packed(packed, np.ones(2, np.float32))
    with pytest.raises(ValueError, match="weight_scale"):
        TernaryWeight.from_hf_packed(packed, 0.0)


# --- exact integer matmul --------------------------------------------------------------------

SHAPES = [
    (0, 5, 17),
    (1, 1, 1),
    (1, 7, 129),
    (2, 3, 257),
    (3, 65, 320),
    (5, 9, 1000),
    (17, 13, 641),
]


@pytest.mark.parametrize("format", FORMATS)
def test_matmul_int_exact_on_every_path(rng, kernel_path, format):
    for m, n, k in SHAPES:
        codes = random_codes(rng, n, k)
        q = random_q(rng, m, k)
        w = TernaryWeight.from_codes(codes, 1.0, format=format)
        out = ternary_matmul_int(q, w)
        assert out.dtype == np.int32 and out.shape == (m, n)
        np.testing.assert_array_equal(
            out, exact_product(q, codes), err_msg=f"{kernel_path} {m, n, k}"
        )


@pytest.mark.parametrize("format", FORMATS)
@pytest.mark.parametrize("k", [4096, 16384, 65536])
def test_matmul_int_adversarial_extremes(kernel_path, format, k):
    # |sum| reaches 128 K: int16 partial sums would overflow, int32 must not.
    codes = np.stack([np.ones(k), -np.ones(k), np.ones(k), -np.ones(k), np.zeros(k)])
    codes = codes.astype(np.int8)
    q = np.stack([np.full(k, -128), np.full(k, 127), np.resize([127, -128], k)]).astype(np.int8)
    w = TernaryWeight.from_codes(codes, 1.0, format=format)
    out = ternary_matmul_int(q, w)
    np.testing.assert_array_equal(out, exact_product(q, codes))
    assert out[0, 1] == 128 * k


@pytest.mark.parametrize("format", FORMATS)
def test_matmul_int_independent_of_thread_count(rng, threads, format):
    codes = random_codes(rng, 300, 777)
    q = random_q(rng, 9, 777)
    w = TernaryWeight.from_codes(codes, 1.0, format=format)
    results = []
    for n_threads in (1, 2, 3):
        threads(n_threads)
        results.append(ternary_matmul_int(q, w))
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    np.testing.assert_array_equal(results[0], exact_product(q, codes))


@pytest.mark.parametrize("format", FORMATS)
def test_gemm_rows_equal_gemv(rng, kernel_path, format):
    codes = random_codes(rng, 37, 700)
    q = random_q(rng, 11, 700)
    w = TernaryWeight.from_codes(codes, 1.0, format=format)
    gemm = ternary_matmul_int(q, w)
    for i in range(q.shape[0]):
        np.testing.assert_array_equal(gemm[i], ternary_matmul_int(q[i], w))


@given(
    m=st.integers(0, 6),
    n=st.integers(1, 40),
    k=st.integers(1, 700),
    format=st.sampled_from(FORMATS),
    seed=st.integers(0, 2**32 - 1),
)
def test_matmul_int_property_on_every_path(m, n, k, format, seed):
    rng = np.random.default_rng(seed)
    codes = random_codes(rng, n, k)
    q = random_q(rng, m, k)
    w = TernaryWeight.from_codes(codes, 1.0, format=format)
    expected = exact_product(q, codes)
    before = _native.get_simd_path()
    try:
        for path in SIMD_PATHS:
            assert _native.set_simd_path(path) == path
            np.testing.assert_array_equal(ternary_matmul_int(q, w), expected, err_msg=path)
    finally:
        _native.set_simd_path(before)


def test_matmul_int_batch_dims_and_strides(rng):
    codes = random_codes(rng, 10, 96)
    w = TernaryWeight.from_codes(codes, 1.0)
    q = random_q(rng, 2, 3, 96)
    out = ternary_matmul_int(q, w)
    assert out.shape == (2, 3, 10)
    np.testing.assert_array_equal(out.reshape(6, 10), exact_product(q.reshape(6, 96), codes))
    strided = random_q(rng, 4, 192)[:, ::2]
    np.testing.assert_array_equal(ternary_matmul_int(strided, w), exact_product(strided, codes))


# --- bitlinear -------------------------------------------------------------------------------

TOL = {np.float32: 1.2e-7, np.float64: 1e-15}


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("format", FORMATS)
def test_bitlinear_matches_float64_reference(rng, kernel_path, dtype, format):
    for m, n, k in [(1, 33, 300), (4, 16, 641), (7, 5, 2560), (0, 4, 10)]:
        W = rng.standard_normal((n, k)).astype(dtype)
        x = (rng.standard_normal((m, k)) * 3).astype(dtype)
        bias = rng.standard_normal(n).astype(dtype)
        w = quantize_weights(W, format=format)
        codes, gamma = ref.quantize_weights(W)
        for b in (None, bias):
            y = bitlinear(x, w, b)
            assert y.dtype == dtype and y.shape == (m, n)
            expected = ref.bitlinear(x, codes, gamma, b)
            np.testing.assert_allclose(y, expected, rtol=TOL[dtype], atol=0)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("format", FORMATS)
def test_bitlinear_of_several_weights_equals_separate_calls(rng, kernel_path, dtype, format):
    """One x through several weights (the model's q/k/v and gate/up): x quantized once, the
    same bits as one bitlinear per weight, with and without biases, for one and several rows."""
    from seqkern.ternary import _bitlinear_many

    for m, k, ns in [(1, 300, (33, 8, 8)), (3, 641, (1, 20)), (5, 2560, (7,)), (0, 10, (4, 2))]:
        x = (rng.standard_normal((m, k)) * 3).astype(dtype)
        weights = [quantize_weights(rng.standard_normal((n, k)), format=format) for n in ns]
        biases = [rng.standard_normal(n).astype(dtype) if i % 2 else None for i, n in enumerate(ns)]
        for b in (None, biases):
            ys = _bitlinear_many(x, weights, b)
            for i, (y, w) in enumerate(zip(ys, weights)):
                one = bitlinear(x, w, None if b is None else b[i])
                assert y.dtype == dtype and y.shape == (m, w.out_features)
                np.testing.assert_array_equal(y, one, err_msg=f"{kernel_path} {m} {k} {i}")
    x = np.ones((2, 3, 64), dtype)
    ys = _bitlinear_many(x, [quantize_weights(np.ones((4, 64)))])
    assert ys[0].shape == (2, 3, 4)
    with pytest.raises(ValueError, match="x: expected last dimension in_features"):
        _bitlinear_many(np.ones((1, 65)), [quantize_weights(np.ones((4, 64)))])
    with pytest.raises(ValueError, match="weights: expected one format"):
        _bitlinear_many(x, [quantize_weights(np.ones((4, 64)), format=f) for f in FORMATS])
    with pytest.raises(ValueError, match="biases: expected 1 entries, got 2"):
        _bitlinear_many(x, [quantize_weights(np.ones((4, 64)))], [None, None])


@pytest.mark.parametrize("dtype", FLOATS)
def test_bitlinear_of_several_weights_with_a_norm_first(rng, kernel_path, dtype):
    """The RMS norm fused before the projections: the bitlinear of the normed x, normed as
    stated (mean square in float64, r rounded to x's dtype, then (x r) w in x's dtype)."""
    from seqkern.ternary import _bitlinear_many

    for m, k in [(1, 300), (3, 641), (2, 2560)]:
        x = (rng.standard_normal((m, k)) * 3).astype(dtype)
        x[0, 5] = 40.0  # an outlier sets the row's scale
        norm = rng.standard_normal(k).astype(dtype)
        weights = [quantize_weights(rng.standard_normal((n, k))) for n in (16, 5)]
        squares = np.sum(x.astype(np.float64) ** 2, axis=-1, keepdims=True)
        r = (1.0 / np.sqrt(squares / k + 1e-6)).astype(dtype)
        normed = (x * r) * norm
        ys = _bitlinear_many(x, weights, None, norm, 1e-6)
        for y, w in zip(ys, weights):
            if dtype == np.float32:
                np.testing.assert_array_equal(y, bitlinear(normed, w), err_msg=kernel_path)
            else:  # r may differ by an ulp with the summation order; no int8 code moves
                np.testing.assert_allclose(y, bitlinear(normed, w), rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match=r"norm: expected shape \(in_features,\)"):
        _bitlinear_many(x, weights, None, np.ones(k + 1, dtype), 1e-6)
    with pytest.raises(TypeError, match="norm: expected dtype"):
        other = np.float64 if dtype == np.float32 else np.float32
        _bitlinear_many(x, weights, None, np.ones(k, other), 1e-6)


def test_bitlinear_matches_the_published_forward(rng):
    # y = F.linear(activation_quant(x), weight_quant(W)), computed here in float64.
    W = (rng.standard_normal((48, 320)) * 0.02).astype(np.float32)
    x = rng.standard_normal((6, 320)).astype(np.float32)
    expected = activation_quant(x).astype(np.float64) @ weight_quant(W).astype(np.float64).T
    y = bitlinear(x, quantize_weights(W))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_bitlinear_batch_dims_noncontiguous_and_m0(rng):
    W = rng.standard_normal((12, 64)).astype(np.float32)
    w = quantize_weights(W)
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    y = bitlinear(x, w)
    assert y.shape == (2, 3, 12)
    np.testing.assert_array_equal(y.reshape(6, 12), bitlinear(x.reshape(6, 64), w))
    wide = rng.standard_normal((5, 128)).astype(np.float32)
    np.testing.assert_array_equal(bitlinear(wide[:, ::2], w), bitlinear(wide[:, ::2].copy(), w))
    fortran = np.asfortranarray(rng.standard_normal((5, 64)))
    np.testing.assert_array_equal(bitlinear(fortran, w), bitlinear(fortran.copy(order="C"), w))
    np.testing.assert_array_equal(bitlinear(x[0, 0], w), y[0, 0])
    assert bitlinear(np.zeros((0, 64), np.float32), w).shape == (0, 12)
    assert bitlinear(np.zeros((2, 0, 64), np.float64), w).shape == (2, 0, 12)


def test_bitlinear_concurrent_calls(rng):
    w = quantize_weights(rng.standard_normal((256, 512)).astype(np.float32))
    xs = [rng.standard_normal((3, 512)).astype(np.float32) for _ in range(8)]
    expected = [bitlinear(x, w) for x in xs]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda x: bitlinear(x, w), xs * 3))
    for got, want in zip(results, expected * 3):
        np.testing.assert_array_equal(got, want)


def test_bad_inputs_are_clear_errors(rng):
    w = quantize_weights(rng.standard_normal((4, 8)).astype(np.float32))
    x = np.ones((2, 8), np.float32)
    with pytest.raises(ValueError, match="x: expected last dimension in_features = 8, got 7"):
        bitlinear(np.ones((2, 7), np.float32), w)
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got int64"):
        bitlinear(np.ones((2, 8), np.int64), w)
    with pytest.raises(TypeError, match="x: expected dtype float32 or float64, got float16"):
        bitlinear(np.ones((2, 8), np.float16), w)
    with pytest.raises(ValueError, match="x: expected shape"):
        bitlinear(np.float32(1.0), w)
    with pytest.raises(TypeError, match="bias: expected dtype float32"):
        bitlinear(x, w, np.ones(4, np.float64))
    with pytest.raises(ValueError, match=r"bias: expected shape \(out_features,\) = \(4,\)"):
        bitlinear(x, w, np.ones(5, np.float32))
    with pytest.raises(TypeError, match="weight: expected a TernaryWeight, got ndarray"):
        bitlinear(x, np.ones((4, 8), np.float32))
    with pytest.raises(TypeError, match="q: expected dtype int8, got int16"):
        ternary_matmul_int(np.ones((2, 8), np.int16), w)
    with pytest.raises(ValueError, match="q: expected last dimension in_features = 8, got 9"):
        ternary_matmul_int(np.ones((2, 9), np.int8), w)
    with pytest.raises(ValueError, match="W: expected a non-empty matrix"):
        quantize_weights(np.zeros((0, 8), np.float32))
    with pytest.raises(ValueError, match="W: expected a non-empty matrix"):
        quantize_weights(np.zeros((3, 0), np.float32))
    with pytest.raises(ValueError, match=r"W: expected \(out_features, in_features\)"):
        quantize_weights(np.zeros(8, np.float32))
    with pytest.raises(TypeError, match="W: expected dtype float32 or float64"):
        quantize_weights(np.zeros((2, 2), np.int32))
    with pytest.raises(ValueError, match="format: expected 'i2' or 't1'"):
        quantize_weights(np.ones((2, 2), np.float32), format="q4")


# --- files and pickling ------------------------------------------------------------------


@pytest.mark.parametrize("format", FORMATS)
def test_save_load_round_trip(rng, tmp_path, format):
    w = quantize_weights(rng.standard_normal((9, 333)).astype(np.float32), format=format)
    path = tmp_path / "w.ternary"
    w.save(path)
    loaded = TernaryWeight.load(path)
    assert (loaded.shape, loaded.gamma, loaded.format) == (w.shape, w.gamma, w.format)
    np.testing.assert_array_equal(loaded.packed, w.packed)
    clone = pickle.loads(pickle.dumps(w))
    np.testing.assert_array_equal(clone.codes(), w.codes())
    assert clone.gamma == w.gamma


def test_load_rejects_bad_files(rng, tmp_path):
    w = quantize_weights(rng.standard_normal((16, 640)).astype(np.float32))
    good = tmp_path / "good.npz"
    w.save(good)
    data = good.read_bytes()

    def load(name, content):
        path = tmp_path / name
        path.write_bytes(content)
        return TernaryWeight.load(path)

    with pytest.raises(ValueError, match="not a readable TernaryWeight file"):
        load("truncated.npz", data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable TernaryWeight file"):
        load("empty.npz", b"")
    with pytest.raises(ValueError, match="not a readable TernaryWeight file"):
        load("garbage.npz", bytes(rng.integers(0, 256, 300, dtype=np.uint8)))
    corrupt = bytearray(data)
    start = data.index(b"packed.npy") + 200  # inside the stored packed bytes
    corrupt[start : start + 16] = bytes(16)
    with pytest.raises(ValueError, match="not a readable TernaryWeight file"):
        load("corrupt.npz", bytes(corrupt))

    def rewrite(name, **changes):
        fields = dict(np.load(good))
        fields.update(changes)
        path = tmp_path / name
        np.savez(path, **fields)
        return path

    with pytest.raises(ValueError, match="file version 2, but this seqkern reads version 1"):
        TernaryWeight.load(rewrite("v2.npz", version=np.array(2)))
    with pytest.raises(ValueError, match="missing kind"):
        TernaryWeight.load(_foreign(tmp_path))
    bad_bytes = w.packed.copy()
    bad_bytes[3, 5] = 0xFF  # a 2-bit field of 3
    with pytest.raises(ValueError, match="not a valid 'i2' encoding"):
        TernaryWeight.load(rewrite("codes.npz", packed=bad_bytes))
    with pytest.raises(ValueError, match="packed: expected shape"):
        TernaryWeight.load(rewrite("shape.npz", shape=np.array([16, 641])))
    with pytest.raises(ValueError, match="gamma"):
        TernaryWeight.load(rewrite("gamma.npz", gamma=np.array(-1.0)))
    with pytest.raises(FileNotFoundError):
        TernaryWeight.load(tmp_path / "missing.npz")
    with zipfile.ZipFile(good) as archive:
        assert sorted(archive.namelist()) == sorted(
            f"{key}.npy" for key in ("kind", "version", "format", "shape", "gamma", "packed")
        )


def _foreign(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, weights=np.zeros(3))
    return path


def test_repr_and_properties(rng):
    w = quantize_weights(rng.standard_normal((6, 10)).astype(np.float64), format="t1")
    assert (w.out_features, w.in_features) == (6, 10)
    assert "format='t1'" in repr(w)
    assert not w.packed.flags.writeable

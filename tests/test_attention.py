"""Causal attention against its NumPy reference: shapes, edge cases, numerics, threads, errors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import SIMD_PATHS, assert_close
from hypothesis import given
from hypothesis import strategies as st

from seqkern.attention import causal_attention
from seqkern.reference import attention as ref


def qkv(rng, batch, heads, length, dim, dim_v=None, dtype=np.float32, magnitude=1.0):
    """Random q, k, v of the given shape; v has ``dim_v`` columns (default ``dim``)."""
    dim_v = dim if dim_v is None else dim_v

    def normal(d):
        return (magnitude * rng.standard_normal((batch, heads, length, d))).astype(dtype)

    return normal(dim), normal(dim), normal(dim_v)


def expected(q, k, v, scale=None):
    """The reference in float64, the oracle for both dtypes."""
    return ref.causal_attention(
        q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), scale=scale
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape",
    [
        (1, 1, 1, 64),  # one token: out = v
        (2, 3, 17, 8),  # shorter than one tile
        (1, 2, 64, 64),  # exactly one tile
        (1, 2, 200, 64),  # several tiles and a partial one
        (2, 1, 129, 33),  # odd D, one key past a tile
        (1, 1, 70, 1),  # D = 1
        (1, 1, 97, 128),  # D wider than a tile
    ],
)
def test_matches_reference(rng, each_simd_path, dtype, shape):
    q, k, v = qkv(rng, *shape, dtype=dtype)
    out = causal_attention(q, k, v)
    assert_close(out, expected(q, k, v), dtype)


def test_length_one_returns_v(rng):
    q, k, v = qkv(rng, 2, 3, 1, 16)
    np.testing.assert_allclose(causal_attention(q, k, v), v, rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_length_zero(dtype):
    q = np.zeros((2, 3, 0, 8), dtype)
    v = np.zeros((2, 3, 0, 5), dtype)
    out = causal_attention(q, q, v)
    assert out.shape == (2, 3, 0, 5) and out.dtype == dtype


def test_empty_batch_and_heads(rng):
    for shape in [(0, 2, 5, 4), (2, 0, 5, 4)]:
        q = np.zeros(shape, np.float32)
        assert causal_attention(q, q, q).shape == shape


def test_value_width_differs_from_key_width(rng, each_simd_path):
    q, k, v = qkv(rng, 1, 2, 150, 24, dim_v=41)
    out = causal_attention(q, k, v)
    assert out.shape == (1, 2, 150, 41)
    assert_close(out, expected(q, k, v), np.float32)


def test_zero_width_keys_average_the_values(rng):
    """D = 0: every score is 0, so row i is the mean of v_0..v_i."""
    _, _, v = qkv(rng, 1, 1, 90, 4, dtype=np.float64)
    q = np.zeros((1, 1, 90, 0))
    want = np.cumsum(v, axis=2) / np.arange(1, 91)[:, None]
    np.testing.assert_allclose(causal_attention(q, q, v), want, rtol=1e-12)


@pytest.mark.parametrize("scale", [0.0, 0.37, -2.0, 3])
def test_explicit_scale(rng, scale):
    q, k, v = qkv(rng, 1, 2, 80, 16, dtype=np.float64)
    assert_close(causal_attention(q, k, v, scale=scale), expected(q, k, v, scale), np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_scores_do_not_overflow(rng, each_simd_path, dtype):
    """Scores up to ~5e5, where exp overflows without the row maximum. The inputs are
    multiples of 64 below 2^9 and D = 64 with scale 1/8, so every score is an integer below
    2^24: exact in float32 as well, and the comparison measures the softmax, not rounding."""
    shape = (1, 2, 150, 64)
    q, k = (64.0 * rng.integers(-4, 5, shape)).astype(dtype), (64.0 * rng.integers(-4, 5, shape))
    k = k.astype(dtype)
    v = rng.standard_normal(shape).astype(dtype)
    out = causal_attention(q, k, v)
    assert np.isfinite(out).all()
    assert_close(out, expected(q, k, v), dtype)


def test_huge_equal_scores_average_the_values(rng):
    """q = k = 1e4 in float32 gives scores of 1e9 at every position: the output is the
    running mean of v, not inf or NaN."""
    q = np.full((1, 1, 100, 16), 1e4, np.float32)
    v = rng.standard_normal((1, 1, 100, 16)).astype(np.float32)
    want = np.cumsum(v.astype(np.float64), axis=2) / np.arange(1, 101)[:, None]
    assert_close(causal_attention(q, q, v), want, np.float32)


def test_nan_stays_in_the_rows_that_see_it(rng, each_simd_path):
    """A NaN query poisons only its own row; a NaN key only the rows at or after it."""
    q, k, v = qkv(rng, 1, 1, 150, 16)
    q[0, 0, 70, 3] = np.nan
    k[0, 0, 100, 5] = np.nan
    out = causal_attention(q, k, v)
    nan_rows = np.isnan(out[0, 0]).any(axis=1)
    assert nan_rows[70] and nan_rows[100:].all()
    assert not nan_rows[:70].any() and not nan_rows[71:100].any()


def test_thread_count_does_not_change_the_result(rng, threads):
    q, k, v = qkv(rng, 2, 3, 333, 40)
    results = []
    for n in (1, 2, 3, 5):
        threads(n)
        results.append(causal_attention(q, k, v))
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)


def test_scalar_and_simd_paths_agree(rng, simd_path):
    q, k, v = qkv(rng, 1, 4, 300, 64)
    simd_path("scalar")
    scalar = causal_attention(q, k, v)
    for path in SIMD_PATHS[1:]:
        simd_path(path)
        fast = causal_attention(q, k, v)
        # Both are within float32 rounding of the exact result, so within twice that of each
        # other; they differ (FMA and tile shapes), so they are not compared bitwise.
        assert_close(fast, scalar.astype(np.float64), np.float32)


def test_non_contiguous_inputs(rng):
    """(B, L, H, D) arrays viewed as (B, H, L, D), as a model's projections come out."""
    base = [rng.standard_normal((2, 90, 3, 16)).astype(np.float32) for _ in range(3)]
    q, k, v = (x.transpose(0, 2, 1, 3) for x in base)
    assert not q.flags.c_contiguous
    assert_close(causal_attention(q, k, v), expected(q, k, v), np.float32)
    sliced = np.asarray(rng.standard_normal((1, 2, 70, 32)), np.float64)[..., ::2]
    assert_close(
        causal_attention(sliced, sliced, sliced), expected(sliced, sliced, sliced), np.float64
    )


def test_concurrent_calls_from_python_threads(rng):
    inputs = [qkv(rng, 1, 4, 257, 32) for _ in range(4)]
    want = [causal_attention(*x) for x in inputs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: causal_attention(*x), inputs * 3))
    for i, out in enumerate(got):
        np.testing.assert_array_equal(out, want[i % 4])


def test_inputs_are_not_modified(rng):
    q, k, v = qkv(rng, 1, 2, 100, 8)
    copies = [x.copy() for x in (q, k, v)]
    causal_attention(q, k, v)
    for x, c in zip((q, k, v), copies):
        np.testing.assert_array_equal(x, c)


@given(
    batch=st.integers(1, 2),
    heads=st.integers(1, 3),
    length=st.integers(0, 140),
    dim=st.integers(1, 70),
    dim_v=st.integers(1, 40),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_shapes(batch, heads, length, dim, dim_v, dtype, seed):
    q, k, v = qkv(np.random.default_rng(seed), batch, heads, length, dim, dim_v, dtype)
    assert_close(causal_attention(q, k, v), expected(q, k, v), dtype)


class TestBadInput:
    def setup_method(self):
        self.x = np.zeros((1, 2, 5, 4), np.float32)

    def test_wrong_number_of_dimensions(self):
        with pytest.raises(ValueError, match=r"q: expected \(batch, heads, Lq, D\).*\(2, 5, 4\)"):
            causal_attention(self.x[0], self.x, self.x)
        with pytest.raises(ValueError, match=r"k: expected \(batch, kv_heads, Lk, D\)"):
            causal_attention(self.x, self.x[0], self.x)
        with pytest.raises(ValueError, match=r"v: expected \(batch, kv_heads, Lk, Dv\)"):
            causal_attention(self.x, self.x, self.x[0])

    def test_mismatched_shapes(self):
        with pytest.raises(
            ValueError, match=r"v: expected shape .*\(1, 2, 6, 4\), got \(1, 2, 5, 4\)"
        ):
            causal_attention(self.x, np.zeros((1, 2, 6, 4), np.float32), self.x)
        with pytest.raises(ValueError, match=r"k: expected shape .* got \(1, 2, 5, 3\)"):
            causal_attention(self.x, np.zeros((1, 2, 5, 3), np.float32), self.x)
        with pytest.raises(ValueError, match=r"k: expected shape .*\(2, 2, 5, 4\), got \(1, 2"):
            causal_attention(np.zeros((2, 2, 5, 4), np.float32), self.x, self.x)
        with pytest.raises(ValueError, match=r"v: expected shape .* got \(1, 3, 5, 4\)"):
            causal_attention(self.x, self.x, np.zeros((1, 3, 5, 4), np.float32))

    def test_more_queries_than_keys(self):
        with pytest.raises(
            ValueError,
            match=r"q: expected at most as many queries as keys.*"
            r"Lq = 5 > Lk = 3",
        ):
            causal_attention(self.x, self.x[:, :, :3], self.x[:, :, :3])

    def test_heads_not_a_multiple_of_kv_heads(self):
        q = np.zeros((1, 5, 5, 4), np.float32)
        with pytest.raises(
            ValueError, match="k: expected kv_heads dividing the 5 heads of q, got 2"
        ):
            causal_attention(q, self.x, self.x)
        with pytest.raises(
            ValueError, match="k: expected kv_heads dividing the 2 heads of q, got 0"
        ):
            causal_attention(self.x, self.x[:, :0], self.x[:, :0])

    def test_dtypes(self):
        with pytest.raises(TypeError, match="q: expected dtype float32 or float64, got int64"):
            causal_attention(self.x.astype(np.int64), self.x, self.x)
        with pytest.raises(TypeError, match=r"k: expected dtype float32 \(the dtype of q\)"):
            causal_attention(self.x, self.x.astype(np.float64), self.x)
        with pytest.raises(TypeError, match=r"v: expected dtype float32 \(the dtype of q\)"):
            causal_attention(self.x, self.x, self.x.astype(np.float16))

    def test_scale(self):
        with pytest.raises(ValueError, match="scale: expected a finite number, got nan"):
            causal_attention(self.x, self.x, self.x, scale=float("nan"))
        with pytest.raises(ValueError, match="scale: expected a finite number, got inf"):
            causal_attention(self.x, self.x, self.x, scale=float("inf"))
        with pytest.raises(TypeError, match="scale: expected a real number or None, got str"):
            causal_attention(self.x, self.x, self.x, scale="0.5")

    def test_not_an_array(self):
        with pytest.raises(TypeError, match="q: expected dtype float32 or float64, got object"):
            causal_attention(object(), self.x, self.x)

    def test_scale_is_keyword_only(self):
        with pytest.raises(TypeError):
            causal_attention(self.x, self.x, self.x, 0.5)

    def test_native_entry_point_rejects_bad_lengths(self):
        """The second line of checks: the Rust side refuses bad arrays on its own."""
        from seqkern import _native

        with pytest.raises(ValueError, match="k, v: expected shapes"):
            _native.causal_attention_f32(self.x, self.x[:, :1], self.x, 0.5)
        with pytest.raises(ValueError, match="q: expected at most as many queries as keys"):
            _native.causal_attention_f32(self.x, self.x[:, :, :2], self.x[:, :, :2], 0.5)
        with pytest.raises(ValueError, match="k: expected key/value heads dividing"):
            q = np.zeros((1, 3, 5, 4), np.float32)
            _native.causal_attention_f32(q, self.x, self.x, 0.5)
        with pytest.raises(ValueError, match="k: expected a unit stride along the last axis"):
            wide = np.zeros((1, 2, 5, 8), np.float32)[..., ::2]
            _native.causal_attention_f32(self.x, wide, self.x, 0.5)
        with pytest.raises(ValueError, match="v: expected non-negative strides"):
            _native.causal_attention_f32(self.x, self.x, self.x[:, :, ::-1], 0.5)

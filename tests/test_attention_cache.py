"""Causal attention with a KV cache: fewer queries than keys (bottom-right mask), grouped-query
heads, keys and values read in place from a preallocated cache, and the split-K decode path."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
from conftest import assert_close

from seqkern.attention import causal_attention
from seqkern.reference import attention as ref


def cached(rng, batch, kv_heads, length, dim, dtype, spare=7):
    """A (batch, kv_heads, length + spare, dim) cache filled with NaN past ``length`` (the
    kernel must never read there) and its view of the first ``length`` positions."""
    cache = np.full((batch, kv_heads, length + spare, dim), np.nan, dtype)
    cache[:, :, :length] = rng.standard_normal((batch, kv_heads, length, dim))
    return cache[:, :, :length]


def expected(q, k, v, scale=None):
    """The reference in float64, the oracle for both dtypes."""
    return ref.causal_attention(
        q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), scale=scale
    )


def inputs(rng, batch, heads, kv_heads, len_q, len_k, dim, dtype, dim_v=None):
    q = rng.standard_normal((batch, heads, len_q, dim)).astype(dtype)
    k = cached(rng, batch, kv_heads, len_k, dim, dtype)
    v = cached(rng, batch, kv_heads, len_k, dim if dim_v is None else dim_v, dtype)
    return q, k, v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("len_q", [1, 2, 17, "all"])
@pytest.mark.parametrize("group", [1, 4, 5])
def test_matches_reference(rng, each_simd_path, dtype, len_q, group):
    len_k = 300  # two key splits of the decode kernel, several tiles of the tiled one
    len_q = len_k if len_q == "all" else len_q
    q, k, v = inputs(rng, 2, 2 * group, 2, len_q, len_k, 33, dtype, dim_v=31)
    assert not k.flags.c_contiguous
    out = causal_attention(q, k, v)
    assert out.shape == (2, 2 * group, len_q, 31)
    assert_close(out, expected(q, k, v), dtype)


@pytest.mark.parametrize(
    "shape",
    [
        (1, 1, 1, 1, 1, 1),  # one query, one key
        (1, 4, 1, 1, 5, 7),  # all heads on one kv head
        (3, 5, 5, 3, 3, 2),  # Lq = Lk = 3 on the decode path
        (1, 8, 2, 4, 1030, 64),  # a partial last split
        (1, 20, 5, 1, 513, 128),  # BitNet-2B's heads, one key past two splits
        (2, 3, 1, 5, 6, 9),  # the smallest tiled call with Lq < Lk
        (1, 2, 2, 70, 75, 16),  # tiled, two query blocks
    ],
)
def test_shapes(rng, shape):
    batch, heads, kv_heads, len_q, len_k, dim = shape
    q, k, v = inputs(rng, batch, heads, kv_heads, len_q, len_k, dim, np.float32)
    assert_close(causal_attention(q, k, v), expected(q, k, v), np.float32)


def test_reference_groups_heads_like_repeated_kv(rng):
    """The reference's broadcast equals attention on explicitly repeated keys and values."""
    q = rng.standard_normal((2, 6, 4, 8))
    k, v = rng.standard_normal((2, 2, 9, 8)), rng.standard_normal((2, 2, 9, 5))
    repeated = ref.causal_attention(q, np.repeat(k, 3, axis=1), np.repeat(v, 3, axis=1))
    np.testing.assert_allclose(ref.causal_attention(q, k, v), repeated, rtol=1e-12)


@pytest.mark.parametrize("len_q", [1, 3, 30])
def test_last_queries_equal_the_tail_of_full_attention(rng, len_q):
    """Query i at position Lk - Lq + i: the result is the last Lq rows of square attention."""
    q, k, v = (rng.standard_normal((1, 2, 40, 8)) for _ in range(3))
    full = ref.causal_attention(q, k, v)
    tail = causal_attention(q[:, :, -len_q:], k, v)
    np.testing.assert_allclose(tail, full[:, :, -len_q:], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        ref.causal_attention(q[:, :, -len_q:], k, v), full[:, :, -len_q:], rtol=1e-12
    )


def test_old_signature_unchanged(rng):
    q, k, v = (rng.standard_normal((2, 3, 50, 16)).astype(np.float32) for _ in range(3))
    out = causal_attention(q, k, v)
    assert_close(out, expected(q, k, v), np.float32)
    assert_close(causal_attention(q, k, v, scale=0.3), expected(q, k, v, 0.3), np.float32)


def test_decoding_token_by_token_matches_the_prompt(rng):
    """Writing k, v into a growing cache and attending with one query per step gives the rows
    of one causal call over the whole prompt."""
    batch, heads, kv_heads, length, dim = 1, 4, 2, 40, 16
    q = rng.standard_normal((batch, heads, length, dim))
    k = rng.standard_normal((batch, kv_heads, length, dim))
    v = rng.standard_normal((batch, kv_heads, length, dim))
    cache_k = np.zeros((batch, kv_heads, 64, dim))
    cache_v = np.zeros((batch, kv_heads, 64, dim))
    steps = []
    for t in range(length):
        cache_k[:, :, t], cache_v[:, :, t] = k[:, :, t], v[:, :, t]
        steps.append(
            causal_attention(q[:, :, t : t + 1], cache_k[:, :, : t + 1], cache_v[:, :, : t + 1])
        )
    np.testing.assert_allclose(np.concatenate(steps, axis=2), expected(q, k, v), rtol=1e-10)


def test_other_strided_layouts(rng):
    """A (batch, L, heads, D) cache viewed as (batch, heads, L, D), and a stride-0 broadcast,
    are read in place; a non-unit stride along D is copied once."""
    q = rng.standard_normal((1, 4, 2, 16)).astype(np.float32)
    blhd = rng.standard_normal((1, 50, 2, 16)).astype(np.float32)
    k = v = blhd.transpose(0, 2, 1, 3)
    assert_close(causal_attention(q, k, v), expected(q, k, v), np.float32)
    row = rng.standard_normal(16).astype(np.float32)
    same = np.broadcast_to(row, (1, 2, 600, 16))
    out = causal_attention(q, same, same)
    assert_close(out, np.broadcast_to(row, out.shape).astype(np.float64), np.float32)
    wide = rng.standard_normal((1, 2, 50, 32)).astype(np.float32)[..., ::2]
    assert_close(causal_attention(q, wide, wide), expected(q, wide, wide), np.float32)
    flipped = rng.standard_normal((1, 2, 50, 16)).astype(np.float32)[:, :, ::-1]
    assert_close(causal_attention(q, flipped, flipped), expected(q, flipped, flipped), np.float32)


def _peak_and_current_kib():
    status = open("/proc/self/status").read()
    peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))
    current = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    return peak, current


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident size, to the current size
    except OSError:
        return False
    return True


@pytest.mark.skipif(sys.platform != "linux", reason="peak resident size from /proc")
@pytest.mark.parametrize("len_q", [1, 8])
def test_cache_views_are_read_without_a_copy(rng, len_q):
    """Views of 64 MiB of keys and of values: a copy of either would raise the process's peak
    resident size by 64 MiB; reading in place raises it by the output and the small partial
    buffers only (and this process's peak is reset first, so the test can fail)."""
    kv_heads, length, dim = 4, 32768, 128
    cache_k = np.ones((1, kv_heads, length + 1000, dim), np.float32)
    cache_v = np.ones((1, kv_heads, length + 1000, dim), np.float32)
    cache_v[:, :, :length] = rng.standard_normal(dim, dtype=np.float32)
    q = rng.standard_normal((1, 8, len_q, dim)).astype(np.float32)
    k, v = cache_k[:, :, :length], cache_v[:, :, :length]
    causal_attention(q, k, v)  # warm up the pool and the allocator
    if not _reset_peak():
        pytest.skip("/proc/self/clear_refs is not writable")
    _, before = _peak_and_current_kib()
    out = causal_attention(q, k, v)
    peak, _ = _peak_and_current_kib()
    view_kib = k.nbytes // 1024
    assert view_kib == 65536
    assert peak - before < view_kib // 4, (peak - before, view_kib)
    # Equal keys give equal weights: the output is the value row (up to float32 sums over
    # 32768 keys, whose rounding grows with the length: 1e-3).
    np.testing.assert_allclose(
        out, np.broadcast_to(cache_v[0, 0, 0], out.shape), rtol=1e-3, atol=1e-3
    )


def test_decode_is_independent_of_batch_and_threads(rng, threads):
    q, k, v = inputs(rng, 3, 8, 2, 1, 1500, 64, np.float32)
    threads(1)
    one_thread = causal_attention(q, k, v)
    threads(2)
    np.testing.assert_array_equal(causal_attention(q, k, v), one_thread)
    alone = causal_attention(q[1:2], k[1:2], v[1:2])
    np.testing.assert_array_equal(alone, one_thread[1:2])


def test_nan_in_a_key_reaches_only_the_queries_that_see_it(rng, each_simd_path):
    q, k, v = inputs(rng, 1, 2, 1, 3, 600, 8, np.float64)
    k = k.copy()
    k[0, 0, 598] = np.nan  # seen by the queries at positions 598 and 599, not 597
    out = causal_attention(q, k, v)
    assert np.isnan(out[:, :, 1:]).all()
    assert np.isfinite(out[:, :, 0]).all()
    assert_close(out[:, :, :1], expected(q[:, :, :1], k[:, :, :598], v[:, :, :598]), np.float64)

"""Whole-API guarantees: calls from many threads at once and long-sequence stability (memory
bounds are in test_memory.py)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import assert_close

from seqkern import rwkv, ternary
from seqkern.attention import causal_attention
from seqkern.mamba import causal_conv1d, selective_scan, selective_state_update, ssd_scan
from seqkern.reference import mamba as ref_mamba
from seqkern.reference import rwkv as ref_rwkv

# --- concurrency: each entry builds inputs from a seed and calls one kernel.


def _scan_call(seed):
    rng = np.random.default_rng(seed)
    b, d, n, length = 2, 40, 16, 300
    args = (
        rng.standard_normal((b, d, length), np.float32),
        rng.standard_normal((b, d, length), np.float32),
        -np.exp(rng.standard_normal((d, n))).astype(np.float32),
        rng.standard_normal((b, n, length), np.float32),
        rng.standard_normal((b, n, length), np.float32),
    )
    return lambda: selective_scan(*args, delta_softplus=True, return_last_state=True)


def _update_call(seed):
    rng = np.random.default_rng(seed)
    b, h, p, n = 2, 8, 16, 32
    state0 = rng.standard_normal((b, h, p, n))
    args = (
        rng.standard_normal((b, h, p)),
        rng.standard_normal((b, h)),
        -np.exp(rng.standard_normal(h)),
        rng.standard_normal((b, 1, n)),
        rng.standard_normal((b, 1, n)),
    )

    def call():
        state = state0.copy()  # each call owns its state: a shared state would be a data race
        return selective_state_update(state, *args, dt_softplus=True), state

    return call


def _attention_call(seed):
    rng = np.random.default_rng(seed)
    q, k, v = (rng.standard_normal((1, 4, 200, 32), np.float32) for _ in range(3))
    return lambda: causal_attention(q, k, v)


def _wkv_call(name):
    def make(seed):
        rng = np.random.default_rng(seed)
        shape = (1, 64, 4, 16)
        r, k, v, w = (rng.standard_normal(shape).astype(np.float32) for _ in range(4))
        w = -np.exp(w)
        if name == "wkv7":
            kk = k / np.linalg.norm(k, axis=-1, keepdims=True)
            return lambda: rwkv.wkv7(r, w, k, v, -kk, 0.5 * kk)
        u = rng.standard_normal((4, 16)).astype(np.float32)
        return lambda: rwkv.wkv6(r, k, v, w, u)

    return make


def _bitlinear_call(seed):
    rng = np.random.default_rng(seed)
    weight = ternary.quantize_weights(rng.standard_normal((300, 512)).astype(np.float32))
    x = rng.standard_normal((9, 512)).astype(np.float32)
    return lambda: ternary.bitlinear(x, weight)


def _ssd_call(seed):
    rng = np.random.default_rng(seed)
    b, length, h, p, n = 1, 100, 4, 8, 16
    x = rng.standard_normal((b, length, h, p)).astype(np.float32)
    dt = rng.standard_normal((b, length, h)).astype(np.float32)
    A = -np.exp(rng.standard_normal(h)).astype(np.float32)
    B, C = (rng.standard_normal((b, length, 1, n)).astype(np.float32) for _ in range(2))
    return lambda: ssd_scan(x, dt, A, B, C, dt_softplus=True, return_final_states=True)


def _conv_call(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 64, 300)).astype(np.float32)
    weight = rng.standard_normal((64, 4)).astype(np.float32)
    return lambda: causal_conv1d(x, weight, activation="silu", return_final_states=True)


def _wkv_small_call(name):
    def make(seed):
        rng = np.random.default_rng(seed)
        if name == "wkv4":
            k, v = (rng.standard_normal((2, 100, 64)).astype(np.float32) for _ in range(2))
            w, u = -np.exp(rng.standard_normal(64)).astype(np.float32), np.ones(64, np.float32)
            return lambda: rwkv.wkv4(w, u, k, v)
        r, k, v = (rng.standard_normal((1, 64, 4, 16)).astype(np.float32) for _ in range(3))
        w = -np.exp(rng.standard_normal((4, 16))).astype(np.float32)
        return lambda: rwkv.wkv5(r, k, v, w, np.ones((4, 16), np.float32))

    return make


CONCURRENT = {
    "ssd_scan": _ssd_call,
    "causal_conv1d": _conv_call,
    "wkv4": _wkv_small_call("wkv4"),
    "wkv5": _wkv_small_call("wkv5"),
    "bitlinear": _bitlinear_call,
    "wkv6": _wkv_call("wkv6"),
    "wkv7": _wkv_call("wkv7"),
    "selective_scan": _scan_call,
    "selective_state_update": _update_call,
    "causal_attention": _attention_call,
}


def _flatten(result):
    return [np.asarray(r) for r in (result if isinstance(result, tuple) else (result,))]


@pytest.mark.parametrize("kernel", sorted(CONCURRENT))
def test_eight_threads_return_what_serial_calls_return(kernel):
    calls = [CONCURRENT[kernel](seed) for seed in range(8)]
    serial = [_flatten(call()) for call in calls]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            concurrent = list(pool.map(lambda call: _flatten(call()), calls))
            for got, want in zip(concurrent, serial):
                for g, w in zip(got, want):
                    np.testing.assert_array_equal(g, w)


# --- numerical stability over long sequences


def relative_error(a, b):
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


def test_selective_scan_matches_the_reference_over_16k_steps():
    """mamba-130m-like parameters: A = -(1..16) per channel (S4D-real init), softplus(dt + bias)
    with the bias of dt ~ U[1e-3, 1e-1]."""
    rng = np.random.default_rng(0)
    dim, dstate, length = 8, 16, 16384
    A = -np.tile(np.arange(1, dstate + 1, dtype=np.float64), (dim, 1))
    dt_init = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), dim))
    bias = dt_init + np.log(-np.expm1(-dt_init))  # inverse softplus
    args = dict(
        u=rng.standard_normal((1, dim, length)),
        delta=0.1 * rng.standard_normal((1, dim, length)),
        A=A,
        B=rng.standard_normal((1, dstate, length)),
        C=rng.standard_normal((1, dstate, length)),
        D=np.ones(dim),
        z=rng.standard_normal((1, dim, length)),
        delta_bias=bias,
    )
    y_ref, h_ref = ref_mamba.selective_scan(**args, delta_softplus=True, return_last_state=True)
    y64, h64 = selective_scan(**args, delta_softplus=True, return_last_state=True)
    assert_close(y64, y_ref, np.float64)
    assert_close(h64, h_ref, np.float64)
    args32 = {k: v.astype(np.float32) for k, v in args.items()}
    y32, h32 = selective_scan(**args32, delta_softplus=True, return_last_state=True)
    assert np.all(np.isfinite(y32)) and np.all(np.isfinite(h32))
    assert relative_error(y32, y_ref) < 1e-4
    assert relative_error(h32, h_ref) < 1e-4


def test_selective_scan_nan_in_one_channel_stays_there_at_16k():
    rng = np.random.default_rng(1)
    dim, dstate, length = 4, 8, 16384
    u = rng.standard_normal((1, dim, length)).astype(np.float32)
    u[0, 2, 100] = np.nan
    y = selective_scan(
        u,
        np.full_like(u, -2.0),
        -np.ones((dim, dstate), np.float32),
        rng.standard_normal((1, dstate, length)).astype(np.float32),
        rng.standard_normal((1, dstate, length)).astype(np.float32),
        delta_softplus=True,
    )
    assert np.all(np.isnan(y[0, 2, 100:]))
    assert np.all(np.isfinite(np.delete(y, 2, axis=1)))


def _long_wkv_inputs(name, rng, length=16384):
    """RWKV-6/RWKV-4-like parameters: decays exp(-exp(x)) with x in [-6, 1] (time_decay init),
    unit-scale r, k, v; wkv4 at C = 32, the matrix kernels at H = 2, N = 16."""
    if name == "wkv4":
        c = 32
        w = -np.exp(rng.uniform(-6, 1, c))
        return (
            w,
            rng.uniform(0, 1, c),
            rng.standard_normal((1, length, c)),
            rng.standard_normal((1, length, c)),
        )
    shape = (1, length, 2, 16)
    r, k, v = (rng.standard_normal(shape) for _ in range(3))
    w = -np.exp(rng.uniform(-6, 1, shape))
    return r, k, v, w, rng.uniform(0, 1, (2, 16))


@pytest.mark.parametrize("name", ["wkv4", "wkv6"])
def test_rwkv_matches_the_reference_over_16k_steps(name):
    args = _long_wkv_inputs(name, np.random.default_rng(3))
    fn = getattr(rwkv, name)
    y_ref, s_ref = getattr(ref_rwkv, name)(*args)
    y64, s64 = fn(*args)
    assert_close(y64, y_ref, np.float64)
    assert_close(s64, s_ref, np.float64)
    y32, s32 = fn(*(a.astype(np.float32) for a in args))
    assert np.all(np.isfinite(y32)) and np.all(np.isfinite(s32))
    assert relative_error(y32, y_ref) < 1e-4
    # wkv4's (aa, bb) are scaled by exp(-pp): compared relative to the reference's row scale.
    assert relative_error(s32, s_ref) < 1e-4


def test_wkv6_nan_in_one_head_stays_there():
    r, k, v, w, u = _long_wkv_inputs("wkv6", np.random.default_rng(4), length=512)
    v = v.copy()
    v[0, 100, 1, 3] = np.nan
    y, state = rwkv.wkv6(r, k, v, w, u)
    assert np.all(np.isnan(y[0, 100:, 1, 3]))
    assert np.all(np.isfinite(y[:, :, 0])) and np.all(np.isfinite(state[:, 0]))

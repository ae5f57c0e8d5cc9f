"""Benchmark cases of the Mamba-2 family: the SSD scan of a mamba2-130m layer and its conv1d.

The SSD cases compare seqkern's chunked kernel with the NumPy chunked reference called with
the same arguments (ssd_scan caps chunks at 32 steps, the reference runs the chunk size it is
given), and with seqkern's own step-by-step recurrence over the same inputs (that case's second
column holds the Rust kernel, not NumPy).
"""

from __future__ import annotations

import numpy as np

from .. import mamba
from ..reference import mamba as ref
from .cases import Case

# mamba2-130m: d_inner 1536 = 24 heads x 64, d_state 128, one group, conv width 4.
SSD_SHAPE = dict(batch=1, length=2048, heads=24, headdim=64, dstate=128, groups=1)


def ssd_inputs(rng: np.random.Generator, batch, length, heads, headdim, dstate, groups, dtype):
    """x, dt, A, B, C, D, z, dt_bias of one Mamba-2 layer (A = -exp(U[0, log 16]) as in the
    module's initialisation; dt' = softplus(dt + dt_bias) about 0.01 to 0.1)."""

    def normal(*shape, scale=1.0, shift=0.0):
        return (scale * rng.standard_normal(shape) + shift).astype(dtype)

    return dict(
        x=normal(batch, length, heads, headdim),
        dt=normal(batch, length, heads, scale=0.5),
        A=-np.exp(rng.uniform(0.0, np.log(16.0), heads)).astype(dtype),
        B=normal(batch, length, groups, dstate),
        C=normal(batch, length, groups, dstate),
        D=normal(heads),
        z=normal(batch, length, heads, headdim),
        dt_bias=normal(heads, scale=0.5, shift=-3.0),
    )


def _ssd_vs_numpy(chunk_size):
    def make(rng):
        args = ssd_inputs(rng, **SSD_SHAPE, dtype=np.float32)
        return (
            lambda: mamba.ssd_scan(**args, chunk_size=chunk_size, dt_softplus=True),
            lambda: ref.ssd_scan_chunked(**args, chunk_size=chunk_size, dt_softplus=True),
        )

    return make


def _ssd_vs_sequential(chunk_size):
    def make(rng):
        args = ssd_inputs(rng, **SSD_SHAPE, dtype=np.float32)
        return (
            lambda: mamba.ssd_scan(**args, chunk_size=chunk_size, dt_softplus=True),
            lambda: mamba.ssd_scan_sequential(**args, dt_softplus=True),
        )

    return make


def _sequential_vs_numpy(rng):
    args = ssd_inputs(rng, **SSD_SHAPE, dtype=np.float32)
    return (
        lambda: mamba.ssd_scan_sequential(**args, dt_softplus=True),
        lambda: ref.ssd_scan_chunked(**args, chunk_size=256, dt_softplus=True),
    )


def conv_inputs(rng: np.random.Generator, batch=1, dim=1536, length=1024, width=4):
    x = rng.standard_normal((batch, dim, length), dtype=np.float32)
    weight = rng.standard_normal((dim, width), dtype=np.float32) / 2
    bias = rng.standard_normal(dim, dtype=np.float32)
    return x, weight, bias


def _conv(rng):
    x, weight, bias = conv_inputs(rng)
    return (
        lambda: mamba.causal_conv1d(x, weight, bias, "silu"),
        lambda: ref.causal_conv1d(x, weight, bias, "silu"),
    )


def _conv_update(rng):
    x, weight, bias = conv_inputs(rng, length=1)
    state = np.zeros((1, 1536, 3), np.float32)
    state_ref = state.copy()
    token = x[:, :, 0]
    return (
        lambda: mamba.causal_conv1d_update(token, state, weight, bias, "silu"),
        lambda: ref.causal_conv1d_update(token, state_ref, weight, bias, "silu"),
    )


SHAPE = "b1 L2048 h24 p64 n128 g1 f32"
CASES = [
    Case("mamba2", "ssd_scan (chunk_size 256)", SHAPE, _ssd_vs_numpy(256), ">= 10x"),
    Case("mamba2", "ssd_scan (chunk_size 32)", SHAPE, _ssd_vs_numpy(32)),
    Case("mamba2", "ssd_scan_sequential", SHAPE + " vs numpy chunk 256", _sequential_vs_numpy),
    Case(
        "mamba2",
        "ssd_scan | Rust sequential",
        SHAPE + " (2nd column: Rust)",
        _ssd_vs_sequential(32),
        "> 1x",
    ),
    Case("mamba2", "causal_conv1d", "b1 d1536 L1024 w4 f32, bias silu", _conv, "<= 1 ms"),
    Case("mamba2", "causal_conv1d_update", "b1 d1536 w4 f32 (one token)", _conv_update),
]

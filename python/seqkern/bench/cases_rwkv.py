"""Benchmark cases of the RWKV family (the 1.6B / 1.5B models' layer shapes: C = 2048,
H = 32 heads of N = 64)."""

from __future__ import annotations

import numpy as np

from .. import rwkv
from ..reference import rwkv as ref
from .cases import Case


def wkv4_inputs(rng: np.random.Generator, batch=1, length=1024, channels=2048, dtype=np.float32):
    """w, u, k, v of an RWKV-4 layer: w = -exp(time_decay), u = time_first."""
    w = -np.exp(rng.uniform(-3.0, 1.0, channels))
    u = rng.uniform(-1.0, 1.0, channels)
    k = rng.standard_normal((batch, length, channels))
    v = rng.standard_normal((batch, length, channels))
    return tuple(x.astype(dtype) for x in (w, u, k, v))


def wkv6_inputs(rng: np.random.Generator, batch=1, length=1024, heads=32, n=64, dtype=np.float32):
    """r, k, v, w, u of an RWKV-6 layer; w = -exp(time_decay + ...) spans weak to strong."""
    shape = (batch, length, heads, n)
    r, k, v = (rng.standard_normal(shape) for _ in range(3))
    w = -np.exp(rng.uniform(-6.0, 1.0, shape))
    u = rng.standard_normal((heads, n))
    return tuple(x.astype(dtype) for x in (r, k, v, w, u))


def wkv7_inputs(rng: np.random.Generator, batch=1, length=1024, heads=32, n=64, dtype=np.float32):
    """r, w, k, v, a, b of an RWKV-7 layer: w = -exp(-0.5) sigmoid(.), so the decay is in
    (0.545, 1); a = -kk, b = kk * alpha with kk unit per head and alpha in (0, 1)."""
    shape = (batch, length, heads, n)
    r, k, v, kk = (rng.standard_normal(shape) for _ in range(4))
    w = -np.exp(-0.5) / (1.0 + np.exp(-rng.standard_normal(shape)))
    kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
    alpha = rng.uniform(0.0, 1.0, shape)
    return tuple(x.astype(dtype) for x in (r, w, k, v, -kk, kk * alpha))


def _wkv4(rng):
    args = wkv4_inputs(rng)
    return lambda: rwkv.wkv4(*args), lambda: ref.wkv4(*args)


def _wkv5(rng):
    r, k, v, w, u = wkv6_inputs(rng)
    return lambda: rwkv.wkv5(r, k, v, w[0, 0], u), lambda: ref.wkv5(r, k, v, w[0, 0], u)


def _wkv6(rng):
    args = wkv6_inputs(rng)
    return lambda: rwkv.wkv6(*args), lambda: ref.wkv6(*args)


def _wkv7(rng):
    args = wkv7_inputs(rng)
    return lambda: rwkv.wkv7(*args), lambda: ref.wkv7(*args)


CASES = [
    Case("rwkv", "wkv4", "B1 T1024 C2048 f32", _wkv4, ">= 50x"),
    Case("rwkv", "wkv5", "B1 T1024 H32 N64 f32", _wkv5),
    Case("rwkv", "wkv6", "B1 T1024 H32 N64 f32", _wkv6, ">= 20x, <= 6 ms"),
    Case("rwkv", "wkv7", "B1 T1024 H32 N64 f32", _wkv7, ">= 20x, <= 8 ms"),
]

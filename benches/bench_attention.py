"""Causal attention: seqkern against the NumPy reference (B 1, H 32, D 64, float32).

Run with ``pytest benches/bench_attention.py --benchmark-enable``; the plain run only checks
that every benchmark still executes once.
"""

from __future__ import annotations

import numpy as np
import pytest

from seqkern.attention import causal_attention
from seqkern.reference import attention as ref

HEADS, DIM = 32, 64


def _inputs(length: int, dtype=np.float32):
    rng = np.random.default_rng(0)
    shape = (1, HEADS, length, DIM)
    return tuple(rng.standard_normal(shape).astype(dtype) for _ in range(3))


@pytest.mark.benchmark(group="causal_attention")
@pytest.mark.parametrize("length", [256, 1024, 4096])
def test_seqkern_f32(benchmark, length):
    q, k, v = _inputs(length)
    benchmark(causal_attention, q, k, v)


@pytest.mark.benchmark(group="causal_attention")
def test_seqkern_f64(benchmark):
    q, k, v = _inputs(1024, np.float64)
    benchmark(causal_attention, q, k, v)


@pytest.mark.benchmark(group="causal_attention")
@pytest.mark.parametrize("length", [256, 1024])
def test_numpy_reference_f32(benchmark, length):
    q, k, v = _inputs(length)
    benchmark(ref.causal_attention, q, k, v)

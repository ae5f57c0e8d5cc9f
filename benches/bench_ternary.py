"""pytest-benchmark suite of the ternary family: ``bitlinear`` (int8 x packed ternary weights)
against NumPy float32 ``x @ W.T`` at the same shapes. Run with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE unset so that OpenBLAS picks its best kernel, grouped by shape::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest benches/bench_ternary.py \\
        --benchmark-enable --benchmark-group-by=param:k,param:n,param:m
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from seqkern import ternary

SHAPES = [(4096, 4096), (2560, 6912), (6912, 2560)]
TOKENS = [1, 8, 512]


@lru_cache(maxsize=len(SHAPES))
def _weights(k: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(k * 7 + n)
    return rng.standard_normal((n, k), dtype=np.float32) * np.float32(0.02)


@lru_cache(maxsize=2 * len(SHAPES))
def _ternary(k: int, n: int, format: str) -> ternary.TernaryWeight:
    return ternary.quantize_weights(_weights(k, n), format=format)


@lru_cache(maxsize=len(SHAPES) * len(TOKENS))
def _tokens(m: int, k: int) -> np.ndarray:
    return np.random.default_rng(m).standard_normal((m, k), dtype=np.float32)


@pytest.mark.benchmark(group="ternary")
@pytest.mark.parametrize("format", ["i2", "t1"])
@pytest.mark.parametrize("m", TOKENS)
@pytest.mark.parametrize("k, n", SHAPES)
def test_bitlinear(benchmark, k, n, m, format):
    x, w = _tokens(m, k), _ternary(k, n, format)
    y = benchmark(ternary.bitlinear, x, w)
    assert y.shape == (m, n)


@pytest.mark.benchmark(group="ternary")
@pytest.mark.parametrize("m", TOKENS)
@pytest.mark.parametrize("k, n", SHAPES)
def test_numpy_float32_matmul(benchmark, k, n, m):
    x, W = _tokens(m, k), _weights(k, n)
    y = benchmark(np.matmul, x, W.T)
    assert y.shape == (m, n)

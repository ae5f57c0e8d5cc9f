"""RWKV WKV kernels at the 1.5B-model layer shape (C = 2048, H = 32 heads of N = 64, T = 1024,
float32), seqkern and its NumPy reference in the same group. Targets: wkv6 <= 6 ms and wkv7
<= 8 ms on 2 cores, each >= 20x its reference; wkv4 >= 50x its reference."""

from __future__ import annotations

import numpy as np
import pytest

from seqkern import rwkv
from seqkern.bench.cases_rwkv import wkv4_inputs, wkv6_inputs, wkv7_inputs
from seqkern.reference import rwkv as ref


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(0)


@pytest.mark.benchmark(group="wkv4")
@pytest.mark.parametrize("impl", ["seqkern", "numpy"])
def test_wkv4(benchmark, rng, impl):
    args = wkv4_inputs(rng)
    fn = rwkv.wkv4 if impl == "seqkern" else ref.wkv4
    y, _ = benchmark(fn, *args)
    assert y.shape == args[2].shape


@pytest.mark.benchmark(group="wkv5")
@pytest.mark.parametrize("impl", ["seqkern", "numpy"])
def test_wkv5(benchmark, rng, impl):
    r, k, v, w, u = wkv6_inputs(rng)
    fn = rwkv.wkv5 if impl == "seqkern" else ref.wkv5
    y, _ = benchmark(fn, r, k, v, w[0, 0], u)
    assert y.shape == r.shape


@pytest.mark.benchmark(group="wkv6")
@pytest.mark.parametrize("impl", ["seqkern", "numpy"])
def test_wkv6(benchmark, rng, impl):
    args = wkv6_inputs(rng)
    fn = rwkv.wkv6 if impl == "seqkern" else ref.wkv6
    y, _ = benchmark(fn, *args)
    assert y.shape == args[0].shape


@pytest.mark.benchmark(group="wkv7")
@pytest.mark.parametrize("impl", ["seqkern", "numpy"])
def test_wkv7(benchmark, rng, impl):
    args = wkv7_inputs(rng)
    fn = rwkv.wkv7 if impl == "seqkern" else ref.wkv7
    y, _ = benchmark(fn, *args)
    assert y.shape == args[0].shape


@pytest.mark.benchmark(group="wkv7-decode")
def test_wkv7_one_token_decode(benchmark, rng):
    # One token with a carried state: the per-token cost of generation.
    r, w, k, v, a, b = (x[:, :1] for x in wkv7_inputs(rng, length=1))
    state = np.zeros((1, 32, 64, 64), np.float32)
    y, _ = benchmark(rwkv.wkv7, r, w, k, v, a, b, state)
    assert y.shape == (1, 1, 32, 64)

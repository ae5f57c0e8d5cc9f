"""Mamba-2 kernels at mamba2-130m layer shapes: the chunked SSD scan (at several chunk lengths;
the public function caps them at 32, so longer ones call the kernel directly), the
step-by-step Rust recurrence over the same inputs, the NumPy chunked reference, and the causal
conv1d with its decode step.

Measure with ``pytest benches/bench_mamba2.py --benchmark-enable``; compare the groups side by
side (``--benchmark-group-by=group``).
"""

from __future__ import annotations

import numpy as np
import pytest

from seqkern import _native, mamba
from seqkern.bench.cases_mamba2 import SSD_SHAPE, conv_inputs, ssd_inputs
from seqkern.reference import mamba as ref


@pytest.fixture(scope="module")
def ssd_args():
    return ssd_inputs(np.random.default_rng(0), **SSD_SHAPE, dtype=np.float32)


@pytest.mark.benchmark(group="ssd_scan b1 L2048 h24 p64 n128 f32")
@pytest.mark.parametrize("chunk_size", [16, 32])
def test_ssd_scan_chunked(benchmark, ssd_args, chunk_size):
    benchmark(mamba.ssd_scan, **ssd_args, chunk_size=chunk_size, dt_softplus=True)


@pytest.mark.benchmark(group="ssd_scan b1 L2048 h24 p64 n128 f32")
@pytest.mark.parametrize("chunk_size", [64, 256])
def test_ssd_kernel_long_chunks(benchmark, ssd_args, chunk_size):
    a = ssd_args
    benchmark(
        _native.ssd_scan_f32,
        a["x"], a["dt"], a["A"], a["B"], a["C"], chunk_size, a["D"], a["z"], a["dt_bias"],
        None, True, 0.0, float("inf"), False,
    )  # fmt: skip


@pytest.mark.benchmark(group="ssd_scan b1 L2048 h24 p64 n128 f32")
def test_ssd_scan_sequential_rust(benchmark, ssd_args):
    benchmark(mamba.ssd_scan_sequential, **ssd_args, dt_softplus=True)


@pytest.mark.benchmark(group="ssd_scan b1 L2048 h24 p64 n128 f32")
def test_ssd_scan_numpy_chunked(benchmark, ssd_args):
    benchmark.pedantic(
        ref.ssd_scan_chunked,
        kwargs=dict(ssd_args, chunk_size=256, dt_softplus=True),
        rounds=3,
        iterations=1,
    )


@pytest.fixture(scope="module")
def conv_args():
    return conv_inputs(np.random.default_rng(0))


@pytest.mark.benchmark(group="causal_conv1d b1 d1536 L1024 w4 f32")
@pytest.mark.parametrize("activation", [None, "silu"])
def test_causal_conv1d(benchmark, conv_args, activation):
    x, weight, bias = conv_args
    benchmark(mamba.causal_conv1d, x, weight, bias, activation)


@pytest.mark.benchmark(group="causal_conv1d b1 d1536 L1024 w4 f32")
def test_causal_conv1d_numpy(benchmark, conv_args):
    x, weight, bias = conv_args
    benchmark(ref.causal_conv1d, x, weight, bias, "silu")


@pytest.mark.benchmark(group="causal_conv1d_update b1 d1536 w4 f32")
def test_causal_conv1d_update(benchmark, conv_args):
    x, weight, bias = conv_args
    state = np.zeros((1, 1536, 3), np.float32)
    benchmark(mamba.causal_conv1d_update, x[:, :, 0], state, weight, bias, "silu")


@pytest.mark.benchmark(group="causal_conv1d_update b1 d1536 w4 f32")
def test_causal_conv1d_update_numpy(benchmark, conv_args):
    x, weight, bias = conv_args
    state = np.zeros((1, 1536, 3), np.float32)
    benchmark(ref.causal_conv1d_update, x[:, :, 0], state, weight, bias, "silu")

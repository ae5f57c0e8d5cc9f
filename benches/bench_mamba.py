"""pytest-benchmark suites of the Mamba kernels at mamba-130m shapes, seqkern and NumPy side by
side: ``pytest benches --benchmark-enable -k mamba``."""

from __future__ import annotations

import numpy as np
import pytest

from seqkern import mamba
from seqkern.bench.cases_mamba import scan_inputs
from seqkern.reference import mamba as ref

LENGTHS = [128, 1024]


@pytest.fixture(scope="module", params=LENGTHS, ids=lambda n: f"L{n}")
def scan_args(request):
    return scan_inputs(np.random.default_rng(0), length=request.param)


@pytest.mark.benchmark(group="selective_scan")
def test_selective_scan_seqkern(benchmark, scan_args):
    y = benchmark(mamba.selective_scan, *scan_args, delta_softplus=True)
    assert y.shape == scan_args[0].shape


@pytest.mark.benchmark(group="selective_scan")
def test_selective_scan_numpy(benchmark, scan_args):
    # The reference loops over L in Python (~0.6 s at L 1024): one round is enough.
    y = benchmark.pedantic(
        ref.selective_scan, args=scan_args, kwargs={"delta_softplus": True}, rounds=1
    )
    assert y.shape == scan_args[0].shape


@pytest.fixture(scope="module")
def decode_args():
    u, delta, A, B, C, D, z, bias = scan_inputs(np.random.default_rng(0), length=1)
    state = np.zeros((1, A.shape[0], A.shape[1]), np.float32)
    return state, u[..., 0], delta[..., 0], A, B[..., 0], C[..., 0], D, z[..., 0], bias, True


@pytest.mark.benchmark(group="selective_state_update")
def test_selective_state_update_seqkern(benchmark, decode_args):
    out = benchmark(mamba.selective_state_update, *decode_args)
    assert out.shape == decode_args[1].shape


@pytest.mark.benchmark(group="selective_state_update")
def test_selective_state_update_numpy(benchmark, decode_args):
    out = benchmark(ref.selective_state_update, *decode_args)
    assert out.shape == decode_args[1].shape

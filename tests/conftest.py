"""Shared fixtures: random inputs, thread counts and the SIMD path."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import seqkern
from seqkern import _native

settings.register_profile(
    "fast", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "slow", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))

# Tolerances against the float64 reference. float32 kernels carry a relative rounding error of
# a few eps32 (1.2e-7) per step, accumulated over short sequences and dstate-long dot
# products, plus the polynomial exp (< 3e-7 relative): rtol 1e-4 leaves a wide margin while
# still catching any real error. atol is scaled to the output's magnitude because outputs
# pass near zero, where a relative bound means nothing.
RTOL = {np.float32: 1e-4, np.float64: 1e-10}


def assert_close(actual: np.ndarray, expected: np.ndarray, dtype, atol_scale: float = 1e-5) -> None:
    """Checks ``actual`` against a float64 ``expected`` with the tolerance of ``dtype``."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == np.dtype(dtype), actual.dtype
    rtol = RTOL[np.dtype(dtype).type]
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    atol = (atol_scale if dtype == np.float32 else 1e-12) * max(scale, 1.0)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def threads():
    """Yields a setter for the thread count and restores the previous count afterwards."""
    before = seqkern.get_num_threads()
    yield seqkern.set_num_threads
    seqkern.set_num_threads(before)


# The SIMD paths, lowest first. The session's path (the best the CPU has, or what SEQKERN_SIMD
# asked for) is the highest the tests run: `SEQKERN_SIMD=avx2 pytest` never runs AVX-512 code.
PATHS = ("scalar", "avx2", "avx512")
SESSION_PATH = seqkern.build_info()["simd"]
SIMD_PATHS = PATHS[: PATHS.index(SESSION_PATH) + 1] if SESSION_PATH in PATHS else ("scalar",)


@pytest.fixture
def simd_path():
    """Yields a setter for the SIMD path ("scalar", "avx2", "avx512", "auto") and restores the
    path that was chosen before (not "auto": under SEQKERN_SIMD=avx2 that stays AVX2)."""
    before = _native.get_simd_path()
    yield _native.set_simd_path
    _native.set_simd_path(before)


@pytest.fixture(params=PATHS)
def each_simd_path(request, simd_path):
    """Runs a test on every SIMD path up to the session's: portable, AVX2 and AVX-512 on an
    AVX-512 machine. Paths above it are skipped, naming the reason."""
    if request.param not in SIMD_PATHS:
        pytest.skip(f"{request.param} is above this session's path ({SESSION_PATH})")
    assert simd_path(request.param) == request.param
    assert seqkern.build_info()["simd"] == request.param
    return request.param

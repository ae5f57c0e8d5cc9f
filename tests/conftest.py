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

# Tolerances against the float64 reference, per element:
#
#     |actual - expected| <= TOL[dtype] * (|expected| + row scale)
#
# where the row scale is max |expected| along the last axis (a time series of one channel, a
# head's channels at one step, one query's values): outputs pass near zero, where a purely
# relative bound means nothing, and the rounding error of an element is set by the magnitudes
# of its own row, not by the largest value anywhere in the array. TOL is about 10x the worst
# error measured over the whole suite on every SIMD path (README, "Errors and guarantees").
# Measured worst: 1.7e-5 in float32 (wkv5, L 257), 9.8e-14 in float64 (ssd_scan, L 300).
TOL = {np.float32: 2e-4, np.float64: 1e-12}
_ERROR_LOG = os.environ.get("SEQKERN_ERROR_LOG")


def row_errors(actual: np.ndarray, expected: np.ndarray) -> float:
    """The largest |actual - expected| / (|expected| + row scale) (0 for empty arrays)."""
    if expected.size == 0:
        return 0.0
    expected = expected.astype(np.float64)
    both_inf = np.isinf(expected) & (actual == expected)
    row = np.max(np.abs(np.where(np.isfinite(expected), expected, 0.0)), axis=-1, keepdims=True)
    scale = np.abs(expected) + row
    diff = np.abs(actual.astype(np.float64) - expected)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(diff == 0, 0.0, diff / scale)
    ratio = np.where(both_inf | (np.isnan(actual) & np.isnan(expected)), 0.0, ratio)
    return float(np.max(np.nan_to_num(ratio, nan=np.inf)))


def assert_close(actual: np.ndarray, expected: np.ndarray, dtype) -> None:
    """Checks ``actual`` against a float64 ``expected`` with the tolerance of ``dtype``."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == np.dtype(dtype), actual.dtype
    worst = row_errors(actual, expected)
    if _ERROR_LOG:
        with open(_ERROR_LOG, "a") as log:
            test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
            log.write(f"{np.dtype(dtype).name} {worst!r} {test}\n")
    tol = TOL[np.dtype(dtype).type]
    assert worst <= tol, f"worst error {worst:.3g} of the row scale > {tol:.3g}"


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

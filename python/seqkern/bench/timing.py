"""Timing helpers: medians of repeated calls."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def median_seconds(fn: Callable[[], object], repeats: int = 7, min_seconds: float = 0.05) -> float:
    """The median wall time of ``fn()`` over ``repeats`` rounds, after a warm-up (see
    :func:`warm_up`).

    Each round runs ``fn`` as many times as fit in ``min_seconds`` (at least once) and counts
    the mean, so that microsecond-scale calls are not dominated by timer resolution.
    """
    inner = calls_per_round(fn, min_seconds)
    return statistics.median(round_seconds(fn, inner) for _ in range(repeats))


def calls_per_round(fn: Callable[[], object], min_seconds: float = 0.05) -> int:
    """Warms up (see :func:`warm_up`) and returns how many calls of ``fn`` fill
    ``min_seconds``."""
    warm_up(fn)
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    return max(1, int(min_seconds / once))


# After the cores have idled (a sleep, or a single-threaded NumPy reference), the first
# 10-50 ms of a two-thread kernel run up to 2x slower on the build VM while the cores come
# back up to speed; rounds are timed after this much steady calling.
WARM_UP_SECONDS = 0.1


def warm_up(fn: Callable[[], object], seconds: float = WARM_UP_SECONDS) -> None:
    """Calls ``fn`` for ``seconds`` (at least once)."""
    end = time.perf_counter() + seconds
    fn()
    while time.perf_counter() < end:
        fn()


def timed_warm_up(
    fn: Callable[[], object], seconds: float = WARM_UP_SECONDS, least: int = 2
) -> list[float]:
    """:func:`warm_up` (but at least ``least`` calls), returning the wall time of each call."""
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < least or time.perf_counter() < end:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def round_seconds(fn: Callable[[], object], inner: int) -> float:
    """The mean wall time of ``inner`` back-to-back calls of ``fn()``."""
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def sample_seconds(fn: Callable[[], object], repeats: int, warmup: bool = True) -> list[float]:
    """Wall times of ``repeats`` calls of ``fn()``, after untimed warm-up calls (see
    :func:`warm_up`) unless ``warmup`` is False (for calls long enough that caches, lazy set-up
    and idle cores do not matter)."""
    if warmup:
        warm_up(fn)
    samples = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


# OpenBLAS's threads busy-wait for a while after a call (about 0.1 s) before they sleep; a
# seqkern timing taken right after a NumPy reference would share the cores with them.
BLAS_SETTLE_SECONDS = 0.25


def settle_after_numpy() -> None:
    """Waits until NumPy's BLAS threads have gone to sleep."""
    time.sleep(BLAS_SETTLE_SECONDS)


def keep_freed_memory() -> bool:
    """Asks glibc's allocator to keep freed memory for reuse (no mmap / trim of large blocks).

    A prompt's activations are arrays of tens of MB; by default glibc serves some of them with
    fresh mmaps and returns them on free, so a call may or may not pay for faulting in its
    pages depending on the allocator's state, which moved whole-model prefill times (and the
    matmul floor beside them) by up to 1.8x between rounds. With this both sides run on
    reused memory. Returns whether the setting took (False off glibc).
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = mallopt(m_mmap_threshold, 1 << 30) == 1
    return mallopt(m_trim_threshold, (1 << 31) - 1) == 1 and ok

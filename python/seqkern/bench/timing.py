"""Timing helpers: medians of repeated calls."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def median_seconds(fn: Callable[[], object], repeats: int = 7, min_seconds: float = 0.05) -> float:
    """The median wall time of ``fn()`` over ``repeats`` rounds, after one warm-up call.

    Each round runs ``fn`` as many times as fit in ``min_seconds`` (at least once) and counts
    the mean, so that microsecond-scale calls are not dominated by timer resolution.
    """
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-7)
    inner = max(1, int(min_seconds / once))
    rounds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        rounds.append((time.perf_counter() - start) / inner)
    return statistics.median(rounds)

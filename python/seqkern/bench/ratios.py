"""Prints seqkern against its NumPy reference, side by side, for one shape per kernel.

Usage: ``python -m seqkern.bench.ratios [--family NAME] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

import numpy as np

import seqkern

from .cases import Case, all_cases
from .timing import calls_per_round, round_seconds, settle_after_numpy, warm_up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--family", help="only this family (mamba, rwkv, ternary, attention)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per timing (median)")
    args = parser.parse_args(argv)
    info = seqkern.build_info()
    print(
        f"seqkern {info['version']} ({info['profile']}), SIMD {info['simd']}, "
        f"{info['threads']} threads, numpy {np.__version__}"
    )
    header = f"{'kernel':<28} {'shape':<46} {'seqkern':>11} {'numpy':>11} {'ratio':>8}  target"
    print(header)
    print("-" * len(header))
    for case in all_cases():
        if args.family and case.family != args.family:
            continue
        result = measure_case(case, args.repeats)
        t_fast, t_ref = result["seqkern_seconds"], result["numpy_seconds"]
        print(
            f"{case.kernel:<28} {case.shape:<46} {_ms(t_fast):>11} {_ms(t_ref):>11} "
            f"{t_ref / t_fast:>7.1f}x  {case.target}",
            flush=True,
        )
    return 0


def measure_case(case: Case, repeats: int) -> dict[str, Any]:
    """Times one case in interleaved rounds: ``repeats`` rounds of seqkern with rounds of the
    (slower) reference between them, half as many, so that both sides see the same moments of
    a shared machine; medians in seconds and their ratio. A round is the mean of the calls
    that fit in 50 ms (at least one), after a warm-up (see :func:`.timing.warm_up`)."""
    fast, reference = case.make(np.random.default_rng(0))
    reference_inner = calls_per_round(reference)
    settle_after_numpy()
    fast_inner = calls_per_round(fast)
    fast_rounds, reference_rounds = [], []
    for i in range(repeats):
        warm_up(fast)
        fast_rounds.append(round_seconds(fast, fast_inner))
        if i % 2 == 1 or (i == repeats - 1 and not reference_rounds):
            warm_up(reference)  # wakes NumPy's BLAS threads and the cores, as for seqkern
            reference_rounds.append(round_seconds(reference, reference_inner))
            settle_after_numpy()
    t_fast, t_ref = statistics.median(fast_rounds), statistics.median(reference_rounds)
    return {
        "family": case.family,
        "kernel": case.kernel,
        "shape": case.shape,
        "target": case.target,
        "seqkern_seconds": t_fast,
        "numpy_seconds": t_ref,
        "speedup": t_ref / t_fast,
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


if __name__ == "__main__":
    sys.exit(main())

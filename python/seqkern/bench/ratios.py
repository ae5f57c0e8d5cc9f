"""Prints seqkern against its NumPy reference, side by side, for one shape per kernel.

Usage: ``python -m seqkern.bench.ratios [--family NAME] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

import seqkern

from .cases import Case, all_cases
from .timing import median_seconds, settle_after_numpy


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
    """Times one case: seqkern over ``repeats`` rounds, the (slower) reference over half as
    many; medians in seconds and their ratio."""
    fast, reference = case.make(np.random.default_rng(0))
    t_fast = median_seconds(fast, repeats=repeats)
    t_ref = median_seconds(reference, repeats=max(1, repeats // 2), min_seconds=0.0)
    settle_after_numpy()
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

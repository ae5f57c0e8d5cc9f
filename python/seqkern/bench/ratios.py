"""Prints seqkern against its NumPy reference, side by side, for one shape per kernel.

Usage: ``python -m seqkern.bench.ratios [--family NAME] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import seqkern

from .cases import all_cases
from .timing import median_seconds


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
        fast, reference = case.make(np.random.default_rng(0))
        t_fast = median_seconds(fast, repeats=args.repeats)
        t_ref = median_seconds(reference, repeats=max(1, args.repeats // 2), min_seconds=0.0)
        print(
            f"{case.kernel:<28} {case.shape:<46} {_ms(t_fast):>11} {_ms(t_ref):>11} "
            f"{t_ref / t_fast:>7.1f}x  {case.target}",
            flush=True,
        )
    return 0


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


if __name__ == "__main__":
    sys.exit(main())

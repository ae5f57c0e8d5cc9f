"""``seqkern-score``: the log-likelihood and perplexity of every document of a corpus."""

from __future__ import annotations

import argparse
import sys
from typing import Optional

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqkern-score",
        description="Score a corpus (JSON Lines or Parquet; rows with 'id' and 'input_ids' or "
        "'text') with a model on seqkern's kernels. Writes Parquet with id, n_tokens, "
        "logprob_sum (natural log, tokens 1..n-1) and perplexity (null below 2 tokens). "
        "Progress goes to stderr.",
    )
    parser.add_argument("model", help="model folder, or a URI of one (s3://, gs://, file://)")
    parser.add_argument("--input", required=True, help="JSON Lines (.jsonl[.gz]) or Parquet")
    parser.add_argument("--output", required=True, help="Parquet file to write")
    parser.add_argument(
        "--engine",
        choices=["local", "ray"],
        default="local",
        help="local: this process, resumable, input order (default); ray: a Ray cluster",
    )
    parser.add_argument("--address", help="Ray cluster to join (default: start a local one)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="documents per forward call at most, as many as fit whole in --max-tokens (8)",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=1024,
        help="tokens per forward call; longer documents run in pieces through the cache (1024)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="threads (local) or CPUs per Ray actor (1)"
    )
    parser.add_argument("--actors", type=int, default=None, help="Ray actors (cluster CPUs)")
    parser.add_argument(
        "--dtype", choices=["float32", "float64"], default="float32", help="compute dtype"
    )
    parser.add_argument("--restart", action="store_true", help="discard an interrupted run's parts")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``seqkern-score``."""
    args = _parser().parse_args(argv)
    from seqkern.score import score

    try:
        score(
            args.model,
            args.input,
            args.output,
            engine=args.engine,
            address=args.address,
            batch_size=args.batch_size,
            max_tokens=args.max_tokens,
            dtype=args.dtype,
            threads=args.threads,
            actors=args.actors,
            restart=args.restart,
            progress=None if args.quiet else sys.stderr,
        )
    except (OSError, ValueError, TypeError, ImportError) as error:
        print(f"seqkern-score: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"seqkern-score: interrupted; rerun the same command to resume from "
            f"{args.output}.parts",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``seqkern-generate``: generate text (or token ids) from a model folder on seqkern's kernels.

Text is streamed as it is generated; a last line on stderr gives the prompt length, prefill and
decode speed and the cache's size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqkern-generate",
        description="Generate from a model (a transformers folder, or an RWKV-7 .safetensors "
        "file) on seqkern's kernels. Generated text goes to stdout as it comes; the timing line "
        "goes to stderr.",
    )
    parser.add_argument(
        "path", help="model folder (config.json + safetensors) or .safetensors file"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="prompt text, tokenized with the folder's tokenizer.json")
    source.add_argument("--ids", help="prompt as comma-separated token ids, e.g. 1,2,3")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (64)")
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling temperature; 0 is greedy (default 0)",
    )
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest")
    parser.add_argument(
        "--top-p",
        type=float,
        default=None,
        help="sample within the smallest set of probability >= p (nucleus)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    parser.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float32",
        help="compute dtype (default float32)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="kernel and BLAS threads (default: all cores)"
    )
    parser.add_argument(
        "--backend",
        choices=["seqkern", "numpy"],
        default="seqkern",
        help="kernels: seqkern (Rust) or numpy (the reference; slow)",
    )
    parser.add_argument(
        "--no-eos", action="store_true", help="do not stop at the tokenizer's end-of-sequence token"
    )
    return parser


def _tokenizer(path: Path) -> Optional[Any]:
    folder = path if path.is_dir() else path.parent
    file = folder / "tokenizer.json"
    if not file.is_file():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError as error:
        raise SystemExit(
            "seqkern-generate: reading tokenizer.json needs the tokenizers package: "
            "pip install 'seqkern[models]'"
        ) from error
    return Tokenizer.from_file(str(file))


def _eos_id(model: Any, tokenizer: Optional[Any]) -> Optional[int]:
    eos = model.config.get("eos_token_id")
    if isinstance(eos, int):
        return eos
    if tokenizer is not None:
        for name in ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>"):
            token = tokenizer.token_to_id(name)
            if token is not None:
                return token
    return None


def _prompt_ids(args: argparse.Namespace, tokenizer: Optional[Any]) -> np.ndarray:
    if args.ids is not None:
        try:
            return np.array([int(part) for part in args.ids.split(",") if part.strip()], np.int64)
        except ValueError as error:
            message = f"seqkern-generate: --ids: expected integers like 1,2,3 ({error})"
            raise SystemExit(message) from None
    if tokenizer is None:
        raise SystemExit(
            f"seqkern-generate: --prompt needs tokenizer.json beside the model ({args.path}); "
            "give --ids instead"
        )
    return np.array(tokenizer.encode(args.prompt).ids, np.int64)


class _Stream:
    """Prints each new token as it comes: the text decoded so far, minus what was printed."""

    def __init__(self, tokenizer: Optional[Any]):
        self.tokenizer = tokenizer
        self.tokens: list[int] = []
        self.printed = ""
        self.times: list[float] = []

    def __call__(self, tokens: np.ndarray) -> None:
        self.times.append(time.perf_counter())
        self.tokens.append(int(tokens[0]))
        if self.tokenizer is None:
            sys.stdout.write(("," if len(self.tokens) > 1 else "") + str(self.tokens[-1]))
        else:
            text = self.tokenizer.decode(self.tokens)
            if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more bytes
                return
            sys.stdout.write(text[len(self.printed) :])
            self.printed = text
        sys.stdout.flush()


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of ``seqkern-generate``."""
    args = _parser().parse_args(argv)
    import seqkern
    from seqkern import models

    if args.threads is not None:
        seqkern.set_num_threads(args.threads)
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(args.threads)
        except ImportError:
            pass
    path = Path(args.path)
    try:
        model = models.load(path, dtype=args.dtype, backend=args.backend)
        tokenizer = _tokenizer(path)
        ids = _prompt_ids(args, tokenizer)
        stream = _Stream(tokenizer)
        eos = None if args.no_eos else _eos_id(model, tokenizer)
        start = time.perf_counter()
        _, cache = model.generate(
            ids,
            args.max_new_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            eos_token_id=eos,
            callback=stream,
            return_cache=True,
        )
    except (OSError, ValueError, TypeError) as error:
        print(f"seqkern-generate: {error}", file=sys.stderr)
        return 2
    sys.stdout.write("\n")
    sys.stdout.flush()
    _report(len(ids), start, stream.times, cache)
    return 0


def _report(prompt_len: int, start: float, times: list[float], cache: Any) -> None:
    prefill = (times[0] - start) if times else float("nan")
    decode_tokens = len(times) - 1
    decode = decode_tokens / (times[-1] - times[0]) if decode_tokens > 0 else float("nan")
    print(
        f"prompt tokens: {prompt_len}, prefill: {prompt_len / prefill:.1f} tokens/s, "
        f"decode: {decode:.1f} tokens/s ({decode_tokens} tokens), cache: {cache.nbytes} bytes",
        file=sys.stderr,
    )


if __name__ == "__main__":
    sys.exit(main())

"""Whole models at published shapes (random weights) against their matmul floor.

For each model: the prefill of a prompt (all logits) and the decode of one token after a
context, on seqkern, on the NumPy references (the same model code, ``backend="numpy"``), and
the model's own linear layers alone (every ``x @ W.T`` of the model, back to back in NumPy:
T rows for the prefill, one row for the decode: the floor a model cannot beat without faster
matmuls). Rounds of the three are interleaved so that they see the same moments of a shared
machine; the allocator is asked to keep freed memory (``timing.keep_freed_memory``), so
that neither side pays, by chance, for faulting in fresh pages; each time is the median of
its rounds, each ratio the median over rounds of the
ratio measured within the round.

Usage: ``python -m seqkern.bench.models [--model NAME ...] [--prompt 1024] [--context 512]
[--repeats 5] [--skip-numpy] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

import seqkern

from .timing import keep_freed_memory, settle_after_numpy, warm_up

# Published shapes (random weights): name -> transformers-style config.
PUBLISHED: dict[str, dict[str, Any]] = {
    "mamba-130m": dict(
        model_type="mamba",
        vocab_size=50280,
        hidden_size=768,
        num_hidden_layers=24,
        state_size=16,
        expand=2,
        conv_kernel=4,
        time_step_rank="auto",
        tie_word_embeddings=True,
    ),
    "mamba2-130m": dict(
        model_type="mamba2",
        vocab_size=50280,
        hidden_size=768,
        num_hidden_layers=24,
        num_heads=24,
        head_dim=64,
        n_groups=1,
        state_size=128,
        expand=2,
        conv_kernel=4,
        chunk_size=256,
        tie_word_embeddings=True,
    ),
}


def build(name: str, dtype: Any = np.float32) -> Any:
    """The model ``name`` of :data:`PUBLISHED` with random weights, on seqkern."""
    from ..models.testing import random_model

    return random_model(PUBLISHED[name], dtype=dtype)


def floor_prefill(model: Any, length: int) -> Callable[[], None]:
    """Every linear layer of ``model`` on ``length`` rows, back to back."""
    rng = np.random.default_rng(0)
    weights = model.linear_weights()
    inputs = {
        w.shape[1]: rng.standard_normal((length, w.shape[1])).astype(model.dtype) for w in weights
    }

    def run() -> None:
        for w in weights:
            inputs[w.shape[1]] @ w.T

    return run


def floor_decode(model: Any) -> Callable[[], None]:
    """Every linear layer of ``model`` on one row: each weight streamed from memory once."""
    return floor_prefill(model, 1)


def _prefill(model: Any, ids: np.ndarray) -> Callable[[], None]:
    return lambda: model(ids)


def _decode(model: Any, ids: np.ndarray, context: int, tokens: int) -> Callable[[], None]:
    """One call decodes ``tokens`` tokens after a ``context``-token prompt (the cache is reset
    to the prompt's state for each call)."""
    _, prompt_cache = model.forward(ids[:, :context])
    token = ids[:, context : context + 1]

    def run() -> None:
        cache = prompt_cache.copy()
        for _ in range(tokens):
            model.forward(token, cache)

    return run


def interleaved(
    fns: dict[str, Callable[[], None]], repeats: dict[str, int], per_call: dict[str, int]
) -> dict[str, list[float]]:
    """Seconds per unit of each function in each round (rounds interleaved, so that a slow
    moment of a shared machine hits the functions of one round alike); ``per_call`` divides."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        warm_up(fn, 0.3)
    for i in range(max(repeats.values())):
        for name, fn in fns.items():
            if i >= repeats[name]:
                continue
            start = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - start) / per_call[name])
            if name == "numpy":
                settle_after_numpy()
    return samples


def round_ratio(samples: dict[str, list[float]]) -> float:
    """The median over rounds of seqkern / floor measured in the same round."""
    return statistics.median(s / f for s, f in zip(samples["seqkern"], samples["floor"]))


def _medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in samples.items()}


def measure(
    name: str, prompt: int, context: int, repeats: int, numpy: bool, decode_tokens: int = 8
) -> dict[str, Any]:
    """Prefill and decode figures of one published model (seconds; ratios to the floor)."""
    model = build(name)
    reference = model.with_backend("numpy")
    ids = np.random.default_rng(1).integers(0, model.vocab_size, (1, max(prompt, context + 1)))
    prefill = {"seqkern": _prefill(model, ids[:, :prompt]), "floor": floor_prefill(model, prompt)}
    decode = {"seqkern": _decode(model, ids, context, decode_tokens), "floor": floor_decode(model)}
    counts = {"seqkern": repeats, "floor": repeats, "numpy": 1}
    if numpy:
        prefill["numpy"] = _prefill(reference, ids[:, :prompt])
        decode["numpy"] = _decode(reference, ids, context, 2)
    prefill_rounds = interleaved(prefill, counts, {"seqkern": 1, "floor": 1, "numpy": 1})
    decode_rounds = interleaved(
        decode,
        dict(counts, numpy=max(1, repeats // 2)),
        {"seqkern": decode_tokens, "floor": 1, "numpy": 2},
    )
    prefill_s, decode_s = _medians(prefill_rounds), _medians(decode_rounds)
    cache = model.forward(ids[:, :context])[1]
    return {
        "model": name,
        "prompt": prompt,
        "context": context,
        "prefill_seconds": prefill_s,
        "prefill_vs_floor": round_ratio(prefill_rounds),
        "decode_seconds": decode_s,
        "decode_vs_floor": round_ratio(decode_rounds),
        "cache_bytes": cache.nbytes,
        "parameters": model.num_parameters,
    }


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        action="append",
        choices=sorted(PUBLISHED),
        help="a model to measure (repeatable; default: all)",
    )
    parser.add_argument("--prompt", type=int, default=1024, help="prefill length (1024)")
    parser.add_argument("--context", type=int, default=512, help="decode after this many (512)")
    parser.add_argument("--repeats", type=int, default=5, help="rounds per figure (5)")
    parser.add_argument("--skip-numpy", action="store_true", help="skip the numpy backend")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    reused = keep_freed_memory()
    info = seqkern.build_info()
    print(
        f"seqkern {info['version']}, SIMD {info['simd']}, {info['threads']} threads, "
        f"numpy {np.__version__}; float32, batch 1, random weights"
    )
    header = (
        f"{'model':<13} {'prefill':>10} {'numpy':>10} {'floor':>10} {'ratio':>6}   "
        f"{'decode/tok':>10} {'numpy':>10} {'floor':>10} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    results = []
    for name in args.model or sorted(PUBLISHED):
        r = measure(name, args.prompt, args.context, args.repeats, not args.skip_numpy)
        p, d = r["prefill_seconds"], r["decode_seconds"]
        print(
            f"{name:<13} {_ms(p['seqkern']):>10} {_ms(p.get('numpy')):>10} "
            f"{_ms(p['floor']):>10} {r['prefill_vs_floor']:>5.2f}x   "
            f"{_ms(d['seqkern']):>10} {_ms(d.get('numpy')):>10} {_ms(d['floor']):>10} "
            f"{r['decode_vs_floor']:>5.2f}x",
            flush=True,
        )
        results.append(r)
    print(
        f"prefill: {args.prompt} tokens, all logits; decode: per token after {args.context}; "
        "ratio = median over rounds of seqkern / floor (the model's linear layers alone) "
        "in the same round; allocator "
        + ("keeps freed memory (both sides run on reused pages)" if reused else "as is")
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"build_info": info, "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Whole RWKV models at published shapes with random weights, float32: rwkv-4-169m (hidden 768,
12 layers, ffn 3072, vocab 50277) and RWKV-7 0.1B (C 768, 12 layers, head 64, low-rank
64/64/32/128, vocab 65536).

Prefill of 1024 tokens and decode per token after a 512-token prompt, each beside the model's
linear layers alone (the same x @ W.T products back to back in NumPy: the floor the model can
approach); targets: prefill within 1.3x of its linear layers, decode within 1.2x of one pass
through them with one row. The numpy backend (seqkern.reference kernels) stands beside the
prefill. ``python benches/bench_models_rwkv.py [--threads 2] [--quick]`` prints the ratios;
``pytest benches/bench_models_rwkv.py --benchmark-enable`` times the same calls.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import numpy as np
import pytest

from seqkern.models import rwkv4, rwkv7
from seqkern.models.testing import random_model

RWKV4_169M = {
    "model_type": "rwkv",
    "vocab_size": 50277,
    "hidden_size": 768,
    "attention_hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "layer_norm_epsilon": 1e-5,
    "rescale_every": 6,
    "tie_word_embeddings": False,
}

RWKV7_01B = {
    "model_type": "rwkv_x070",
    "vocab_size": 65536,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "head_size": 64,
    "intermediate_size": 3072,
    "decay_low_rank": 64,
    "a_low_rank": 64,
    "v_low_rank": 32,
    "gate_low_rank": 128,
}

MODELS = {"rwkv-4-169m": (RWKV4_169M, rwkv4), "rwkv-7-0.1b": (RWKV7_01B, rwkv7)}
PREFILL, PROMPT = 1024, 512


def build(name: str, backend: str = "seqkern", small: bool = False) -> Any:
    """The model at its published shape, or (``small``) with 2 layers and vocabulary 512 for a
    quick check that the benchmark code runs."""
    config, module = MODELS[name]
    if small:
        config = dict(config, num_hidden_layers=2, vocab_size=512)
    return random_model(config, initializers=module.random_initializers(), backend=backend)


def linear_products(lm: Any) -> list[tuple[np.ndarray, bool]]:
    """The model's matrices in call order, each with whether it is used as x @ W.T (a linear
    layer's (out, in) weight) or x @ W (RWKV-7's low-rank (in, out) factors)."""
    if lm.model_type == "rwkv":
        names = ("att_key", "att_value", "att_receptance", "att_output")
        names += ("ffn_key", "ffn_value", "ffn_receptance")
        mats = [(getattr(b, n), True) for b in lm.blocks for n in names]
    else:
        mats = []
        for b in lm.blocks:
            mats += [(b.receptance, True), (b.key, True), (b.value, True)]
            mats += [(b.w1, False), (b.w2, False), (b.a1, False), (b.a2, False)]
            if b.v1 is not None:
                mats += [(b.v1, False), (b.v2, False)]
            mats += [(b.g1, False), (b.g2, False), (b.output, True)]
            mats += [(b.ffn_key, True), (b.ffn_value, True)]
    return mats + [(lm.head, True)]


def linear_only(lm: Any, rows: int) -> Callable[[], None]:
    """x @ W.T (or x @ W) for every matrix of the model, ``rows`` rows of random input each
    (one input per input width, reused, so that it stays in cache as the model's own
    activations do)."""
    rng = np.random.default_rng(0)
    mats = linear_products(lm)
    widths = {w.shape[1] if t else w.shape[0] for w, t in mats}
    inputs = {n: rng.standard_normal((rows, n)).astype(np.float32) for n in widths}
    pairs = [(inputs[w.shape[1]], w.T) if t else (inputs[w.shape[0]], w) for w, t in mats]

    def run() -> None:
        for x, w in pairs:
            x @ w

    return run


def decode_step(lm: Any) -> Callable[[], None]:
    """One token through the model after a PROMPT-token prompt (the cache is restored from a
    snapshot each call, outside the timed token)."""
    rng = np.random.default_rng(1)
    _, cache = lm.forward(rng.integers(0, lm.vocab_size, (1, PROMPT)))
    token = np.array([[7]])

    def run() -> None:
        lm.forward(token, cache)

    return run


def median(fn: Callable[[], object], repeats: int) -> float:
    """Median time (by :data:`clock`) of ``fn()`` over ``repeats`` calls after a warm-up call."""
    return side_by_side([fn], repeats)[0][0]


# The clock: wall time (perf_counter), or this process's CPU time (process_time), which on a
# machine shared with other work still counts only our own work when run on one thread.
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter


def side_by_side(fns: list[Callable[[], object]], repeats: int) -> list[tuple[float, float]]:
    """(median seconds, median ratio to the first) of each of ``fns``, timed in alternation
    round after round so that a shared machine's load changes hit all of them alike."""
    for fn in fns:
        fn()
    times = np.empty((repeats, len(fns)))
    for r in range(repeats):
        for i, fn in enumerate(fns):
            start = clock()
            fn()
            times[r, i] = clock() - start
    ratios = times / times[:, :1]
    return [
        (float(np.median(times[:, i])), float(np.median(ratios[:, i]))) for i in range(len(fns))
    ]


def tiny_overhead(name: str, repeats: int) -> float:
    """Per-token time of the same architecture at width 64 and vocabulary 64: what the Python
    code costs per token with almost no arithmetic."""
    config, module = MODELS[name]
    small = dict(config, vocab_size=64, hidden_size=64, attention_hidden_size=64)
    small.update(intermediate_size=256, decay_low_rank=8, a_low_rank=8, v_low_rank=8)
    small.update(gate_low_rank=8)
    lm = random_model(small, initializers=module.random_initializers())
    step = decode_step(lm)
    return median(lambda: [step() for _ in range(20)], repeats) / 20


# --- pytest-benchmark (disabled in the plain run: there each call runs once)


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    options = request.config.getoption
    disabled = options("benchmark_disable", False) and not options("benchmark_enable", False)
    return request.param, build(request.param, small=disabled)


def test_prefill(benchmark, model):
    name, lm = model
    ids = np.random.default_rng(0).integers(0, lm.vocab_size, (1, PREFILL))
    benchmark.group = f"{name} prefill {PREFILL}"
    logits = benchmark.pedantic(lm, (ids,), rounds=3, iterations=1)
    assert logits.shape == (1, PREFILL, lm.vocab_size)


def test_prefill_linear_only(benchmark, model):
    name, lm = model
    benchmark.group = f"{name} prefill {PREFILL}"
    benchmark.pedantic(linear_only(lm, PREFILL), rounds=3, iterations=1)


def test_decode(benchmark, model):
    name, lm = model
    benchmark.group = f"{name} decode"
    benchmark(decode_step(lm))


def test_decode_linear_only(benchmark, model):
    name, lm = model
    benchmark.group = f"{name} decode"
    benchmark(linear_only(lm, 1))


# --- the ratios printout


def report(name: str, repeats: int, prefill: int, numpy_backend: bool) -> None:
    lm = build(name)
    ids = np.random.default_rng(0).integers(0, lm.vocab_size, (1, prefill))
    (linear_prefill, _), (model_prefill, prefill_ratio) = side_by_side(
        [linear_only(lm, prefill), lambda: lm(ids)], repeats
    )
    step, linear_step = decode_step(lm), linear_only(lm, 1)
    (linear_decode, _), (decode, decode_ratio) = side_by_side(
        [lambda: [linear_step() for _ in range(10)], lambda: [step() for _ in range(10)]], repeats
    )
    linear_decode, decode = linear_decode / 10, decode / 10
    overhead = tiny_overhead(name, repeats)
    if numpy_backend:
        reference = build(name, backend="numpy")
        numpy_prefill = f"{median(lambda: reference(ids), 1):.3f} s"
    else:
        numpy_prefill = "-"
    print(
        f"{name:<13} prefill {prefill}: {model_prefill:.3f} s, linear layers "
        f"{linear_prefill:.3f} s -> {prefill_ratio:.2f}x (target 1.3x); numpy backend "
        f"{numpy_prefill}"
    )
    print(
        f"{'':<13} decode after {PROMPT}: {decode * 1e3:.2f} ms/token, linear layers "
        f"{linear_decode * 1e3:.2f} ms -> {decode_ratio:.2f}x (target 1.2x); "
        f"per-token Python cost (width-64 model) {overhead * 1e3:.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="kernel and BLAS threads (2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per number (5)")
    parser.add_argument("--quick", action="store_true", help="prefill 256 tokens, no numpy backend")
    parser.add_argument("--model", choices=list(MODELS), action="append", help="default: both")
    parser.add_argument(
        "--clock",
        choices=list(CLOCK),
        default="wall",
        help="wall time (default), or process CPU time (with --threads 1: robust when busy)",
    )
    args = parser.parse_args()
    from seqkern.bench.timing import keep_freed_memory

    keep_freed_memory()  # no page faults of fresh activations by chance (see its docs)
    global clock
    clock = CLOCK[args.clock]
    import seqkern
    from seqkern.bench.machine import cpu_model

    seqkern.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:
        pass
    print(f"float32, {args.threads} threads, {args.clock} clock, random weights; {cpu_model()}")
    for name in args.model or list(MODELS):
        report(name, args.repeats, 256 if args.quick else PREFILL, not args.quick)


if __name__ == "__main__":
    main()

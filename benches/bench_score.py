"""Throughput of seqkern.score: documents of 512 tokens through a mamba-130m-shaped random model
(written as a model folder), the local engine against the Ray engine on a 2-CPU local cluster.

``python benches/bench_score.py [--docs N] [--rounds R]`` prints tokens/s of each, measured
alternately in one process (the machine is shared: ratios of interleaved runs are what to
quote). Both engines run end to end from the same folder and corpus: load the model, read,
score, write Parquet; the Ray cluster is started once beforehand, as a running cluster would be.
Under pytest (``pytest benches --benchmark-enable -k score``) the same runs are benchmarks;
with benchmarking disabled (CI) a tiny model keeps them quick.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

MAMBA_130M = {
    "model_type": "mamba",
    "vocab_size": 50280,
    "hidden_size": 768,
    "num_hidden_layers": 24,
    "state_size": 16,
    "conv_kernel": 4,
    "expand": 2,
    "time_step_rank": "auto",
    "use_bias": False,
    "use_conv_bias": True,
    "layer_norm_epsilon": 1e-5,
    "tie_word_embeddings": True,
}
TINY = dict(MAMBA_130M, vocab_size=512, hidden_size=32, num_hidden_layers=2)
DOC_TOKENS = 512

# (label, score() options): the local engine on both cores; Ray with two 1-CPU actors (the
# default on a 2-CPU cluster) and with one 2-thread actor. Two documents per forward call (one
# 1024-token call; Ray hands each actor 4 x 2 documents at a time); "local b8" is the default
# --batch-size 8, which --max-tokens 1024 also limits to two 512-token documents a call.
ENGINES = [
    ("local", {"engine": "local", "batch_size": 2}),
    ("ray 2x1", {"engine": "ray", "actors": 2, "threads": 1, "batch_size": 2}),
    ("ray 1x2", {"engine": "ray", "actors": 1, "threads": 2, "batch_size": 2}),
    ("local b8", {"engine": "local", "batch_size": 8}),
]


def write_case(folder: Path, config: dict, docs: int) -> tuple[Path, Path]:
    """A random model folder of ``config`` and a JSON Lines corpus of ``docs`` documents of
    DOC_TOKENS tokens."""
    from seqkern.models.testing import random_tensors, write_folder

    model = write_folder(folder / "model", config, random_tensors(config))
    rng = np.random.default_rng(0)
    corpus = folder / "corpus.jsonl"
    with open(corpus, "w") as handle:
        for i in range(docs):
            ids = rng.integers(0, config["vocab_size"], DOC_TOKENS).tolist()
            handle.write(json.dumps({"id": i, "input_ids": ids}) + "\n")
    return model, corpus


def run_once(model: Path, corpus: Path, output: Path, options: dict) -> float:
    """Seconds for one end-to-end run."""
    from seqkern.score import score

    start = time.perf_counter()
    score(model, corpus, output, progress=None, **options)
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def case(tmp_path_factory, request):
    pytest.importorskip("pyarrow")
    disabled = request.config.getoption("benchmark_disable", False)
    config, docs = (TINY, 4) if disabled else (MAMBA_130M, 16)
    return write_case(tmp_path_factory.mktemp("score"), config, docs) + (docs,)


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


def _bench(benchmark, case, tmp_path, options):
    model, corpus, docs = case
    benchmark.pedantic(run_once, args=(model, corpus, tmp_path / "out.parquet", options), rounds=1)
    if benchmark.stats:
        seconds = benchmark.stats.stats.median
        benchmark.extra_info["tokens_per_s"] = docs * DOC_TOKENS / seconds
    assert (tmp_path / "out.parquet").is_file()


@pytest.mark.benchmark(group="score")
def test_score_local(benchmark, case, tmp_path):
    _bench(benchmark, case, tmp_path, ENGINES[0][1])


@pytest.mark.benchmark(group="score")
@pytest.mark.parametrize("label, options", ENGINES[1:3], ids=[e[0] for e in ENGINES[1:3]])
def test_score_ray(benchmark, case, cluster, tmp_path, label, options):
    _bench(benchmark, case, tmp_path, options)


def main(argv: list[str]) -> None:
    """Interleaved rounds of every engine; prints tokens/s (median) and the ratio to local."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=16, help="documents of 512 tokens (16)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per engine (2)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model instead of 130m")
    args = parser.parse_args(argv)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    with tempfile.TemporaryDirectory() as tmp:
        model, corpus = write_case(Path(tmp), TINY if args.tiny else MAMBA_130M, args.docs)
        times: dict[str, list[float]] = {label: [] for label, _ in ENGINES}
        for _ in range(args.rounds):
            for label, options in ENGINES:
                seconds = run_once(model, corpus, Path(tmp) / "out.parquet", options)
                times[label].append(seconds)
                print(f"{label}: {seconds:.1f} s", file=sys.stderr)
    ray.shutdown()
    tokens = args.docs * DOC_TOKENS
    local = tokens / float(np.median(times["local"]))
    print(f"{args.docs} documents x {DOC_TOKENS} tokens, {args.rounds} rounds (median)")
    for label, _ in ENGINES:
        rate = tokens / float(np.median(times[label]))
        print(f"  {label:8s} {rate:8.1f} tokens/s  {rate / local:.2f}x local")


if __name__ == "__main__":
    main(sys.argv[1:])

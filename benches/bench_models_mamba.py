"""pytest-benchmark suites of whole Mamba and Mamba-2 models at the published 130m widths
(random weights, 4 of the 24 layers to keep a run short), seqkern against the model's own
linear layers alone: ``pytest benches --benchmark-enable -k models``. The full-depth figures
with the NumPy backend beside them come from ``python -m seqkern.bench.models``."""

from __future__ import annotations

import numpy as np
import pytest

from seqkern.bench import models as bench
from seqkern.models.testing import random_model

LAYERS = 4
PROMPT, CONTEXT = 1024, 512


@pytest.fixture(scope="module", params=["mamba-130m", "mamba2-130m"])
def model(request):
    config = dict(bench.PUBLISHED[request.param], num_hidden_layers=LAYERS)
    return random_model(config)


@pytest.fixture(scope="module")
def ids(model):
    return np.random.default_rng(0).integers(0, model.vocab_size, (1, PROMPT))


@pytest.mark.benchmark(group="model-prefill")
def test_prefill_seqkern(benchmark, model, ids):
    logits = benchmark.pedantic(model, args=(ids,), rounds=3)
    assert logits.shape == (1, PROMPT, model.vocab_size)


@pytest.mark.benchmark(group="model-prefill")
def test_prefill_matmul_floor(benchmark, model):
    benchmark.pedantic(bench.floor_prefill(model, PROMPT), rounds=3)


@pytest.mark.benchmark(group="model-decode")
def test_decode_seqkern(benchmark, model, ids):
    _, cache = model.forward(ids[:, :CONTEXT])
    token = ids[:, CONTEXT : CONTEXT + 1]
    logits, _ = benchmark(model.forward, token, cache)
    assert logits.shape == (1, 1, model.vocab_size)


@pytest.mark.benchmark(group="model-decode")
def test_decode_matmul_floor(benchmark, model):
    benchmark(bench.floor_decode(model))

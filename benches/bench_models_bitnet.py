"""pytest-benchmark suite of BitNet b1.58 at the 2B-4T widths (random packed weights, 2 of the 30
layers to keep a run short): decode after 512 tokens with the float32 and the int8 head, beside
the layers alone, and the head's GEMV: ``pytest benches --benchmark-enable -k bitnet``. The
full-depth figures at contexts 512/2048/8192 and the prefill come from
``python -m seqkern.bench.bitnet``."""

from __future__ import annotations

import pytest

from seqkern.bench import bitnet as bench

LAYERS = 2
CONTEXT = 512


@pytest.fixture(scope="module")
def model():
    return bench.build(LAYERS)


@pytest.fixture(scope="module", params=["float", "int8"])
def headed(request, model):
    return model if request.param == "float" else bench.with_int8_head(model)


@pytest.mark.benchmark(group="bitnet-decode")
def test_decode_seqkern(benchmark, headed):
    logits, _ = benchmark(bench.decode_step(headed, CONTEXT))
    assert logits.shape == (1, 1, headed.vocab_size)


@pytest.mark.benchmark(group="bitnet-decode")
def test_decode_layers_alone(benchmark, headed):
    benchmark(bench.layers_alone(headed, 1))


@pytest.mark.benchmark(group="bitnet-attention")
@pytest.mark.parametrize("context", [512, 2048, 8192])
def test_decode_attention_alone(benchmark, model, context):
    run, _ = bench.attention_alone(model, context)
    benchmark(run)

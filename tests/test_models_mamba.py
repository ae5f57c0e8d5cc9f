"""Mamba and Mamba-2 as whole models: loading real folders, the cache, generation, the CLI and
bad input. The tiny checkpoints are written by the tests as real model folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seqkern import models
from seqkern.models import testing

pytest.importorskip("safetensors")

MAMBA = dict(
    model_type="mamba",
    vocab_size=61,
    hidden_size=24,
    num_hidden_layers=3,
    state_size=5,
    expand=2,
    conv_kernel=4,
    time_step_rank="auto",
    layer_norm_epsilon=1e-5,
    tie_word_embeddings=True,
    use_bias=False,
    use_conv_bias=True,
)
MAMBA2 = dict(
    model_type="mamba2",
    vocab_size=61,
    hidden_size=24,
    num_hidden_layers=3,
    num_heads=6,
    head_dim=8,
    n_groups=2,
    state_size=7,
    expand=2,
    conv_kernel=4,
    layer_norm_epsilon=1e-5,
    chunk_size=5,
    tie_word_embeddings=True,
    use_bias=False,
    use_conv_bias=True,
)
CONFIGS = {
    "mamba": MAMBA,
    "mamba-untied-bias": dict(MAMBA, tie_word_embeddings=False, use_bias=True, conv_kernel=3),
    "mamba2": MAMBA2,
    "mamba2-one-group-bias": dict(MAMBA2, n_groups=1, use_bias=True, tie_word_embeddings=False),
    "mamba2-dt-limit": dict(MAMBA2, time_step_limit=[0.05, 0.9]),
    "mamba2-no-conv-bias-width-2": dict(MAMBA2, use_conv_bias=False, conv_kernel=2),
}


def _untied(config: dict) -> bool:
    return not config.get("tie_word_embeddings", True)


def _tensors(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    tensors = testing.random_tensors(config, seed=seed)
    assert ("lm_head.weight" in tensors) == _untied(config)
    return tensors


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def folder(request, tmp_path_factory):
    config = CONFIGS[request.param]
    path = tmp_path_factory.mktemp(request.param)
    return testing.write_folder(path, config, _tensors(config))


@pytest.fixture(scope="module")
def model64(folder):
    return models.load(folder, dtype=np.float64)


def _ids(rng, batch: int, length: int, vocab: int = 61) -> np.ndarray:
    return rng.integers(0, vocab, size=(batch, length))


# float64 models on seqkern and on the NumPy references do the same arithmetic in another
# order: they agree to ~1e-15 relative; 1e-10 leaves room without hiding any real difference.
TIGHT = dict(rtol=1e-10, atol=1e-10)


def test_seqkern_backend_matches_numpy_backend(folder, model64, rng):
    reference = models.load(folder, dtype=np.float64, backend="numpy")
    ids = _ids(rng, 2, 13)
    np.testing.assert_allclose(model64(ids), reference(ids), **TIGHT)
    step_ids = _ids(rng, 2, 1)
    cache, ref_cache = model64.forward(ids)[1], reference.forward(ids)[1]
    np.testing.assert_allclose(
        model64.forward(step_ids, cache)[0], reference.forward(step_ids, ref_cache)[0], **TIGHT
    )


def test_decode_steps_agree_on_each_simd_path(rng, each_simd_path):
    """The fused Mamba-2 step and the Mamba decode kernels on every SIMD path, float32 against
    the float64 NumPy backend (float32 rounding over a few layers: 1e-4 relative)."""
    for config in (CONFIGS["mamba2"], CONFIGS["mamba"]):
        tensors = _tensors(config)
        model = testing.model_from_tensors(config, tensors, dtype=np.float32)
        reference = testing.model_from_tensors(config, tensors, dtype=np.float64, backend="numpy")
        ids = _ids(rng, 2, 6)
        cache, ref_cache = model.forward(ids[:, :5])[1], reference.forward(ids[:, :5])[1]
        got = model.forward(ids[:, 5:], cache)[0]
        want = reference.forward(ids[:, 5:], ref_cache)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pieces", [1, 2, 5])
def test_prompt_in_pieces_gives_one_call_logits(model64, rng, pieces):
    ids = _ids(rng, 2, 17)
    whole = model64(ids)
    cuts = np.linspace(0, ids.shape[1], pieces + 1).astype(int)
    cache, parts = None, []
    for begin, end in zip(cuts[:-1], cuts[1:]):
        logits, cache = model64.forward(ids[:, begin:end], cache)
        parts.append(logits)
    assert cache.seq_len == ids.shape[1]
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, **TIGHT)


def test_token_by_token_decode_gives_prompt_logits(model64, rng):
    ids = _ids(rng, 1, 11)
    whole = model64(ids)
    cache = model64.new_cache(1)
    steps = [model64.forward(ids[:, t : t + 1], cache)[0] for t in range(ids.shape[1])]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), whole, **TIGHT)


def test_batch_rows_are_independent(model64, rng):
    ids = _ids(rng, 3, 9)
    batched = model64(ids)
    for row in range(3):
        np.testing.assert_allclose(batched[row : row + 1], model64(ids[row : row + 1]), **TIGHT)


def test_one_dimensional_ids_are_batch_one(model64, rng):
    ids = _ids(rng, 1, 6)
    np.testing.assert_array_equal(model64(ids[0]), model64(ids))


def test_float32_within_tolerance_of_float64(folder, model64, rng):
    # Measured worst |float32 - float64| on these models: ~2e-6 of the logits' scale over 3
    # layers and 24 tokens; 1e-4 is ~50x that and still far below any modelling error.
    model32 = models.load(folder, dtype=np.float32)
    ids = _ids(rng, 2, 24)
    logits32, logits64 = model32(ids), model64(ids)
    assert logits32.dtype == np.float32 and logits64.dtype == np.float64
    scale = np.max(np.abs(logits64))
    np.testing.assert_allclose(logits32, logits64, rtol=0, atol=1e-4 * scale)
    cache = model32.forward(ids)[1]
    token = _ids(rng, 2, 1)
    step32 = model32.forward(token, cache)[0]
    step64 = model64.forward(token, model64.forward(ids)[1])[0]
    np.testing.assert_allclose(step32, step64, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("stored", ["F16", "BF16"])
def test_half_precision_files_load_the_values_they_hold(tmp_path, rng, stored):
    config = CONFIGS["mamba2"]
    tensors = _tensors(config, seed=3)
    if stored == "BF16":
        rounded = {
            k: (testing.float_to_bf16(v).astype(np.uint32) << 16).view(np.float32)
            for k, v in tensors.items()
        }
    else:
        rounded = {k: v.astype(np.float16).astype(np.float32) for k, v in tensors.items()}
    exact = models.load(testing.write_folder(tmp_path / "f32", config, rounded), dtype=np.float64)
    half = models.load(
        testing.write_folder(tmp_path / stored, config, rounded, stored=stored), dtype=np.float64
    )
    ids = _ids(rng, 1, 8)
    np.testing.assert_array_equal(half(ids), exact(ids))


def test_bf16_conversion_rounds_to_nearest_even():
    # bfloat16 keeps 7 mantissa bits: 1 + 2^-7 is representable, 1 + 2^-8 and 1 + 3 * 2^-8
    # sit halfway between neighbours and go to the even mantissa.
    values = np.array([1.0, 1.0078125, 1.00390625, 1.01171875, -2.5e-3, 3.0e38], np.float32)
    bits = testing.float_to_bf16(values)
    back = (bits.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(back[:4], [1.0, 1.0078125, 1.0, 1.015625])
    np.testing.assert_allclose(back, values, rtol=2**-8)


def test_sharded_folder_loads_like_a_single_file(tmp_path, rng):
    config = CONFIGS["mamba-untied-bias"]
    tensors = _tensors(config, seed=4)
    single = models.load(testing.write_folder(tmp_path / "one", config, tensors))
    sharded = models.load(testing.write_folder(tmp_path / "three", config, tensors, shards=3))
    assert len(list((tmp_path / "three").glob("*.safetensors"))) == 3
    ids = _ids(rng, 1, 7)
    np.testing.assert_array_equal(sharded(ids), single(ids))


def test_tied_head_is_the_embedding(tmp_path, rng):
    config = CONFIGS["mamba"]
    tensors = _tensors(config, seed=5)
    tied = models.load(testing.write_folder(tmp_path / "tied", config, tensors), dtype=np.float64)
    untied_tensors = dict(tensors, **{"lm_head.weight": tensors["backbone.embeddings.weight"]})
    untied_config = dict(config, tie_word_embeddings=False)
    untied = models.load(
        testing.write_folder(tmp_path / "untied", untied_config, untied_tensors), dtype=np.float64
    )
    assert untied.num_parameters == tied.num_parameters + untied_tensors["lm_head.weight"].size
    ids = _ids(rng, 1, 5)
    np.testing.assert_array_equal(tied(ids), untied(ids))


def test_model_attributes(model64, folder):
    config = json.loads((folder / "config.json").read_text())
    assert model64.model_type == config["model_type"]
    assert model64.vocab_size == config["vocab_size"]
    assert model64.num_layers == config["num_hidden_layers"]
    assert model64.dtype == np.float64
    assert model64.config == config
    tensors = _tensors(config)
    assert model64.num_parameters == sum(t.size for t in tensors.values())


def test_cache_copy_is_a_snapshot(model64, rng):
    ids = _ids(rng, 1, 8)
    _, cache = model64.forward(ids[:, :5])
    snapshot = cache.copy()
    first, _ = model64.forward(ids[:, 5:], cache)
    again, _ = model64.forward(ids[:, 5:], snapshot)
    np.testing.assert_array_equal(first, again)
    assert snapshot.seq_len == cache.seq_len == 8
    assert cache.nbytes == sum(a.nbytes for a in cache.arrays.values()) > 0


def test_cache_size_does_not_grow_with_context(model64, rng):
    _, cache = model64.forward(_ids(rng, 1, 3))
    size = cache.nbytes
    model64.forward(_ids(rng, 1, 40), cache)
    assert cache.nbytes == size


# Tiny checkpoints written by transformers 5.25 (MambaForCausalLM with in/out biases;
# Mamba2ForCausalLM with 2 groups, a time-step limit and an untied head), random weights, with
# its float64 logits. Its CPU path computes A = -exp(A_log) in float32, so the two agree to
# ~7e-7 of the logits' scale, not to float64 rounding; 1e-5 leaves margin.
@pytest.mark.parametrize("name", ["hf-mamba", "hf-mamba2"])
@pytest.mark.parametrize("backend", ["seqkern", "numpy"])
def test_matches_transformers_logits(name, backend):
    folder = Path(__file__).parent / "data" / name
    expected = np.load(folder / "expected.npz")
    model = models.load(folder, dtype=np.float64, backend=backend)
    logits = model(expected["input_ids"])
    scale = np.max(np.abs(expected["logits"]))
    np.testing.assert_allclose(logits, expected["logits"], rtol=0, atol=1e-5 * scale)


# --- generation


def test_greedy_generation_follows_the_argmax(model64, rng):
    prompt = _ids(rng, 2, 4)
    out = model64.generate(prompt, 6)
    assert out.shape == (2, 10)
    np.testing.assert_array_equal(out[:, :4], prompt)
    for t in range(4, 10):
        np.testing.assert_array_equal(out[:, t], np.argmax(model64(out[:, :t])[:, -1], axis=-1))


def test_sampling_is_reproducible_with_a_seed(model64, rng):
    prompt = _ids(rng, 2, 4)
    options = dict(temperature=1.3, top_k=20, top_p=0.9)
    first = model64.generate(prompt, 12, seed=7, **options)
    np.testing.assert_array_equal(model64.generate(prompt, 12, seed=7, **options), first)
    assert not np.array_equal(model64.generate(prompt, 12, seed=8, **options), first)
    np.testing.assert_array_equal(
        model64.generate(prompt, 8, temperature=2.0, top_k=1, seed=1), model64.generate(prompt, 8)
    )


def test_top_p_and_top_k_restrict_the_draw():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    drawn = {int(models.generate.sample(logits, rng, 1.0, top_p=0.7)[0]) for _ in range(300)}
    assert drawn == {0, 1}
    drawn = {int(models.generate.sample(logits, rng, 1.0, top_k=3)[0]) for _ in range(300)}
    assert drawn == {0, 1, 2}
    counts = np.bincount([models.generate.sample(logits, rng, 1.0)[0] for _ in range(4000)])
    np.testing.assert_allclose(counts / 4000, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_eos_stops_generation_and_callback_streams(model64, rng):
    prompt = _ids(rng, 1, 4)
    free = model64.generate(prompt, 10)
    eos = int(free[0, 6])
    seen: list[int] = []
    out = model64.generate(prompt, 10, eos_token_id=eos, callback=lambda t: seen.append(int(t[0])))
    stop = 4 + list(free[0, 4:]).index(eos)
    np.testing.assert_array_equal(out[0], free[0, : stop + 1])
    assert seen == list(out[0, 4:])
    stopped = model64.generate(prompt, 10, callback=lambda t: True)
    assert stopped.shape == (1, 5)


def test_generate_returns_the_cache_to_continue_from(model64, rng):
    prompt = _ids(rng, 1, 5)
    out, cache = model64.generate(prompt, 4, return_cache=True)
    assert cache.seq_len == out.shape[1] - 1
    np.testing.assert_allclose(
        model64.forward(out[:, -1:], cache)[0][:, -1], model64(out)[:, -1], **TIGHT
    )


# --- the command line


def _tokenizer_json(path, vocab_size: int) -> list[str]:
    tokenizers = pytest.importorskip("tokenizers")
    symbols = ["<unk>", "</s>"] + [chr(ord("a") + i) for i in range(26)] + [" ", ".", ","]
    symbols += [f"<x{i}>" for i in range(vocab_size - len(symbols))]
    tokenizer = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({s: i for i, s in enumerate(symbols)}, unk_token="<unk>")
    )
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
    tokenizer.decoder = tokenizers.decoders.Fuse()
    tokenizer.save(str(path / "tokenizer.json"))
    return symbols


def _cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "seqkern.models.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_cli_generates_text_end_to_end(tmp_path):
    config = CONFIGS["mamba"]
    folder = testing.write_folder(tmp_path, config, _tensors(config))
    symbols = _tokenizer_json(folder, config["vocab_size"])
    done = _cli(str(folder), "--prompt", "hello world", "--max-new-tokens", "7", "--no-eos")
    assert done.returncode == 0, done.stderr
    model = models.load(folder)
    prompt = [symbols.index(c) for c in "hello world"]
    expected = model.generate(np.array(prompt), 7)[0, len(prompt) :]
    assert done.stdout.strip("\n") == "".join(symbols[i] for i in expected)
    stats = done.stderr.strip().splitlines()[-1]
    assert "prompt tokens: 11" in stats and "tokens/s" in stats
    assert f"cache: {model.new_cache(1).nbytes} bytes" in stats


def test_cli_with_ids_prints_ids(tmp_path):
    config = CONFIGS["mamba2"]
    folder = testing.write_folder(tmp_path, config, _tensors(config))
    done = _cli(
        str(folder),
        "--ids",
        "3,4,5",
        "--max-new-tokens",
        "4",
        "--temperature",
        "0.9",
        "--top-p",
        "0.8",
        "--seed",
        "3",
        "--dtype",
        "float64",
        "--threads",
        "1",
    )
    assert done.returncode == 0, done.stderr
    expected = models.load(folder, dtype=np.float64).generate(
        np.array([3, 4, 5]), 4, temperature=0.9, top_p=0.8, seed=3
    )
    assert done.stdout.strip() == ",".join(str(i) for i in expected[0, 3:])


def test_cli_help_documents_every_option():
    done = _cli("--help")
    assert done.returncode == 0
    for option in (
        "--prompt",
        "--ids",
        "--max-new-tokens",
        "--temperature",
        "--top-k",
        "--top-p",
        "--seed",
        "--dtype",
        "--threads",
        "--backend",
    ):
        assert option in done.stdout


def test_cli_reports_bad_folders_without_a_traceback(tmp_path):
    done = _cli(str(tmp_path), "--ids", "1")
    assert done.returncode == 2
    assert "config.json" in done.stderr and "Traceback" not in done.stderr


# --- bad input: a clear exception naming what is wrong


@pytest.fixture(scope="module")
def mamba_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("good")
    return testing.write_folder(path, CONFIGS["mamba"], _tensors(CONFIGS["mamba"]))


def test_folder_without_config_or_weights(tmp_path, mamba_folder):
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(CONFIGS["mamba"]))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        models.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such"):
        models.load(tmp_path / "absent")


def test_unsupported_model_type_names_the_supported_ones(tmp_path):
    testing.write_folder(tmp_path, dict(CONFIGS["mamba"], model_type="llama"), {})
    with pytest.raises(ValueError, match=r"'llama' is not supported; supported: .*mamba, mamba2"):
        models.load(tmp_path)


def test_missing_tensor_is_named(tmp_path):
    tensors = _tensors(CONFIGS["mamba"])
    del tensors["backbone.layers.2.mixer.dt_proj.bias"]
    testing.write_folder(tmp_path, CONFIGS["mamba"], tensors)
    with pytest.raises(ValueError, match=r"missing tensor 'backbone.layers.2.mixer.dt_proj.bias'"):
        models.load(tmp_path)


def test_wrong_shape_names_key_expected_and_actual(tmp_path):
    tensors = _tensors(CONFIGS["mamba2"])
    key = "backbone.layers.1.mixer.out_proj.weight"
    tensors[key] = tensors[key][:, :-1]
    testing.write_folder(tmp_path, CONFIGS["mamba2"], tensors)
    with pytest.raises(ValueError, match=rf"'{key}': expected shape \(24, 48\), got \(24, 47\)"):
        models.load(tmp_path)


def test_bad_files_and_shards(tmp_path):
    testing.write_folder(
        tmp_path / "sharded", CONFIGS["mamba"], _tensors(CONFIGS["mamba"]), shards=2
    )
    next((tmp_path / "sharded").glob("model-00002*")).unlink()
    with pytest.raises(FileNotFoundError, match="shards that are missing"):
        models.load(tmp_path / "sharded")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps(CONFIGS["mamba"]))
    (tmp_path / "bad" / "model.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"
    )
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        models.load(tmp_path / "bad")
    (tmp_path / "bad" / "config.json").write_text("{")
    with pytest.raises(ValueError, match="not a readable JSON file"):
        models.load(tmp_path / "bad")


def test_bad_load_options(mamba_folder):
    with pytest.raises(TypeError, match="dtype: expected float32 or float64, got float16"):
        models.load(mamba_folder, dtype=np.float16)
    with pytest.raises(ValueError, match="backend: expected one of"):
        models.load(mamba_folder, backend="torch")
    with pytest.raises(ValueError, match="head: expected one of"):
        models.load(mamba_folder, head="int4")


def test_bad_token_ids(mamba_folder):
    model = models.load(mamba_folder)
    with pytest.raises(
        ValueError, match=r"token id 61 at position \(0, 2\) is outside .*\[0, 61\)"
    ):
        model(np.array([[1, 2, 61]]))
    with pytest.raises(ValueError, match=r"token id -1"):
        model(np.array([-1, 2]))
    with pytest.raises(TypeError, match="input_ids: expected integer token ids, got dtype float64"):
        model(np.array([[1.0, 2.0]]))
    with pytest.raises(TypeError, match="input_ids"):
        model(np.array([True, False]))
    with pytest.raises(ValueError, match=r"expected shape \(T,\) or \(batch, T\), got \(1, 1, 2\)"):
        model(np.array([[[1, 2]]]))
    with pytest.raises(ValueError, match="at least one token"):
        model(np.zeros((1, 0), np.int64))


def test_cache_from_another_model_or_batch(mamba_folder, tmp_path):
    model = models.load(mamba_folder)
    other = models.load(testing.write_folder(tmp_path, MAMBA2, _tensors(MAMBA2)))
    with pytest.raises(ValueError, match="cache: made by another model"):
        model.forward(np.array([[1]]), other.new_cache(1))
    with pytest.raises(ValueError, match="cache: made by another model"):
        model.forward(np.array([[1]]), models.load(mamba_folder, dtype=np.float64).new_cache(1))
    with pytest.raises(ValueError, match="cache: holds 2 rows, but input_ids has batch 1"):
        model.forward(np.array([[1]]), model.new_cache(2))
    with pytest.raises(TypeError, match="cache: expected a Cache"):
        model.forward(np.array([[1]]), {"conv": None})
    with pytest.raises(ValueError, match="batch: expected an int >= 1"):
        model.new_cache(0)


def test_bad_generation_options(mamba_folder):
    model = models.load(mamba_folder)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(np.array([1]), 3, temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(np.array([1]), 3, temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(np.array([1]), 3, temperature=1.0, top_k=0)
    with pytest.raises(TypeError, match="max_new_tokens"):
        model.generate(np.array([1]), 2.5)

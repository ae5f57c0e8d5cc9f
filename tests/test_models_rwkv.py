"""RWKV-4 (transformers "rwkv" folders) and RWKV-7 (RWKV-LM x070 .safetensors files) on
seqkern.models, on tiny random checkpoints written by the tests.

Tolerances: float64 runs agree with the numpy backend (the oracle) and with themselves in
pieces to ~1e-12 (only summation order differs); float32 against float64 to 2e-3 relative to the
logits' scale (a few layers of float32 LayerNorms, exps and matmuls, ~1e-6 each, amplified by
the random weights' gains).
"""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("safetensors")

from seqkern import models  # noqa: E402
from seqkern.models import rwkv4, rwkv7  # noqa: E402
from seqkern.models.testing import (  # noqa: E402
    float_to_bf16,
    model_from_tensors,
    random_tensors,
    write_folder,
    write_safetensors,
)

RWKV4 = {
    "model_type": "rwkv",
    "vocab_size": 37,
    "hidden_size": 24,
    "attention_hidden_size": 24,
    "intermediate_size": 40,
    "num_hidden_layers": 3,
    "layer_norm_epsilon": 1e-5,
    "rescale_every": 0,
    "tie_word_embeddings": False,
}

RWKV7 = {
    "model_type": "rwkv_x070",
    "vocab_size": 37,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "head_size": 8,
    "intermediate_size": 56,
    "decay_low_rank": 8,
    "a_low_rank": 6,
    "v_low_rank": 4,
    "gate_low_rank": 12,
}

F64_TOL = 1e-11
F32_TOL = 2e-3


def tensors_of(config: dict, seed: int = 0, **options) -> dict[str, np.ndarray]:
    module = rwkv4 if config["model_type"] == "rwkv" else rwkv7
    tensors = random_tensors(config, seed, initializers=module.random_initializers(), **options)
    # float64 copies: the hand-written checks compute in the dtype of the tensors they are given.
    return {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in tensors.items()}


def write_rwkv7(path: Path, tensors: dict, stored: str = "F32") -> Path:
    write_safetensors(path, tensors, stored)
    return path


@pytest.fixture(scope="module")
def rwkv4_tensors():
    return tensors_of(RWKV4)


@pytest.fixture(scope="module")
def rwkv7_tensors():
    return tensors_of(RWKV7)


@pytest.fixture(scope="module")
def rwkv4_folder(tmp_path_factory, rwkv4_tensors):
    return write_folder(tmp_path_factory.mktemp("rwkv4"), RWKV4, rwkv4_tensors)


@pytest.fixture(scope="module")
def rwkv7_file(tmp_path_factory, rwkv7_tensors):
    return write_rwkv7(tmp_path_factory.mktemp("rwkv7") / "model.safetensors", rwkv7_tensors)


@pytest.fixture(params=["rwkv4", "rwkv7"])
def path(request, rwkv4_folder, rwkv7_file):
    return rwkv4_folder if request.param == "rwkv4" else rwkv7_file


def ids_of(batch: int, length: int, seed: int = 1, vocab: int = 37) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (batch, length))


def scale_of(logits: np.ndarray) -> float:
    return float(np.max(np.abs(logits)))


# --- loading


def test_load_folder_and_file(rwkv4_folder, rwkv7_file, rwkv4_tensors, rwkv7_tensors):
    lm4 = models.load(rwkv4_folder, dtype=np.float64)
    assert lm4.model_type == "rwkv" and lm4.num_layers == 3 and lm4.vocab_size == 37
    assert lm4.num_parameters == sum(t.size for t in rwkv4_tensors.values())
    lm7 = models.load(rwkv7_file, dtype=np.float64)
    assert lm7.model_type == "rwkv_x070"
    assert (lm7.num_layers, lm7.hidden_size, lm7.head_size, lm7.heads) == (3, 32, 8, 4)
    assert lm7.config == dict(RWKV7)
    assert lm7.num_parameters == sum(t.size for t in rwkv7_tensors.values())
    ids = ids_of(2, 7)
    for lm, config, tensors in ((lm4, RWKV4, rwkv4_tensors), (lm7, RWKV7, rwkv7_tensors)):
        memory = model_from_tensors(config, _rounded(tensors, "F32"), dtype=np.float64)
        np.testing.assert_array_equal(lm(ids), memory(ids))


def test_rwkv7_keys_as_released(rwkv7_tensors):
    """The loader reads RWKV-LM's own shapes: mixes (1, 1, C), r_k (H, N), low-rank (C, D)."""
    assert rwkv7_tensors["blocks.0.att.x_r"].shape == (1, 1, 32)
    assert rwkv7_tensors["blocks.1.att.r_k"].shape == (4, 8)
    assert rwkv7_tensors["blocks.1.att.w1"].shape == (32, 8)
    assert rwkv7_tensors["blocks.1.att.v2"].shape == (4, 32)
    assert rwkv7_tensors["blocks.0.ffn.key.weight"].shape == (56, 32)
    assert "blocks.0.ln0.weight" in rwkv7_tensors and "blocks.1.ln0.weight" not in rwkv7_tensors


def test_rwkv7_block0_value_lora_optional(tmp_path, rwkv7_tensors):
    with_v = dict(rwkv7_tensors)
    with_v["blocks.0.att.v0"] = np.zeros((1, 1, 32))
    with_v["blocks.0.att.v1"] = np.ones((32, 4))
    with_v["blocks.0.att.v2"] = np.ones((4, 32))
    without = models.load(write_rwkv7(tmp_path / "a.safetensors", rwkv7_tensors), dtype="float64")
    present = models.load(write_rwkv7(tmp_path / "b.safetensors", with_v), dtype="float64")
    ids = ids_of(1, 6)
    np.testing.assert_array_equal(without(ids), present(ids))
    bad = dict(with_v, **{"blocks.0.att.v1": np.ones((32, 5))})
    with pytest.raises(ValueError, match=r"blocks\.0\.att\.v1.*\(32, 4\).*\(32, 5\)"):
        models.load(write_rwkv7(tmp_path / "c.safetensors", bad))


def test_rwkv7_shapes_told_from_keys(tmp_path):
    config = dict(RWKV7, num_hidden_layers=2, hidden_size=48, head_size=16, vocab_size=11)
    config.update(intermediate_size=40, decay_low_rank=3, a_low_rank=5, v_low_rank=7)
    lm = models.load(write_rwkv7(tmp_path / "m.safetensors", tensors_of(config)))
    assert lm.config == config
    assert (lm.heads, lm.head_size, lm.ffn_size, lm.num_layers) == (3, 16, 40, 2)


# --- the cache guarantees


@pytest.mark.parametrize("pieces", [1, 2, 5])
def test_prompt_in_pieces(path, pieces):
    lm = models.load(path, dtype=np.float64)
    ids = ids_of(2, 11)
    whole = lm(ids)
    cache = lm.new_cache(2)
    bounds = np.linspace(0, 11, pieces + 1).astype(int)
    parts = [lm.forward(ids[:, a:b], cache)[0] for a, b in zip(bounds[:-1], bounds[1:])]
    assert cache.seq_len == 11
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole, rtol=0, atol=F64_TOL)


def test_decode_token_by_token_equals_prompt(path):
    lm = models.load(path, dtype=np.float32)
    ids = ids_of(2, 9)
    whole = lm(ids)
    cache = lm.new_cache(2)
    steps = [lm.forward(ids[:, t : t + 1], cache)[0] for t in range(9)]
    tol = 1e-5 * scale_of(whole)  # same float32 ops, T = 1 vs T = 9 matmul blocking
    np.testing.assert_allclose(np.concatenate(steps, axis=1), whole, rtol=0, atol=tol)


def test_cache_copy_and_continuation(path):
    lm = models.load(path, dtype=np.float64)
    ids = ids_of(1, 8)
    _, cache = lm.forward(ids[:, :5])
    snapshot = cache.copy()
    first, _ = lm.forward(ids[:, 5:], cache)
    again, _ = lm.forward(ids[:, 5:], snapshot)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(first, lm(ids)[:, 5:], rtol=0, atol=F64_TOL)


def test_batch_rows_independent(path):
    lm = models.load(path, dtype=np.float64)
    ids = ids_of(3, 6)
    batched = lm(ids)
    for row in range(3):
        np.testing.assert_allclose(batched[row], lm(ids[row])[0], rtol=0, atol=F64_TOL)


def test_float32_vs_float64(path):
    ids = ids_of(2, 10)
    high = models.load(path, dtype=np.float64)(ids)
    low = models.load(path, dtype=np.float32)(ids)
    assert low.dtype == np.float32 and high.dtype == np.float64
    np.testing.assert_allclose(low, high, rtol=0, atol=F32_TOL * scale_of(high))


def test_numpy_backend_is_the_oracle(path):
    ids = ids_of(2, 9)
    fast = models.load(path, dtype=np.float64)
    oracle = models.load(path, dtype=np.float64, backend="numpy")
    np.testing.assert_allclose(fast(ids), oracle(ids), rtol=0, atol=F64_TOL)
    _, c1 = fast.forward(ids)
    _, c2 = oracle.forward(ids)
    for name in c1.arrays:
        np.testing.assert_allclose(c1[name], c2[name], rtol=1e-12, atol=1e-12, err_msg=name)


def test_long_prompt_numpy_backend_is_the_oracle(path):
    """A prompt long enough that the fused RWKV-7 output runs as several tasks (and the wkv
    kernels on the pool)."""
    ids = ids_of(2, 300)
    fast = models.load(path, dtype=np.float64)
    oracle = models.load(path, dtype=np.float64, backend="numpy")
    np.testing.assert_allclose(fast(ids), oracle(ids), rtol=0, atol=F64_TOL)


# --- storage dtypes and shards


def _rounded(tensors: dict, stored: str) -> dict:
    if stored == "F16":
        return {k: v.astype(np.float16).astype(np.float64) for k, v in tensors.items()}
    if stored == "BF16":
        return {
            k: (float_to_bf16(v).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
            for k, v in tensors.items()
        }
    return {k: v.astype(np.float32).astype(np.float64) for k, v in tensors.items()}


@pytest.mark.parametrize("stored", ["F32", "F16", "BF16"])
def test_stored_dtypes_load_the_same_values(tmp_path, stored, rwkv4_tensors, rwkv7_tensors):
    ids = ids_of(1, 5)
    folder = write_folder(tmp_path / "r4", RWKV4, rwkv4_tensors, stored=stored)
    file = write_rwkv7(tmp_path / "r7.safetensors", rwkv7_tensors, stored)
    for source, config, tensors in ((folder, RWKV4, rwkv4_tensors), (file, RWKV7, rwkv7_tensors)):
        loaded = models.load(source, dtype=np.float64)
        expected = model_from_tensors(config, _rounded(tensors, stored), dtype=np.float64)
        np.testing.assert_array_equal(loaded(ids), expected(ids))


def test_rwkv4_sharded_folder(tmp_path, rwkv4_tensors, rwkv4_folder):
    sharded = write_folder(tmp_path, RWKV4, rwkv4_tensors, shards=3)
    assert (sharded / "model.safetensors.index.json").is_file()
    ids = ids_of(2, 6)
    np.testing.assert_array_equal(
        models.load(sharded, dtype="float64")(ids), models.load(rwkv4_folder, dtype="float64")(ids)
    )


# --- RWKV-4 specifics


def test_rwkv4_rescale_every_equals_unscaled():
    """transformers divides block i's attention.output and feed_forward.value by 2^(i // n) and
    halves x after every n-th block. LayerNorm is scale-free but for its eps: with the blocks'
    eps ~0 and ln_out's eps scaled as its input is, the rescaled model is the plain one within
    rounding (powers of two are exact)."""
    config = dict(RWKV4, num_hidden_layers=5, layer_norm_epsilon=1e-30)
    tensors = tensors_of(config, seed=3)
    ids = ids_of(2, 7)
    plain = model_from_tensors(config, tensors, dtype=np.float64)
    want = plain(ids)
    for every in (1, 2, 3, 6):
        scaled = model_from_tensors(dict(config, rescale_every=every), tensors, dtype=np.float64)
        halvings = 5 // every
        assert sum(block.halve for block in scaled.blocks) == halvings
        np.testing.assert_array_equal(
            scaled.blocks[4].ffn_value * 2 ** (4 // every), plain.blocks[4].ffn_value
        )
        scaled.ln_out_eps = plain.ln_out_eps / 4**halvings
        np.testing.assert_allclose(scaled(ids), want, rtol=0, atol=1e-12 * scale_of(want))


def test_rwkv4_rescale_every_with_real_eps():
    """With eps 1e-5 the norms of x / 2^j differ slightly; the model stays close (released
    checkpoints use rescale_every 6)."""
    config = dict(RWKV4, num_hidden_layers=5)
    tensors = tensors_of(config, seed=3)
    ids = ids_of(2, 7)
    want = model_from_tensors(config, tensors, dtype=np.float64)(ids)
    got = model_from_tensors(dict(config, rescale_every=2), tensors, dtype=np.float64)(ids)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-3 * scale_of(want))
    assert not np.array_equal(got, want)


def test_rwkv4_tied_head(tmp_path, rwkv4_tensors):
    config = dict(RWKV4, tie_word_embeddings=True)
    tensors = {k: v for k, v in rwkv4_tensors.items() if k != "head.weight"}
    lm = models.load(write_folder(tmp_path, config, tensors), dtype=np.float64)
    assert lm.head is lm.embedding
    tensors = _rounded(tensors, "F32")
    untied = model_from_tensors(
        RWKV4, dict(tensors, **{"head.weight": tensors["rwkv.embeddings.weight"]}), dtype="float64"
    )
    ids = ids_of(1, 4)
    np.testing.assert_array_equal(lm(ids), untied(ids))


def test_rwkv4_attention_size_differs(tmp_path):
    config = dict(RWKV4, attention_hidden_size=16, intermediate_size=None)
    tensors = tensors_of(config)
    assert tensors["rwkv.blocks.1.attention.key.weight"].shape == (16, 24)
    assert tensors["rwkv.blocks.1.feed_forward.key.weight"].shape == (96, 24)
    lm = models.load(write_folder(tmp_path, config, tensors), dtype=np.float64)
    oracle = models.load(tmp_path, dtype=np.float64, backend="numpy")
    ids = ids_of(2, 5)
    np.testing.assert_allclose(lm(ids), oracle(ids), rtol=0, atol=F64_TOL)


def _rwkv_lm_name(key: str) -> str:
    """transformers' RWKV-4 key as BlinkDL's .pth files name it."""
    key = key.removeprefix("rwkv.").replace("embeddings.", "emb.")
    key = key.replace("pre_ln.", "ln0.").replace("attention.", "att.")
    key = key.replace("feed_forward.", "ffn.")
    for long, short in (("key", "k"), ("value", "v"), ("receptance", "r")):
        key = key.replace(f"time_mix_{long}", f"time_mix_{short}")
    return key


def test_rwkv4_rwkv_lm_file(tmp_path, rwkv4_tensors, rwkv4_folder):
    renamed = {_rwkv_lm_name(k): v for k, v in rwkv4_tensors.items()}
    assert all(rwkv4.transformers_key(_rwkv_lm_name(k)) == k for k in rwkv4_tensors)
    assert all(rwkv4.rwkv_lm_key(k) == _rwkv_lm_name(k) for k in rwkv4_tensors)
    assert "blocks.2.att.time_mix_k" in renamed and "blocks.0.ln0.bias" in renamed
    assert "emb.weight" in renamed and "ln_out.weight" in renamed
    lm = models.load(write_rwkv7(tmp_path / "rwkv4.safetensors", renamed), dtype=np.float64)
    assert lm.model_type == "rwkv" and lm.rescale_every == 0
    assert {k: lm.config[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers")} == {
        "vocab_size": 37,
        "hidden_size": 24,
        "num_hidden_layers": 3,
    }
    assert (lm.attention_size, lm.ffn_size) == (24, 40)
    ids = ids_of(2, 6)
    np.testing.assert_array_equal(lm(ids), models.load(rwkv4_folder, dtype=np.float64)(ids))
    del renamed["blocks.1.ffn.value.weight"]
    with pytest.raises(ValueError, match=r"missing tensor 'blocks\.1\.ffn\.value\.weight'"):
        models.load(write_rwkv7(tmp_path / "bad.safetensors", renamed))


def _ln(x, w, b, eps=1e-5):
    return (x - x.mean()) / np.sqrt(x.var() + eps) * w + b


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_rwkv4_hand_checked_step(rwkv4_tensors):
    """One token through the whole model from a random cache, written out from the formulas
    (the plain sums a, b, not the stable form), in float64."""
    t = {k: v.astype(np.float64) for k, v in rwkv4_tensors.items()}
    lm = model_from_tensors(RWKV4, rwkv4_tensors, dtype=np.float64)
    cache = lm.new_cache(1)
    rng = np.random.default_rng(5)
    cache["att_x"][...] = rng.standard_normal(cache["att_x"].shape)
    cache["ffn_x"][...] = rng.standard_normal(cache["ffn_x"].shape)
    a_sum = rng.standard_normal((3, 24))  # true running sums a = aa e^pp, b = bb e^pp > 0
    b_sum = rng.uniform(0.5, 2.0, (3, 24))
    pp = rng.uniform(-1, 1, (3, 24))
    cache["wkv"][:, 0, 0] = a_sum / np.exp(pp)
    cache["wkv"][:, 0, 1] = b_sum / np.exp(pp)
    cache["wkv"][:, 0, 2] = pp
    att_x, ffn_x = cache["att_x"][:, 0].copy(), cache["ffn_x"][:, 0].copy()
    token = 11
    logits, cache = lm.forward(np.array([[token]]), cache)

    x = _ln(
        t["rwkv.embeddings.weight"][token],
        t["rwkv.blocks.0.pre_ln.weight"],
        t["rwkv.blocks.0.pre_ln.bias"],
    )
    for i in range(3):
        p = f"rwkv.blocks.{i}."
        att, ffn = p + "attention.", p + "feed_forward."
        h = _ln(x, t[p + "ln1.weight"], t[p + "ln1.bias"])

        def mix(name, h=h, prev=att_x[i], block=att):
            m = t[block + name].reshape(-1)
            return h * m + prev * (1 - m)

        k = t[att + "key.weight"] @ mix("time_mix_key")
        v = t[att + "value.weight"] @ mix("time_mix_value")
        r = _sigmoid(t[att + "receptance.weight"] @ mix("time_mix_receptance"))
        e_uk = np.exp(t[att + "time_first"] + k)
        wkv = (a_sum[i] + e_uk * v) / (b_sum[i] + e_uk)
        decay = np.exp(-np.exp(t[att + "time_decay"]))
        new_a, new_b = decay * a_sum[i] + np.exp(k) * v, decay * b_sum[i] + np.exp(k)
        got_a = cache["wkv"][i, 0, 0] * np.exp(cache["wkv"][i, 0, 2])
        got_b = cache["wkv"][i, 0, 1] * np.exp(cache["wkv"][i, 0, 2])
        np.testing.assert_allclose(got_a, new_a, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got_b, new_b, rtol=1e-12)
        np.testing.assert_allclose(cache["att_x"][i, 0], h, rtol=0, atol=1e-13)
        x = x + t[att + "output.weight"] @ (r * wkv)
        h = _ln(x, t[p + "ln2.weight"], t[p + "ln2.bias"])
        kf = np.maximum(t[ffn + "key.weight"] @ mix("time_mix_key", h, ffn_x[i], ffn), 0) ** 2
        rf = _sigmoid(t[ffn + "receptance.weight"] @ mix("time_mix_receptance", h, ffn_x[i], ffn))
        x = x + rf * (t[ffn + "value.weight"] @ kf)
    want = t["head.weight"] @ _ln(x, t["rwkv.ln_out.weight"], t["rwkv.ln_out.bias"])
    np.testing.assert_allclose(logits[0, 0], want, rtol=0, atol=1e-11 * scale_of(want))


# --- RWKV-7 specifics


def _group_norm(y, w, b, heads):
    y = y.reshape(heads, -1)
    y = (y - y.mean(axis=1, keepdims=True)) / np.sqrt(y.var(axis=1, keepdims=True) + 64e-5)
    return y.reshape(-1) * w + b


def _rwkv7_step_by_hand(t, config, token, att_x, ffn_x, states_vk):
    """One token, RWKV-LM's formulas and state orientation (state[value, key]), float64.
    Returns the logits and the new (att_x, ffn_x, states_vk)."""
    heads = config["hidden_size"] // config["head_size"]
    n = config["head_size"]
    att_x, ffn_x, states_vk = att_x.copy(), ffn_x.copy(), states_vk.copy()
    x = _ln(t["emb.weight"][token], t["blocks.0.ln0.weight"], t["blocks.0.ln0.bias"])
    v_first = None
    for i in range(config["num_hidden_layers"]):
        p = f"blocks.{i}."

        def g(name, p=p):
            value = t[p + name]
            return value.reshape(-1) if value.shape[:2] == (1, 1) else value

        h = _ln(x, g("ln1.weight"), g("ln1.bias"))
        prev, att_x[i] = att_x[i].copy(), h
        xr, xw, xk, xv, xa, xg = (h + (prev - h) * g(f"att.x_{m}") for m in "rwkvag")
        r = g("att.receptance.weight") @ xr
        k = g("att.key.weight") @ xk
        v = g("att.value.weight") @ xv
        w_raw = g("att.w0") + np.tanh(xw @ g("att.w1")) @ g("att.w2")
        decay = np.exp(-np.exp(-0.5) * _sigmoid(w_raw))
        a = _sigmoid(g("att.a0") + xa @ g("att.a1") @ g("att.a2"))
        gate = _sigmoid(xg @ g("att.g1")) @ g("att.g2")
        kk = (k * g("att.k_k")).reshape(heads, n)
        kk = (kk / np.maximum(np.linalg.norm(kk, axis=1, keepdims=True), 1e-12)).reshape(-1)
        k = k * (1 + (a - 1) * g("att.k_a"))
        if i == 0:
            v_first = v
        else:
            v = v + (v_first - v) * _sigmoid(g("att.v0") + xv @ g("att.v1") @ g("att.v2"))
        y = np.empty(heads * n)
        for hd in range(heads):
            s = slice(hd * n, (hd + 1) * n)
            S = states_vk[i, hd]  # (value, key)
            S = S * decay[s][None, :] - np.outer(S @ kk[s], kk[s] * a[s]) + np.outer(v[s], k[s])
            states_vk[i, hd] = S
            y[s] = S @ r[s]
        y = _group_norm(y, g("att.ln_x.weight"), g("att.ln_x.bias"), heads)
        bonus = (r * k * g("att.r_k").reshape(-1)).reshape(heads, n).sum(axis=1)
        y = y + (bonus[:, None] * v.reshape(heads, n)).reshape(-1)
        x = x + g("att.output.weight") @ (y * gate)
        h = _ln(x, g("ln2.weight"), g("ln2.bias"))
        prev, ffn_x[i] = ffn_x[i].copy(), h
        kf = np.maximum(g("ffn.key.weight") @ (h + (prev - h) * g("ffn.x_k")), 0) ** 2
        x = x + g("ffn.value.weight") @ kf
    logits = t["head.weight"] @ _ln(x, t["ln_out.weight"], t["ln_out.bias"])
    return logits, att_x, ffn_x, states_vk


@pytest.mark.parametrize("layers", [1, 2])
def test_rwkv7_hand_checked_step(layers):
    """T = 1 from a random cache: logits and every cache entry against the formulas written out
    in RWKV-LM's orientation (the model's wkv state is the transpose)."""
    config = dict(RWKV7, num_hidden_layers=layers)
    tensors = tensors_of(config, seed=7)
    lm = model_from_tensors(config, tensors, dtype=np.float64)
    rng = np.random.default_rng(9)
    cache = lm.new_cache(1)
    for name in ("att_x", "ffn_x", "wkv"):
        cache[name][...] = rng.standard_normal(cache[name].shape) * (0.3 if name == "wkv" else 1)
    states_vk = cache["wkv"][:, 0].swapaxes(-1, -2).copy()
    want = _rwkv7_step_by_hand(
        tensors, config, 5, cache["att_x"][:, 0], cache["ffn_x"][:, 0], states_vk
    )
    logits, cache = lm.forward(np.array([[5]]), cache)
    np.testing.assert_allclose(logits[0, 0], want[0], rtol=0, atol=1e-11 * scale_of(want[0]))
    np.testing.assert_allclose(cache["att_x"][:, 0], want[1], rtol=0, atol=1e-13)
    np.testing.assert_allclose(cache["ffn_x"][:, 0], want[2], rtol=0, atol=1e-13)
    np.testing.assert_allclose(cache["wkv"][:, 0].swapaxes(-1, -2), want[3], rtol=0, atol=1e-12)


def test_rwkv7_hand_checked_prompt_from_zero():
    """Three tokens from a fresh cache, by hand token after token, against one prompt call."""
    tensors = tensors_of(RWKV7, seed=11)
    lm = model_from_tensors(RWKV7, tensors, dtype=np.float64)
    layers, c = RWKV7["num_hidden_layers"], RWKV7["hidden_size"]
    heads, n = c // RWKV7["head_size"], RWKV7["head_size"]
    state = (np.zeros((layers, c)), np.zeros((layers, c)), np.zeros((layers, heads, n, n)))
    logits = lm(np.array([[3, 30, 8]]))
    for step, token in enumerate((3, 30, 8)):
        want, *state = _rwkv7_step_by_hand(tensors, RWKV7, token, *state)
        np.testing.assert_allclose(logits[0, step], want, rtol=0, atol=1e-11 * scale_of(want))


# --- generate and the command line


def test_generate_reproducible(path):
    lm = models.load(path)
    prompt = ids_of(2, 4)
    first = lm.generate(prompt, 6, temperature=0.9, top_p=0.95, seed=42)
    again = lm.generate(prompt, 6, temperature=0.9, top_p=0.95, seed=42)
    assert first.shape == (2, 10)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first[:, :4], prompt)
    greedy = lm.generate(prompt[:1], 3)
    ids = prompt[:1]
    for _ in range(3):
        ids = np.concatenate([ids, lm(ids)[:, -1].argmax(-1)[:, None]], axis=1)
    np.testing.assert_array_equal(greedy, ids)


def _cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "seqkern.models.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_cli_ids(path):
    result = _cli(str(path), "--ids", "1,2,3", "--max-new-tokens", "4", "--threads", "1")
    assert result.returncode == 0, result.stderr
    tokens = [int(part) for part in result.stdout.strip().split(",")]
    assert len(tokens) == 4
    lm = models.load(path)
    np.testing.assert_array_equal(lm.generate(np.array([1, 2, 3]), 4)[0, 3:], tokens)
    assert "prefill" in result.stderr and "cache" in result.stderr


def _write_tokenizer(folder: Path, vocab_size: int = 37) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    letters = "abcdefghijklmnopqrstuvwxyz0123456789 "
    vocab = {ch: i for i, ch in enumerate(letters[:vocab_size])}
    model = tokenizers.models.WordLevel(vocab, unk_token="a")
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
    tokenizer.decoder = tokenizers.decoders.Fuse()
    tokenizer.save(str(folder / "tokenizer.json"))


def test_cli_text(path):
    folder = path if path.is_dir() else path.parent
    _write_tokenizer(folder)
    try:
        result = _cli(str(path), "--prompt", "hello world", "--max-new-tokens", "5")
    finally:
        (folder / "tokenizer.json").unlink()
    assert result.returncode == 0, result.stderr
    text = result.stdout.rstrip("\n")
    assert len(text) == 5 and set(text) <= set("abcdefghijklmnopqrstuvwxyz0123456789 ")
    assert "prompt tokens: 11" in result.stderr


# --- bad input


def test_missing_tensor(tmp_path, rwkv4_tensors, rwkv7_tensors):
    key = "rwkv.blocks.2.attention.time_first"
    tensors = {k: v for k, v in rwkv4_tensors.items() if k != key}
    with pytest.raises(ValueError, match=f"missing tensor '{re.escape(key)}'"):
        models.load(write_folder(tmp_path / "a", RWKV4, tensors))
    tensors = {k: v for k, v in rwkv7_tensors.items() if k != "blocks.1.att.a2"}
    with pytest.raises(ValueError, match=r"missing tensor 'blocks\.1\.att\.a2'"):
        models.load(write_rwkv7(tmp_path / "b.safetensors", tensors))


def test_wrong_shape_names_key_expected_actual(tmp_path, rwkv4_tensors, rwkv7_tensors):
    bad = dict(rwkv4_tensors, **{"rwkv.blocks.1.feed_forward.value.weight": np.zeros((24, 41))})
    with pytest.raises(
        ValueError, match=r"'rwkv\.blocks\.1\.feed_forward\.value\.weight'.*\(24, 40\).*\(24, 41\)"
    ):
        models.load(write_folder(tmp_path / "a", RWKV4, bad))
    bad = dict(rwkv7_tensors, **{"blocks.2.att.x_k": np.zeros((32,))})
    with pytest.raises(ValueError, match=r"'blocks\.2\.att\.x_k'.*\(1, 1, 32\).*\(32,\)"):
        models.load(write_rwkv7(tmp_path / "b.safetensors", bad))


def test_unknown_layout_lists_expected_keys(tmp_path, rwkv4_tensors, rwkv7_tensors):
    file = tmp_path / "other.safetensors"
    write_safetensors(file, {"model.layers.0.weight": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="fit no supported layout") as info:
        models.load(file)
    message = str(info.value)
    for key in ("emb.weight", "blocks.{i}.att.r_k", "head.weight", "model.layers.0.weight"):
        assert key in message
    partial = {k: v for k, v in rwkv7_tensors.items() if k != "blocks.2.att.k_k"}
    with pytest.raises(ValueError, match=r"missing here: blocks\.2\.att\.k_k"):
        models.load(write_rwkv7(tmp_path / "partial.safetensors", partial))
    # a transformers RWKV-4 checkpoint as a bare file has no config: not guessed
    with pytest.raises(ValueError, match="fit no supported layout") as info:
        models.load(write_rwkv7(tmp_path / "r4.safetensors", rwkv4_tensors))
    assert "RWKV-4 (RWKV-LM): emb.weight" in str(info.value)


def test_rwkv7_variant_with_extra_tensors(tmp_path, rwkv7_tensors):
    extra = dict(rwkv7_tensors, **{"blocks.1.ffn.s_emb.weight": np.zeros((37, 32))})
    with pytest.raises(ValueError, match=r"does not have: blocks\.1\.ffn\.s_emb\.weight"):
        models.load(write_rwkv7(tmp_path / "de.safetensors", extra))


def test_pth_and_garbage_files(tmp_path):
    pth = tmp_path / "model.pth"
    pth.write_bytes(b"\x80\x02not really")
    with pytest.raises(ValueError, match="seqkern.models.convert"):
        models.load(pth)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        models.load(junk)


def test_bad_ids_and_cache(path, rwkv4_folder, rwkv7_file):
    lm = models.load(path)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        lm(np.array([[1, 37]]))
    other = models.load(rwkv7_file if path == rwkv4_folder else rwkv4_folder)
    with pytest.raises(ValueError, match="cache: made by another model"):
        lm.forward(np.array([[1]]), other.new_cache(1))
    with pytest.raises(ValueError, match="holds 2 rows"):
        lm.forward(np.array([[1]]), lm.new_cache(2))


# --- the .pth converter


def test_convert_writer_round_trip(tmp_path):
    from seqkern.models.convert import write_raw_safetensors

    bits = float_to_bf16(np.array([[1.5, -2.0, 3.25]], np.float32))
    halves = np.array([0.5, 1.0], np.float16)
    items = [("a.bf16", "BF16", (1, 1, 3), bits.nbytes), ("b.f16", "F16", (2,), halves.nbytes)]
    file = tmp_path / "out.safetensors"
    write_raw_safetensors(file, items, [bits.tobytes(), halves.tobytes()])
    from seqkern.models.checkpoint import Checkpoint

    ckpt = Checkpoint([file])
    assert ckpt.stored_dtype("a.bf16") == "BF16" and ckpt.shape("a.bf16") == (1, 1, 3)
    np.testing.assert_array_equal(ckpt.get("a.bf16", (1, 1, 3), np.float32), [[[1.5, -2.0, 3.25]]])
    np.testing.assert_array_equal(ckpt.get("b.f16", (2,), np.float64), [0.5, 1.0])
    with pytest.raises(ValueError, match="expected 6 bytes, got 2"):
        write_raw_safetensors(file, items[:1], [b"ab"])


def test_convert_without_torch_says_so(tmp_path, monkeypatch):
    from seqkern.models import convert

    monkeypatch.setitem(sys.modules, "torch", None)
    source = tmp_path / "m.pth"
    source.write_bytes(b"x")
    with pytest.raises(SystemExit, match="needs torch"):
        convert.main([str(source), str(tmp_path / "m.safetensors")])


def test_convert_real_pth(tmp_path, rwkv7_tensors):
    torch = pytest.importorskip("torch")
    from seqkern.models import convert

    state = {k: torch.tensor(v, dtype=torch.bfloat16) for k, v in rwkv7_tensors.items()}
    torch.save(state, tmp_path / "m.pth")
    assert convert.main([str(tmp_path / "m.pth"), str(tmp_path / "m.safetensors")]) == 0
    lm = models.load(tmp_path / "m.safetensors", dtype=np.float64)
    expected = model_from_tensors(RWKV7, _rounded(rwkv7_tensors, "BF16"), dtype=np.float64)
    ids = ids_of(1, 5)
    np.testing.assert_array_equal(lm(ids), expected(ids))


def test_safetensors_header_is_plain(rwkv7_file):
    """The written file is an ordinary safetensors file (8-byte length, JSON header)."""
    with open(rwkv7_file, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    assert header["blocks.0.att.r_k"]["shape"] == [4, 8]

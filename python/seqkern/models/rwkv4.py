"""RWKV-4 (transformers ``RwkvForCausalLM``, model_type "rwkv"; RWKV/rwkv-4-*-pile, raven).

Each block (block 0 first applies ``pre_ln`` to the embedding)::

    h = layer_norm(x, ln1);  s = h shifted by one token (the cache holds the last h)
    x_m = h * time_mix_m + s * (1 - time_mix_m)            m = key, value, receptance
    y, (aa, bb, pp) = wkv4(-exp(time_decay), time_first, key(x_k), value(x_v), (aa, bb, pp))
    x = x + output(sigmoid(receptance(x_r)) * y)
    h = layer_norm(x, ln2);  s = h shifted (its own cache entry)
    x = x + sigmoid(receptance(x_r)) * value(relu(key(x_k))^2)   the channel mix

then ``ln_out`` (eps 1e-5, torch's default, as transformers builds it) and ``head`` (or the
embedding when ``tie_word_embeddings``).

``rescale_every`` = n > 0 reproduces transformers at inference: block i's ``attention.output``
and ``feed_forward.value`` weights are divided by 2^(i // n) at load, and the hidden state is
halved after every n-th block. Up to the LayerNorm epsilons (a norm of x / 2^j is not exactly
the norm of x) this is the unscaled model; it keeps float16 activations in range, and the
released checkpoints were evaluated that way.

A single .safetensors file in RWKV-LM's naming (BlinkDL's RWKV-4 .pth files, converted by
``python -m seqkern.models.convert``) loads too: its keys are transformers' under other names
(``emb.weight``, ``blocks.{i}.att.time_mix_k``, ``blocks.0.ln0``, ``ffn``, ...; see
:func:`transformers_key`), the sizes are told from the shapes, and ``rescale_every`` is 0 (the
model as trained).

The cache holds per layer the last normed input of each mix, ``att_x`` and ``ffn_x``
(B, hidden), and the wkv state ``wkv`` (B, 3, attention_hidden) = [aa, bb, pp] with pp = -1e38
for an empty history (transformers' value), so the first token sees no past.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .core import Cache, CausalLM, Weights, layer_norm

# pp of an empty history: exp(pp - anything finite) is 0 (transformers' CUDA kernel's value).
EMPTY_PP = -1e38


@dataclass
class _Block:
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray
    w: np.ndarray  # -exp(time_decay), (A,)
    u: np.ndarray  # time_first, (A,)
    att_mix: np.ndarray  # (3, C): time_mix_key, _value, _receptance
    att_key: np.ndarray  # (A, C)
    att_value: np.ndarray  # (A, C)
    att_receptance: np.ndarray  # (A, C)
    att_output: np.ndarray  # (C, A), divided by 2^(i // rescale_every)
    ffn_mix: np.ndarray  # (2, C): time_mix_key, _receptance
    ffn_key: np.ndarray  # (F, C)
    ffn_receptance: np.ndarray  # (C, C)
    ffn_value: np.ndarray  # (C, F), divided by 2^(i // rescale_every)
    halve: bool  # halve the hidden state after this block


def sigmoid_(x: np.ndarray) -> np.ndarray:
    """x <- 1 / (1 + exp(-x)) in place (call under np.errstate(over="ignore"): exp(-x)
    overflows to inf for very negative x, and the result is then 0 as it should be)."""
    np.negative(x, out=x)
    np.exp(x, out=x)
    x += 1
    np.reciprocal(x, out=x)
    return x


def direct_kernel(backend: str, dtype: np.dtype, name: str):
    """The wkv kernel ``name`` called without the public wrapper's per-call checks (the model
    builds contiguous arrays of the right dtype and shape itself): the native entry point for
    the seqkern backend, the NumPy reference for the numpy backend. Same positional arguments
    as :func:`seqkern.rwkv.wkv4` / ``wkv7`` (without ``scale``)."""
    if backend == "numpy":
        from ..reference import rwkv as reference

        return getattr(reference, name)
    from .. import _native

    entry = getattr(_native, f"{name}_{'f32' if dtype == np.float32 else 'f64'}")
    if name == "wkv4":
        return entry
    return lambda *args: entry(*args, 1.0)  # scale 1: RWKV's


def _shifted(h: np.ndarray, last: np.ndarray) -> np.ndarray:
    """h (B, T, C) delayed by one token, the cached ``last`` (B, C) first; ``last`` <- h[:, -1]."""
    if h.shape[1] == 1:
        shifted = last[:, None].copy()
    else:
        shifted = np.empty_like(h)
        shifted[:, 0] = last
        shifted[:, 1:] = h[:, :-1]
    last[...] = h[:, -1]
    return shifted


def _mixes(h: np.ndarray, shifted: np.ndarray, mixes: np.ndarray) -> np.ndarray:
    """h * m + shifted * (1 - m) for each row m of ``mixes`` (M, C), computed as
    shifted + (h - shifted) * m: an (M, B, T, C) array."""
    out = (h - shifted)[None] * mixes[:, None, None, :]
    out += shifted
    return out


class RwkvLM(CausalLM):
    """RWKV-4 on seqkern: wkv4 with the cached (aa, bb, pp) state, token shift through the
    cache, the channel mix in NumPy."""

    model_type = "rwkv"

    def __init__(self, config: dict, weights: Weights, backend: str):
        hidden = int(config["hidden_size"])
        self.hidden_size = hidden
        self.attention_size = int(config.get("attention_hidden_size") or hidden)
        self.ffn_size = int(config.get("intermediate_size") or 4 * hidden)
        self.eps = float(config.get("layer_norm_epsilon", 1e-5))
        self.ln_out_eps = 1e-5  # transformers builds ln_out with torch's default eps
        self.rescale_every = int(config.get("rescale_every", 0) or 0)
        vocab = int(config["vocab_size"])
        layers = int(config["num_hidden_layers"])
        self.embedding = weights("rwkv.embeddings.weight", vocab, hidden)
        self.pre_ln_w = weights("rwkv.blocks.0.pre_ln.weight", hidden)
        self.pre_ln_b = weights("rwkv.blocks.0.pre_ln.bias", hidden)
        self.blocks = [self._load_block(weights, i, layers) for i in range(layers)]
        self.ln_out_w = weights("rwkv.ln_out.weight", hidden)
        self.ln_out_b = weights("rwkv.ln_out.bias", hidden)
        self.head = weights.output_head("head.weight", self.embedding, config, False)
        super().__init__(config, weights.dtype, backend, vocab, layers, weights.count)
        self._wkv4 = direct_kernel(backend, self.dtype, "wkv4")

    def _load_block(self, w: Weights, i: int, layers: int) -> _Block:
        p = f"rwkv.blocks.{i}."
        att, ffn = p + "attention.", p + "feed_forward."
        c, a, f = self.hidden_size, self.attention_size, self.ffn_size
        n = self.rescale_every
        scale = 2.0 ** (i // n) if n > 0 else 1.0
        return _Block(
            ln1_w=w(p + "ln1.weight", c),
            ln1_b=w(p + "ln1.bias", c),
            ln2_w=w(p + "ln2.weight", c),
            ln2_b=w(p + "ln2.bias", c),
            w=-np.exp(w(att + "time_decay", a)),
            u=w(att + "time_first", a),
            att_mix=np.concatenate(
                [w(att + f"time_mix_{m}", 1, 1, c)[0] for m in ("key", "value", "receptance")]
            ),
            att_key=w(att + "key.weight", a, c),
            att_value=w(att + "value.weight", a, c),
            att_receptance=w(att + "receptance.weight", a, c),
            att_output=w(att + "output.weight", c, a) / scale,
            ffn_mix=np.concatenate(
                [w(ffn + f"time_mix_{m}", 1, 1, c)[0] for m in ("key", "receptance")]
            ),
            ffn_key=w(ffn + "key.weight", f, c),
            ffn_receptance=w(ffn + "receptance.weight", c, c),
            ffn_value=w(ffn + "value.weight", c, f) / scale,
            halve=n > 0 and (i + 1) % n == 0,
        )

    def _state_arrays(self, batch: int) -> dict[str, np.ndarray]:
        layers, c, a = self.num_layers, self.hidden_size, self.attention_size
        wkv = np.zeros((layers, batch, 3, a), self.dtype)
        wkv[:, :, 2] = EMPTY_PP
        return {
            "att_x": np.zeros((layers, batch, c), self.dtype),
            "ffn_x": np.zeros((layers, batch, c), self.dtype),
            "wkv": wkv,
        }

    def _cache_signature(self) -> tuple:
        return super()._cache_signature() + (self.hidden_size, self.attention_size)

    def _forward(self, ids: np.ndarray, cache: Cache) -> np.ndarray:
        with np.errstate(over="ignore"):
            return self._layers(ids, cache)

    def _layers(self, ids: np.ndarray, cache: Cache) -> np.ndarray:
        x = layer_norm(self.embedding[ids], self.pre_ln_w, self.pre_ln_b, self.eps)
        att_x, ffn_x, wkv = cache["att_x"], cache["ffn_x"], cache["wkv"]
        for i, block in enumerate(self.blocks):
            h = layer_norm(x, block.ln1_w, block.ln1_b, self.eps)
            x += self._time_mix(block, h, att_x[i], wkv[i])
            h = layer_norm(x, block.ln2_w, block.ln2_b, self.eps)
            x += self._channel_mix(block, h, ffn_x[i])
            if block.halve:
                x *= 0.5
        x = layer_norm(x, self.ln_out_w, self.ln_out_b, self.ln_out_eps)
        return x @ self.head.T

    def _time_mix(self, block: _Block, h: np.ndarray, last: np.ndarray, state: np.ndarray):
        """The attention of T tokens h (B, T, C), updating the cached last h and wkv state."""
        xk, xv, xr = _mixes(h, _shifted(h, last), block.att_mix)
        k = xk @ block.att_key.T
        v = xv @ block.att_value.T
        r = sigmoid_(xr @ block.att_receptance.T)
        y, state[...] = self._wkv4(block.w, block.u, k, v, state)
        r *= y
        return r @ block.att_output.T

    def _channel_mix(self, block: _Block, h: np.ndarray, last: np.ndarray) -> np.ndarray:
        """The feed-forward of T tokens h (B, T, C), updating the cached last h."""
        xk, xr = _mixes(h, _shifted(h, last), block.ffn_mix)
        k = xk @ block.ffn_key.T
        np.maximum(k, 0, out=k)
        np.square(k, out=k)
        r = sigmoid_(xr @ block.ffn_receptance.T)
        r *= k @ block.ffn_value.T
        return r


# --- RWKV-LM's naming of the same tensors (one .safetensors file, no config)

RWKV_LM = "RWKV-LM"

# The keys that tell an RWKV-4 file in RWKV-LM's naming ("{i}": every block).
LAYOUT_KEYS = (
    "emb.weight",
    "blocks.0.ln0.weight",
    "blocks.{i}.att.time_decay",
    "blocks.{i}.att.time_first",
    "blocks.{i}.att.time_mix_k",
    "blocks.{i}.att.key.weight",
    "blocks.{i}.ffn.time_mix_k",
    "blocks.{i}.ffn.key.weight",
    "ln_out.weight",
    "head.weight",
)

_RENAMES = (
    (r"^emb\.", "rwkv.embeddings."),
    (r"^blocks\.0\.ln0\.", "rwkv.blocks.0.pre_ln."),
    (r"^blocks\.(\d+)\.att\.", r"rwkv.blocks.\1.attention."),
    (r"^blocks\.(\d+)\.ffn\.", r"rwkv.blocks.\1.feed_forward."),
    (r"^blocks\.", "rwkv.blocks."),
    (r"^ln_out\.", "rwkv.ln_out."),
    (r"\.time_mix_k$", ".time_mix_key"),
    (r"\.time_mix_v$", ".time_mix_value"),
    (r"\.time_mix_r$", ".time_mix_receptance"),
)


def transformers_key(key: str) -> str:
    """The transformers name of an RWKV-LM RWKV-4 key (``blocks.3.att.time_mix_k`` ->
    ``rwkv.blocks.3.attention.time_mix_key``), as transformers' conversion script renames."""
    for pattern, replacement in _RENAMES:
        key = re.sub(pattern, replacement, key)
    return key


_INVERSE = (
    (r"^rwkv\.embeddings\.", "emb."),
    (r"^rwkv\.blocks\.0\.pre_ln\.", "blocks.0.ln0."),
    (r"\.attention\.", ".att."),
    (r"\.feed_forward\.", ".ffn."),
    (r"^rwkv\.", ""),
    (r"\.time_mix_key$", ".time_mix_k"),
    (r"\.time_mix_value$", ".time_mix_v"),
    (r"\.time_mix_receptance$", ".time_mix_r"),
)


def rwkv_lm_key(key: str) -> str:
    """The RWKV-LM name of a transformers RWKV-4 key (the inverse of :func:`transformers_key`)."""
    for pattern, replacement in _INVERSE:
        key = re.sub(pattern, replacement, key)
    return key


class _Renamed:
    """An RWKV-LM checkpoint seen under transformers' keys."""

    def __init__(self, checkpoint: Any):
        self.checkpoint = checkpoint
        self.files = getattr(checkpoint, "files", [])
        self.names = {transformers_key(key): key for key in checkpoint.keys()}

    def __contains__(self, key: str) -> bool:
        return key in self.names

    def keys(self) -> list[str]:
        return sorted(self.names)

    def _original(self, key: str) -> str:
        if key not in self.names:
            raise ValueError(
                f"missing tensor {rwkv_lm_key(key)!r} (transformers' {key!r}) in "
                f"{', '.join(map(str, self.files))}"
            )
        return self.names[key]

    def shape(self, key: str) -> Any:
        return self.checkpoint.shape(self._original(key))

    def get(self, key: str, shape: Any, dtype: np.dtype) -> np.ndarray:
        return self.checkpoint.get(self._original(key), shape, dtype)


def _layer_count(keys: list[str]) -> int:
    indices = [int(m.group(1)) for m in map(re.compile(r"^blocks\.(\d+)\.").match, keys) if m]
    return max(indices) + 1 if indices else 0


def missing_keys(checkpoint: Any) -> list[str]:
    """The identifying keys (:data:`LAYOUT_KEYS`, for every block its keys name) that
    ``checkpoint`` lacks."""
    layers = max(1, _layer_count(checkpoint.keys()))
    wanted = []
    for key in LAYOUT_KEYS:
        wanted += [key.format(i=i) for i in range(layers)] if "{i}" in key else [key]
    return [key for key in wanted if key not in checkpoint]


def config_from_checkpoint(checkpoint: Any) -> Optional[dict]:
    """The config of an RWKV-4 checkpoint in RWKV-LM's naming, told from its keys and shapes,
    or None when the keys are not that layout."""
    layers = _layer_count(checkpoint.keys())
    if layers == 0 or missing_keys(checkpoint):
        return None
    vocab, hidden = checkpoint.shape("emb.weight")
    return {
        "model_type": "rwkv",
        "checkpoint_layout": RWKV_LM,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "attention_hidden_size": checkpoint.shape("blocks.0.att.key.weight")[0],
        "intermediate_size": checkpoint.shape("blocks.0.ffn.key.weight")[0],
        "num_hidden_layers": layers,
        "layer_norm_epsilon": 1e-5,
        "rescale_every": 0,
        "tie_word_embeddings": False,
    }


def from_checkpoint(config: dict, weights: Weights, backend: str) -> RwkvLM:
    """An :class:`RwkvLM` from a transformers "rwkv" folder's config and weights, or from an
    RWKV-LM file's weights and the config :func:`config_from_checkpoint` tells
    (``checkpoint_layout`` "RWKV-LM")."""
    if config.get("checkpoint_layout") == RWKV_LM:
        weights.checkpoint = _Renamed(weights.checkpoint)
    return RwkvLM(config, weights, backend)


def random_initializers() -> dict:
    """Initializers for :class:`seqkern.models.testing.RandomCheckpoint` giving random RWKV-4
    tensors in the ranges of trained ones: time_decay in (-4, 2) (decay factors
    exp(-exp(time_decay)) from 0.0006 to 0.98), time_first around log(0.3), mixes in (0, 1),
    norm weights near 1."""

    def uniform(low: float, high: float):
        return lambda key, shape, rng: rng.uniform(low, high, shape)

    def near(centre: float, spread: float):
        return lambda key, shape, rng: centre + spread * rng.standard_normal(shape)

    return {
        "time_decay": uniform(-4.0, 2.0),
        "time_first": near(np.log(0.3), 0.5),
        "time_mix_key": uniform(0.0, 1.0),
        "time_mix_value": uniform(0.0, 1.0),
        "time_mix_receptance": uniform(0.0, 1.0),
        "ln.weight": near(1.0, 0.1),
        "ln1.weight": near(1.0, 0.1),
        "ln2.weight": near(1.0, 0.1),
        "ln_out.weight": near(1.0, 0.1),
    }

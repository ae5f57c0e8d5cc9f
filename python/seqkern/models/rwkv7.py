"""RWKV-7 "Goose" from one .safetensors file with RWKV-LM's x070 keys (BlinkDL/rwkv-7-world,
rwkv7-g1 .pth files converted by ``python -m seqkern.models.convert``).

The layer count, width, head size, low-rank widths and vocabulary are told from the tensors'
shapes (the file has no config). Per token, with the mixes against the previous token's normed
input carried in the cache (xx = x_prev - x)::

    x = layer_norm(emb[id], blocks.0.ln0)
    per block:  h = layer_norm(x, ln1);  x_m = h + xx * x_m       m = r, w, k, v, a, g
      r = R x_r;  k = K x_k;  v = V x_v
      w = -exp(-1/2) sigmoid(w0 + tanh(x_w w1) w2)                 the log-decay, in (-0.61, 0)
      a = sigmoid(a0 + (x_a a1) a2);  g = sigmoid(x_g g1) g2
      kk = normalize_per_head(k * k_k);  k = k * (1 + (a - 1) * k_a)
      block 0: v_first = v;  later blocks: v = v + (v_first - v) sigmoid(v0 + (x_v v1) v2)
      y = wkv7(r, w, k, v, -kk, kk * a)                           the generalized delta rule
      y = group_norm(y, H groups, eps 64e-5) * ln_x.weight + ln_x.bias
      y = y + sum_head(r * k * r_k) * v
      x = x + O (y * g)
      h = layer_norm(x, ln2);  x = x + ffn.value relu(ffn.key (h + xx * ffn.x_k))^2
    logits = head layer_norm(x, ln_out)

as RWKV-LM's rwkv_v7_numpy.py and the rwkv package's RWKV_x070 compute it (LayerNorm eps 1e-5,
L2 normalisation with norm floor 1e-12). Layer 0 never uses v0/v1/v2; they may be absent.

The cache holds per layer the last normed input of each mix, ``att_x`` and ``ffn_x`` (B, C),
and the wkv state ``wkv`` (B, H, N, N) in seqkern's (key, value) orientation: RWKV-LM and the
rwkv package keep the transpose, state[value, key] (``swapaxes(-1, -2)`` converts).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .core import Cache, CausalLM, Weights, layer_norm
from .rwkv4 import direct_kernel, sigmoid_

MODEL_TYPE = "rwkv_x070"

# The keys that tell an RWKV-7 x070 file ("{i}": every block), and those block 0 may omit.
LAYOUT_KEYS = (
    "emb.weight",
    "blocks.0.ln0.weight",
    "blocks.0.ln0.bias",
    "blocks.{i}.ln1.weight",
    "blocks.{i}.att.r_k",
    "blocks.{i}.att.w1",
    "blocks.{i}.att.a1",
    "blocks.{i}.att.g1",
    "blocks.{i}.att.k_k",
    "blocks.{i}.att.receptance.weight",
    "blocks.{i}.ffn.key.weight",
    "ln_out.weight",
    "head.weight",
)

DECAY_SCALE = math.exp(-0.5)  # w = -DECAY_SCALE * sigmoid(w_raw): decay factors in (0.545, 1)
GROUP_NORM_EPS = 64e-5
LAYER_NORM_EPS = 1e-5

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def _layer_count(keys: list[str]) -> int:
    indices = [int(m.group(1)) for m in map(_BLOCK.match, keys) if m]
    return max(indices) + 1 if indices else 0


def config_from_checkpoint(checkpoint: Any) -> Optional[dict]:
    """The config of an RWKV-7 x070 checkpoint told from its keys and shapes, or None when the
    keys are not that layout (see :data:`LAYOUT_KEYS`)."""
    keys = checkpoint.keys()
    layers = _layer_count(keys)
    if layers == 0 or missing_keys(checkpoint):
        return None
    vocab, hidden = checkpoint.shape("emb.weight")
    heads, head_size = checkpoint.shape("blocks.0.att.r_k")
    v_key = "blocks.1.att.v1" if layers > 1 else "blocks.0.att.v1"
    return {
        "model_type": MODEL_TYPE,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "head_size": head_size,
        "intermediate_size": checkpoint.shape("blocks.0.ffn.key.weight")[0],
        "decay_low_rank": checkpoint.shape("blocks.0.att.w1")[1],
        "a_low_rank": checkpoint.shape("blocks.0.att.a1")[1],
        "v_low_rank": checkpoint.shape(v_key)[1] if v_key in checkpoint else 0,
        "gate_low_rank": checkpoint.shape("blocks.0.att.g1")[1],
    }


def missing_keys(checkpoint: Any) -> list[str]:
    """The identifying keys (:data:`LAYOUT_KEYS`, for every block its keys name) that
    ``checkpoint`` lacks."""
    layers = max(1, _layer_count(checkpoint.keys()))
    wanted = []
    for key in LAYOUT_KEYS:
        wanted += [key.format(i=i) for i in range(layers)] if "{i}" in key else [key]
    return [key for key in wanted if key not in checkpoint]


@dataclass
class _Block:
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray
    mix: np.ndarray  # (6, C): x_r, x_w, x_k, x_v, x_a, x_g
    w0: np.ndarray
    w1: np.ndarray  # (C, Dw), used as x @ w1
    w2: np.ndarray  # (Dw, C)
    a0: np.ndarray
    a1: np.ndarray
    a2: np.ndarray
    v0: Optional[np.ndarray]  # None on block 0
    v1: Optional[np.ndarray]
    v2: Optional[np.ndarray]
    g1: np.ndarray
    g2: np.ndarray
    k_k: np.ndarray
    k_a: np.ndarray
    one_minus_k_a: np.ndarray
    r_k: np.ndarray  # (H, N)
    receptance: np.ndarray  # (C, C), used as x @ W.T
    key: np.ndarray
    value: np.ndarray
    output: np.ndarray
    ln_x_w: np.ndarray
    ln_x_b: np.ndarray
    ffn_mix: np.ndarray  # (C,)
    ffn_key: np.ndarray  # (F, C)
    ffn_value: np.ndarray  # (C, F)


def _shifted_delta(h: np.ndarray, last: np.ndarray) -> np.ndarray:
    """x_prev - h for h (B, T, C), x_prev the previous token's h (the cached ``last`` (B, C)
    for the first); ``last`` <- h[:, -1]."""
    delta = np.empty_like(h)
    delta[:, 0] = last
    delta[:, 1:] = h[:, :-1]
    delta -= h
    last[...] = h[:, -1]
    return delta


def _mixed(h: np.ndarray, delta: np.ndarray, mix: np.ndarray) -> np.ndarray:
    """h + delta * mix."""
    out = delta * mix
    out += h
    return out


class Rwkv7LM(CausalLM):
    """RWKV-7 on seqkern: wkv7 with log-decays and the cached matrix state, everything else in
    NumPy."""

    model_type = MODEL_TYPE

    def __init__(self, config: dict, weights: Weights, backend: str):
        c = self.hidden_size = int(config["hidden_size"])
        self.head_size = int(config.get("head_size", 64))
        if c % self.head_size:
            raise ValueError(f"hidden_size {c} is not a multiple of head_size {self.head_size}")
        self.heads = c // self.head_size
        self.ffn_size = int(config.get("intermediate_size") or 4 * c)
        self.ranks = {name: int(config[f"{name}_low_rank"]) for name in ("decay", "a", "v", "gate")}
        vocab = int(config["vocab_size"])
        layers = int(config["num_hidden_layers"])
        self.embedding = weights("emb.weight", vocab, c)
        self.ln0_w = weights("blocks.0.ln0.weight", c)
        self.ln0_b = weights("blocks.0.ln0.bias", c)
        self.blocks = [self._load_block(weights, i) for i in range(layers)]
        self.ln_out_w = weights("ln_out.weight", c)
        self.ln_out_b = weights("ln_out.bias", c)
        self.head = weights("head.weight", vocab, c)
        super().__init__(config, weights.dtype, backend, vocab, layers, weights.count)
        self._wkv7 = direct_kernel(backend, self.dtype, "wkv7")
        self._fused_output = None
        if backend == "seqkern":
            from .. import _native

            suffix = "f32" if self.dtype == np.float32 else "f64"
            self._fused_output = getattr(_native, f"rwkv7_output_{suffix}")

    def _load_block(self, w: Weights, i: int) -> _Block:
        p = f"blocks.{i}."
        att, ffn = p + "att.", p + "ffn."
        c, f, h, n = self.hidden_size, self.ffn_size, self.heads, self.head_size
        dw, da, dv, dg = (self.ranks[k] for k in ("decay", "a", "v", "gate"))

        def vec(key: str) -> np.ndarray:
            return w(key, 1, 1, c).reshape(c)

        k_a = vec(att + "k_a")
        if i == 0:  # unused on block 0: checked when present, not kept
            for key, shape in (("v0", (1, 1, c)), ("v1", (c, dv)), ("v2", (dv, c))):
                w.optional(att + key, *shape)
            v0 = v1 = v2 = None
        else:
            v0, v1, v2 = vec(att + "v0"), w(att + "v1", c, dv), w(att + "v2", dv, c)
        return _Block(
            ln1_w=w(p + "ln1.weight", c),
            ln1_b=w(p + "ln1.bias", c),
            ln2_w=w(p + "ln2.weight", c),
            ln2_b=w(p + "ln2.bias", c),
            mix=np.stack([vec(att + f"x_{m}") for m in "rwkvag"]),
            w0=vec(att + "w0"),
            w1=w(att + "w1", c, dw),
            w2=w(att + "w2", dw, c),
            a0=vec(att + "a0"),
            a1=w(att + "a1", c, da),
            a2=w(att + "a2", da, c),
            v0=v0,
            v1=v1,
            v2=v2,
            g1=w(att + "g1", c, dg),
            g2=w(att + "g2", dg, c),
            k_k=vec(att + "k_k"),
            k_a=k_a,
            one_minus_k_a=1 - k_a,
            r_k=w(att + "r_k", h, n),
            receptance=w(att + "receptance.weight", c, c),
            key=w(att + "key.weight", c, c),
            value=w(att + "value.weight", c, c),
            output=w(att + "output.weight", c, c),
            ln_x_w=w(att + "ln_x.weight", c),
            ln_x_b=w(att + "ln_x.bias", c),
            ffn_mix=vec(ffn + "x_k"),
            ffn_key=w(ffn + "key.weight", f, c),
            ffn_value=w(ffn + "value.weight", c, f),
        )

    def _state_arrays(self, batch: int) -> dict[str, np.ndarray]:
        layers, c, h, n = self.num_layers, self.hidden_size, self.heads, self.head_size
        return {
            "att_x": np.zeros((layers, batch, c), self.dtype),
            "ffn_x": np.zeros((layers, batch, c), self.dtype),
            "wkv": np.zeros((layers, batch, h, n, n), self.dtype),
        }

    def _cache_signature(self) -> tuple:
        return super()._cache_signature() + (self.hidden_size, self.head_size)

    def _forward(self, ids: np.ndarray, cache: Cache) -> np.ndarray:
        with np.errstate(over="ignore"):
            return self._layers(ids, cache)

    def _layers(self, ids: np.ndarray, cache: Cache) -> np.ndarray:
        x = layer_norm(self.embedding[ids], self.ln0_w, self.ln0_b, LAYER_NORM_EPS)
        att_x, ffn_x, wkv = cache["att_x"], cache["ffn_x"], cache["wkv"]
        v_first = None
        for i, block in enumerate(self.blocks):
            h = layer_norm(x, block.ln1_w, block.ln1_b, LAYER_NORM_EPS)
            out, v_first = self._time_mix(block, h, att_x[i], wkv[i], v_first)
            x += out
            h = layer_norm(x, block.ln2_w, block.ln2_b, LAYER_NORM_EPS)
            x += self._channel_mix(block, h, ffn_x[i])
        x = layer_norm(x, self.ln_out_w, self.ln_out_b, LAYER_NORM_EPS)
        return x @ self.head.T

    def _time_mix(
        self,
        block: _Block,
        h: np.ndarray,
        last: np.ndarray,
        state: np.ndarray,
        v_first: Optional[np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        """The time mix of T tokens h (B, T, C), updating the cached last h and wkv state.
        Returns the block's output and v_first (block 0's v)."""
        batch, length, c = h.shape
        heads_shape = (batch, length, self.heads, self.head_size)
        mixed = _shifted_delta(h, last)[None] * block.mix[:, None, None, :]
        mixed += h
        xr, xw, xk, xv, xa, xg = mixed  # h + (x_prev - h) * x_m, m = r, w, k, v, a, g
        r = xr @ block.receptance.T
        k = xk @ block.key.T
        v = xv @ block.value.T
        log_w = np.tanh(xw @ block.w1) @ block.w2
        log_w += block.w0
        sigmoid_(log_w)
        log_w *= -DECAY_SCALE
        a = (xa @ block.a1) @ block.a2
        a += block.a0
        sigmoid_(a)
        g = sigmoid_(xg @ block.g1) @ block.g2
        kk = (k * block.k_k).reshape(heads_shape)
        norm = np.add.reduce(kk * kk, axis=-1, keepdims=True)
        np.sqrt(norm, out=norm)
        kk /= np.maximum(norm, 1e-12, out=norm)
        scale_k = a * block.k_a
        scale_k += block.one_minus_k_a
        k *= scale_k  # k * (1 + (a - 1) * k_a)
        if block.v0 is None:
            v_first = v
        else:
            gate = (xv @ block.v1) @ block.v2
            gate += block.v0
            sigmoid_(gate)
            residual = v_first - v
            residual *= gate
            v += residual
        r4, k4, v4 = r.reshape(heads_shape), k.reshape(heads_shape), v.reshape(heads_shape)
        b_arg = a.reshape(heads_shape)
        b_arg *= kk
        y, state[...] = self._wkv7(r4, log_w.reshape(heads_shape), k4, v4, -kk, b_arg, state)
        if self._fused_output is not None:
            # ln_x, the r_k bonus and the gate in one call (the same formulas as below).
            y = self._fused_output(
                y, r4, k4, v4, g, block.r_k, block.ln_x_w, block.ln_x_b, GROUP_NORM_EPS
            )
            return y @ block.output.T, v_first
        y = self._group_norm(y, block)
        bonus = r4 * k4
        bonus *= block.r_k
        bonus = np.add.reduce(bonus, axis=-1, keepdims=True) * v4  # sum_head(r k r_k) v
        y += bonus.reshape(batch, length, c)
        y *= g
        return y @ block.output.T, v_first

    def _group_norm(self, y: np.ndarray, block: _Block) -> np.ndarray:
        """Per-head normalisation of y (B, T, H, N), eps 64e-5, then ln_x's scale and bias."""
        inv_n = 1.0 / y.shape[-1]
        centred = y - np.add.reduce(y, axis=-1, keepdims=True) * inv_n
        scale = np.add.reduce(centred * centred, axis=-1, keepdims=True)
        scale *= inv_n
        scale += GROUP_NORM_EPS
        np.sqrt(scale, out=scale)
        centred /= scale
        out = centred.reshape(y.shape[0], y.shape[1], -1)
        out *= block.ln_x_w
        out += block.ln_x_b
        return out

    def _channel_mix(self, block: _Block, h: np.ndarray, last: np.ndarray) -> np.ndarray:
        """The feed-forward of T tokens h (B, T, C), updating the cached last h."""
        delta = _shifted_delta(h, last)
        k = _mixed(h, delta, block.ffn_mix) @ block.ffn_key.T
        np.maximum(k, 0, out=k)
        np.square(k, out=k)
        return k @ block.ffn_value.T


class _Recorder:
    """A checkpoint's interface that remembers every key the loader asks about."""

    def __init__(self, checkpoint: Any):
        self.checkpoint = checkpoint
        self.files = getattr(checkpoint, "files", [])
        self.asked: set[str] = set()

    def __contains__(self, key: str) -> bool:
        self.asked.add(key)
        return key in self.checkpoint

    def get(self, key: str, shape: Any, dtype: np.dtype) -> np.ndarray:
        self.asked.add(key)
        return self.checkpoint.get(key, shape, dtype)

    def keys(self) -> list[str]:
        return self.checkpoint.keys()

    def shape(self, key: str) -> Any:
        return self.checkpoint.shape(key)


def from_checkpoint(config: dict, weights: Weights, backend: str) -> Rwkv7LM:
    """An :class:`Rwkv7LM` from a config (as :func:`config_from_checkpoint` tells it) and the
    checkpoint's weights. Tensors the model does not use are an error: they mark a variant of
    the architecture (extra embeddings, other mixes) that this code would silently get wrong."""
    recorder = _Recorder(weights.checkpoint)
    weights.checkpoint = recorder
    try:
        model = Rwkv7LM(config, weights, backend)
    finally:
        weights.checkpoint = recorder.checkpoint
    unused = sorted(set(recorder.keys()) - recorder.asked)
    if unused:
        more = f", ... ({len(unused)} in all)" if len(unused) > 8 else ""
        raise ValueError(
            f"{', '.join(map(str, recorder.files))}: tensors that RWKV-7 x070 does not have: "
            f"{', '.join(unused[:8])}{more}; a variant of the architecture this loader does not "
            "implement"
        )
    return model


def random_initializers() -> dict:
    """Initializers for :class:`seqkern.models.testing.RandomCheckpoint` giving random RWKV-7
    tensors in the ranges of trained ones: mixes in (0, 1), w0 in (-6, 1), k_k near 0.85, k_a
    near 1, small low-rank second factors, norm weights near 1."""

    def uniform(low: float, high: float):
        return lambda key, shape, rng: rng.uniform(low, high, shape)

    def near(centre: float, spread: float):
        return lambda key, shape, rng: centre + spread * rng.standard_normal(shape)

    def second_factor(key, shape, rng):  # (rank, C): keep the low-rank terms O(0.1)
        return 0.1 * rng.standard_normal(shape) / np.sqrt(shape[0])

    inits = {f"att.x_{m}": uniform(0.0, 1.0) for m in "rwkvag"}
    inits.update(
        {
            "ffn.x_k": uniform(0.0, 1.0),
            "att.w0": uniform(-6.0, 1.0),
            "att.a0": near(0.0, 0.5),
            "att.v0": near(0.5, 0.5),
            "att.k_k": near(0.85, 0.1),
            "att.k_a": near(1.0, 0.1),
            "att.r_k": near(0.0, 0.3),
            "att.w2": second_factor,
            "att.a2": second_factor,
            "att.v2": second_factor,
            "ln0.weight": near(1.0, 0.1),
            "ln1.weight": near(1.0, 0.1),
            "ln2.weight": near(1.0, 0.1),
            "ln_x.weight": near(1.0, 0.1),
            "ln_out.weight": near(1.0, 0.1),
        }
    )
    return inits

"""BitNet b1.58 (transformers ``BitNetForCausalLM``, model_type "bitnet";
microsoft/bitnet-b1.58-2B-4T).

A Llama layout whose projections are BitLinear layers (ternary weights, int8 activations)::

    h = x + o_proj(attn_sub_norm(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n))))
          with n = input_layernorm(x)
    x' = h + down_proj(ffn_sub_norm(relu(gate_proj(m))^2 * up_proj(m)))
          with m = post_attention_layernorm(h)
    logits = norm(x_L) @ lm_head.T            (lm_head tied to embed_tokens when configured)

Every BitLinear quantizes its input per token to int8 (absmax 127, eps 1e-5) and multiplies
by ternary codes with one per-tensor scale: ``y = (q @ t.T) * gamma / scale``
(:func:`seqkern.ternary.bitlinear`). Every RMS norm feeds BitLinear layers, so on seqkern each
runs inside the call of the projections it feeds (q/k/v together, o, gate/up together, down):
the input is normed, quantized once and multiplied by every weight in one parallel loop.
Checkpoints come in two forms, told by
``quantization_config.quantization_mode``:

- "offline" (the released packed files): each projection is uint8 (out / 4, in), original row
  i * out/4 + r in bits 2i..2i+1 of packed row r as code + 1, plus ``weight_scale`` (1,).
  They become :class:`~seqkern.ternary.TernaryWeight` directly. The scale's meaning follows
  ``quantization_config.linear_class`` as transformers applies it: "autobitlinear" (the
  released bitnet-b1.58-2B-4T) multiplies the output by it (W = codes * weight_scale),
  "bitlinear" (the default) divides by it (W = codes / weight_scale).
- anything else ("online", or the -bf16 master weights): float weights, quantized at load by
  absmean (BitNet's ``weight_quant``), exactly as transformers quantizes them on every call.

Attention is grouped-query with rotate-half RoPE (``rope_theta`` at the top level of the config
or in ``rope_parameters``) and runs on :func:`seqkern.attention.causal_attention`. The cache
holds K and V per layer, (layers, B, Hkv, capacity, head_dim), preallocated and grown by
doubling; each step writes the new keys and values into it and attends through views of its
first ``seq_len`` positions, which the kernel reads in place.

``head="int8"`` stores the head (or the tied embedding) as :class:`~seqkern.ternary.Int8Weight`
(int8 with a scale per row): 4x less memory traffic for BitNet-2B's largest matrix
(128256 x 2560). :func:`~seqkern.ternary.int8_matmul` quantizes the final normed state per
token to int8 (as BitLinear quantizes its inputs) and sums the products exactly in int32
(AVX-512 VNNI, AVX2 or portable code; every path gives the same logits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

from .. import ternary
from ..reference import ternary as ternary_ref
from .core import Cache, CausalLM, Weights, rms_norm

__all__ = ["BitNetLM", "from_checkpoint", "pack_hf"]

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Positions a new cache holds before it first grows (then it doubles).
INITIAL_CAPACITY = 256


@dataclass
class _Layer:
    input_norm: np.ndarray
    post_norm: np.ndarray
    attn_sub_norm: np.ndarray
    ffn_sub_norm: np.ndarray
    proj: dict[str, ternary.TernaryWeight]
    bias: dict[str, Optional[np.ndarray]]


def pack_hf(codes: np.ndarray) -> np.ndarray:
    """Ternary codes (N, K) in transformers' packed BitNet layout, uint8 (N / 4, K): row
    i * N/4 + r goes to bits 2i..2i+1 of packed row r, as code + 1 (for tests and tools)."""
    codes = np.asarray(codes)
    n = codes.shape[0]
    if n % 4:
        raise ValueError(f"codes: expected out_features divisible by 4, got {n}")
    fields = (codes.astype(np.int16) + 1).astype(np.uint8).reshape(4, n // 4, -1)
    return (fields << np.array([0, 2, 4, 6], np.uint8)[:, None, None]).sum(0, dtype=np.uint8)


def rope_theta(config: dict) -> float:
    """The RoPE base: ``rope_theta`` (older configs) or ``rope_parameters.rope_theta``."""
    params = config.get("rope_parameters") or {}
    if "rope_theta" in config:
        return float(config["rope_theta"])
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    return 500000.0


def _check_rope_type(config: dict) -> None:
    for key in ("rope_scaling", "rope_parameters"):
        params = config.get(key)
        if isinstance(params, dict):
            kind = params.get("rope_type", params.get("type", "default"))
            if kind not in (None, "default"):
                raise ValueError(f"config {key}: rope_type {kind!r} is not supported (default)")


class BitNetLM(CausalLM):
    """BitNet b1.58 on seqkern: BitLinear on the int8 x ternary kernel, attention on the
    KV-cache attention kernel, the head through BLAS (or the int8 GEMV)."""

    model_type = "bitnet"

    def __init__(self, config: dict, weights: Weights, backend: str, head: str = "float"):
        hidden = int(config["hidden_size"])
        self.hidden_size = hidden
        self.heads = int(config["num_attention_heads"])
        self.kv_heads = int(config.get("num_key_value_heads") or self.heads)
        self.head_dim = int(config.get("head_dim") or hidden // self.heads)
        self.intermediate = int(config["intermediate_size"])
        self.eps = float(config.get("rms_norm_eps", 1e-6))
        self.theta = rope_theta(config)
        _check_rope_type(config)
        if self.heads % self.kv_heads:
            raise ValueError(
                f"config: num_attention_heads {self.heads} is not a multiple of "
                f"num_key_value_heads {self.kv_heads}"
            )
        act = config.get("hidden_act", "relu2")
        if act != "relu2":
            raise ValueError(f"config hidden_act: expected 'relu2', got {act!r}")
        quant = config.get("quantization_config") or {}
        self.packed = quant.get("quantization_mode") == "offline"
        self.linear_class = quant.get("linear_class", "bitlinear")
        if self.linear_class not in ("bitlinear", "autobitlinear"):
            raise ValueError(
                "config quantization_config.linear_class: expected 'bitlinear' or "
                f"'autobitlinear', got {self.linear_class!r}"
            )
        if quant.get("use_rms_norm"):
            raise ValueError("config quantization_config.use_rms_norm: true is not supported")
        vocab = int(config["vocab_size"])
        layers = int(config["num_hidden_layers"])
        self.embedding = weights("model.embed_tokens.weight", vocab, hidden)
        self._ternary_count = 0
        self.layers = [self._load_layer(weights, config, i) for i in range(layers)]
        self.norm = weights("model.norm.weight", hidden)
        self.lm_head = weights.output_head("lm_head.weight", self.embedding, config)
        self.head = head
        self.lm_head_int8 = ternary.Int8Weight.from_float(self.lm_head) if head == "int8" else None
        count = weights.count + self._ternary_count
        super().__init__(config, weights.dtype, backend, vocab, layers, count)
        self._codes: dict[int, tuple[np.ndarray, float]] = {}

    def _projection_shapes(self) -> dict[str, tuple[int, int]]:
        h, d, f = self.hidden_size, self.head_dim, self.intermediate
        return {
            "q_proj": (self.heads * d, h),
            "k_proj": (self.kv_heads * d, h),
            "v_proj": (self.kv_heads * d, h),
            "o_proj": (h, self.heads * d),
            "gate_proj": (f, h),
            "up_proj": (f, h),
            "down_proj": (h, f),
        }

    def _load_projection(self, w: Weights, key: str, shape: tuple[int, int]):
        n, k = shape
        self._ternary_count += n * k
        if not self.packed:
            return ternary.quantize_weights(w.checkpoint.get(key, shape, w.dtype))
        if n % 4:
            raise ValueError(f"tensor {key!r}: packed rows need out_features % 4 == 0, got {n}")
        packed = w.checkpoint.get_raw(key, (n // 4, k), ("U8",))
        scale = w.checkpoint.get(key + "_scale", None, np.dtype(np.float64))
        if scale.size != 1:
            raise ValueError(f"tensor {key + '_scale'!r}: expected one value, got {scale.shape}")
        if self.linear_class == "autobitlinear":
            # transformers' AutoBitLinear multiplies by weight_scale; from_hf_packed takes the
            # divisor of BitLinear's convention.
            scale = 1.0 / scale
        try:
            return ternary.TernaryWeight.from_hf_packed(packed, scale)
        except ValueError as error:
            raise ValueError(f"tensor {key!r}: {error}") from error

    def _load_layer(self, w: Weights, config: dict, i: int) -> _Layer:
        p = f"model.layers.{i}."
        h = self.hidden_size
        proj, bias = {}, {}
        with_bias = bool(config.get("attention_bias", False))
        for name, shape in self._projection_shapes().items():
            part = "self_attn." if name in PROJECTIONS[:4] else "mlp."
            key = p + part + name + ".weight"
            proj[name] = self._load_projection(w, key, shape)
            attn = name in PROJECTIONS[:4]
            bias[name] = w(p + part + name + ".bias", shape[0]) if attn and with_bias else None
        return _Layer(
            input_norm=w(p + "input_layernorm.weight", h),
            post_norm=w(p + "post_attention_layernorm.weight", h),
            attn_sub_norm=w(p + "self_attn.attn_sub_norm.weight", self.heads * self.head_dim),
            ffn_sub_norm=w(p + "mlp.ffn_sub_norm.weight", self.intermediate),
            proj=proj,
            bias=bias,
        )

    def linear_weights(self) -> list[Union[np.ndarray, Any]]:
        """Every matrix a token meets: the ternary projections and the head (float or int8)."""
        per_layer = [layer.proj[name] for layer in self.layers for name in PROJECTIONS]
        return per_layer + [self.lm_head_int8 if self.head == "int8" else self.lm_head]

    def _cache_signature(self) -> tuple:
        return super()._cache_signature() + (self.kv_heads, self.head_dim)

    def _state_arrays(self, batch: int) -> dict[str, np.ndarray]:
        shape = (self.num_layers, batch, self.kv_heads, INITIAL_CAPACITY, self.head_dim)
        return {"k": np.zeros(shape, self.dtype), "v": np.zeros(shape, self.dtype)}

    # the pieces

    def _bitlinear(self, x: np.ndarray, weight: ternary.TernaryWeight, bias=None) -> np.ndarray:
        if self.kernels.name == "seqkern":
            return ternary.bitlinear(x, weight, bias)
        codes, gamma = self._codes_of(weight)
        y = ternary_ref.bitlinear(x, codes, gamma, bias).astype(self.dtype)
        return y

    def _normed_bitlinears(
        self, x: np.ndarray, norm: np.ndarray, layer: _Layer, names: tuple[str, ...]
    ) -> list:
        """The projections ``names`` of ``rms_norm(x, norm)``: on seqkern one call that norms
        and quantizes x once and runs every projection's rows in one parallel loop."""
        if self.kernels.name == "seqkern":
            weights = [layer.proj[name] for name in names]
            biases = [layer.bias[name] for name in names]
            return ternary._bitlinear_many(x, weights, biases, norm, self.eps)
        n = rms_norm(x, norm, self.eps)
        return [self._bitlinear(n, layer.proj[name], layer.bias[name]) for name in names]

    def _codes_of(self, weight: ternary.TernaryWeight) -> tuple[np.ndarray, float]:
        """The int8 codes the NumPy backend multiplies by (unpacked once per weight)."""
        key = id(weight)
        if key not in self._codes:
            self._codes[key] = (weight.codes(), weight.gamma)
        return self._codes[key]

    def _logits(self, x: np.ndarray) -> np.ndarray:
        if self.lm_head_int8 is None:
            return x @ self.lm_head.T
        if self.kernels.name == "seqkern":
            return ternary.int8_matmul(x, self.lm_head_int8)
        head = self.lm_head_int8
        return ternary_ref.int8_matmul(x, head.codes, head.scales)

    def _rope_tables(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """``[cos, cos]`` and ``[-sin, sin]`` (length, head_dim) of the angles
        p theta^(-2j / head_dim) at positions p = start .. start + length - 1 (computed in
        float64, then the model dtype)."""
        d = self.head_dim
        inv_freq = 1.0 / self.theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
        angles = np.arange(start, start + length, dtype=np.float64)[:, None] * inv_freq
        cos, sin = np.cos(angles), np.sin(angles)
        return (
            np.concatenate((cos, cos), axis=-1).astype(self.dtype),
            np.concatenate((-sin, sin), axis=-1).astype(self.dtype),
        )

    def _rope(self, x: np.ndarray, start: int, tables=None) -> np.ndarray:
        """Rotate-half RoPE of x (B, H, T, D) at positions start .. start + T - 1:
        (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), computed as
        x [cos, cos] + [x2, x1] [-sin, sin] (the same roundings)."""
        cos, sin = self._rope_tables(start, x.shape[2]) if tables is None else tables
        half = self.head_dim // 2
        out = x * cos
        out += np.concatenate((x[..., half:], x[..., :half]), axis=-1) * sin
        return out

    def _reserve(self, cache: Cache, length: int) -> None:
        """Grows the K/V buffers (by doubling) to hold ``length`` positions."""
        capacity = cache["k"].shape[3]
        if length <= capacity:
            return
        while capacity < length:
            capacity *= 2
        for name in ("k", "v"):
            old = cache.arrays[name]
            grown = np.zeros(old.shape[:3] + (capacity, old.shape[4]), old.dtype)
            grown[:, :, :, : cache.seq_len] = old[:, :, :, : cache.seq_len]
            cache.arrays[name] = grown

    def _attention(self, layer: _Layer, i: int, x: np.ndarray, cache: Cache, rope) -> np.ndarray:
        b, t, _ = x.shape
        d, start = self.head_dim, cache.seq_len
        q, k, v = self._normed_bitlinears(x, layer.input_norm, layer, PROJECTIONS[:3])
        # RoPE of the query and key heads together: (B, T, Hq + Hkv, D) -> (B, H, T, D).
        qk = np.concatenate((q, k), axis=-1).reshape(b, t, -1, d).transpose(0, 2, 1, 3)
        qk = self._rope(qk, start, rope)
        q = qk[:, : self.heads]
        keys, values = cache["k"][i], cache["v"][i]
        keys[:, :, start : start + t] = qk[:, self.heads :]
        values[:, :, start : start + t] = v.reshape(b, t, -1, d).transpose(0, 2, 1, 3)
        end = start + t
        out = self.kernels.causal_attention(q, keys[:, :, :end], values[:, :, :end])
        out = out.transpose(0, 2, 1, 3).reshape(b, t, self.heads * d)
        (y,) = self._normed_bitlinears(out, layer.attn_sub_norm, layer, ("o_proj",))
        return y

    def _mlp(self, layer: _Layer, x: np.ndarray) -> np.ndarray:
        gate, up = self._normed_bitlinears(x, layer.post_norm, layer, ("gate_proj", "up_proj"))
        np.maximum(gate, 0, out=gate)
        act = np.square(gate, out=gate)
        act *= up
        (y,) = self._normed_bitlinears(act, layer.ffn_sub_norm, layer, ("down_proj",))
        return y

    def _forward(self, ids: np.ndarray, cache: Cache) -> np.ndarray:
        self._reserve(cache, cache.seq_len + ids.shape[1])
        x = self.embedding[ids]
        rope = self._rope_tables(cache.seq_len, ids.shape[1])
        for i, layer in enumerate(self.layers):
            x = x + self._attention(layer, i, x, cache, rope)
            x = x + self._mlp(layer, x)
        return self._logits(rms_norm(x, self.norm, self.eps))


def from_checkpoint(config: dict, weights: Weights, backend: str, head: str = "float") -> BitNetLM:
    """A :class:`BitNetLM` from a transformers "bitnet" folder's config and weights."""
    return BitNetLM(config, weights, backend, head)

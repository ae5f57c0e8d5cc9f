"""Mamba (transformers ``MambaForCausalLM``, model_type "mamba"; state-spaces/mamba-*-hf).

Each layer: h = x + out_proj(mixer(rms_norm(x))), with the mixer::

    (xs, z) = split(in_proj(h))                    2 x d_inner channels
    xs = silu(conv1d(xs))                          causal depthwise, width conv_kernel
    (dt, B, C) = split(x_proj(xs), [rank, N, N])
    dt = dt_proj.weight @ dt                       its bias goes inside the softplus
    y = selective_scan(xs, dt, -exp(A_log), B, C, D, z, delta_bias=dt_proj.bias,
                       delta_softplus=True)        (y *= silu(z) inside the kernel)
    out = out_proj(y)

A prompt runs channel-major (batch, channels, T), the scan's layout, so the projections write
it directly; a single token runs row-major through causal_conv1d_update and
selective_state_update. The cache holds, per layer, the conv state (B, d_inner, k - 1) and the
ssm state (B, d_inner, N).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .core import Cache, CausalLM, Weights, rms_norm


@dataclass
class _Layer:
    norm: np.ndarray
    in_proj: np.ndarray  # (2 d_inner, hidden)
    in_bias: Optional[np.ndarray]
    conv_weight: np.ndarray  # (d_inner, k)
    conv_bias: Optional[np.ndarray]
    x_proj: np.ndarray  # (rank + 2N, d_inner)
    dt_proj: np.ndarray  # (d_inner, rank)
    dt_bias: np.ndarray
    A: np.ndarray  # -exp(A_log), (d_inner, N)
    D: np.ndarray
    out_proj: np.ndarray  # (hidden, d_inner)
    out_bias: Optional[np.ndarray]


def _linear_cm(weight: np.ndarray, x_cm: np.ndarray, bias: Optional[np.ndarray]) -> np.ndarray:
    """weight @ x for channel-major x (B, in, T) -> (B, out, T), plus bias per channel."""
    out = np.matmul(weight, x_cm)
    return out if bias is None else out + bias[:, None]


def _linear(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray]) -> np.ndarray:
    """x @ weight.T (+ bias) for row-major x (..., in)."""
    out = x @ weight.T
    return out if bias is None else out + bias


class MambaLM(CausalLM):
    """Mamba-1 on seqkern: causal_conv1d + selective_scan for prompts, the decode kernels for
    single tokens."""

    model_type = "mamba"

    def __init__(self, config: dict, weights: Weights, backend: str):
        hidden = int(config["hidden_size"])
        self.hidden_size = hidden
        self.d_inner = int(config.get("intermediate_size") or config.get("expand", 2) * hidden)
        self.d_state = int(config.get("state_size", 16))
        self.d_conv = int(config.get("conv_kernel", 4))
        rank = config.get("time_step_rank", "auto")
        self.rank = math.ceil(hidden / 16) if rank == "auto" else int(rank)
        self.eps = float(config.get("layer_norm_epsilon", 1e-5))
        vocab = int(config["vocab_size"])
        layers = int(config["num_hidden_layers"])
        self.embedding = weights("backbone.embeddings.weight", vocab, hidden)
        self.layers = [self._load_layer(weights, config, i) for i in range(layers)]
        self.norm_f = weights("backbone.norm_f.weight", hidden)
        self.lm_head = weights.output_head("lm_head.weight", self.embedding, config)
        super().__init__(config, weights.dtype, backend, vocab, layers, weights.count)

    def _load_layer(self, w: Weights, config: dict, i: int) -> _Layer:
        p = f"backbone.layers.{i}."
        m = p + "mixer."
        di, n, r, h = self.d_inner, self.d_state, self.rank, self.hidden_size
        use_bias = bool(config.get("use_bias", False))
        use_conv_bias = bool(config.get("use_conv_bias", True))
        return _Layer(
            norm=w(p + "norm.weight", h),
            in_proj=w(m + "in_proj.weight", 2 * di, h),
            in_bias=w(m + "in_proj.bias", 2 * di) if use_bias else None,
            conv_weight=w(m + "conv1d.weight", di, 1, self.d_conv).reshape(di, self.d_conv),
            conv_bias=w(m + "conv1d.bias", di) if use_conv_bias else None,
            x_proj=w(m + "x_proj.weight", r + 2 * n, di),
            dt_proj=w(m + "dt_proj.weight", di, r),
            dt_bias=w(m + "dt_proj.bias", di),
            A=-np.exp(w(m + "A_log", di, n)),
            D=w(m + "D", di),
            out_proj=w(m + "out_proj.weight", h, di),
            out_bias=w(m + "out_proj.bias", h) if use_bias else None,
        )

    def linear_weights(self) -> list[np.ndarray]:
        per_layer = [(x.in_proj, x.x_proj, x.dt_proj, x.out_proj) for x in self.layers]
        return [w for ws in per_layer for w in ws] + [self.lm_head]

    def _state_arrays(self, batch: int) -> dict[str, np.ndarray]:
        layers, di = self.num_layers, self.d_inner
        return {
            "conv": np.zeros((layers, batch, di, self.d_conv - 1), self.dtype),
            "ssm": np.zeros((layers, batch, di, self.d_state), self.dtype),
        }

    def _cache_signature(self) -> tuple:
        return super()._cache_signature() + (self.d_inner, self.d_state, self.d_conv)

    def _forward(self, ids: np.ndarray, cache: Cache) -> np.ndarray:
        x = self.embedding[ids]
        step = ids.shape[1] == 1
        for i, layer in enumerate(self.layers):
            h = rms_norm(x, layer.norm, self.eps)
            if step:
                x = x + self._mix_token(layer, h[:, 0], cache["conv"][i], cache["ssm"][i])[:, None]
            else:
                x = x + self._mix_prompt(layer, h, cache["conv"][i], cache["ssm"][i])
        x = rms_norm(x, self.norm_f, self.eps)
        return x @ self.lm_head.T

    def _mix_prompt(self, layer: _Layer, h: np.ndarray, conv: np.ndarray, ssm: np.ndarray):
        """The mixer over T tokens (B, T, hidden), continuing from and updating the states."""
        k, di, n, r = self.kernels, self.d_inner, self.d_state, self.rank
        xz = _linear_cm(layer.in_proj, h.transpose(0, 2, 1), layer.in_bias)  # (B, 2 di, T)
        xs, conv[...] = k.causal_conv1d(
            xz[:, :di],
            layer.conv_weight,
            layer.conv_bias,
            "silu",
            initial_states=conv,
            return_final_states=True,
        )
        dbc = np.matmul(layer.x_proj, xs)  # (B, r + 2n, T)
        dt = np.matmul(layer.dt_proj, dbc[:, :r])
        y, ssm[...] = k.selective_scan(
            xs,
            dt,
            layer.A,
            dbc[:, r : r + n],
            dbc[:, r + n :],
            layer.D,
            xz[:, di:],
            layer.dt_bias,
            delta_softplus=True,
            return_last_state=True,
            initial_state=ssm,
        )
        return _linear(y.transpose(0, 2, 1), layer.out_proj, layer.out_bias)

    def _mix_token(self, layer: _Layer, h: np.ndarray, conv: np.ndarray, ssm: np.ndarray):
        """The mixer for one token (B, hidden), updating the states in place."""
        k, di, n, r = self.kernels, self.d_inner, self.d_state, self.rank
        xz = _linear(h, layer.in_proj, layer.in_bias)  # (B, 2 di)
        xs = k.causal_conv1d_update(xz[:, :di], conv, layer.conv_weight, layer.conv_bias, "silu")
        dbc = xs @ layer.x_proj.T
        dt = dbc[:, :r] @ layer.dt_proj.T
        y = k.selective_state_update(
            ssm,
            xs,
            dt,
            layer.A,
            dbc[:, r : r + n],
            dbc[:, r + n :],
            layer.D,
            xz[:, di:],
            dt_bias=layer.dt_bias,
            dt_softplus=True,
        )
        return _linear(y, layer.out_proj, layer.out_bias)


def from_checkpoint(config: dict, weights: Weights, backend: str) -> MambaLM:
    """A :class:`MambaLM` from a transformers "mamba" folder's config and weights."""
    return MambaLM(config, weights, backend)

"""Mamba-2 (transformers ``Mamba2ForCausalLM``, model_type "mamba2"; state-spaces/mamba2-*).

Each layer: h = x + out_proj(mixer(rms_norm(x))), with the mixer::

    (z, xBC, dt) = split(in_proj(h), [d_inner, d_inner + 2 G N, H])
    xBC = silu(conv1d(xBC));  (x, B, C) = split(xBC, [d_inner, G N, G N])
    dt = clamp(softplus(dt + dt_bias), time_step_limit);  A = -exp(A_log)   (H,)
    y = ssd(x, dt, A, B, C) + D x                  x as H heads of head_dim, B, C as G groups
    y = rms_norm(y * silu(z)) * norm.weight        variance per group of d_inner / G channels
    out = out_proj(y)

The gated norm takes its variance per group of d_inner / n_groups channels, as mamba_ssm's
RMSNormGated and transformers' Mamba2RMSNormGated do (group_size = d_inner / n_groups).
A prompt runs time-major (batch, T, channels) on causal_conv1d (channel-last) + ssd_scan, a
single token on
causal_conv1d_update + selective_state_update. The cache holds, per layer, the conv state over
the xBC channels (B, d_inner + 2 G N, k - 1) and the ssm state (B, H, head_dim, N).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import _native
from .checkpoint import config_float
from .core import Cache, CausalLM, Weights, rms_norm, softplus

# One decode step after in_proj (conv update, gated state update, grouped norm) in one call.
_FUSED_STEP = {
    np.dtype(np.float32): _native.mamba2_step_f32,
    np.dtype(np.float64): _native.mamba2_step_f64,
}

_FUSED_NORM = {
    np.dtype(np.float32): _native.grouped_rms_norm_f32,
    np.dtype(np.float64): _native.grouped_rms_norm_f64,
}


@dataclass
class _Layer:
    norm: np.ndarray
    in_proj: np.ndarray  # (d_inner + conv_dim + H, hidden)
    in_bias: Optional[np.ndarray]
    in_z: np.ndarray  # (d_inner, hidden): row blocks of in_proj (views)
    in_xbc: np.ndarray  # (conv_dim, hidden)
    in_dt: np.ndarray  # (H, hidden)
    bias_z: Optional[np.ndarray]
    bias_xbc: Optional[np.ndarray]
    bias_dt: Optional[np.ndarray]
    conv_weight: np.ndarray  # (conv_dim, k)
    conv_bias: Optional[np.ndarray]
    dt_bias: np.ndarray
    A: np.ndarray  # -exp(A_log), (H,)
    D: np.ndarray
    gate_norm: np.ndarray  # (d_inner,)
    out_proj: np.ndarray  # (hidden, d_inner)
    out_bias: Optional[np.ndarray]


def _split_rows(array: Optional[np.ndarray], sizes: list[int]) -> list[Optional[np.ndarray]]:
    if array is None:
        return [None] * len(sizes)
    return np.split(array, np.cumsum(sizes)[:-1], axis=0)


class Mamba2LM(CausalLM):
    """Mamba-2 on seqkern: causal_conv1d + ssd_scan for prompts, the decode kernels for single
    tokens."""

    model_type = "mamba2"

    def __init__(self, config: dict, weights: Weights, backend: str):
        hidden = int(config["hidden_size"])
        self.hidden_size = hidden
        self.heads = int(config["num_heads"])
        self.head_dim = int(config.get("head_dim", 64))
        self.d_inner = int(config.get("expand", 2) * hidden)
        if self.d_inner != self.heads * self.head_dim:
            raise ValueError(
                f"config: expand * hidden_size = {self.d_inner} must equal num_heads * head_dim "
                f"= {self.heads} * {self.head_dim}"
            )
        self.groups = int(config.get("n_groups", 1))
        if self.groups < 1 or self.heads % self.groups:
            raise ValueError(
                f"config: n_groups = {self.groups} must divide num_heads = {self.heads}"
            )
        self.d_state = int(config.get("state_size", 128))
        self.d_conv = int(config.get("conv_kernel", 4))
        self.conv_dim = self.d_inner + 2 * self.groups * self.d_state
        self.eps = float(config.get("layer_norm_epsilon", 1e-5))
        self.chunk_size = int(config.get("chunk_size", 256))
        low, high = config.get("time_step_limit", (0.0, math.inf)) or (0.0, math.inf)
        self.dt_limit = (config_float(low), config_float(high))
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
        di, h, heads, cd = self.d_inner, self.hidden_size, self.heads, self.conv_dim
        width = di + cd + heads
        stored = w.checkpoint.shape(m + "in_proj.weight")
        if stored is not None and stored != (width, h):
            raise ValueError(
                f"tensor {m + 'in_proj.weight'!r}: expected shape {(width, h)} "
                f"([z, xBC, dt] = [{di}, {cd}, {heads}] rows; a gated-MLP part is not "
                f"supported), got {stored}"
            )
        use_bias = bool(config.get("use_bias", False))
        sizes = [di, cd, heads]
        in_proj = w(m + "in_proj.weight", width, h)
        in_z, in_xbc, in_dt = _split_rows(in_proj, sizes)
        in_bias = w(m + "in_proj.bias", width) if use_bias else None
        bias_z, bias_xbc, bias_dt = _split_rows(in_bias, sizes)
        use_conv_bias = bool(config.get("use_conv_bias", True))
        return _Layer(
            norm=w(p + "norm.weight", h),
            in_proj=in_proj,
            in_bias=in_bias,
            in_z=in_z,
            in_xbc=in_xbc,
            in_dt=in_dt,
            bias_z=bias_z,
            bias_xbc=bias_xbc,
            bias_dt=bias_dt,
            conv_weight=w(m + "conv1d.weight", cd, 1, self.d_conv).reshape(cd, self.d_conv),
            conv_bias=w(m + "conv1d.bias", cd) if use_conv_bias else None,
            dt_bias=w(m + "dt_bias", heads),
            A=-np.exp(w(m + "A_log", heads)),
            D=w(m + "D", heads),
            gate_norm=w(m + "norm.weight", di),
            out_proj=w(m + "out_proj.weight", h, di),
            out_bias=w(m + "out_proj.bias", h) if use_bias else None,
        )

    def linear_weights(self) -> list[np.ndarray]:
        per_layer = [(x.in_proj, x.out_proj) for x in self.layers]
        return [w for ws in per_layer for w in ws] + [self.lm_head]

    def _state_arrays(self, batch: int) -> dict[str, np.ndarray]:
        layers = self.num_layers
        return {
            "conv": np.zeros((layers, batch, self.conv_dim, self.d_conv - 1), self.dtype),
            "ssm": np.zeros((layers, batch, self.heads, self.head_dim, self.d_state), self.dtype),
        }

    def _cache_signature(self) -> tuple:
        return super()._cache_signature() + (self.conv_dim, self.heads, self.head_dim, self.d_state)

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

    def _group_norm(self, gated: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """rms_norm of the gated output y * silu(z) per group of d_inner / n_groups channels,
        times weight (the kernels apply the gate)."""
        grouped = gated.reshape(*gated.shape[:-1], self.groups, -1)
        inv = 1.0 / np.sqrt(np.mean(np.square(grouped), axis=-1, keepdims=True) + self.eps)
        return (grouped * inv.astype(gated.dtype, copy=False)).reshape(gated.shape) * weight

    def _split_xbc(self, xbc: np.ndarray):
        """(x heads, B groups, C groups) views of the conv output (..., conv_dim)."""
        di, gn = self.d_inner, self.groups * self.d_state
        lead = xbc.shape[:-1]
        x = xbc[..., :di].reshape(*lead, self.heads, self.head_dim)
        b = xbc[..., di : di + gn].reshape(*lead, self.groups, self.d_state)
        c = xbc[..., di + gn :].reshape(*lead, self.groups, self.d_state)
        return x, b, c

    def _mix_prompt(self, layer: _Layer, h: np.ndarray, conv: np.ndarray, ssm: np.ndarray):
        """The mixer over T tokens (B, T, hidden), continuing from and updating the states."""
        k = self.kernels
        xbc = h @ layer.in_xbc.T  # (B, T, conv_dim): time-major, as the SSD scan reads it
        if layer.bias_xbc is not None:
            xbc += layer.bias_xbc
        # The conv reads the channel-last view in place and writes the same layout.
        xbc_cl, conv[...] = k.causal_conv1d(
            xbc.transpose(0, 2, 1),
            layer.conv_weight,
            layer.conv_bias,
            "silu",
            initial_states=conv,
            return_final_states=True,
        )
        x, b, c = self._split_xbc(xbc_cl.transpose(0, 2, 1))
        dt = h @ layer.in_dt.T
        if layer.bias_dt is not None:
            dt += layer.bias_dt
        z = h @ layer.in_z.T
        if layer.bias_z is not None:
            z += layer.bias_z
        # The kernel applies the gate: y = (ssd + D x) * silu(z).
        y, ssm[...] = k.ssd_scan(
            x,
            dt,
            layer.A,
            b,
            c,
            self.chunk_size,
            D=layer.D,
            z=z.reshape(x.shape),
            dt_bias=layer.dt_bias,
            initial_states=ssm,
            dt_softplus=True,
            dt_limit=self.dt_limit,
            return_final_states=True,
        )
        y = y.reshape(z.shape)
        if self.kernels.name == "seqkern":
            # The same norm as _group_norm, rows in parallel, in place.
            _FUSED_NORM[np.dtype(self.dtype)](y, layer.gate_norm, self.groups, self.eps)
        else:
            y = self._group_norm(y, layer.gate_norm)
        out = y @ layer.out_proj.T
        return out if layer.out_bias is None else out + layer.out_bias

    def _mix_token(self, layer: _Layer, h: np.ndarray, conv: np.ndarray, ssm: np.ndarray):
        """The mixer for one token (B, hidden), updating the states in place."""
        zxbcdt = h @ layer.in_proj.T
        if layer.in_bias is not None:
            zxbcdt += layer.in_bias
        if self.kernels.name == "seqkern":
            y = _FUSED_STEP[np.dtype(self.dtype)](
                zxbcdt,
                conv,
                ssm,
                layer.conv_weight,
                layer.conv_bias,
                layer.dt_bias,
                layer.A,
                layer.D,
                layer.gate_norm,
                self.groups,
                self.eps,
                *self.dt_limit,
            )
        else:
            y = self._mix_token_unfused(layer, zxbcdt, conv, ssm)
        out = y @ layer.out_proj.T
        return out if layer.out_bias is None else out + layer.out_bias

    def _mix_token_unfused(self, layer: _Layer, zxbcdt: np.ndarray, conv, ssm) -> np.ndarray:
        """conv update, state update and gated norm as separate kernel calls (the NumPy
        backend; the seqkern backend runs the same formulas in one call, ``mamba2_step``)."""
        k = self.kernels
        z, xbc, dt = np.split(zxbcdt, [self.d_inner, self.d_inner + self.conv_dim], axis=-1)
        xbc = k.causal_conv1d_update(xbc, conv, layer.conv_weight, layer.conv_bias, "silu")
        x, b, c = self._split_xbc(xbc)
        if self.dt_limit == (0.0, math.inf):
            dt_bias, dt_softplus = layer.dt_bias, True
        else:
            dt = np.clip(softplus(dt + layer.dt_bias), *self.dt_limit).astype(self.dtype)
            dt_bias, dt_softplus = None, False
        y = k.selective_state_update(
            ssm, x, dt, layer.A, b, c, layer.D, z.reshape(x.shape), dt_bias, dt_softplus
        )
        return self._group_norm(y.reshape(z.shape), layer.gate_norm)


def from_checkpoint(config: dict, weights: Weights, backend: str) -> Mamba2LM:
    """A :class:`Mamba2LM` from a transformers "mamba2" folder's config and weights."""
    return Mamba2LM(config, weights, backend)

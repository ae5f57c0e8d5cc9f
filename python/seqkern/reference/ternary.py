"""NumPy references of the ternary (BitNet b1.58) kernels.

Weights follow ``nn.Linear``: ``W`` and ``codes`` are (out_features, in_features) = (N, K).
"""

from __future__ import annotations

import math

import numpy as np


def quantize_weights(W, eps=1e-5):
    """Per-tensor absmean to {-1, 0, 1}, in W's dtype; returns ``(codes int8, gamma)``::

    gamma = max(mean|W|, eps);  codes = clip(round_half_even(W * (1 / gamma)), -1, 1)

    with mean|W| = (the correctly rounded float64 sum of |W|) / count, rounded to W's dtype."""
    t = W.dtype.type
    mean = math.fsum(np.abs(W, dtype=np.float64).ravel().tolist()) / W.size
    gamma = np.maximum(t(mean), t(eps))
    codes = np.clip(np.rint(W * (t(1) / gamma)), -1, 1).astype(np.int8)
    return codes, gamma


def quantize_activations(x, eps=1e-5):
    """Per-token absmax to int8, in x's dtype; returns ``(q int8, scale (..., 1))``::

    scale = 127 * (1 / max(max|x|, eps));  q = clip(round_half_even(x * scale), -128, 127)
    """
    t = x.dtype.type
    amax = np.maximum(np.abs(x).max(axis=-1, keepdims=True), t(eps))
    scale = (t(1) / amax) * t(127)
    return np.clip(np.rint(x * scale), -128, 127).astype(np.int8), scale


def ternary_matmul_int(q, codes):
    """``q @ codes.T`` exactly (int64 accumulation), as int32."""
    return (q.astype(np.int64) @ codes.astype(np.int64).T).astype(np.int32)


def bitlinear(x, codes, gamma, bias=None):
    """BitLinear forward in float64: ``y = (q @ codes.T) * gamma / scale (+ bias)`` with
    ``q, scale = quantize_activations(x)``."""
    q, scale = quantize_activations(x)
    y = ternary_matmul_int(q, codes) * (np.float64(gamma) / scale.astype(np.float64))
    return y if bias is None else y + bias


def int8_quantize_rows(W):
    """Row-wise symmetric int8; returns ``(codes int8 (N, K), scales float32 (N,))``::

    s[n] = float32(max_k |W[n, k]| / 127);  c = clip(round_half_even(W / s[n]), -127, 127)

    computed in float64 (rows of zeros get s = 0 and codes 0)."""
    w = np.asarray(W, np.float64)
    scales = (np.abs(w).max(axis=1, initial=0.0) / 127.0).astype(np.float32)
    s = scales.astype(np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        codes = np.where(s > 0, np.clip(np.rint(w / s), -127, 127), 0.0)
    return codes.astype(np.int8), scales


def int8_matmul(x, codes, scales, activations="int8"):
    """The int8 head's product in x's dtype. ``activations="float"``:
    ``y = (x @ codes.T) * scales``. ``"int8"``: x quantized per row by
    :func:`quantize_activations` (eps 1e-5) to ``q`` with scale ``a``, then
    ``y = ((q @ codes.T) * scales) * (1 / a)`` in float64 (the integer sums are exact: every
    partial sum is an integer below 2^53), rounded once to x's dtype."""
    t = x.dtype
    if activations == "float":
        return (x @ codes.astype(t).T) * scales.astype(t)
    q, a = quantize_activations(x)
    dots = q.astype(np.float64) @ codes.astype(np.float64).T
    return (dots * scales.astype(np.float64) * (1.0 / a.astype(np.float64))).astype(t)

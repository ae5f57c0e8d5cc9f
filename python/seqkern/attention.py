"""Causal softmax attention: the quadratic baseline of the benchmark report.

Written in the same Rust as the recurrent kernels (tiled, online softmax, SIMD, all cores) so
that the linear-versus-quadratic comparison measures the algorithms rather than the
implementations. Layout (B, H, L, D), as ``torch.nn.functional.scaled_dot_product_attention``.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Optional

import numpy as np

from . import _checks as ck
from . import _native

__all__ = ["causal_attention"]

_ATTENTION = ck.by_dtype(_native, "causal_attention")

_QK = ("batch", "heads", "Lq", "D")
_KV = ("batch", "kv_heads", "Lk", "D")
_V = ("batch", "kv_heads", "Lk", "Dv")


def _scale_value(scale: Optional[float], dim: int) -> float:
    """``scale`` as a finite float; None means D^-0.5 (1 when D = 0, where scores are 0)."""
    if scale is None:
        return 1.0 / math.sqrt(dim) if dim > 0 else 1.0
    if isinstance(scale, bool) or not isinstance(scale, Real):
        raise TypeError(f"scale: expected a real number or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite number, got {scale}")
    return float(scale)


def _in_place(name: str, x: np.ndarray) -> np.ndarray:
    """``x`` itself when the kernel can read it through its strides (non-negative strides, unit
    stride along D: a cache sliced along L qualifies), else one deliberate contiguous copy."""
    strides = x.strides
    unit = x.shape[3] <= 1 or strides[3] == x.itemsize
    if unit and all(s >= 0 and s % x.itemsize == 0 for s in strides):
        return x
    return ck.contiguous(name, x)


def causal_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, *, scale: Optional[float] = None
) -> np.ndarray:
    """Causal softmax attention, ``softmax(q k^T scale + causal mask) v``.

    Shapes: ``q`` (batch, heads, Lq, D); ``k`` (batch, kv_heads, Lk, D); ``v``
    (batch, kv_heads, Lk, Dv) — Dv is usually D — with Lq <= Lk and heads a multiple of
    kv_heads. ``scale`` defaults to D^-0.5. Returns (batch, heads, Lq, Dv) in the inputs'
    dtype (float32 or float64, the same for all three). Query i of head h sits at position
    p_i = Lk - Lq + i (the causal mask is aligned bottom-right, as in flash-attn, so the last
    query sees every key) and reads key/value head h // (heads // kv_heads) (grouped-query
    attention; nothing is repeated)::

        S_ij = scale q_i . k_j   (j <= p_i)
        out_i = sum_{j<=p_i} exp(S_ij - m_i) v_j / sum_{j<=p_i} exp(S_ij - m_i),  m_i = max_j S_ij

    With Lq = Lk = L and kv_heads = heads this is ordinary causal self-attention. Decoding
    passes the new tokens' queries (Lq = 1) and views of a preallocated cache,
    ``k_cache[:, :, :length]``: ``k`` and ``v`` are read in place through their strides
    whenever their last axis is contiguous and no stride is negative (other layouts are
    copied once). ``q`` is copied if not C-contiguous.

    The (Lq, Lk) score matrix is never stored: the kernel walks tiles of keys with an online
    softmax, so large scores never overflow. Up to 4 queries per head run a decode kernel
    that processes the query heads of a key/value head together and splits the keys into
    blocks of 256 on all cores, merged by their log-sum-exp. Lq = 0 gives an empty result.
    The GIL is released while the kernel runs, and the result depends neither on the thread
    count nor on the batch size.
    """
    q = ck.as_array("q", q)
    dtype = ck.float_dtype("q", q)
    ck.check_ndim("q", q, [_QK])
    batch, heads, len_q, dim = q.shape
    k = ck.as_array("k", k)
    ck.same_dtype("k", k, dtype, "q")
    ck.check_ndim("k", k, [_KV])
    kv_heads, len_k = k.shape[1], k.shape[2]
    ck.check_shape("k", k, _KV, (batch, kv_heads, len_k, dim))
    v = ck.as_array("v", v)
    ck.same_dtype("v", v, dtype, "q")
    ck.check_ndim("v", v, [_V])
    ck.check_shape("v", v, _V, (batch, kv_heads, len_k, v.shape[3]))
    if len_q > len_k:
        raise ValueError(
            f"q: expected at most as many queries as keys (Lq <= Lk), got Lq = {len_q} > "
            f"Lk = {len_k} (q shape {q.shape}, k shape {k.shape})"
        )
    if (kv_heads == 0 and heads > 0) or (kv_heads > 0 and heads % kv_heads):
        raise ValueError(
            f"k: expected kv_heads dividing the {heads} heads of q, got {kv_heads} "
            f"(q shape {q.shape}, k shape {k.shape})"
        )
    value = _scale_value(scale, dim)
    return _ATTENTION[dtype](ck.contiguous("q", q), _in_place("k", k), _in_place("v", v), value)

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

_QK = ("batch", "heads", "L", "D")
_V = ("batch", "heads", "L", "Dv")


def _scale_value(scale: Optional[float], dim: int) -> float:
    """``scale`` as a finite float; None means D^-0.5 (1 when D = 0, where scores are 0)."""
    if scale is None:
        return 1.0 / math.sqrt(dim) if dim > 0 else 1.0
    if isinstance(scale, bool) or not isinstance(scale, Real):
        raise TypeError(f"scale: expected a real number or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite number, got {scale}")
    return float(scale)


def causal_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, *, scale: Optional[float] = None
) -> np.ndarray:
    """Causal softmax attention, ``softmax(q k^T scale + causal mask) v``.

    Shapes: ``q``, ``k`` (batch, heads, L, D); ``v`` (batch, heads, L, Dv) — Dv is usually D.
    ``scale`` defaults to D^-0.5. Returns (batch, heads, L, Dv) in the inputs' dtype (float32
    or float64, the same for all three). For every query row i::

        S_ij = scale q_i . k_j   (j <= i)
        out_i = sum_{j<=i} exp(S_ij - m_i) v_j / sum_{j<=i} exp(S_ij - m_i),  m_i = max_j S_ij

    The (L, L) score matrix is never stored: the kernel walks tiles of keys with an online
    softmax, so extra memory is a few (64, D) tiles per thread and large scores never
    overflow. L = 0 gives an empty result. Any strides are accepted (non-contiguous arrays
    are copied once); the GIL is released while the kernel runs, and the result does not
    depend on the thread count.
    """
    q = ck.as_array("q", q)
    dtype = ck.float_dtype("q", q)
    ck.check_ndim("q", q, [_QK])
    batch, heads, length, dim = q.shape
    k = ck.float_input("k", k, dtype, "q", _QK, q.shape)
    v = ck.as_array("v", v)
    ck.same_dtype("v", v, dtype, "q")
    ck.check_ndim("v", v, [_V])
    ck.check_shape("v", v, _V, (batch, heads, length, v.shape[3]))
    value = _scale_value(scale, dim)
    return _ATTENTION[dtype](ck.contiguous("q", q), k, ck.contiguous("v", v), value)

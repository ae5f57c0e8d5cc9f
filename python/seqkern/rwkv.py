"""RWKV WKV kernels: RWKV-4, RWKV-5 "Eagle", RWKV-6 "Finch" and RWKV-7 "Goose".

Layout (B, T, H, N) with C = H * N, as flash-linear-attention; reshape (B, T, C) to
(B, T, H, N) before calling. Every decay argument is a log-decay w <= 0: the per-step decay
factor is exp(w) (RWKV-6 passes w = -exp(time_decay), RWKV-7 w = -exp(-0.5) sigmoid(w_raw)).
Matrix states are (B, H, K, V) with K = V = N, the fla / ggml-wkv6 orientation; RWKV-LM's
CUDA kernels and ggml's wkv7 store the transpose (``state.swapaxes(-1, -2)`` converts).

Each kernel returns ``(y, state)``; passing that state to the next call continues the sequence
exactly: running T in pieces gives bit-identical y and state. All float inputs of one call
share one dtype, float32 or float64; the outputs follow it. Inputs are never modified, any
strides are accepted (non-contiguous arrays are copied once), and the GIL is released while
the kernel runs.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Optional

import numpy as np

from . import _checks as ck
from . import _native

__all__ = ["wkv4", "wkv5", "wkv6", "wkv7"]


_WKV4, _WKV5, _WKV6, _WKV7 = (
    ck.by_dtype(_native, name) for name in ("wkv4", "wkv5", "wkv6", "wkv7")
)

_TOKENS = ("B", "T", "H", "N")
_PER_HEAD = ("H", "N")
_STATE = ("B", "H", "K", "V")


def _scale(scale: Any) -> float:
    if isinstance(scale, bool) or not isinstance(scale, Real):
        raise TypeError(f"scale: expected a real number, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite number, got {scale}")
    return float(scale)


def _first_tokens(name: str, value: Any) -> tuple[np.ndarray, np.dtype]:
    """The argument that fixes the dtype and (B, T, H, N) of a matrix-state call."""
    array = ck.as_array(name, value)
    dtype = ck.float_dtype(name, array)
    ck.check_ndim(name, array, [_TOKENS])
    return ck.contiguous(name, array), dtype


def _state(value: Any, dtype: np.dtype, like: str, dims, sizes) -> Optional[np.ndarray]:
    return ck.optional_float_input("state", value, dtype, like, dims, sizes)


def wkv4(
    w: np.ndarray,
    u: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    state: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """RWKV-4 WKV in RWKV-LM's numerically stable form.

    ``w`` = -exp(time_decay) (as RWKV-LM passes it) and ``u`` = time_first: (C,); ``k``, ``v``:
    (B, T, C); ``state`` (B, 3, C) = [aa, bb, pp], the running sums a = aa e^pp, b = bb e^pp
    (None means aa = bb = 0, pp = -inf). Per channel::

        q = max(pp, u + k_t);   e1 = exp(pp - q);   e2 = exp(u + k_t - q)
        y_t = (e1 aa + e2 v_t) / (e1 bb + e2)
        q = max(pp + w, k_t);   e1 = exp(pp + w - q);   e2 = exp(k_t - q)
        aa = e1 aa + e2 v_t;   bb = e1 bb + e2;   pp = q

    which is the paper's
    y_t = (sum_{i<t} e^{(t-1-i)w + k_i} v_i + e^{u+k_t} v_t) / (same sums without v),
    without overflow for any k. Returns ``(y (B, T, C), state (B, 3, C))``; ``y`` is
    C-contiguous and starts on a 64-byte boundary (a view into a buffer one line longer).
    """
    k = ck.as_array("k", k)
    dtype = ck.float_dtype("k", k)
    ck.check_ndim("k", k, [("B", "T", "C")])
    batch, _, channels = k.shape
    per_channel = (("C",), (channels,))
    return _WKV4[dtype](
        ck.float_input("w", w, dtype, "k", *per_channel),
        ck.float_input("u", u, dtype, "k", *per_channel),
        ck.contiguous("k", k),
        ck.float_input("v", v, dtype, "k", ("B", "T", "C"), k.shape),
        _state(state, dtype, "k", ("B", "3", "C"), (batch, 3, channels)),
    )


def _bonus_args(r, k, v, w, u, state, w_dims, per_token: bool):
    r, dtype = _first_tokens("r", r)
    batch, _, heads, n = r.shape
    args = (
        r,
        ck.float_input("k", k, dtype, "r", _TOKENS, r.shape),
        ck.float_input("v", v, dtype, "r", _TOKENS, r.shape),
        ck.float_input("w", w, dtype, "r", w_dims, r.shape if per_token else (heads, n)),
        ck.float_input("u", u, dtype, "r", _PER_HEAD, (heads, n)),
        _state(state, dtype, "r", _STATE, (batch, heads, n, n)),
    )
    return args, dtype


def wkv5(
    r: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    w: np.ndarray,
    u: np.ndarray,
    state: Optional[np.ndarray] = None,
    *,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """RWKV-5 WKV: :func:`wkv6` with a log-decay that is the same at every step.

    ``r``, ``k``, ``v``: (B, T, H, N); ``w`` = -exp(time_decay): (H, N); ``u`` (time_faaaa):
    (H, N); ``state``: (B, H, N, N), zeros when None. Per head (vectors are rows)::

        y_t = (scale r_t) (S_{t-1} + diag(u) k_t^T v_t)
        S_t = diag(exp(w)) S_{t-1} + k_t^T v_t

    Returns ``(y (B, T, H, N), state (B, H, N, N))``.
    """
    args, dtype = _bonus_args(r, k, v, w, u, state, _PER_HEAD, per_token=False)
    return _WKV5[dtype](*args, _scale(scale))


def wkv6(
    r: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    w: np.ndarray,
    u: np.ndarray,
    state: Optional[np.ndarray] = None,
    *,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """RWKV-6 WKV, as fla's ``fused_recurrent_rwkv6`` with ``scale=1.0`` (RWKV's value; fla's
    default is K^-0.5).

    ``r``, ``k``, ``v``: (B, T, H, N); ``w``: per-token log-decay (B, T, H, N), RWKV-6's
    -exp(time_decay + tanh(x W1) W2); ``u`` (time_faaaa): (H, N); ``state``: (B, H, N, N),
    zeros when None. Per head (vectors are rows)::

        y_t = (scale r_t) (S_{t-1} + diag(u) k_t^T v_t)
        S_t = diag(exp(w_t)) S_{t-1} + k_t^T v_t

    Returns ``(y (B, T, H, N), state (B, H, N, N))``.
    """
    args, dtype = _bonus_args(r, k, v, w, u, state, _TOKENS, per_token=True)
    return _WKV6[dtype](*args, _scale(scale))


def wkv7(
    r: np.ndarray,
    w: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    state: Optional[np.ndarray] = None,
    *,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """RWKV-7 WKV (the generalized delta rule), as fla's ``chunk_rwkv7`` / ``fused_recurrent_rwkv7``
    with ``scale=1.0``.

    All of ``r``, ``w``, ``k``, ``v``, ``a``, ``b``: (B, T, H, N), with ``w`` the log-decay
    (RWKV-7: -exp(-0.5) sigmoid(w_raw)), ``a = -kk`` and ``b = kk * alpha`` as RWKV-7 passes
    them; ``state``: (B, H, N, N), zeros when None. Per head (vectors are rows)::

        S_t = (diag(exp(w_t)) + b_t^T a_t) S_{t-1} + k_t^T v_t
        y_t = (scale r_t) S_t

    i.e. S_ij = exp(w_i) S_ij + b_i (a S)_j + k_i v_j. RWKV-LM stores the transpose of this
    state. Returns ``(y (B, T, H, N), state (B, H, N, N))``.
    """
    r, dtype = _first_tokens("r", r)
    batch, _, heads, n = r.shape
    tokens = {
        name: ck.float_input(name, value, dtype, "r", _TOKENS, r.shape)
        for name, value in (("w", w), ("k", k), ("v", v), ("a", a), ("b", b))
    }
    return _WKV7[dtype](
        r,
        tokens["w"],
        tokens["k"],
        tokens["v"],
        tokens["a"],
        tokens["b"],
        _state(state, dtype, "r", _STATE, (batch, heads, n, n)),
        _scale(scale),
    )

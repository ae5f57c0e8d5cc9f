"""NumPy references of the RWKV WKV kernels (computed in the inputs' dtype).

Layout (B, T, H, N) with C = H * N; every decay argument is a log-decay w <= 0 (the per-step
decay factor is exp(w)); matrix states are (B, H, K, V) with K = V = N: S[i, j] pairs key index
i with value index j. Each kernel loops over t with the per-step math vectorised.
"""

from __future__ import annotations

import numpy as np


def wkv4(w, u, k, v, state=None):
    """RWKV-4 WKV in the numerically stable form of RWKV-LM's kernel.

    w = -exp(time_decay), u = time_first: (C,); k, v: (B, T, C); state (B, 3, C) = [aa, bb, pp]
    with the true sums a = aa e^pp, b = bb e^pp (None: aa = bb = 0, pp = -inf). Per channel::

        q = max(pp, u + k_t);   e1 = exp(pp - q);   e2 = exp(u + k_t - q)
        y_t = (e1 aa + e2 v_t) / (e1 bb + e2)
        q = max(pp + w, k_t);   e1 = exp(pp + w - q);   e2 = exp(k_t - q)
        aa = e1 aa + e2 v_t;   bb = e1 bb + e2;   pp = q

    Returns (y (B, T, C), state (B, 3, C)).
    """
    batch, length, channels = k.shape
    if state is None:
        aa = np.zeros((batch, channels), k.dtype)
        bb = np.zeros((batch, channels), k.dtype)
        pp = np.full((batch, channels), -np.inf, k.dtype)
    else:
        aa, bb, pp = (state[:, i].copy() for i in range(3))
    y = np.empty_like(k)
    for t in range(length):
        kt, vt = k[:, t], v[:, t]
        q = np.maximum(pp, u + kt)
        e1, e2 = np.exp(pp - q), np.exp(u + kt - q)
        y[:, t] = (e1 * aa + e2 * vt) / (e1 * bb + e2)
        q = np.maximum(pp + w, kt)
        e1, e2 = np.exp(pp + w - q), np.exp(kt - q)
        aa, bb, pp = e1 * aa + e2 * vt, e1 * bb + e2, q
    return y, np.stack([aa, bb, pp], axis=1)


def wkv4_explicit(w, u, k, v):
    """RWKV-4 WKV as the paper's explicit O(T^2) sum, from a zero state (a test oracle)::

        y_t = (sum_{i<t} e^{(t-1-i) w + k_i} v_i + e^{u + k_t} v_t)
              / (sum_{i<t} e^{(t-1-i) w + k_i} + e^{u + k_t})

    which is a causal softmax over the logits L[t, i] = (t-1-i) w + k_i (i < t), u + k_t (i = t).
    """
    length = k.shape[1]
    if length == 0:
        return np.empty_like(k)
    t = np.arange(length)
    gap = (t[:, None] - 1 - t[None, :]).astype(k.dtype)  # (t, i)
    logits = gap[None, :, :, None] * w + k[:, None, :, :]  # (B, t, i, C)
    diagonal = u + k  # (B, T, C)
    logits[:, t, t] = diagonal
    logits = np.where((t[:, None] >= t[None, :])[None, :, :, None], logits, -np.inf)
    weights = np.exp(logits - logits.max(axis=2, keepdims=True))
    return np.einsum("btic,bic->btc", weights, v) / weights.sum(axis=2)


def _initial_state(r, state):
    batch, _, heads, n = r.shape
    return np.zeros((batch, heads, n, n), r.dtype) if state is None else state.copy()


def wkv5(r, k, v, w, u, state=None, *, scale=1.0):
    """RWKV-5 WKV: :func:`wkv6` with a log-decay w (H, N) that is the same at every step."""
    batch, length = r.shape[:2]
    return wkv6(r, k, v, np.broadcast_to(w, (batch, length) + w.shape), u, state, scale=scale)


def wkv6(r, k, v, w, u, state=None, *, scale=1.0):
    """RWKV-6 WKV with the bonus u, per head (vectors are rows)::

        y_t = (scale r_t) (S_{t-1} + diag(u) k_t^T v_t)
        S_t = diag(exp(w_t)) S_{t-1} + k_t^T v_t

    r, k, v, w: (B, T, H, N), w the per-token log-decay; u: (H, N); state (B, H, N, N), zeros
    when None. Returns (y (B, T, H, N), state (B, H, N, N)).
    """
    S = _initial_state(r, state)
    y = np.empty_like(r)
    for t in range(r.shape[1]):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]  # (B, H, N, N): k_i v_j
        y[:, t] = np.einsum("bhi,bhij->bhj", scale * r[:, t], S + u[:, :, None] * kv)
        S = np.exp(w[:, t])[..., None] * S + kv
    return y, S


def wkv7(r, w, k, v, a, b, state=None, *, scale=1.0):
    """RWKV-7 WKV, the generalized delta rule, per head (vectors are rows)::

        S_t = (diag(exp(w_t)) + b_t^T a_t) S_{t-1} + k_t^T v_t;   y_t = (scale r_t) S_t

    RWKV-7 passes a = -kk, b = kk * alpha. All inputs (B, T, H, N); state (B, H, N, N), zeros
    when None. Returns (y (B, T, H, N), state (B, H, N, N)).
    """
    S = _initial_state(r, state)
    y = np.empty_like(r)
    for t in range(r.shape[1]):
        sa = np.einsum("bhi,bhij->bhj", a[:, t], S)  # a_t S_{t-1}
        S = (
            np.exp(w[:, t])[..., None] * S
            + b[:, t, :, :, None] * sa[:, :, None, :]
            + k[:, t, :, :, None] * v[:, t, :, None, :]
        )
        y[:, t] = np.einsum("bhi,bhij->bhj", scale * r[:, t], S)
    return y, S

"""NumPy reference of causal softmax attention (computed in the inputs' dtype)."""

from __future__ import annotations

import numpy as np


def causal_attention(q, k, v, *, scale=None):
    """softmax(q k^T scale + causal mask) v, with the (Lq, Lk) scores materialised::

        p_i  = Lk - Lq + i                       (query i's position: the mask is bottom-right)
        S_ij = scale q_i . k_j  for j <= p_i,  -inf for j > p_i
        out_i = sum_j exp(S_ij - max_j S_ij) v_j / sum_j exp(S_ij - max_j S_ij)

    q: (B, Hq, Lq, D); k: (B, Hkv, Lk, D); v: (B, Hkv, Lk, Dv) with Lq <= Lk and Hq a multiple
    of Hkv: query head h reads key/value head h // (Hq // Hkv), by broadcasting (no repeated
    copies). scale defaults to D^-0.5. Subtracting the row maximum keeps large scores from
    overflowing.
    """
    batch, heads, len_q, dim = q.shape
    kv_heads, len_k = k.shape[1], k.shape[2]
    if scale is None:
        scale = 1.0 / np.sqrt(dim) if dim > 0 else 1.0
    if heads == 0:
        return np.zeros((batch, 0, len_q, v.shape[-1]), q.dtype)
    group = heads // kv_heads
    grouped = q.reshape(batch, kv_heads, group, len_q, dim)
    scores = np.matmul(grouped, np.swapaxes(k, -1, -2)[:, :, None])
    scores *= q.dtype.type(scale)
    position = len_k - len_q + np.arange(len_q)
    future = np.arange(len_k)[None, :] > position[:, None]
    scores += np.where(future, -np.inf, 0.0).astype(q.dtype)
    if len_q > 0 and len_k > 0:
        scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores, out=scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    out = np.matmul(weights, v[:, :, None])
    return out.reshape(batch, heads, len_q, v.shape[-1])

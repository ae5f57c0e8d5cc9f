"""NumPy reference of causal softmax attention (computed in the inputs' dtype)."""

from __future__ import annotations

import numpy as np


def causal_attention(q, k, v, *, scale=None):
    """softmax(q k^T scale + causal mask) v, with the (L, L) scores materialised::

        S_ij = scale q_i . k_j  for j <= i,  -inf for j > i
        out_i = sum_j exp(S_ij - max_j S_ij) v_j / sum_j exp(S_ij - max_j S_ij)

    q, k: (B, H, L, D); v: (B, H, L, Dv); scale defaults to D^-0.5. Subtracting the row
    maximum keeps large scores from overflowing.
    """
    length, dim = q.shape[-2], q.shape[-1]
    if scale is None:
        scale = 1.0 / np.sqrt(dim) if dim > 0 else 1.0
    scores = np.matmul(q, np.swapaxes(k, -1, -2))
    scores *= q.dtype.type(scale)
    future = np.triu(np.ones((length, length), dtype=bool), k=1)
    scores += np.where(future, -np.inf, 0.0).astype(q.dtype)
    if length > 0:
        scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores, out=scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return np.matmul(weights, v)

"""The numbers: log-probabilities of each document's tokens under a causal LM.

For a document x_0 .. x_{n-1}::

    logprob_sum = sum_{i=1}^{n-1} log p(x_i | x_0 .. x_{i-1})
                = sum_{i=1}^{n-1} (z_{i-1}[x_i] - logsumexp(z_{i-1}))      (natural log)
    perplexity  = exp(-logprob_sum / (n - 1))

with z_t the logits the model gives after token t, taken to float64 before the log-softmax
(logsumexp(z) = max(z) + log(sum(exp(z - max(z))))). The first token has no context and is not
scored; a document of fewer than 2 tokens has logprob_sum 0 (an empty sum) and no perplexity.

Batching: the documents of a batch are right-padded to the longest. A causal model's outputs at
position t depend only on tokens 0..t, so the padding never changes a real position's logits and
the batched numbers equal the one-by-one numbers (to the rounding of the matmuls). Documents
are sorted by length first, so little padding is computed. Long documents run in pieces
through the model's cache: each forward call sees at most ``max_tokens`` tokens (rows x piece
length), which bounds the memory of the logits at ``max_tokens x vocab x 4`` bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["score_documents", "token_logprobs"]

# Positions per float64 log-softmax chunk: bounds the float64 copy of the logits.
_SOFTMAX_ROWS = 256


def token_logprobs(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log softmax(logits)[..., target] in float64: logits (..., vocab), targets (...)."""
    flat = logits.reshape(-1, logits.shape[-1])
    tokens = targets.reshape(-1)
    out = np.empty(tokens.shape[0], np.float64)
    for start in range(0, flat.shape[0], _SOFTMAX_ROWS):
        z = flat[start : start + _SOFTMAX_ROWS].astype(np.float64)
        picked = z[np.arange(z.shape[0]), tokens[start : start + _SOFTMAX_ROWS]]
        top = z.max(axis=1)
        z -= top[:, None]
        np.exp(z, out=z)
        out[start : start + _SOFTMAX_ROWS] = picked - (top + np.log(z.sum(axis=1)))
    return out.reshape(targets.shape)


def _score_batch(model: Any, docs: Sequence[np.ndarray], max_tokens: int) -> np.ndarray:
    """logprob_sum of each document (all of length >= 2), run together, right-padded."""
    rows = len(docs)
    lengths = np.array([len(doc) for doc in docs])
    longest = int(lengths.max())
    ids = np.zeros((rows, longest), np.int64)
    for r, doc in enumerate(docs):
        ids[r, : len(doc)] = doc
    piece = max(1, max_tokens // rows)
    sums = np.zeros(rows, np.float64)
    cache = None
    # Logits after tokens 0 .. longest-2 predict tokens 1 .. longest-1: the last token is
    # only ever a target, never fed.
    for start in range(0, longest - 1, piece):
        stop = min(start + piece, longest - 1)
        logits, cache = model.forward(ids[:, start:stop], cache)
        targets = ids[:, start + 1 : stop + 1]
        logprobs = token_logprobs(logits, targets)
        real = np.arange(start + 1, stop + 1)[None, :] < lengths[:, None]
        sums += np.where(real, logprobs, 0.0).sum(axis=1)
    return sums


def score_documents(
    model: Any, docs: Sequence[np.ndarray], batch_size: int, max_tokens: int
) -> np.ndarray:
    """logprob_sum of each document (in the given order).

    Documents are sorted longest first and grouped: a group holds as many documents as fit
    whole in ``max_tokens`` (rows x longest), at most ``batch_size`` and at least one, so short
    documents share a call and long ones keep long pieces (a forward call's fixed cost, per
    layer, is paid once per piece; pieces of a few hundred tokens keep the matmuls efficient).
    A document longer than ``max_tokens`` runs alone, in pieces of ``max_tokens``.
    """
    sums = np.zeros(len(docs), np.float64)
    order = sorted((i for i, doc in enumerate(docs) if len(doc) >= 2), key=lambda i: -len(docs[i]))
    start = 0
    while start < len(order):
        longest = len(docs[order[start]]) - 1  # tokens fed: the last one is only a target
        rows = max(1, min(batch_size, max_tokens // longest))
        group = order[start : start + rows]
        sums[group] = _score_batch(model, [docs[i] for i in group], max_tokens)
        start += rows
    return sums


def perplexity(n_tokens: np.ndarray, logprob_sum: np.ndarray) -> np.ndarray:
    """exp(-logprob_sum / (n - 1)); NaN where n < 2 (no token was predicted)."""
    n = np.asarray(n_tokens, np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.where(n >= 2, np.exp(-np.asarray(logprob_sum) / (n - 1)), np.nan)

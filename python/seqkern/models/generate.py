"""Sampling and the generation loop, shared by every architecture.

The prompt is prefilled in one forward call; then one token per step is chosen from the last
logits and fed back through the cache. Temperature 0 is greedy (argmax); otherwise the logits
are divided by the temperature, optionally cut to the ``top_k`` largest and to the smallest set
whose probability reaches ``top_p`` (nucleus), and a token is drawn per row from a
``numpy.random.default_rng(seed)`` generator, so a seed reproduces the same tokens.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Callable, Optional

import numpy as np

__all__ = ["generate", "sample"]


def _check_options(temperature: Any, top_k: Any, top_p: Any, max_new_tokens: Any) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)):
        raise TypeError(f"max_new_tokens: expected an int, got {type(max_new_tokens).__name__}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected an int >= 0, got {max_new_tokens}")
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature: expected a finite number >= 0, got {temperature!r}")
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1
    ):
        raise ValueError(f"top_k: expected None or an int >= 1, got {top_k!r}")
    if top_p is not None and not (0.0 < float(top_p) <= 1.0):
        raise ValueError(f"top_p: expected None or a number in (0, 1], got {top_p!r}")


def _eos_set(eos_token_id: Any) -> np.ndarray:
    if eos_token_id is None:
        return np.empty(0, np.int64)
    ids = eos_token_id if isinstance(eos_token_id, Iterable) else [eos_token_id]
    return np.asarray(list(ids), dtype=np.int64)


def sample(
    logits: np.ndarray,
    rng: np.random.Generator,
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
) -> np.ndarray:
    """One token per row of ``logits`` (B, vocab): argmax at temperature 0, else a draw from
    softmax(logits / temperature) restricted to the top-k and the top-p nucleus."""
    if temperature == 0.0:
        return np.argmax(logits, axis=-1).astype(np.int64)
    scaled = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < scaled.shape[-1]:
        kth = np.partition(scaled, -top_k, axis=-1)[:, -top_k, None]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        before = np.cumsum(sorted_probs, axis=-1) - sorted_probs  # mass of the better tokens
        keep_sorted = before < top_p  # always keeps the most likely token
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    draws = rng.random((probs.shape[0], 1))
    chosen = (np.cumsum(probs, axis=-1) < draws).sum(axis=-1)
    return np.minimum(chosen, probs.shape[-1] - 1).astype(np.int64)


def generate(
    model: Any,
    input_ids: Any,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: Optional[int] = None,
    eos_token_id: Optional[Any] = None,
    callback: Optional[Callable[[np.ndarray], Any]] = None,
    return_cache: bool = False,
) -> Any:
    """The prompt followed by up to ``max_new_tokens`` generated tokens, (B, T + new).

    ``eos_token_id`` (an id or several): a row that produced one keeps producing it, and
    generation stops once every row has. ``callback(tokens)`` is called with each step's new
    tokens (B,) as soon as they are chosen (for streaming); returning True stops generation.
    With ``return_cache``, returns ``(ids, cache)``, the cache holding every token but the last
    one generated (feed that one next to continue).
    """
    _check_options(temperature, top_k, top_p, max_new_tokens)
    rng = np.random.default_rng(seed)
    eos = _eos_set(eos_token_id)
    logits, cache = model.forward(input_ids)
    prompt = np.asarray(input_ids, dtype=np.int64).reshape(logits.shape[0], -1)
    produced: list[np.ndarray] = []
    finished = np.zeros(logits.shape[0], dtype=bool)
    for step in range(max_new_tokens):
        tokens = sample(logits[:, -1], rng, temperature, top_k, top_p)
        if eos.size:
            tokens = np.where(finished, eos[0], tokens)
            finished |= np.isin(tokens, eos)
        produced.append(tokens)
        stop = callback is not None and callback(tokens) is True
        if stop or finished.all() and eos.size or step == max_new_tokens - 1:
            break
        logits, cache = model.forward(tokens[:, None], cache)
    ids = prompt.copy() if not produced else np.concatenate([prompt, np.stack(produced, 1)], 1)
    return (ids, cache) if return_cache else ids

"""What every architecture shares: the CausalLM interface, the cache base class, the kernel
backends, input checks and the small vectorised NumPy pieces (norms, activations).

An architecture file subclasses :class:`CausalLM` and implements ``_forward(ids, cache)``
(logits for the new tokens, updating the cache in place) and ``new_cache(batch)``.
"""

from __future__ import annotations

import copy as _copy
from types import SimpleNamespace
from typing import Any, Callable, Optional

import numpy as np

__all__ = ["Cache", "CausalLM", "kernels", "layer_norm", "rms_norm", "sigmoid", "silu", "softplus"]

BACKENDS = ("seqkern", "numpy")


def kernels(backend: str) -> SimpleNamespace:
    """The kernel functions a model calls, from seqkern ("seqkern") or from the NumPy
    references ("numpy", the test oracle and the benchmark baseline). Same signatures."""
    if backend == "seqkern":
        from .. import attention, mamba, rwkv, ternary

        return SimpleNamespace(
            name="seqkern",
            selective_scan=mamba.selective_scan,
            selective_state_update=mamba.selective_state_update,
            ssd_scan=mamba.ssd_scan,
            causal_conv1d=mamba.causal_conv1d,
            causal_conv1d_update=mamba.causal_conv1d_update,
            wkv4=rwkv.wkv4,
            wkv7=rwkv.wkv7,
            causal_attention=attention.causal_attention,
            bitlinear=ternary.bitlinear,
        )
    if backend == "numpy":
        from ..reference import attention, mamba, rwkv, ternary

        return SimpleNamespace(
            name="numpy",
            selective_scan=mamba.selective_scan,
            selective_state_update=mamba.selective_state_update,
            ssd_scan=mamba.ssd_scan_chunked,
            causal_conv1d=mamba.causal_conv1d,
            causal_conv1d_update=mamba.causal_conv1d_update,
            wkv4=rwkv.wkv4,
            wkv7=rwkv.wkv7,
            causal_attention=attention.causal_attention,
            bitlinear=getattr(ternary, "bitlinear", None),
        )
    raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


# --- vectorised NumPy pieces shared by the architectures


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x / sqrt(mean(x^2) + eps) * weight over the last axis."""
    inv = 1.0 / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + eps)
    return (x * inv.astype(x.dtype, copy=False)) * weight


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last axis (biased variance, as
    torch), in x's dtype, in few NumPy calls (it runs twice per block per decoded token)."""
    inv_n = 1.0 / x.shape[-1]
    centred = x - np.add.reduce(x, axis=-1, keepdims=True) * inv_n
    scale = np.add.reduce(centred * centred, axis=-1, keepdims=True)
    scale *= inv_n
    scale += eps
    np.sqrt(scale, out=scale)
    centred /= scale
    centred *= weight
    centred += bias
    return centred


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), without overflow warnings for large negative x."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x)."""
    with np.errstate(over="ignore"):
        return x / (1.0 + np.exp(-x))


def softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)), and x itself above 20 (the convention of torch and mamba_ssm)."""
    with np.errstate(over="ignore"):
        return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


# --- the cache


class Cache:
    """The state a model carries between calls, one small explicit object per architecture.

    ``arrays`` maps a name to an array with the layer axis first; ``seq_len`` counts the tokens
    seen. ``forward`` updates a cache in place and returns it; ``copy()`` keeps a snapshot.
    """

    def __init__(self, signature: tuple, batch: int, arrays: dict[str, np.ndarray]):
        self.signature = signature
        self.batch = batch
        self.arrays = arrays
        self.seq_len = 0

    def copy(self) -> Cache:
        """An independent copy (its arrays are copied; the next forward leaves this one intact)."""
        clone = _copy.copy(self)
        clone.arrays = {name: array.copy() for name, array in self.arrays.items()}
        return clone

    @property
    def nbytes(self) -> int:
        """Bytes held by the cache's arrays."""
        return sum(array.nbytes for array in self.arrays.values())

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name}={tuple(a.shape)}" for name, a in self.arrays.items())
        return f"{type(self).__name__}(batch={self.batch}, seq_len={self.seq_len}, {shapes})"


# --- the model interface


def _check_ids(input_ids: Any, vocab_size: int) -> np.ndarray:
    """Token ids as a (B, T) int64 array, T >= 1; TypeError/ValueError naming ``input_ids``."""
    ids = np.asarray(input_ids)
    if ids.dtype == object or not (
        np.issubdtype(ids.dtype, np.integer) and not np.issubdtype(ids.dtype, np.bool_)
    ):
        raise TypeError(f"input_ids: expected integer token ids, got dtype {ids.dtype}")
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2:
        raise ValueError(
            f"input_ids: expected shape (T,) or (batch, T), got {tuple(np.shape(input_ids))}"
        )
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"input_ids: expected at least one token per row, got shape {ids.shape}")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        where = tuple(int(i) for i in np.argwhere(ids == bad)[0])
        raise ValueError(
            f"input_ids: token id {bad} at position {where} is outside the vocabulary "
            f"[0, {vocab_size})"
        )
    return ids.astype(np.int64, copy=False)


class CausalLM:
    """A causal language model running on seqkern's kernels.

    ``model(ids)`` returns the logits (B, T, vocab) of a prompt from a fresh state;
    ``forward(ids, cache)`` continues from a cache (updated in place and returned);
    ``generate`` samples new tokens. ``input_ids`` is an integer (B, T) array (1-D: batch 1).
    """

    model_type = "?"

    def __init__(
        self,
        config: dict,
        dtype: np.dtype,
        backend: str,
        vocab_size: int,
        num_layers: int,
        num_parameters: int,
    ):
        self.config = dict(config)
        self.dtype = np.dtype(dtype)
        self.backend = backend
        self.kernels = kernels(backend)
        self.vocab_size = int(vocab_size)
        self.num_layers = int(num_layers)
        self.num_parameters = int(num_parameters)

    # what an architecture provides

    def _forward(self, ids: np.ndarray, cache: Cache) -> np.ndarray:
        """Logits (B, T, vocab) of ``ids`` (B, T) continuing from ``cache``, updated in place."""
        raise NotImplementedError

    def _state_arrays(self, batch: int) -> dict[str, np.ndarray]:
        """The zero-initialised arrays of a new cache for ``batch`` rows."""
        raise NotImplementedError

    def linear_weights(self) -> list[np.ndarray]:
        """The float matrices W (out, in) every token is multiplied by (``x @ W.T``), the head
        included: what the benchmarks time alone as the model's matmul floor."""
        raise NotImplementedError

    def _cache_signature(self) -> tuple:
        """What two models must share for one's cache to serve the other."""
        return (self.model_type, self.num_layers, str(self.dtype), type(self).__name__)

    # the public interface

    def with_backend(self, backend: str) -> CausalLM:
        """The same model (weights shared, not copied) running on another kernel backend."""
        twin = _copy.copy(self)
        twin.kernels = kernels(backend)
        twin.backend = backend
        return twin

    def new_cache(self, batch: int = 1) -> Cache:
        """An empty cache for ``batch`` rows (no tokens seen)."""
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"batch: expected an int >= 1, got {batch!r}")
        return Cache(self._cache_signature(), int(batch), self._state_arrays(int(batch)))

    def _check_cache(self, cache: Any, batch: int) -> Cache:
        if not isinstance(cache, Cache):
            raise TypeError(f"cache: expected a Cache from new_cache(), got {type(cache).__name__}")
        if cache.signature != self._cache_signature():
            raise ValueError(
                f"cache: made by another model ({', '.join(map(str, cache.signature))}); this "
                f"model is {', '.join(map(str, self._cache_signature()))}"
            )
        if cache.batch != batch:
            raise ValueError(f"cache: holds {cache.batch} rows, but input_ids has batch {batch}")
        return cache

    def forward(self, input_ids: Any, cache: Optional[Cache] = None) -> tuple[np.ndarray, Cache]:
        """Logits (B, T, vocab) of ``input_ids`` continuing from ``cache`` (a new one when None).

        The cache is updated in place and returned; feeding a prompt in pieces gives the logits
        of one call within rounding. Use ``cache.copy()`` first to keep the old state.
        """
        ids = _check_ids(input_ids, self.vocab_size)
        cache = (
            self.new_cache(ids.shape[0])
            if cache is None
            else self._check_cache(cache, ids.shape[0])
        )
        logits = self._forward(ids, cache)
        cache.seq_len += ids.shape[1]
        return logits, cache

    def __call__(self, input_ids: Any) -> np.ndarray:
        """Logits (B, T, vocab) of a whole prompt from a fresh state."""
        return self.forward(input_ids)[0]

    def generate(
        self,
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
        """Prompt plus up to ``max_new_tokens`` new tokens, (B, T + new); see
        :func:`seqkern.models.generate.generate` for the sampling options."""
        from .generate import generate

        return generate(
            self,
            input_ids,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            eos_token_id=eos_token_id,
            callback=callback,
            return_cache=return_cache,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model_type={self.model_type!r}, layers={self.num_layers}, "
            f"vocab={self.vocab_size}, params={self.num_parameters:,}, dtype={self.dtype}, "
            f"backend={self.backend!r})"
        )


class Weights:
    """Loads tensors from a checkpoint into the model dtype, counting parameters once each."""

    def __init__(self, checkpoint: Any, dtype: np.dtype):
        self.checkpoint = checkpoint
        self.dtype = dtype
        self.count = 0

    def __call__(self, key: str, *shape: int) -> np.ndarray:
        """Tensor ``key`` checked against ``shape``, as the model dtype."""
        array = self.checkpoint.get(key, shape, self.dtype)
        self.count += array.size
        return array

    def output_head(
        self, key: str, embedding: np.ndarray, config: dict, tied_by_default: bool = True
    ) -> np.ndarray:
        """The output head (vocab, hidden): the embedding itself when the config ties them
        (``tie_word_embeddings``, as transformers ties them), else tensor ``key``."""
        if config.get("tie_word_embeddings", tied_by_default):
            return embedding
        return self(key, *embedding.shape)

    def optional(self, key: str, *shape: int) -> Optional[np.ndarray]:
        """Like calling it, or None when the checkpoint has no ``key``."""
        return self(key, *shape) if key in self.checkpoint else None

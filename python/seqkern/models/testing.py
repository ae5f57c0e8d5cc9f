"""Random checkpoints for tests and benchmarks: any supported architecture at any shape,
in memory or written as a real model folder (config.json + safetensors, F32/F16/BF16, single
file or shards).

The architecture's own loader says which tensors it needs and their shapes: a
:class:`RandomCheckpoint` answers every request with a fresh random tensor of the requested
shape and remembers it, so ``random_tensors(config)`` returns exactly the tensors a real
checkpoint of that config holds.
"""

from __future__ import annotations

import importlib
import json
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np

from .checkpoint import TensorDict, resolve_dtype
from .core import CausalLM, Weights

__all__ = [
    "RandomCheckpoint",
    "float_to_bf16",
    "model_from_tensors",
    "random_model",
    "random_tensors",
    "write_folder",
    "write_safetensors",
]

Initializer = Callable[[str, tuple, np.random.Generator], np.ndarray]


def default_initializer(key: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    """Matrices N(0, 1/fan_in); norm weights 1 + N(0, 0.1^2); other vectors N(0, 0.1^2).
    Drawn in float32 (fast at published shapes; exact in float64 too)."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    if len(shape) >= 2:
        return noise * np.float32(1 / np.sqrt(shape[-1]))
    base = 1.0 if ("norm" in key or key.split(".")[-2:-1] in (["ln1"], ["ln2"])) else 0.0
    return np.float32(base) + np.float32(0.1) * noise


class RandomCheckpoint:
    """A checkpoint that creates each requested tensor at random, with the requested shape.

    ``initializers`` maps a key suffix to a function (key, shape, rng) -> array for tensors that
    need a particular range (decays, scales); ``absent`` lists keys to report as missing (an
    untied head, optional tensors). ``tensors`` holds everything handed out.
    """

    def __init__(
        self,
        seed: int = 0,
        initializers: Optional[dict[str, Initializer]] = None,
        absent: Iterable[str] = (),
    ):
        self.rng = np.random.default_rng(seed)
        self.initializers = dict(initializers or {})
        self.absent = set(absent)
        self.tensors: dict[str, np.ndarray] = {}
        self.files = ["<random tensors>"]

    def __contains__(self, key: str) -> bool:
        return key not in self.absent

    def keys(self) -> list[str]:
        """The tensors handed out so far."""
        return sorted(self.tensors)

    def shape(self, key: str) -> Optional[tuple[int, ...]]:
        """Known shapes only: a tensor not yet made has no stored shape to compare with."""
        return tuple(self.tensors[key].shape) if key in self.tensors else None

    def _make(self, key: str, shape: Sequence[int], make: Optional[Initializer] = None):
        if key not in self.tensors:
            if key in self.absent:
                raise ValueError(f"missing tensor {key!r} in the random checkpoint")
            init = make or next(
                (f for suffix, f in self.initializers.items() if key.endswith(suffix)),
                default_initializer,
            )
            self.tensors[key] = np.asarray(init(key, tuple(shape), self.rng))
        return self.tensors[key]

    def get(self, key: str, shape: Optional[Sequence[int]], dtype: np.dtype) -> np.ndarray:
        """A random float tensor of ``shape`` (the same one on every request for ``key``)."""
        return np.ascontiguousarray(self._make(key, shape), dtype=dtype)

    def get_raw(
        self, key: str, shape: Optional[Sequence[int]], stored: Iterable[str]
    ) -> np.ndarray:
        """A random integer tensor of ``shape`` (uniform bytes unless an initializer is given)."""

        def random_bytes(_key: str, size: tuple, rng: np.random.Generator) -> np.ndarray:
            return rng.integers(0, 256, size=size, dtype=np.uint8)

        return np.ascontiguousarray(
            self._make(key, shape, self.initializers.get(key, random_bytes))
        )


def _from_checkpoint(config: dict, checkpoint: Any, dtype: Any, backend: str) -> CausalLM:
    from . import ARCHITECTURES

    module = importlib.import_module(ARCHITECTURES[config["model_type"]])
    return module.from_checkpoint(config, Weights(checkpoint, resolve_dtype(dtype)), backend)


def random_tensors(config: dict, seed: int = 0, **options: Any) -> dict[str, np.ndarray]:
    """Every tensor a checkpoint of ``config`` holds, random (float32; uint8 for packed ones).
    ``options`` go to :class:`RandomCheckpoint` (initializers, absent)."""
    checkpoint = RandomCheckpoint(seed, **options)
    _from_checkpoint(config, checkpoint, np.float64, "numpy")
    return checkpoint.tensors


def model_from_tensors(
    config: dict,
    tensors: dict[str, np.ndarray],
    *,
    dtype: Any = np.float32,
    backend: str = "seqkern",
) -> CausalLM:
    """A model built from in-memory tensors, as :func:`seqkern.models.load` builds it from files."""
    return _from_checkpoint(config, TensorDict(tensors), dtype, backend)


def random_model(
    config: dict,
    *,
    seed: int = 0,
    dtype: Any = np.float32,
    backend: str = "seqkern",
    **options: Any,
) -> CausalLM:
    """A model of ``config`` with random weights (for benchmarks at published shapes)."""
    return _from_checkpoint(config, RandomCheckpoint(seed, **options), dtype, backend)


def float_to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (nearest, ties to even), as uint16 bits."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


_STORED_NAMES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def write_safetensors(path: Union[str, Path], tensors: dict[str, np.ndarray], stored: str = "F32"):
    """Writes ``tensors`` to a .safetensors file, float tensors stored as ``stored`` (F32, F16,
    F64 or BF16), integer tensors as they are (U8, I8, ...)."""
    header: dict[str, Any] = {}
    blobs: list[bytes] = []
    offset = 0
    int_names = {
        np.dtype(np.uint8): "U8",
        np.dtype(np.int8): "I8",
        np.dtype(np.int32): "I32",
        np.dtype(np.int64): "I64",
    }
    for key in sorted(tensors):
        array = np.asarray(tensors[key])
        if array.dtype.kind == "f":
            kind = stored
            data = float_to_bf16(array) if stored == "BF16" else array.astype(_STORED_NAMES[stored])
        else:
            kind, data = int_names[array.dtype], array
        blob = np.ascontiguousarray(data).tobytes()
        header[key] = {
            "dtype": kind,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(encoded)))
        handle.write(encoded)
        for blob in blobs:
            handle.write(blob)


def write_folder(
    folder: Union[str, Path],
    config: dict,
    tensors: dict[str, np.ndarray],
    *,
    stored: str = "F32",
    shards: int = 1,
) -> Path:
    """A transformers-style model folder: config.json and model.safetensors, or ``shards``
    files model-0000i-of-0000n.safetensors with model.safetensors.index.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    keys = sorted(tensors)
    if shards == 1:
        write_safetensors(folder / "model.safetensors", tensors, stored)
        return folder
    weight_map = {}
    for index, part in enumerate(np.array_split(np.array(keys, dtype=object), shards)):
        name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(folder / name, {key: tensors[key] for key in part}, stored)
        weight_map.update({key: name for key in part})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}, indent=2)
    )
    return folder

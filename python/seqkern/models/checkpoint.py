"""Reading checkpoints: config.json, safetensors files (single or sharded), stored dtypes.

Tensors are looked up by their checkpoint key and their shape is checked before any compute,
so a wrong file fails at load with the key in the message. F32 and F16 tensors are read with
the ``safetensors`` package; BF16, which NumPy has no dtype for, is read from the memory-mapped
file as uint16 and widened exactly (a bfloat16 is the top half of a float32).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

__all__ = ["Checkpoint", "config_float", "read_config", "resolve_dtype"]

WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"

# Stored dtypes and the NumPy dtype their bits are read as.
_STORED = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": np.uint16,
    "U8": np.uint8,
    "I8": np.int8,
    "I32": np.int32,
    "I64": np.int64,
}
_FLOAT_KINDS = ("F64", "F32", "F16", "BF16")


def resolve_dtype(dtype: Any) -> np.dtype:
    """float32 or float64 as a NumPy dtype; anything else is a TypeError naming ``dtype``."""
    try:
        resolved = np.dtype(dtype)
    except TypeError as error:
        raise TypeError(f"dtype: expected float32 or float64, got {dtype!r}") from error
    if resolved not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"dtype: expected float32 or float64, got {resolved}")
    return resolved


def config_float(value: Any) -> float:
    """A float from config.json: a number, a string such as "Infinity", or the
    ``{"__float__": "Infinity"}`` form transformers writes for non-finite values."""
    if isinstance(value, dict) and "__float__" in value:
        value = value["__float__"]
    return float(value)


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json as a dict (FileNotFoundError / ValueError when absent or bad)."""
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder}: no {CONFIG_FILE}; expected a transformers model folder "
            f"({CONFIG_FILE} + {WEIGHTS_FILE} or {INDEX_FILE} with its shards) or one "
            ".safetensors file"
        )
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable JSON file ({error})") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """A safetensors file's JSON header and the byte offset where its data starts."""
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > os.path.getsize(path):
                raise ValueError("header length beyond the end of the file")
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from error
    header.pop("__metadata__", None)
    return header, 8 + length


def _shard_files(folder: Path) -> list[Path]:
    """The weight files of a model folder: one model.safetensors, or the shards its index names."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{index}: expected a JSON object with a weight_map") from error
        names = sorted(set(weight_map.values()))
        missing = [name for name in names if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{index}: names shards that are missing: {missing}")
        return [folder / name for name in names]
    single = folder / WEIGHTS_FILE
    if single.is_file():
        return [single]
    raise FileNotFoundError(
        f"{folder}: no weights; expected {WEIGHTS_FILE} or {INDEX_FILE} with its shards"
    )


class Checkpoint:
    """The tensors of one or more safetensors files, read by key, checked by shape.

    ``get(key, shape)`` returns the tensor converted to the model's float dtype;
    ``get_raw(key, shape, stored)`` returns integer tensors (packed weights) as stored.
    """

    def __init__(self, files: Sequence[Path]):
        self.files = list(files)
        self._where: dict[str, tuple[Path, dict[str, Any], int]] = {}
        for path in self.files:
            header, data_start = _read_header(path)
            for key, info in header.items():
                self._where[key] = (path, info, data_start)
        self._handles: dict[Path, Any] = {}
        self._maps: dict[Path, np.memmap] = {}

    @classmethod
    def from_folder(cls, folder: Path) -> Checkpoint:
        """The checkpoint of a transformers model folder (single file or shards)."""
        return cls(_shard_files(folder))

    def keys(self) -> list[str]:
        """Every tensor name in the checkpoint."""
        return sorted(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def shape(self, key: str) -> tuple[int, ...]:
        """The stored shape of ``key`` (ValueError naming the key when it is absent)."""
        return tuple(self._info(key)["shape"])

    def stored_dtype(self, key: str) -> str:
        """The stored dtype of ``key`` as safetensors names it ("BF16", "F32", "U8", ...)."""
        return self._info(key)["dtype"]

    def _info(self, key: str) -> dict[str, Any]:
        if key not in self._where:
            files = ", ".join(str(path) for path in self.files)
            raise ValueError(f"missing tensor {key!r} in {files}")
        return self._where[key][1]

    def _check_shape(self, key: str, shape: Optional[Sequence[int]]) -> None:
        actual = self.shape(key)
        if shape is not None and actual != tuple(shape):
            raise ValueError(
                f"tensor {key!r}: expected shape {tuple(shape)}, got {actual} "
                f"(in {self._where[key][0]})"
            )

    def _raw(self, key: str) -> np.ndarray:
        """The tensor's stored bits, read through safetensors or the memory-mapped file."""
        path, info, data_start = self._where[key]
        kind = info["dtype"]
        if kind not in _STORED:
            raise ValueError(f"tensor {key!r}: unsupported stored dtype {kind}")
        if kind != "BF16":
            return self._handle(path).get_tensor(key)
        begin, end = info["data_offsets"]
        data = self._map(path)[data_start + begin : data_start + end]
        return data.view(np.uint16).reshape(info["shape"])

    def _handle(self, path: Path) -> Any:
        if path not in self._handles:
            from safetensors import safe_open

            self._handles[path] = safe_open(str(path), framework="numpy")
        return self._handles[path]

    def _map(self, path: Path) -> np.memmap:
        if path not in self._maps:
            self._maps[path] = np.memmap(path, dtype=np.uint8, mode="r")
        return self._maps[path]

    def get(self, key: str, shape: Optional[Sequence[int]], dtype: np.dtype) -> np.ndarray:
        """Tensor ``key`` as ``dtype`` (float32/float64), after checking it has ``shape``."""
        self._check_shape(key, shape)
        kind = self.stored_dtype(key)
        if kind not in _FLOAT_KINDS:
            raise ValueError(f"tensor {key!r}: expected a float tensor, got {kind}")
        raw = self._raw(key)
        if kind == "BF16":
            return bf16_to_float(raw, dtype)
        return np.ascontiguousarray(raw, dtype=dtype)

    def get_raw(
        self, key: str, shape: Optional[Sequence[int]], stored: Iterable[str]
    ) -> np.ndarray:
        """Tensor ``key`` as stored (for packed integer weights), after checking shape and dtype."""
        self._check_shape(key, shape)
        kind = self.stored_dtype(key)
        allowed = tuple(stored)
        if kind not in allowed:
            raise ValueError(
                f"tensor {key!r}: expected stored dtype {' or '.join(allowed)}, got {kind}"
            )
        return np.ascontiguousarray(self._raw(key))


def bf16_to_float(bits: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """bfloat16 bits (uint16) as float32/float64: the bits are the top half of a float32."""
    widened = bits.astype(np.uint32) << np.uint32(16)
    return widened.view(np.float32).astype(dtype, copy=False)


class TensorDict:
    """An in-memory checkpoint: the same interface as :class:`Checkpoint` over a dict of NumPy
    arrays (float arrays stand for F32/F64 tensors; integer arrays are returned as they are)."""

    def __init__(self, tensors: dict[str, np.ndarray]):
        self.tensors = tensors
        self.files = ["<in-memory tensors>"]

    def keys(self) -> list[str]:
        """Every tensor name."""
        return sorted(self.tensors)

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def shape(self, key: str) -> tuple[int, ...]:
        """The shape of ``key`` (ValueError naming the key when it is absent)."""
        if key not in self.tensors:
            raise ValueError(f"missing tensor {key!r} in the given tensors")
        return tuple(self.tensors[key].shape)

    def _checked(self, key: str, shape: Optional[Sequence[int]]) -> np.ndarray:
        actual = self.shape(key)
        if shape is not None and actual != tuple(shape):
            raise ValueError(f"tensor {key!r}: expected shape {tuple(shape)}, got {actual}")
        return self.tensors[key]

    def get(self, key: str, shape: Optional[Sequence[int]], dtype: np.dtype) -> np.ndarray:
        """Tensor ``key`` as ``dtype`` after checking its shape."""
        return np.ascontiguousarray(self._checked(key, shape), dtype=dtype)

    def get_raw(
        self, key: str, shape: Optional[Sequence[int]], stored: Iterable[str]
    ) -> np.ndarray:
        """Tensor ``key`` as it is, after checking its shape."""
        return np.ascontiguousarray(self._checked(key, shape))

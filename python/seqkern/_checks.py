"""Argument checks shared by the public wrappers.

Every public kernel validates its arguments here before calling ``seqkern._native``: bad input
becomes a ``TypeError`` (dtype) or ``ValueError`` (shape, value) whose message names the argument,
the expected and the actual shape or dtype. Arrays are made C-contiguous deliberately, once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional, Union

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

Dim = Union[int, str]


def by_dtype(native: Any, name: str) -> dict[np.dtype, Any]:
    """The float32 and float64 entry points ``{name}_f32`` / ``{name}_f64`` of ``native``,
    keyed by dtype."""
    return {
        np.dtype(np.float32): getattr(native, f"{name}_f32"),
        np.dtype(np.float64): getattr(native, f"{name}_f64"),
    }


def as_array(name: str, value: Any) -> np.ndarray:
    """Returns ``value`` as an ndarray (array-likes are converted), or raises TypeError."""
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - any conversion failure is the caller's input
        raise TypeError(f"{name}: expected an array, got {type(value).__name__}") from exc


def float_dtype(name: str, array: np.ndarray) -> np.dtype:
    """The dtype of ``array`` if it is float32 or float64, else a TypeError naming ``name``."""
    if array.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32 or float64, got {array.dtype}")
    return array.dtype


def same_dtype(name: str, array: np.ndarray, dtype: np.dtype, like: str) -> None:
    """Raises TypeError unless ``array`` has ``dtype`` (the dtype of argument ``like``)."""
    if array.dtype != dtype:
        raise TypeError(
            f"{name}: expected dtype {dtype} (the dtype of {like}), got {array.dtype}; "
            "seqkern never casts silently"
        )


def shape_str(dims: Sequence[Dim], sizes: Sequence[int]) -> str:
    """Formats ``(batch, dim) = (2, 3)``."""
    names = ", ".join(str(d) for d in dims)
    values = ", ".join(str(s) for s in sizes)
    comma = "," if len(dims) == 1 else ""
    return f"({names}{comma}) = ({values}{comma})"


def check_shape(name: str, array: np.ndarray, dims: Sequence[Dim], sizes: Sequence[int]) -> None:
    """Raises ValueError unless ``array.shape == tuple(sizes)``; ``dims`` names the axes."""
    if tuple(array.shape) != tuple(sizes):
        raise ValueError(
            f"{name}: expected shape {shape_str(dims, sizes)}, got {tuple(array.shape)}"
        )


def check_ndim(name: str, array: np.ndarray, options: Sequence[Sequence[Dim]]) -> None:
    """Raises ValueError unless ``array.ndim`` equals the length of one of ``options``."""
    if all(array.ndim != len(dims) for dims in options):
        forms = " or ".join("(" + ", ".join(map(str, d)) + ")" for d in options)
        raise ValueError(
            f"{name}: expected {forms}, got an array of shape {tuple(array.shape)} "
            f"({array.ndim} dimensions)"
        )


def _physical_memory() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


PHYSICAL_MEMORY = _physical_memory()


def contiguous(name: str, array: np.ndarray) -> np.ndarray:
    """``array`` as a C-contiguous array: itself when it already is, else one deliberate copy.

    A view that claims more bytes than this machine has (a stride-0 broadcast of an absurd
    shape, say) is a ValueError instead of a doomed multi-terabyte allocation.
    """
    if array.flags.c_contiguous:
        return array
    needed = array.size * array.itemsize
    if PHYSICAL_MEMORY is not None and needed > PHYSICAL_MEMORY:
        raise ValueError(
            f"{name}: an array of shape {tuple(array.shape)} needs {needed / 2**30:.1f} GiB as "
            f"a contiguous copy, more than this machine's {PHYSICAL_MEMORY / 2**30:.1f} GiB"
        )
    return np.ascontiguousarray(array)


def float_input(
    name: str,
    value: Any,
    dtype: np.dtype,
    like: str,
    dims: Sequence[Dim],
    sizes: Sequence[int],
) -> np.ndarray:
    """Checks dtype and shape of a required float argument; returns it C-contiguous."""
    array = as_array(name, value)
    same_dtype(name, array, dtype, like)
    check_shape(name, array, dims, sizes)
    return contiguous(name, array)


def optional_float_input(
    name: str,
    value: Any,
    dtype: np.dtype,
    like: str,
    dims: Sequence[Dim],
    sizes: Sequence[int],
) -> Optional[np.ndarray]:
    """Like :func:`float_input` for an argument that may be None."""
    if value is None:
        return None
    return float_input(name, value, dtype, like, dims, sizes)


def writable_state(
    name: str,
    value: Any,
    dtype: np.dtype,
    like: str,
    dims: Sequence[Dim],
    sizes: Sequence[int],
) -> np.ndarray:
    """Checks a state that a kernel updates in place: an ndarray of ``dtype`` and the given
    shape, writable and C-contiguous (a copy would silently drop the update)."""
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"{name}: expected a numpy.ndarray updated in place, got {type(value).__name__}"
        )
    same_dtype(name, value, dtype, like)
    check_shape(name, value, dims, sizes)
    if not value.flags.writeable:
        raise ValueError(f"{name}: the array is read-only, but it is updated in place")
    if not value.flags.c_contiguous:
        raise ValueError(
            f"{name}: expected a C-contiguous array (it is updated in place, so it cannot be "
            f"copied), got strides {value.strides}"
        )
    return value


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """Returns ``value`` as an int >= ``minimum`` or raises TypeError/ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def divides(name: str, groups: int, total_name: str, total: int) -> None:
    """Raises ValueError unless ``groups`` divides ``total``."""
    if groups == 0 or total % groups != 0:
        raise ValueError(f"{name}: {groups} groups must divide {total_name} = {total}")

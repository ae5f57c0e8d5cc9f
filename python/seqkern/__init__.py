"""seqkern: Rust kernels for sequence models (Mamba, RWKV, BitNet b1.58, causal attention),
called from NumPy.

Families live in submodules: :mod:`seqkern.mamba`; their NumPy references in
:mod:`seqkern.reference`.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Any

from . import _native, attention, mamba, reference, rwkv, ternary

__version__: str = _native.build_info()["version"]

__all__ = [
    "__version__",
    "attention",
    "build_info",
    "get_num_threads",
    "mamba",
    "reference",
    "rwkv",
    "set_num_threads",
    "ternary",
]


def set_num_threads(n: int) -> None:
    """Sets the number of threads kernels use (``0``: all cores). The default is all cores, or
    the environment variable ``SEQKERN_NUM_THREADS`` when it is set. Results do not depend on it.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected an int >= 0, got {n!r}")
    _native.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads kernels use."""
    return _native.get_num_threads()


def build_info() -> dict[str, Any]:
    """What was built and what it runs on: ``version``, ``profile`` (release or debug), ``simd``
    (the SIMD path in use; ``SEQKERN_SIMD=scalar`` forces the portable one, ``avx2`` the AVX2
    one), ``simd_available``
    (the best this CPU offers), ``threads`` and ``target_arch``."""
    return dict(_native.build_info())


_SIMD_NAMES = ("auto", "scalar", "portable", "none", "avx2", "avx512")


def _check_environment() -> None:
    """Warns about a ``SEQKERN_SIMD`` or ``SEQKERN_NUM_THREADS`` value that is not understood
    (the default is used instead: the best SIMD path, all cores)."""
    simd = os.environ.get("SEQKERN_SIMD")
    if simd is not None and simd.strip().lower() not in _SIMD_NAMES:
        warnings.warn(
            f"SEQKERN_SIMD: expected one of {', '.join(_SIMD_NAMES)}, got {simd!r}; "
            f"using {_native.build_info()['simd']}",
            RuntimeWarning,
            stacklevel=3,
        )
    threads = os.environ.get("SEQKERN_NUM_THREADS")
    if threads is not None and not re.fullmatch(r"\+?[0-9]+", threads.strip()):
        warnings.warn(
            f"SEQKERN_NUM_THREADS: expected an int >= 0, got {threads!r}; "
            f"using all {_native.get_num_threads()} cores",
            RuntimeWarning,
            stacklevel=3,
        )


_check_environment()

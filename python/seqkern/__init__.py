"""seqkern: Rust kernels for sequence models (Mamba, RWKV, BitNet b1.58, causal attention),
called from NumPy.

Families live in submodules: :mod:`seqkern.mamba`; their NumPy references in
:mod:`seqkern.reference`.
"""

from __future__ import annotations

from typing import Any

from . import _native, attention, mamba, reference, rwkv, ternary

__version__: str = _native.build_info()["version"]

__all__ = [
    "__version__",
    "attention",
    "build_info",
    "cpu_features",
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
    (the SIMD path in use; ``SEQKERN_SIMD=scalar`` forces the portable one), ``simd_available``
    (the best this CPU offers), ``threads`` and ``target_arch``."""
    return dict(_native.build_info())


def cpu_features() -> list[str]:
    """The SIMD-related features this CPU reports, by their Rust names (``"avx2"``, ``"fma"``,
    ``"avx512vnni"``, ...; ``"neon"``, ``"dotprod"`` on aarch64): what the run-time dispatch
    chose ``build_info()["simd_available"]`` from."""
    return list(_native.cpu_features())

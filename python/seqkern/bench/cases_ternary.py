"""Benchmark cases of the ternary family: ``bitlinear`` (int8 activations x packed ternary
weights) against NumPy float32 ``x @ W.T`` at the same shapes, at the issue's 4096 x 4096 shape
and at BitNet-2B4T's FFN shapes (2560 -> 6912 and 6912 -> 2560).

OpenBLAS reads ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` when NumPy is imported; run this
family with both unset so that it picks its best kernel::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m seqkern.bench.ratios --family ternary
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from .. import ternary
from .cases import Case

_OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _warn_if_openblas_is_pinned() -> None:
    pinned = [name for name in _OPENBLAS_OVERRIDES if name in os.environ]
    if pinned:
        warnings.warn(
            f"{', '.join(pinned)} set: the NumPy baseline may not run OpenBLAS's best kernel",
            stacklevel=3,
        )


def bitlinear_inputs(rng: np.random.Generator, k: int, n: int, m: int, format: str = "i2"):
    """x (m, k) float32, W (n, k) float32 and W quantized to a TernaryWeight."""
    W = rng.standard_normal((n, k), dtype=np.float32) * np.float32(0.02)
    x = rng.standard_normal((m, k), dtype=np.float32)
    return x, W, ternary.quantize_weights(W, format=format)


def _bitlinear(k: int, n: int, m: int, format: str = "i2"):
    def make(rng):
        _warn_if_openblas_is_pinned()
        x, W, w = bitlinear_inputs(rng, k, n, m, format)
        return (lambda: ternary.bitlinear(x, w), lambda: x @ W.T)

    return make


def _case(k: int, n: int, m: int, format: str = "i2", target: str = "") -> Case:
    shape = f"K={k} -> N={n}, M={m}, {format} (numpy: f32 x @ W.T)"
    return Case("ternary", "bitlinear", shape, _bitlinear(k, n, m, format), target)


CASES = [
    _case(4096, 4096, 1, target="<= 120 us, >= 10x"),
    _case(4096, 4096, 8, target=">= 4x"),
    _case(4096, 4096, 512, target=">= 2x"),
    _case(4096, 4096, 1, "t1"),
    _case(2560, 6912, 1),
    _case(6912, 2560, 1),
    _case(2560, 6912, 512),
    _case(6912, 2560, 512),
]

"""Benchmark case of causal attention (the issue's target shape: a d_model 2048 layer)."""

from __future__ import annotations

import numpy as np

from ..attention import causal_attention
from ..reference import attention as ref
from .cases import Case


def _attention(rng: np.random.Generator):
    shape = (1, 32, 1024, 64)
    q, k, v = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
    return (lambda: causal_attention(q, k, v), lambda: ref.causal_attention(q, k, v))


CASES = [
    Case(
        "attention",
        "causal_attention",
        "B1 H32 L1024 D64 f32",
        _attention,
        "<= 40 ms on 2 cores",
    ),
]

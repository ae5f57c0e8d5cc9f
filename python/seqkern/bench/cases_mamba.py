"""Benchmark cases of the Mamba family (mamba-130m shapes)."""

from __future__ import annotations

import numpy as np

from .. import mamba
from ..reference import mamba as ref
from .cases import Case


def scan_inputs(
    rng: np.random.Generator, batch=1, dim=1536, dstate=16, length=1024, dtype=np.float32
):
    """Inputs of a mamba-130m layer's scan: u, delta, A, B, C, D, z, delta_bias."""

    def normal(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    A = -np.exp(normal(dim, dstate, scale=0.5))
    return (
        normal(batch, dim, length),
        normal(batch, dim, length, scale=0.5),
        A,
        normal(batch, dstate, length),
        normal(batch, dstate, length),
        normal(dim),
        normal(batch, dim, length),
        normal(dim, scale=0.5) - 2.0,
    )


def _scan(rng):
    args = scan_inputs(rng)
    return (
        lambda: mamba.selective_scan(*args, delta_softplus=True),
        lambda: ref.selective_scan(*args, delta_softplus=True),
    )


def _decode(rng):
    batch, dim, dstate = 1, 1536, 16
    u, delta, A, B, C, D, z, bias = scan_inputs(rng, batch, dim, dstate, 1)
    state = np.zeros((batch, dim, dstate), np.float32)
    state_ref = state.copy()
    x, dt, zz, b, c = u[..., 0], delta[..., 0], z[..., 0], B[..., 0], C[..., 0]
    return (
        lambda: mamba.selective_state_update(state, x, dt, A, b, c, D, zz, bias, True),
        lambda: ref.selective_state_update(state_ref, x, dt, A, b, c, D, zz, bias, True),
    )


CASES = [
    Case(
        "mamba",
        "selective_scan",
        "b1 d1536 n16 L1024 f32, D z bias softplus",
        _scan,
        ">= 20x, <= 8 ms",
    ),
    Case("mamba", "selective_state_update", "b1 d1536 n16 f32 (one decode step)", _decode),
]

"""What the fuzzer knows about each public function: how to build valid arguments and what
shape a valid call returns. Each family adds its specs to ``SPECS``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from seqkern import attention, mamba

Kwargs = dict[str, Any]


@dataclass(frozen=True)
class Spec:
    """A public function and a generator of valid keyword arguments for it."""

    name: str
    fn: Callable[..., Any]
    build: Callable[[np.random.Generator, type], Kwargs]
    # The shapes of the result of a valid call (a tuple of shapes for tuple results).
    out_shape: Callable[[Kwargs], Any]
    # Arguments updated in place: they must be writable, C-contiguous ndarrays.
    in_place: tuple[str, ...] = field(default_factory=tuple)


def _normal(rng, dtype, *shape):
    return rng.standard_normal(shape).astype(dtype)


def _sizes(rng):
    return (
        int(rng.integers(1, 3)),
        int(rng.integers(1, 9)),
        int(rng.integers(1, 5)),
        int(rng.integers(0, 6)),
    )


def _scan_args(rng, dtype):
    batch, dim, dstate, length = _sizes(rng)
    n = lambda *s: _normal(rng, dtype, *s)  # noqa: E731
    return dict(
        u=n(batch, dim, length),
        delta=n(batch, dim, length),
        A=-np.abs(n(dim, dstate)),
        B=n(batch, dstate, length),
        C=n(dim, dstate),
        D=n(dim),
        z=n(batch, dim, length),
        delta_bias=n(dim),
        delta_softplus=True,
        return_last_state=True,
        initial_state=n(batch, dim, dstate),
    )


def _update_args(rng, dtype):
    batch, dim, dstate, _ = _sizes(rng)
    n = lambda *s: _normal(rng, dtype, *s)  # noqa: E731
    return dict(
        state=n(batch, dim, dstate),
        x=n(batch, dim),
        dt=n(batch, dim),
        A=-np.abs(n(dim, dstate)),
        B=n(batch, dstate),
        C=n(batch, dstate),
        D=n(dim),
        z=n(batch, dim),
        dt_bias=n(dim),
        dt_softplus=True,
    )


def _update_multihead_args(rng, dtype):
    batch, heads, dstate, _ = _sizes(rng)
    headdim = int(rng.integers(1, 4))
    n = lambda *s: _normal(rng, dtype, *s)  # noqa: E731
    return dict(
        state=n(batch, heads, headdim, dstate),
        x=n(batch, heads, headdim),
        dt=n(batch, heads),
        A=-np.abs(n(heads)),
        B=n(batch, 1, dstate),
        C=n(batch, 1, dstate),
        D=n(heads),
        z=n(batch, heads, headdim),
        dt_bias=n(heads),
        dt_softplus=True,
    )


def _attention_args(rng, dtype):
    batch, heads, head_dim, length = _sizes(rng)
    n = lambda *s: _normal(rng, dtype, *s)  # noqa: E731
    shape = (batch, heads, length, head_dim)
    return dict(q=n(*shape), k=n(*shape), v=n(*shape))


SPECS: list[Spec] = [
    Spec(
        "selective_scan",
        mamba.selective_scan,
        _scan_args,
        lambda a: (a["u"].shape, a["initial_state"].shape),
    ),
    Spec(
        "selective_state_update",
        mamba.selective_state_update,
        _update_args,
        lambda a: a["x"].shape,
        in_place=("state",),
    ),
    Spec(
        "selective_state_update[multihead]",
        mamba.selective_state_update,
        _update_multihead_args,
        lambda a: a["x"].shape,
        in_place=("state",),
    ),
    Spec("causal_attention", attention.causal_attention, _attention_args, lambda a: a["q"].shape),
]

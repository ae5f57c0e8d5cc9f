"""What the fuzzer knows about each public function: how to build valid arguments and what
shape a valid call returns. Each family adds its specs to ``SPECS``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from seqkern import attention, mamba, rwkv, ternary

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
    # Shape or dtype mutations that keep a call valid, per argument (e.g. a batch axis of any
    # size): the call must succeed. Every other breaking mutation must raise.
    accepts: dict[str, frozenset[str]] = field(default_factory=dict)


# How the builders choose sizes (set by the runner): "random" draws small sizes including 0
# and 1; "distinct" draws sizes >= 2 that differ from each other, so that a mutated axis can
# never match another argument's by coincidence; "large" draws distinct sizes big enough for
# SIMD tails and for the kernels to split work across threads.
SIZES = {"mode": "random"}


def _normal(rng, dtype, *shape):
    return rng.standard_normal(shape).astype(dtype)


def _sizes(rng):
    """(batch, dim, state, length)-like sizes in the current SIZES mode."""
    mode = SIZES["mode"]
    if mode == "distinct":
        return tuple(int(v) for v in rng.choice(np.arange(2, 9), 4, replace=False))
    if mode == "large":
        dim, state, length = rng.choice(np.arange(17, 40), 3, replace=False)
        return 2, int(dim), int(state), int(length) * 6
    return (
        int(rng.integers(1, 3)),
        int(rng.integers(1, 9)),
        int(rng.integers(1, 5)),
        int(rng.integers(0, 6)),
    )


def _extra_size(rng, low, high):
    """A further size: above every size of _sizes when sizes must be distinct."""
    mode = SIZES["mode"]
    if mode == "distinct":
        return int(rng.integers(9, 12))
    if mode == "large":
        return int(rng.integers(41, 50))
    return int(rng.integers(low, high))


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
    headdim = _extra_size(rng, 1, 4)
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


def _rwkv_shape(rng):
    batch, heads, n, length = _sizes(rng)
    return batch, length, heads, n


def _wkv4_args(rng, dtype):
    batch, length, heads, n = _rwkv_shape(rng)
    c = heads * n
    return dict(
        w=-np.exp(_normal(rng, dtype, c)),
        u=_normal(rng, dtype, c),
        k=_normal(rng, dtype, batch, length, c),
        v=_normal(rng, dtype, batch, length, c),
        state=np.concatenate(
            [np.zeros((batch, 2, c), dtype), np.full((batch, 1, c), -1e30, dtype)], axis=1
        ),
    )


def _wkv_bonus_args(per_token):
    def build(rng, dtype):
        batch, length, heads, n = _rwkv_shape(rng)
        seq = (batch, length, heads, n)
        w_shape = seq if per_token else (heads, n)
        return dict(
            r=_normal(rng, dtype, *seq),
            k=_normal(rng, dtype, *seq),
            v=_normal(rng, dtype, *seq),
            w=-np.exp(_normal(rng, dtype, *w_shape)),
            u=_normal(rng, dtype, heads, n),
            state=_normal(rng, dtype, batch, heads, n, n),
        )

    return build


def _wkv7_args(rng, dtype):
    batch, length, heads, n = _rwkv_shape(rng)
    seq = (batch, length, heads, n)
    kk = _normal(rng, dtype, *seq)
    kk /= np.maximum(np.linalg.norm(kk, axis=-1, keepdims=True), 1e-3).astype(dtype)
    return dict(
        r=_normal(rng, dtype, *seq),
        w=-np.exp(_normal(rng, dtype, *seq)) * dtype(0.5),
        k=_normal(rng, dtype, *seq),
        v=_normal(rng, dtype, *seq),
        a=-kk,
        b=kk * dtype(0.5),
        state=_normal(rng, dtype, batch, heads, n, n),
    )


def _y_and_state(a):
    return (a["k"].shape, a["state"].shape)


def _weight(rng, k, n, fmt="i2"):
    return ternary.quantize_weights(rng.standard_normal((n, k)), format=fmt)


def _bitlinear_args(rng, dtype):
    m, k, n, _ = _sizes(rng)
    fmt = "t1" if rng.integers(2) else "i2"
    return dict(
        x=_normal(rng, dtype, m, k), weight=_weight(rng, k, n, fmt), bias=_normal(rng, dtype, n)
    )


def _matmul_int_args(rng, dtype):
    m, k, n, _ = _sizes(rng)
    q = rng.integers(-128, 128, (m, k)).astype(np.int8)
    return dict(q=q, weight=_weight(rng, k, n))


def _quantize_weights_args(rng, dtype):
    _, k, n, _ = _sizes(rng)
    return dict(W=_normal(rng, dtype, n, k))


def _quantize_activations_args(rng, dtype):
    m, k, _, _ = _sizes(rng)
    return dict(x=_normal(rng, dtype, m, k))


def _from_codes_args(rng, dtype):
    _, k, n, _ = _sizes(rng)
    return dict(codes=rng.integers(-1, 2, (n, k)).astype(np.int8), gamma=0.5)


def _from_hf_packed_args(rng, dtype):
    _, k, rows, _ = _sizes(rng)
    return dict(
        packed=rng.integers(0, 256, (rows, k)).astype(np.uint8) & 0b10101010, weight_scale=2.0
    )


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
    Spec(
        "causal_attention",
        attention.causal_attention,
        _attention_args,
        lambda a: a["q"].shape,
        # v's head size may differ from q's and k's; q may have no heads (a multiple of k's)
        # and fewer queries than keys, none included.
        accepts={
            "v": frozenset({"grow_axis:3", "zero_axis:3"}),
            "q": frozenset({"zero_axis:1", "zero_axis:2"}),
        },
    ),
    Spec("wkv4", rwkv.wkv4, _wkv4_args, _y_and_state),
    Spec("wkv5", rwkv.wkv5, _wkv_bonus_args(per_token=False), _y_and_state),
    Spec("wkv6", rwkv.wkv6, _wkv_bonus_args(per_token=True), _y_and_state),
    Spec("wkv7", rwkv.wkv7, _wkv7_args, _y_and_state),
    Spec(
        "bitlinear",
        ternary.bitlinear,
        _bitlinear_args,
        lambda a: a["x"].shape[:-1] + (a["weight"].out_features,),
        accepts={"x": frozenset({"grow_axis:0", "zero_axis:0"})},  # any number of tokens
    ),
    Spec(
        "ternary_matmul_int",
        ternary.ternary_matmul_int,
        _matmul_int_args,
        lambda a: a["q"].shape[:-1] + (a["weight"].out_features,),
        accepts={"q": frozenset({"grow_axis:0", "zero_axis:0"})},
    ),
    Spec(
        "quantize_weights",
        ternary.quantize_weights,
        _quantize_weights_args,
        lambda a: a["W"].shape,
        # Any non-empty float matrix.
        accepts={"W": frozenset({"other_float", "grow_axis"})},
    ),
    Spec(
        "quantize_activations",
        ternary.quantize_activations,
        _quantize_activations_args,
        lambda a: (a["x"].shape, a["x"].shape[:-1] + (1,)),
        # Any float array of rank >= 1, empty or not.
        accepts={
            "x": frozenset({"other_float", "grow_axis", "zero_axis", "drop_axis", "add_axis"})
        },
    ),
    Spec(
        "TernaryWeight.from_codes",
        ternary.TernaryWeight.from_codes,
        _from_codes_args,
        lambda a: a["codes"].shape,
        # Any non-empty integer matrix with values in {-1, 0, 1}.
        accepts={"codes": frozenset({"dtype:int32", "dtype:int64", "grow_axis"})},
    ),
    Spec(
        "TernaryWeight.from_hf_packed",
        ternary.TernaryWeight.from_hf_packed,
        _from_hf_packed_args,
        lambda a: (4 * a["packed"].shape[0], a["packed"].shape[1]),
        accepts={"packed": frozenset({"grow_axis"})},
    ),
]


# --- Mamba-2: SSD scan and causal conv1d


def _ssd_args(chunked):
    def build(rng, dtype):
        batch, heads, dstate, length = _sizes(rng)
        headdim, groups = _extra_size(rng, 1, 4), 1 if heads % 2 else 2
        n = lambda *s: _normal(rng, dtype, *s)  # noqa: E731
        args = dict(
            x=n(batch, length, heads, headdim),
            dt=n(batch, length, heads),
            A=-np.abs(n(heads)),
            B=n(batch, length, groups, dstate),
            C=n(batch, length, groups, dstate),
            D=n(heads, headdim),
            z=n(batch, length, heads, headdim),
            dt_bias=n(heads),
            initial_states=n(batch, heads, headdim, dstate),
            dt_softplus=True,
            return_final_states=True,
        )
        if chunked:
            args["chunk_size"] = int(rng.integers(1, 8))
        return args

    return build


def _conv_args(rng, dtype):
    batch, dim, width, length = _sizes(rng)
    n = lambda *s: _normal(rng, dtype, *s)  # noqa: E731
    return dict(
        x=n(batch, dim, length),
        weight=n(dim, width),
        bias=n(dim),
        activation="silu",
        initial_states=n(batch, dim, width - 1),
        return_final_states=True,
    )


def _conv_update_args(tokens):
    def build(rng, dtype):
        batch, dim, width, length = _sizes(rng)
        n = lambda *s: _normal(rng, dtype, *s)  # noqa: E731
        return dict(
            x=n(batch, dim, length + 1) if tokens else n(batch, dim),
            # At least width long, so that a grown weight (which the specs accept) still fits;
            # a state of exactly width - 1 is covered by tests/test_conv1d.py.
            conv_state=n(batch, dim, width + int(rng.integers(0, 2))),
            weight=n(dim, width),
            bias=n(dim),
            activation="silu",
        )

    return build


def _ssd_shapes(a):
    batch, _, heads, headdim = a["x"].shape
    return (a["x"].shape, (batch, heads, headdim, a["B"].shape[-1]))


SPECS += [
    Spec(
        "ssd_scan",
        mamba.ssd_scan,
        _ssd_args(chunked=True),
        _ssd_shapes,
        accepts={"D": frozenset({"drop_axis"})},  # D per head instead of per channel
    ),
    Spec(
        "ssd_scan_sequential",
        mamba.ssd_scan_sequential,
        _ssd_args(chunked=False),
        _ssd_shapes,
        accepts={"D": frozenset({"drop_axis"})},
    ),
    Spec(
        "causal_conv1d",
        mamba.causal_conv1d,
        _conv_args,
        lambda a: (a["x"].shape, a["initial_states"].shape),
        accepts={"x": frozenset({"grow_axis:2", "zero_axis:2"})},  # any length
    ),
    Spec(
        "causal_conv1d_update",
        mamba.causal_conv1d_update,
        _conv_update_args(tokens=False),
        lambda a: a["x"].shape,
        in_place=("conv_state",),
        # x (batch, dim, 1) is one token; the state may be longer than width - 1, so a wider
        # kernel still fits.
        accepts={
            "x": frozenset({"add_axis"}),
            "conv_state": frozenset({"grow_axis:2"}),
            "weight": frozenset({"grow_axis:1"}),
        },
    ),
    Spec(
        "causal_conv1d_update[tokens]",
        mamba.causal_conv1d_update,
        _conv_update_args(tokens=True),
        lambda a: a["x"].shape,
        in_place=("conv_state",),
        # Any number of tokens, or one as (batch, dim).
        accepts={
            "x": frozenset({"grow_axis:2", "zero_axis:2", "drop_axis"}),
            "conv_state": frozenset({"grow_axis:2"}),
            "weight": frozenset({"grow_axis:1"}),
        },
    ),
]

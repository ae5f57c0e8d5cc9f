"""Mamba kernels: the selective scan (Mamba-1) and its one-token decode step.

Signatures, argument order and layouts follow ``mamba_ssm`` (``selective_scan_fn``,
``selective_state_update``) so that code ports over unchanged. All float inputs of one call
share one dtype, float32 or float64; the output follows it.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import numpy as np

from . import _checks as ck
from . import _native

__all__ = ["selective_scan", "selective_scan_fn", "selective_state_update"]

_SCAN = ck.by_dtype(_native, "selective_scan")
_UPDATE = ck.by_dtype(_native, "selective_state_update")


def _bc_input(
    name: str, value: Any, dtype: np.dtype, batch: int, dim: int, dstate: int, length: int
):
    array = ck.as_array(name, value)
    ck.same_dtype(name, array, dtype, "u")
    forms = [("dim", "dstate"), ("batch", "dstate", "L"), ("batch", "groups", "dstate", "L")]
    ck.check_ndim(name, array, forms)
    if array.ndim == 2:
        ck.check_shape(name, array, forms[0], (dim, dstate))
    elif array.ndim == 3:
        ck.check_shape(name, array, forms[1], (batch, dstate, length))
    else:
        groups = array.shape[1]
        ck.check_shape(name, array, forms[2], (batch, groups, dstate, length))
        ck.divides(name, groups, "dim", dim)
    return ck.contiguous(name, array)


def selective_scan(
    u: np.ndarray,
    delta: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    D: Optional[np.ndarray] = None,
    z: Optional[np.ndarray] = None,
    delta_bias: Optional[np.ndarray] = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    initial_state: Optional[np.ndarray] = None,
) -> Union[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The Mamba-1 selective scan, ``mamba_ssm.selective_scan_fn`` on NumPy arrays.

    Shapes: ``u``, ``delta``, ``z``: (batch, dim, L); ``A``: (dim, dstate); ``B`` and ``C``
    each (batch, dstate, L), (batch, groups, dstate, L) with groups dividing dim (channel d
    reads group ``d // (dim // groups)``), or fixed (dim, dstate); ``D``, ``delta_bias``:
    (dim,); ``initial_state`` and the returned last state: (batch, dim, dstate).

    For each channel, with h_{-1} = initial_state (zeros by default)::

        delta'_t = softplus(delta_t + delta_bias)   # if delta_softplus; x if x > 20
        h_t = exp(delta'_t A) * h_{t-1} + delta'_t B_t u_t
        y_t = C_t . h_t + D u_t;   out_t = y_t * silu(z_t)

    Returns ``out`` (batch, dim, L), and ``(out, last_state)`` when ``return_last_state``.
    Running a sequence in two calls, passing the first call's last state as the second's
    ``initial_state``, gives the result of one call. Any strides are accepted (non-contiguous
    arrays are copied once); the GIL is released while the kernel runs.
    """
    u = ck.as_array("u", u)
    dtype = ck.float_dtype("u", u)
    ck.check_ndim("u", u, [("batch", "dim", "L")])
    batch, dim, length = u.shape
    A = ck.as_array("A", A)
    ck.same_dtype("A", A, dtype, "u")
    ck.check_ndim("A", A, [("dim", "dstate")])
    dstate = A.shape[1]
    ck.check_shape("A", A, ("dim", "dstate"), (dim, dstate))
    seq = ("batch", "dim", "L")
    args = dict(
        u=ck.contiguous("u", u),
        delta=ck.float_input("delta", delta, dtype, "u", seq, u.shape),
        a=ck.contiguous("A", A),
        b=_bc_input("B", B, dtype, batch, dim, dstate, length),
        c=_bc_input("C", C, dtype, batch, dim, dstate, length),
        d=ck.optional_float_input("D", D, dtype, "u", ("dim",), (dim,)),
        z=ck.optional_float_input("z", z, dtype, "u", seq, u.shape),
        delta_bias=ck.optional_float_input("delta_bias", delta_bias, dtype, "u", ("dim",), (dim,)),
        delta_softplus=bool(delta_softplus),
        initial_state=ck.optional_float_input(
            "initial_state",
            initial_state,
            dtype,
            "u",
            ("batch", "dim", "dstate"),
            (batch, dim, dstate),
        ),
    )
    out, last_state = _SCAN[dtype](**args)
    return (out, last_state) if return_last_state else out


selective_scan_fn = selective_scan
"""Alias of :func:`selective_scan` under ``mamba_ssm``'s name."""


def selective_state_update(
    state: np.ndarray,
    x: np.ndarray,
    dt: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    D: Optional[np.ndarray] = None,
    z: Optional[np.ndarray] = None,
    dt_bias: Optional[np.ndarray] = None,
    dt_softplus: bool = False,
) -> np.ndarray:
    """One decode step of a Mamba layer: updates ``state`` in place and returns ``out``.

    Mamba-1 form: ``state`` (batch, dim, dstate); ``x``, ``dt``, ``z`` (batch, dim); ``A``
    (dim, dstate); ``B``, ``C`` (batch, dstate) or (batch, groups, dstate); ``D``, ``dt_bias``
    (dim,). Returns (batch, dim).

    Mamba-2 (multi-head) form: ``state`` (batch, nheads, headdim, dstate); ``x``, ``z``
    (batch, nheads, headdim); ``dt`` (batch, nheads); ``A`` (nheads,); ``B``, ``C``
    (batch, groups, dstate); ``D``, ``dt_bias`` (nheads,). mamba_ssm's untied shapes are
    accepted too: ``dt`` (batch, nheads, headdim), ``A`` (nheads, headdim, dstate), ``D`` and
    ``dt_bias`` (nheads, headdim). Returns (batch, nheads, headdim).

    For every channel::

        dt' = softplus(dt + dt_bias)   # if dt_softplus
        state = exp(dt' A) * state + dt' B x;   out = C . state + D x;   out *= silu(z)

    ``state`` must be a writable, C-contiguous ndarray of the inputs' dtype: it is updated in
    place. Sharing one state array between threads that call this at once is a data race on
    the caller's side.
    """
    if not isinstance(state, np.ndarray):
        raise TypeError(
            f"state: expected a numpy.ndarray updated in place, got {type(state).__name__}"
        )
    dtype = ck.float_dtype("state", state)
    ck.check_ndim(
        "state", state, [("batch", "dim", "dstate"), ("batch", "nheads", "headdim", "dstate")]
    )
    if state.ndim == 3:
        return _update_mamba1(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dtype)
    return _update_multihead(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dtype)


def _update_bc(
    name: str, value: Any, dtype: np.dtype, batch: int, heads: int, dstate: int, one_group: bool
):
    array = ck.as_array(name, value)
    ck.same_dtype(name, array, dtype, "state")
    forms = (
        [("batch", "dstate"), ("batch", "groups", "dstate")]
        if one_group
        else [("batch", "groups", "dstate")]
    )
    ck.check_ndim(name, array, forms)
    if array.ndim == 2:
        ck.check_shape(name, array, forms[0], (batch, dstate))
        array = array[:, None, :]
    groups = array.shape[1]
    ck.check_shape(name, array, ("batch", "groups", "dstate"), (batch, groups, dstate))
    ck.divides(name, groups, "nheads" if not one_group else "dim", heads)
    return ck.contiguous(name, array)


def _update_mamba1(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dtype):
    batch, dim, dstate = state.shape
    ck.writable_state("state", state, dtype, "state", ("batch", "dim", "dstate"), state.shape)
    row = ("batch", "dim")
    x = ck.float_input("x", x, dtype, "state", row, (batch, dim))
    z = ck.optional_float_input("z", z, dtype, "state", row, (batch, dim))
    out = _UPDATE[dtype](
        state.reshape(batch, dim, 1, dstate),
        x[:, :, None],
        ck.float_input("dt", dt, dtype, "state", row, (batch, dim)),
        ck.float_input("A", A, dtype, "state", ("dim", "dstate"), (dim, dstate))[:, None, :],
        _update_bc("B", B, dtype, batch, dim, dstate, True),
        _update_bc("C", C, dtype, batch, dim, dstate, True),
        ck.optional_float_input("D", D, dtype, "state", ("dim",), (dim,)),
        None if z is None else z[:, :, None],
        ck.optional_float_input("dt_bias", dt_bias, dtype, "state", ("dim",), (dim,)),
        bool(dt_softplus),
    )
    return out.reshape(batch, dim)


def _per_head(name: str, value: Any, dtype: np.dtype, heads: int, headdim: int, lead: tuple = ()):
    """A parameter given per head (lead + (nheads,)) or per head and channel (+ (headdim,))."""
    if value is None:
        return None
    array = ck.as_array(name, value)
    ck.same_dtype(name, array, dtype, "state")
    short = tuple(lead_name for lead_name, _ in lead) + ("nheads",)
    ck.check_ndim(name, array, [short, short + ("headdim",)])
    sizes = tuple(size for _, size in lead) + (heads,)
    if array.ndim == len(short):
        ck.check_shape(name, array, short, sizes)
    else:
        ck.check_shape(name, array, short + ("headdim",), sizes + (headdim,))
    return ck.contiguous(name, array)


def _update_multihead(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, dtype):
    batch, heads, headdim, dstate = state.shape
    dims = ("batch", "nheads", "headdim", "dstate")
    ck.writable_state("state", state, dtype, "state", dims, state.shape)
    row = ("batch", "nheads", "headdim")
    A = ck.as_array("A", A)
    ck.same_dtype("A", A, dtype, "state")
    ck.check_ndim("A", A, [("nheads",), ("nheads", "headdim", "dstate")])
    if A.ndim == 1:
        ck.check_shape("A", A, ("nheads",), (heads,))
    else:
        ck.check_shape("A", A, ("nheads", "headdim", "dstate"), (heads, headdim, dstate))
    return _UPDATE[dtype](
        state,
        ck.float_input("x", x, dtype, "state", row, (batch, heads, headdim)),
        _per_head("dt", dt, dtype, heads, headdim, lead=(("batch", batch),)),
        ck.contiguous("A", A),
        _update_bc("B", B, dtype, batch, heads, dstate, False),
        _update_bc("C", C, dtype, batch, heads, dstate, False),
        _per_head("D", D, dtype, heads, headdim),
        ck.optional_float_input("z", z, dtype, "state", row, (batch, heads, headdim)),
        _per_head("dt_bias", dt_bias, dtype, heads, headdim),
        bool(dt_softplus),
    )


# --- Mamba-2: the SSD scan, and the causal depthwise conv1d of Mamba blocks

__all__ += [
    "causal_conv1d",
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "mamba_chunk_scan_combined",
    "ssd_scan",
    "ssd_scan_sequential",
]

SSD_MAX_CHUNK = 32
"""The longest chunk :func:`ssd_scan` uses (``chunk_size`` is capped to it)."""

_SSD = ck.by_dtype(_native, "ssd_scan")
_CONV = ck.by_dtype(_native, "causal_conv1d")
_CONV_UPDATE = ck.by_dtype(_native, "causal_conv1d_update")


def _dt_limit(value: Any) -> tuple[float, float]:
    """``dt_limit`` as two floats (lo, hi) with lo <= hi."""
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"dt_limit: expected a pair of numbers (min, max), got {value!r}") from exc
    if not lo <= hi:
        raise ValueError(f"dt_limit: expected min <= max, got ({lo}, {hi})")
    return lo, hi


def _ssd_args(x, dt, A, B, C, D, z, dt_bias, initial_states):
    """Checks the arrays of an SSD call; returns them C-contiguous, and the dtype."""
    x = ck.as_array("x", x)
    dtype = ck.float_dtype("x", x)
    seq = ("batch", "L", "nheads", "headdim")
    ck.check_ndim("x", x, [seq])
    batch, length, heads, headdim = x.shape
    B = ck.as_array("B", B)
    ck.same_dtype("B", B, dtype, "x")
    bc = ("batch", "L", "ngroups", "dstate")
    ck.check_ndim("B", B, [bc])
    groups, dstate = B.shape[2], B.shape[3]
    ck.check_shape("B", B, bc, (batch, length, groups, dstate))
    ck.divides("B", groups, "nheads", heads)
    D = ck.as_array("D", D) if D is not None else None
    if D is not None:
        ck.same_dtype("D", D, dtype, "x")
        ck.check_ndim("D", D, [("nheads",), ("nheads", "headdim")])
        d_dims = ("nheads",) if D.ndim == 1 else ("nheads", "headdim")
        ck.check_shape("D", D, d_dims, (heads,) if D.ndim == 1 else (heads, headdim))
        D = ck.contiguous("D", D)
    state = ("batch", "nheads", "headdim", "dstate")
    args = dict(
        x=ck.contiguous("x", x),
        dt=ck.float_input("dt", dt, dtype, "x", ("batch", "L", "nheads"), x.shape[:3]),
        a=ck.float_input("A", A, dtype, "x", ("nheads",), (heads,)),
        b=ck.contiguous("B", B),
        c=ck.float_input("C", C, dtype, "x", bc, B.shape),
        d=D,
        z=ck.optional_float_input("z", z, dtype, "x", seq, x.shape),
        dt_bias=ck.optional_float_input("dt_bias", dt_bias, dtype, "x", ("nheads",), (heads,)),
        initial_states=ck.optional_float_input(
            "initial_states", initial_states, dtype, "x", state, (batch, heads, headdim, dstate)
        ),
    )
    return args, dtype


def ssd_scan(
    x: np.ndarray,
    dt: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    chunk_size: int = 256,
    D: Optional[np.ndarray] = None,
    z: Optional[np.ndarray] = None,
    dt_bias: Optional[np.ndarray] = None,
    initial_states: Optional[np.ndarray] = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    return_final_states: bool = False,
) -> Union[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The Mamba-2 SSD scan, ``mamba_ssm``'s ``mamba_chunk_scan_combined`` on NumPy arrays.

    Shapes: ``x``, ``z``: (batch, L, nheads, headdim); ``dt``: (batch, L, nheads); ``A``,
    ``dt_bias``: (nheads,); ``B``, ``C``: (batch, L, ngroups, dstate) with ngroups dividing
    nheads (head h reads group ``h // (nheads // ngroups)``); ``D``: (nheads,) or
    (nheads, headdim); ``initial_states`` and the returned final states:
    (batch, nheads, headdim, dstate).

    For each head, with the state S (headdim x dstate), S_{-1} = initial_states (zeros by
    default)::

        dt'_t = clamp(softplus(dt_t + dt_bias), *dt_limit)   # softplus if dt_softplus
        S_t = exp(dt'_t A) S_{t-1} + dt'_t x_t B_t^T
        y_t = S_t C_t + D x_t;   out_t = y_t * silu(z_t)

    As in mamba_ssm's kernel, dt' is always clamped to ``dt_limit``: with the default
    (0, inf) a negative dt (possible without softplus) counts as 0. Mamba-2 is Mamba-1 with
    A and dt shared by the channels of a head: see :func:`selective_scan`.

    It runs the chunked SSD algorithm: per chunk, the intra-chunk part and the chunk's state
    as matrix products, a sequential pass over chunk states, and the state-to-output term,
    every decay being the exp of a difference of cumulative sums. The result does not depend
    on the chunk length beyond rounding, and L need not be a multiple of it. ``chunk_size`` is
    accepted for mamba_ssm compatibility as an upper bound: chunks of
    ``min(chunk_size, 32)`` steps are used, because on CPUs the intra-chunk work grows with
    the chunk length while matrix products are no cheaper than the recurrence (256, the GPU
    default, measured about 1.4x slower than 32 at mamba2-130m shapes).

    Returns ``out`` (batch, L, nheads, headdim), and ``(out, final_states)`` when
    ``return_final_states``. Two calls chained through the final state give the result of
    one call. Any strides are accepted (non-contiguous arrays are copied once); the GIL is
    released while the kernel runs.
    """
    chunk_size = min(ck.positive_int("chunk_size", chunk_size), SSD_MAX_CHUNK)
    return _ssd_call(
        x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus, dt_limit,
        return_final_states, sequential=False,
    )  # fmt: skip


mamba_chunk_scan_combined = ssd_scan
"""Alias of :func:`ssd_scan` under ``mamba_ssm``'s name."""


def ssd_scan_sequential(
    x: np.ndarray,
    dt: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    D: Optional[np.ndarray] = None,
    z: Optional[np.ndarray] = None,
    dt_bias: Optional[np.ndarray] = None,
    initial_states: Optional[np.ndarray] = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    return_final_states: bool = False,
) -> Union[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """The SSD recurrence of :func:`ssd_scan` computed one step at a time (same arguments
    without ``chunk_size``, same results up to rounding). It is the oracle of the chunked
    kernel and its baseline in the benchmarks; each (batch, head) runs on one thread, with
    the state kept as (dstate, headdim) so that the update vectorises over channels.
    """
    return _ssd_call(
        x, dt, A, B, C, 1, D, z, dt_bias, initial_states, dt_softplus, dt_limit,
        return_final_states, sequential=True,
    )  # fmt: skip


def _ssd_call(
    x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus, dt_limit,
    return_final_states, sequential,
):  # fmt: skip
    lo, hi = _dt_limit(dt_limit)
    args, dtype = _ssd_args(x, dt, A, B, C, D, z, dt_bias, initial_states)
    out, final_states = _SSD[dtype](
        **args,
        chunk_size=chunk_size,
        dt_softplus=bool(dt_softplus),
        dt_min=lo,
        dt_max=hi,
        sequential=sequential,
    )
    return (out, final_states) if return_final_states else out


def _silu_flag(activation: Any) -> bool:
    """causal-conv1d's ``activation``: None, "silu" or "swish" (the same function)."""
    if activation is None:
        return False
    if activation in ("silu", "swish"):
        return True
    raise ValueError(f"activation: expected None, 'silu' or 'swish', got {activation!r}")


def _conv_weight(weight: Any, dtype: np.dtype, dim: int) -> np.ndarray:
    weight = ck.as_array("weight", weight)
    ck.same_dtype("weight", weight, dtype, "x")
    ck.check_ndim("weight", weight, [("dim", "width")])
    ck.check_shape("weight", weight, ("dim", "width"), (dim, weight.shape[1]))
    if weight.shape[1] < 1:
        raise ValueError(f"weight: expected width >= 1, got shape {weight.shape}")
    return ck.contiguous("weight", weight)


def causal_conv1d(
    x: np.ndarray,
    weight: np.ndarray,
    bias: Optional[np.ndarray] = None,
    activation: Optional[str] = None,
    *,
    initial_states: Optional[np.ndarray] = None,
    return_final_states: bool = False,
) -> Union[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Causal depthwise conv1d, ``causal_conv1d_fn`` of Dao-AILab's causal-conv1d.

    Shapes: ``x``: (batch, dim, L); ``weight``: (dim, width), any width >= 1; ``bias``:
    (dim,); ``initial_states`` and the returned final states: (batch, dim, width - 1).
    Each channel is filtered on its own (``w[width - 1]`` multiplies the current input,
    as F.conv1d)::

        out[t] = bias + sum_k weight[:, k] * x[t - width + 1 + k]
        out = silu(out)   # if activation is "silu" or "swish"

    where inputs before the sequence are ``initial_states`` (zeros by default). The final
    states are the last width - 1 inputs of ``[initial_states, x]`` (so they include
    initial-state values when L < width - 1). Returns ``out`` (batch, dim, L), and
    ``(out, final_states)`` when ``return_final_states``. A channel-last ``x`` (a (batch, dim,
    L) view of a C-contiguous (batch, L, dim) array, as causal-conv1d accepts it) is read in
    place and ``out`` is then channel-last too (a transposed view); other strides are copied
    once.
    """
    x = ck.as_array("x", x)
    dtype = ck.float_dtype("x", x)
    ck.check_ndim("x", x, [("batch", "dim", "L")])
    batch, dim, _ = x.shape
    silu = _silu_flag(activation)
    weight = _conv_weight(weight, dtype, dim)
    context = weight.shape[1] - 1
    channels_last = _is_channels_last(x)
    out, final_states = _CONV[dtype](
        x.transpose(0, 2, 1) if channels_last else ck.contiguous("x", x),
        weight,
        ck.optional_float_input("bias", bias, dtype, "x", ("dim",), (dim,)),
        silu,
        ck.optional_float_input(
            "initial_states",
            initial_states,
            dtype,
            "x",
            ("batch", "dim", "width - 1"),
            (batch, dim, context),
        ),
        channels_last,
    )
    if channels_last:
        out = out.transpose(0, 2, 1)
    return (out, final_states) if return_final_states else out


def _is_channels_last(x: np.ndarray) -> bool:
    """Whether x (batch, dim, L) is the transposed view of a C-contiguous (batch, L, dim)."""
    return x.shape[1] > 1 and x.shape[2] > 1 and x.transpose(0, 2, 1).flags.c_contiguous


causal_conv1d_fn = causal_conv1d
"""Alias of :func:`causal_conv1d` under causal-conv1d's name."""


def causal_conv1d_update(
    x: np.ndarray,
    conv_state: np.ndarray,
    weight: np.ndarray,
    bias: Optional[np.ndarray] = None,
    activation: Optional[str] = None,
) -> np.ndarray:
    """Decode step of :func:`causal_conv1d`: updates ``conv_state`` in place, returns ``out``.

    Shapes: ``x``: (batch, dim) for one token or (batch, dim, L); ``conv_state``:
    (batch, dim, S) with S >= width - 1, the S most recent inputs; ``weight``: (dim, width);
    ``bias``: (dim,). With ``joined = [conv_state, x]`` along time::

        out[t] = bias + sum_k weight[:, k] * joined[S + t - width + 1 + k]   (then silu)
        conv_state = joined[-S:]

    ``out`` has the shape of ``x``. ``conv_state`` must be a writable, C-contiguous ndarray of
    x's dtype. L calls with one token each equal one call of :func:`causal_conv1d` over the L
    tokens with ``initial_states = conv_state[..., -(width - 1):]``.
    """
    x = ck.as_array("x", x)
    dtype = ck.float_dtype("x", x)
    ck.check_ndim("x", x, [("batch", "dim"), ("batch", "dim", "L")])
    one_token = x.ndim == 2
    x3 = x[:, :, None] if one_token else x
    batch, dim, _ = x3.shape
    silu = _silu_flag(activation)
    weight = _conv_weight(weight, dtype, dim)
    if not isinstance(conv_state, np.ndarray):
        raise TypeError(
            "conv_state: expected a numpy.ndarray updated in place, "
            f"got {type(conv_state).__name__}"
        )
    ck.check_ndim("conv_state", conv_state, [("batch", "dim", "state_len")])
    state_len = conv_state.shape[2]
    dims = ("batch", "dim", "state_len")
    ck.writable_state("conv_state", conv_state, dtype, "x", dims, (batch, dim, state_len))
    if state_len < weight.shape[1] - 1:
        raise ValueError(
            f"conv_state: expected state_len >= width - 1 = {weight.shape[1] - 1}, "
            f"got shape {conv_state.shape}"
        )
    out = _CONV_UPDATE[dtype](
        ck.contiguous("x", x3),
        conv_state,
        weight,
        ck.optional_float_input("bias", bias, dtype, "x", ("dim",), (dim,)),
        silu,
    )
    return out[:, :, 0] if one_token else out

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

_SCAN = {
    np.dtype(np.float32): _native.selective_scan_f32,
    np.dtype(np.float64): _native.selective_scan_f64,
}
_UPDATE = {
    np.dtype(np.float32): _native.selective_state_update_f32,
    np.dtype(np.float64): _native.selective_state_update_f64,
}


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

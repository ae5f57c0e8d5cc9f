"""NumPy references of the Mamba kernels (computed in the inputs' dtype)."""

from __future__ import annotations

import numpy as np


def softplus(x: np.ndarray) -> np.ndarray:
    """softplus with torch's threshold: x where x > 20, else log1p(exp(x))."""
    with np.errstate(over="ignore"):
        return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x)."""
    with np.errstate(over="ignore"):
        return x / (1 + np.exp(-x))


def _expand_bc(M: np.ndarray, batch: int, dim: int, length: int) -> np.ndarray:
    """B or C as (batch, dim, dstate, L) views: fixed (dim, dstate), (batch, dstate, L) or
    grouped (batch, groups, dstate, L), where channel d reads group d // (dim // groups)."""
    if M.ndim == 2:
        return np.broadcast_to(M[None, :, :, None], (batch, dim, M.shape[1], length))
    if M.ndim == 3:
        M = M[:, None]
    return np.repeat(M, dim // M.shape[1], axis=1)


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    return_last_state=False,
    *,
    initial_state=None,
):
    """Mamba-1 selective scan, one step at a time::

        delta'_t = softplus(delta_t + delta_bias)    (if delta_softplus)
        h_t = exp(delta'_t A) * h_{t-1} + delta'_t B_t u_t
        y_t = C_t . h_t + D u_t;   out_t = y_t * silu(z_t)

    u, delta, z: (batch, dim, L); A: (dim, dstate); B, C: (dim, dstate) | (batch, dstate, L) |
    (batch, groups, dstate, L); D, delta_bias: (dim,); states (batch, dim, dstate).
    """
    batch, dim, length = u.shape
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = softplus(delta)
    Bx = _expand_bc(B, batch, dim, length)
    Cx = _expand_bc(C, batch, dim, length)
    h = (
        np.zeros((batch, dim, A.shape[1]), u.dtype)
        if initial_state is None
        else initial_state.copy()
    )
    y = np.empty_like(u)
    for t in range(length):
        dt = delta[:, :, t, None]
        h = np.exp(dt * A) * h + dt * Bx[..., t] * u[:, :, t, None]
        y[:, :, t] = np.einsum("bdn,bdn->bd", Cx[..., t], h)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * silu(z)
    return (y, h) if return_last_state else y


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False):
    """One decode step, updating ``state`` in place::

        dt' = softplus(dt + dt_bias);  state = exp(dt' A) state + dt' B x
        out = C . state + D x;  out *= silu(z)

    Mamba-1 form: state (batch, dim, dstate), x, dt, z (batch, dim), A (dim, dstate),
    B, C (batch, dstate) | (batch, groups, dstate), D, dt_bias (dim,).
    Multi-head form: state (batch, h, p, dstate), x, z (batch, h, p), dt (batch, h) |
    (batch, h, p), A (h,) | (h, p, dstate), B, C (batch, groups, dstate), D, dt_bias (h,) | (h, p).
    """
    if state.ndim == 3:  # Mamba-1 is the multi-head form with headdim 1
        out = selective_state_update(
            state[:, :, None],
            x[:, :, None],
            dt,
            A[:, None],
            B if B.ndim == 3 else B[:, None],
            C if C.ndim == 3 else C[:, None],
            D,
            None if z is None else z[:, :, None],
            dt_bias,
            dt_softplus,
        )
        return out[:, :, 0]
    batch, heads, headdim, dstate = state.shape
    if dt.ndim == 2:
        dt = dt[..., None]
    if dt_bias is not None:
        dt = dt + (dt_bias if dt_bias.ndim == 2 else dt_bias[:, None])
    if dt_softplus:
        dt = softplus(dt)
    A = A[:, None, None] if A.ndim == 1 else A
    Bh = np.repeat(B, heads // B.shape[1], axis=1)[:, :, None, :]
    Ch = np.repeat(C, heads // C.shape[1], axis=1)[:, :, None, :]
    state[...] = np.exp(dt[..., None] * A) * state + (dt * x)[..., None] * Bh
    out = np.einsum("bhpn,bhpn->bhp", state, np.broadcast_to(Ch, state.shape))
    if D is not None:
        out = out + (D if D.ndim == 2 else D[:, None]) * x
    if z is not None:
        out = out * silu(z)
    return out

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


# --- Mamba-2 SSD and the causal conv1d


def _ssd_dt(dt, dt_bias, dt_softplus, dt_limit):
    """dt' = clamp(softplus(dt + dt_bias), *dt_limit), as mamba_ssm's kernel (always clamps)."""
    if dt_bias is not None:
        dt = dt + dt_bias
    if dt_softplus:
        dt = softplus(dt)
    return np.clip(dt, dt_limit[0], dt_limit[1])


def _ssd_finish(y, x, D, z):
    """y + D x, gated by silu(z); D is (h,) or (h, p)."""
    if D is not None:
        y = y + (D[:, None] if D.ndim == 1 else D) * x
    if z is not None:
        y = y * silu(z)
    return y


def ssd_scan_sequential(
    x,
    dt,
    A,
    B,
    C,
    D=None,
    z=None,
    dt_bias=None,
    initial_states=None,
    dt_softplus=False,
    dt_limit=(0.0, np.inf),
    return_final_states=False,
):
    """Mamba-2 SSD recurrence, one step at a time::

        dt'_t = clamp(softplus(dt_t + dt_bias), *dt_limit)
        S_t = exp(dt'_t A) S_{t-1} + dt'_t x_t B_t^T;   y_t = S_t C_t + D x_t
        out_t = y_t * silu(z_t)

    x, z: (b, L, h, p); dt: (b, L, h); A, dt_bias: (h,); B, C: (b, L, g, n); D: (h,) | (h, p);
    states (b, h, p, n).
    """
    batch, length, heads, headdim = x.shape
    dstate = B.shape[-1]
    dt = _ssd_dt(dt, dt_bias, dt_softplus, dt_limit)
    Bh = np.repeat(B, heads // B.shape[2], axis=2)
    Ch = np.repeat(C, heads // C.shape[2], axis=2)
    S = (
        np.zeros((batch, heads, headdim, dstate), x.dtype)
        if initial_states is None
        else initial_states.copy()
    )
    y = np.empty_like(x)
    for t in range(length):
        decay = np.exp(dt[:, t] * A)[:, :, None, None]
        S = decay * S + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        y[:, t] = np.einsum("bhpn,bhn->bhp", S, Ch[:, t])
    y = _ssd_finish(y, x, D, z)
    return (y, S) if return_final_states else y


def ssd_scan_chunked(
    x,
    dt,
    A,
    B,
    C,
    chunk_size=256,
    D=None,
    z=None,
    dt_bias=None,
    initial_states=None,
    dt_softplus=False,
    dt_limit=(0.0, np.inf),
    return_final_states=False,
):
    """The same recurrence by the chunked SSD algorithm (mamba_ssm's ``ssd_minimal``, with
    groups, ragged L, D, z and states). With chunks of Q steps and ``cs`` the cumulative sum
    of dt' A inside each chunk::

        Y_diag = (C B^T * exp(cs_i - cs_j) * [j <= i]) (dt' x)        intra-chunk
        S_c    = sum_l exp(cs_last - cs_l) dt'_l x_l B_l^T           chunk states
        S_in(c + 1) = exp(cs_last(c)) S_in(c) + S_c                  pass over chunks
        Y_off  = exp(cs_i) S_in(c) C_i                               state to output

    L is padded with dt' = 0 steps (no decay, no input) up to a multiple of Q.
    """
    batch, length, heads, headdim = x.shape
    groups, dstate = B.shape[2], B.shape[3]
    Q = max(1, min(chunk_size, max(length, 1)))
    chunks = -(-length // Q)
    pad = chunks * Q - length
    dt = _ssd_dt(dt, dt_bias, dt_softplus, dt_limit)

    def chunked(a):  # (b, L, ...) -> (b, chunks, Q, ...), zero-padded
        a = np.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        return a.reshape(batch, chunks, Q, *a.shape[2:])

    # Per (batch, chunk, head): rows are the Q steps of the chunk; stacked matmuls use BLAS.
    X = chunked(x * dt[..., None]).transpose(0, 1, 3, 2, 4)  # dt' x: (b, c, h, Q, p)
    Bg = chunked(B).transpose(0, 1, 3, 2, 4)  # (b, c, g, Q, n)
    Cg = chunked(C).transpose(0, 1, 3, 2, 4)
    per_head = heads // groups
    cs = np.cumsum(chunked(dt * A), axis=2).transpose(0, 1, 3, 2)  # (b, c, h, Q)
    causal = np.tril(np.ones((Q, Q), dtype=bool))
    with np.errstate(over="ignore"):
        decay = np.exp(np.where(causal, cs[..., :, None] - cs[..., None, :], -np.inf))
    CB = np.repeat(Cg @ Bg.swapaxes(-1, -2), per_head, axis=2)  # (b, c, h, Q, Q), per group
    Y = (CB * decay) @ X  # intra-chunk
    Bh, Ch = np.repeat(Bg, per_head, axis=2), np.repeat(Cg, per_head, axis=2)
    to_end = np.exp(cs[..., -1:] - cs)  # (b, c, h, Q)
    S_chunk = (X * to_end[..., None]).swapaxes(-1, -2) @ Bh  # (b, c, h, p, n)
    S = (
        np.zeros((batch, heads, headdim, dstate), x.dtype)
        if initial_states is None
        else initial_states
    )
    S_in = np.empty_like(S_chunk)
    for c in range(chunks):
        S_in[:, c] = S
        S = np.exp(cs[:, c, :, -1])[..., None, None] * S + S_chunk[:, c]
    Y = Y + (Ch * np.exp(cs)[..., None]) @ S_in.swapaxes(-1, -2)  # state to output
    Y = Y.transpose(0, 1, 3, 2, 4).reshape(batch, chunks * Q, heads, headdim)[:, :length]
    y = _ssd_finish(Y, x, D, z)
    return (y, S) if return_final_states else y


def causal_conv1d(
    x, weight, bias=None, activation=None, initial_states=None, return_final_states=False
):
    """Causal depthwise conv1d: with x' = [initial_states (zeros by default), x] along time,
    ``out[t] = bias + sum_k weight[:, k] x'[t + k]`` (then silu if activation is "silu" or
    "swish"); the final states are the last width - 1 columns of x'.
    x: (batch, dim, L); weight: (dim, width); states (batch, dim, width - 1).
    """
    batch, dim, length = x.shape
    width = weight.shape[1]
    head = np.zeros((batch, dim, width - 1), x.dtype) if initial_states is None else initial_states
    joined = np.concatenate([head, x], axis=-1)
    out = sum(weight[:, k, None] * joined[..., k : k + length] for k in range(width))
    if bias is not None:
        out = out + bias[:, None]
    if activation in ("silu", "swish"):
        out = silu(out)
    final_states = joined[..., joined.shape[-1] - (width - 1) :]
    return (out, final_states.copy()) if return_final_states else out


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    """One decode call, updating ``conv_state`` (batch, dim, S >= width - 1) in place: with
    joined = [conv_state, x], out[t] = bias + sum_k weight[:, k] joined[S + t - width + 1 + k]
    (then silu) and conv_state = joined[-S:]. x is (batch, dim) or (batch, dim, L).
    """
    one_token = x.ndim == 2
    x3 = x[:, :, None] if one_token else x
    length, state_len, width = x3.shape[-1], conv_state.shape[-1], weight.shape[1]
    joined = np.concatenate([conv_state, x3], axis=-1)
    start = state_len - (width - 1)
    out = sum(
        weight[:, k, None] * joined[..., start + k : start + k + length] for k in range(width)
    )
    if bias is not None:
        out = out + bias[:, None]
    if activation in ("silu", "swish"):
        out = silu(out)
    conv_state[...] = joined[..., length:]
    return out[:, :, 0] if one_token else out

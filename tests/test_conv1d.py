"""Causal depthwise conv1d: seqkern.mamba.causal_conv1d(_update) against the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close
from hypothesis import given
from hypothesis import strategies as st

from seqkern import mamba
from seqkern.reference import mamba as ref

DTYPES = [np.float32, np.float64]


def conv_inputs(rng, batch, dim, length, width, dtype=np.float64):
    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    return (
        normal(batch, dim, length),
        normal(dim, width) / np.sqrt(width).astype(dtype),
        normal(dim),
        normal(batch, dim, width - 1),
    )


def f64(a):
    return a.astype(np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [1, 2, 3, 4, 9])
@pytest.mark.parametrize("length_of", ["1", "width-1", "8", "257"])
def test_conv_matches_reference(rng, dtype, width, length_of, each_simd_path):
    length = {"1": 1, "width-1": width - 1, "8": 8, "257": 257}[length_of]
    x, w, bias, h0 = conv_inputs(rng, 2, 5, length, width, dtype)
    for activation in (None, "silu"):
        for initial in (None, h0):
            want, want_state = ref.causal_conv1d(
                f64(x),
                f64(w),
                f64(bias),
                activation,
                None if initial is None else f64(initial),
                return_final_states=True,
            )
            got, state = mamba.causal_conv1d(
                x,
                w,
                bias,
                activation,
                initial_states=initial,
                return_final_states=True,
            )
            assert_close(got, want, dtype)
            # The final state is made of inputs: copied, never computed.
            np.testing.assert_array_equal(state, want_state.astype(dtype))
    assert_close(mamba.causal_conv1d_fn(x, w), ref.causal_conv1d(f64(x), f64(w)), dtype)


def test_final_states_of_short_sequences_keep_the_initial_state(rng):
    """L < width - 1: the state is the last width - 1 inputs of [initial_states, x]."""
    x, w, _, h0 = conv_inputs(rng, 1, 3, 2, 6)
    _, state = mamba.causal_conv1d(x, w, initial_states=h0, return_final_states=True)
    np.testing.assert_array_equal(state, np.concatenate([h0[..., 2:], x], axis=-1))
    _, state = mamba.causal_conv1d(x, w, return_final_states=True)
    np.testing.assert_array_equal(state[..., :3], np.zeros((1, 3, 3)))
    np.testing.assert_array_equal(state[..., 3:], x)
    _, state = mamba.causal_conv1d(x[..., :0], w, initial_states=h0, return_final_states=True)
    np.testing.assert_array_equal(state, h0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_calls_equal_one(rng, dtype):
    x, w, bias, h0 = conv_inputs(rng, 2, 7, 40, 4, dtype)
    full, last = mamba.causal_conv1d(
        x, w, bias, "silu", initial_states=h0, return_final_states=True
    )
    for split in (1, 2, 17):
        a, mid = mamba.causal_conv1d(
            x[..., :split], w, bias, "silu", initial_states=h0, return_final_states=True
        )
        b, end = mamba.causal_conv1d(
            x[..., split:], w, bias, "silu", initial_states=mid, return_final_states=True
        )
        np.testing.assert_array_equal(np.concatenate([a, b], axis=-1), full)
        np.testing.assert_array_equal(end, last)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width, state_len", [(4, 3), (4, 6), (2, 1), (9, 8), (1, 0), (1, 2)])
def test_token_by_token_updates_equal_the_full_convolution(rng, dtype, width, state_len):
    x, w, bias, _ = conv_inputs(rng, 2, 6, 11, width, dtype)
    conv_state = rng.standard_normal((2, 6, state_len)).astype(dtype)
    initial = conv_state[..., state_len - (width - 1) :].copy()
    joined = np.concatenate([conv_state, x], axis=-1)
    want = mamba.causal_conv1d(x, w, bias, "silu", initial_states=initial)
    outs = [mamba.causal_conv1d_update(x[:, :, t], conv_state, w, bias, "silu") for t in range(11)]
    assert outs[0].shape == (2, 6)
    assert_close(np.stack(outs, axis=-1), f64(want), dtype)
    np.testing.assert_array_equal(conv_state, joined[..., 11:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [5, 37])
def test_update_with_several_tokens(rng, dtype, dim, each_simd_path):
    x, w, bias, _ = conv_inputs(rng, 3, dim, 4, 3, dtype)
    conv_state = rng.standard_normal((3, dim, 5)).astype(dtype)
    state_ref = f64(conv_state)
    got = mamba.causal_conv1d_update(x, conv_state, w, bias, None)
    want = ref.causal_conv1d_update(f64(x), state_ref, f64(w), f64(bias), None)
    assert_close(got, want, dtype)
    np.testing.assert_array_equal(f64(conv_state), state_ref)


def test_update_split_into_several_tasks(rng, threads):
    """Enough rows for the decode step to run as several tasks, on 1 and 2 threads."""
    x, w, bias, _ = conv_inputs(rng, 2, 1500, 1, 4, np.float32)
    start = rng.standard_normal((2, 1500, 3)).astype(np.float32)
    want = ref.causal_conv1d_update(f64(x), f64(start), f64(w), f64(bias), "silu")
    results = []
    for n in (1, 2):
        threads(n)
        state = start.copy()
        results.append((mamba.causal_conv1d_update(x[..., 0], state, w, bias, "silu"), state))
        assert_close(results[-1][0], want[..., 0], np.float32)
        np.testing.assert_array_equal(state, np.concatenate([start[..., 1:], x], axis=-1))
    np.testing.assert_array_equal(results[0][0], results[1][0])


def test_many_channels_and_thread_count(rng, threads):
    x, w, bias, h0 = conv_inputs(rng, 3, 200, 300, 4, np.float32)
    results = []
    for n in (1, 2):
        threads(n)
        results.append(
            mamba.causal_conv1d(x, w, bias, "swish", initial_states=h0, return_final_states=True)
        )
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    want = ref.causal_conv1d(f64(x), f64(w), f64(bias), "silu", f64(h0))
    assert_close(results[0][0], want, np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "batch, dim, length, width",
    [(2, 16, 30, 4), (1, 37, 2, 4), (3, 5, 19, 1), (1, 300, 513, 4), (2, 9, 7, 9)],
)
def test_channel_last_input_is_read_in_place(rng, dtype, batch, dim, length, width, threads):
    x, w, bias, h0 = conv_inputs(rng, batch, dim, length, width, dtype)
    time_major = np.ascontiguousarray(x.transpose(0, 2, 1))
    channel_last = time_major.transpose(0, 2, 1)
    assert not channel_last.flags.c_contiguous
    results = []
    for n in (1, 2):
        threads(n)
        out, last = mamba.causal_conv1d(
            channel_last, w, bias, "silu", initial_states=h0, return_final_states=True
        )
        # The output keeps the input's layout (a transposed view of a (batch, L, dim) buffer).
        assert out.transpose(0, 2, 1).flags.c_contiguous and not out.flags.c_contiguous
        results.append((out, last))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    # The same arithmetic in the same order as the channel-major kernel: equal bit for bit.
    plain, plain_last = mamba.causal_conv1d(
        x, w, bias, "silu", initial_states=h0, return_final_states=True
    )
    np.testing.assert_array_equal(results[0][0], plain)
    np.testing.assert_array_equal(results[0][1], plain_last)
    want, want_last = ref.causal_conv1d(f64(x), f64(w), f64(bias), "silu", f64(h0), True)
    assert_close(results[0][0], want, dtype)
    np.testing.assert_array_equal(results[0][1], want_last.astype(dtype))


@given(
    batch=st.integers(1, 2),
    dim=st.integers(1, 70),
    length=st.integers(0, 40),
    width=st.integers(1, 10),
    seed=st.integers(0, 2**32 - 1),
)
def test_hypothesis_shapes(batch, dim, length, width, seed):
    x, w, bias, h0 = conv_inputs(np.random.default_rng(seed), batch, dim, length, width)
    got = mamba.causal_conv1d(x, w, bias, "silu", initial_states=h0, return_final_states=True)
    want = ref.causal_conv1d(x, w, bias, "silu", h0, return_final_states=True)
    assert_close(got[0], want[0], np.float64)
    np.testing.assert_array_equal(got[1], want[1])


# --- bad input


@pytest.mark.parametrize(
    "changes, error, pattern",
    [
        (dict(x=np.zeros((2, 3, 5), np.int32)), TypeError, r"x: expected dtype float32"),
        (dict(x=np.zeros((2, 15))), ValueError, r"x: expected \(batch, dim, L\)"),
        (dict(weight=np.zeros((3, 4), np.float32)), TypeError, r"weight: expected dtype float64"),
        (dict(weight=np.zeros((4, 4))), ValueError, r"weight: expected shape \(dim, width\)"),
        (dict(weight=np.zeros((3, 0))), ValueError, r"weight: expected width >= 1"),
        (dict(bias=np.zeros(4)), ValueError, r"bias: expected shape \(dim,\) = \(3,\)"),
        (dict(activation="relu"), ValueError, r"activation: expected None, 'silu' or 'swish'"),
        (dict(initial_states=np.zeros((2, 3, 4))), ValueError, r"initial_states: expected shape"),
    ],
)
def test_bad_conv_inputs(changes, error, pattern):
    args = dict(
        x=np.zeros((2, 3, 5)),
        weight=np.zeros((3, 4)),
        bias=None,
        activation=None,
        initial_states=None,
    )
    args.update(changes)
    with pytest.raises(error, match=pattern):
        mamba.causal_conv1d(
            args["x"],
            args["weight"],
            args["bias"],
            args["activation"],
            initial_states=args["initial_states"],
        )


def test_bad_update_inputs():
    x, w = np.zeros((2, 3)), np.zeros((3, 4))
    with pytest.raises(TypeError, match=r"conv_state: expected a numpy.ndarray"):
        mamba.causal_conv1d_update(x, [[[0.0] * 3] * 3] * 2, w)
    with pytest.raises(TypeError, match=r"conv_state: expected dtype float64"):
        mamba.causal_conv1d_update(x, np.zeros((2, 3, 3), np.float32), w)
    read_only = np.zeros((2, 3, 3))
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match=r"conv_state: the array is read-only"):
        mamba.causal_conv1d_update(x, read_only, w)
    strided = np.zeros((2, 3, 6))[..., ::2]
    with pytest.raises(ValueError, match=r"conv_state: expected a C-contiguous array"):
        mamba.causal_conv1d_update(x, strided, w)
    with pytest.raises(ValueError, match=r"conv_state: expected state_len >= width - 1 = 3"):
        mamba.causal_conv1d_update(x, np.zeros((2, 3, 2)), w)
    with pytest.raises(ValueError, match=r"conv_state: expected shape \(batch, dim, state_len\)"):
        mamba.causal_conv1d_update(x, np.zeros((2, 4, 3)), w)
    with pytest.raises(ValueError, match=r"conv_state: expected \(batch, dim, state_len\)"):
        mamba.causal_conv1d_update(x, np.zeros((2, 3)), w)
    with pytest.raises(ValueError, match=r"x: expected \(batch, dim\) or \(batch, dim, L\)"):
        mamba.causal_conv1d_update(np.zeros(3), np.zeros((2, 3, 3)), w)
    with pytest.raises(ValueError, match=r"activation"):
        mamba.causal_conv1d_update(x, np.zeros((2, 3, 3)), w, activation="gelu")

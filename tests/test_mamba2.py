"""Mamba-2 SSD scan: seqkern.mamba.ssd_scan against its NumPy references and Mamba-1."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SIMD_PATHS, assert_close
from hypothesis import given
from hypothesis import strategies as st

import seqkern
from seqkern import _native, mamba
from seqkern.reference import mamba as ref

DTYPES = [np.float32, np.float64]


def ssd_inputs(rng, batch=2, length=37, heads=4, headdim=5, dstate=6, groups=2, d_per_dim=False):
    """float64 inputs at Mamba-2 scales: A = -exp(U[-1, 1]), dt' = softplus(N(-2, 1) + bias)
    (about 0.1, the scale of trained models), unit-variance x, B, C, z and states."""

    def normal(*shape, scale=1.0, shift=0.0):
        return scale * rng.standard_normal(shape) + shift

    return dict(
        x=normal(batch, length, heads, headdim),
        dt=normal(batch, length, heads, shift=-2.0),
        A=-np.exp(rng.uniform(-1.0, 1.0, heads)),
        B=normal(batch, length, groups, dstate),
        C=normal(batch, length, groups, dstate),
        D=normal(heads, headdim) if d_per_dim else normal(heads),
        z=normal(batch, length, heads, headdim),
        dt_bias=normal(heads, scale=0.5),
        initial_states=normal(batch, heads, headdim, dstate),
    )


def cast(args: dict, dtype) -> dict:
    return {k: (v.astype(dtype) if isinstance(v, np.ndarray) else v) for k, v in args.items()}


def expected(args: dict, dtype, **options):
    """The float64 sequential reference on the inputs rounded to ``dtype``."""
    rounded = cast(cast(args, dtype), np.float64)
    return ref.ssd_scan_sequential(**rounded, return_final_states=True, **options)


SHAPES = [
    # batch, L, heads, headdim, dstate, groups
    (1, 1, 1, 1, 1, 1),
    (2, 37, 4, 5, 6, 2),
    (1, 100, 3, 17, 9, 3),
    (3, 19, 8, 3, 16, 1),
    (1, 70, 2, 70, 5, 1),  # few heads: channels split into blocks of 32, 32, 6
    (2, 33, 6, 64, 8, 1),  # head blocks of 4 and 2 heads (256 channels at most)
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_ssd_matches_the_sequential_reference(rng, dtype, shape, each_simd_path):
    batch, length, heads, headdim, dstate, groups = shape
    args = ssd_inputs(rng, batch, length, heads, headdim, dstate, groups, d_per_dim=True)
    want_y, want_state = expected(args, dtype, dt_softplus=True)
    for chunk_size in (1, 16, 64):
        y, state = mamba.ssd_scan(
            **cast(args, dtype), chunk_size=chunk_size, dt_softplus=True, return_final_states=True
        )
        assert_close(y, want_y, dtype)
        assert_close(state, want_state, dtype)
    y, state = mamba.ssd_scan_sequential(
        **cast(args, dtype), dt_softplus=True, return_final_states=True
    )
    assert_close(y, want_y, dtype)
    assert_close(state, want_state, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("length", [1, 100, 257, 300])
def test_result_does_not_depend_on_the_chunk_size(rng, dtype, length):
    """chunk_size 1, 16, 64, 256 and longer than L, with L not a multiple of them."""
    args = cast(
        ssd_inputs(rng, batch=1, length=length, heads=3, headdim=8, dstate=16, groups=1), dtype
    )
    want_y, want_state = expected(args, dtype, dt_softplus=True)
    for chunk_size in (1, 16, 64, 256, length + 5):
        y, state = mamba.ssd_scan(
            **args, chunk_size=chunk_size, dt_softplus=True, return_final_states=True
        )
        assert_close(y, want_y, dtype)
        assert_close(state, want_state, dtype)


@pytest.mark.parametrize("length", [100, 300])
def test_long_chunks_of_the_kernel(rng, length):
    """ssd_scan caps chunks at SSD_MAX_CHUNK; the kernel itself takes any chunk length."""
    args = ssd_inputs(rng, batch=1, length=length, heads=3, headdim=8, dstate=16, groups=1)
    want_y, want_state = expected(args, np.float64, dt_softplus=True)
    for chunk_size in (mamba.SSD_MAX_CHUNK + 1, 256, length + 5):
        y, state = _native.ssd_scan_f64(
            args["x"],
            args["dt"],
            args["A"],
            args["B"],
            args["C"],
            chunk_size,
            args["D"],
            args["z"],
            args["dt_bias"],
            args["initial_states"],
            True,
            0.0,
            float("inf"),
            False,
        )
        assert_close(y, want_y, np.float64)
        assert_close(state, want_state, np.float64)


def test_numpy_references_agree(rng):
    """The chunked NumPy form (the benchmark baseline) equals the plain recurrence."""
    args = ssd_inputs(rng, length=45, d_per_dim=True)
    want = ref.ssd_scan_sequential(**args, dt_softplus=True, return_final_states=True)
    for chunk_size in (1, 8, 64):
        got = ref.ssd_scan_chunked(
            **args, chunk_size=chunk_size, dt_softplus=True, return_final_states=True
        )
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_ssd_equals_selective_scan_with_tied_parameters(rng, dtype):
    """Mamba-2 is Mamba-1 with A, dt and D shared by the p channels of a head."""
    batch, length, heads, headdim, dstate, groups = 2, 29, 6, 4, 8, 3
    args = cast(ssd_inputs(rng, batch, length, heads, headdim, dstate, groups), dtype)
    y, state = mamba.ssd_scan(**args, chunk_size=8, dt_softplus=True, return_final_states=True)
    dim = heads * headdim
    u = args["x"].reshape(batch, length, dim).transpose(0, 2, 1)
    delta = np.repeat(args["dt"], headdim, axis=2).transpose(0, 2, 1)
    y1, state1 = mamba.selective_scan(
        u,
        delta,
        np.repeat(args["A"], headdim)[:, None] * np.ones(dstate, dtype),
        args["B"].transpose(0, 2, 3, 1),  # (batch, groups, dstate, L)
        args["C"].transpose(0, 2, 3, 1),
        D=np.repeat(args["D"], headdim),
        z=args["z"].reshape(batch, length, dim).transpose(0, 2, 1),
        delta_bias=np.repeat(args["dt_bias"], headdim),
        delta_softplus=True,
        return_last_state=True,
        initial_state=args["initial_states"].reshape(batch, dim, dstate),
    )
    ref_y = y1.astype(np.float64).transpose(0, 2, 1).reshape(y.shape)
    assert_close(y, ref_y, dtype)
    assert_close(state, state1.astype(np.float64).reshape(state.shape), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_steps_equal_one_scan(rng, dtype):
    """L calls of the multi-head selective_state_update equal one ssd_scan."""
    batch, length, heads, headdim, dstate, groups = 2, 12, 4, 3, 5, 2
    args = cast(ssd_inputs(rng, batch, length, heads, headdim, dstate, groups), dtype)
    y, last = mamba.ssd_scan(**args, chunk_size=5, dt_softplus=True, return_final_states=True)
    state = args["initial_states"].copy()
    for t in range(length):
        y_t = mamba.selective_state_update(
            state,
            args["x"][:, t],
            args["dt"][:, t],
            args["A"],
            args["B"][:, t],
            args["C"][:, t],
            D=args["D"],
            z=args["z"][:, t],
            dt_bias=args["dt_bias"],
            dt_softplus=True,
        )
        assert_close(y_t, y[:, t].astype(np.float64), dtype)
    assert_close(state, last.astype(np.float64), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_two_calls_equal_one(rng, dtype):
    args = cast(ssd_inputs(rng, length=50), dtype)
    y, last = mamba.ssd_scan(**args, chunk_size=16, dt_softplus=True, return_final_states=True)
    split = 21
    first = {k: (v[:, :split] if k in ("x", "dt", "B", "C", "z") else v) for k, v in args.items()}
    second = {k: (v[:, split:] if k in ("x", "dt", "B", "C", "z") else v) for k, v in args.items()}
    y1, mid = mamba.ssd_scan(**first, chunk_size=16, dt_softplus=True, return_final_states=True)
    second["initial_states"] = mid
    y2, last2 = mamba.ssd_scan(**second, chunk_size=7, dt_softplus=True, return_final_states=True)
    assert_close(np.concatenate([y1, y2], axis=1), y.astype(np.float64), dtype)
    assert_close(last2, last.astype(np.float64), dtype)


def test_options_off_and_defaults(rng):
    """No D, z, bias, initial state or softplus; dt clamped to the default (0, inf)."""
    args = ssd_inputs(rng, length=33)
    plain = {k: args[k] for k in ("x", "dt", "A", "B", "C")}
    want = ref.ssd_scan_sequential(**plain)
    assert (args["dt"] < 0).any()  # the clamp at 0 matters here
    assert_close(mamba.ssd_scan(**plain, chunk_size=8), want, np.float64)
    y, state = mamba.mamba_chunk_scan_combined(**plain, return_final_states=True)
    assert_close(y, want, np.float64)
    assert state.shape == (2, 4, 5, 6) and state.dtype == np.float64


def test_dt_limit_clamps_after_bias_and_softplus(rng):
    args = ssd_inputs(rng, length=40)
    for limit in [(0.05, 0.2), (0.0, 0.08), (0.3, np.inf)]:
        want = ref.ssd_scan_sequential(**args, dt_softplus=True, dt_limit=limit)
        got = mamba.ssd_scan(**args, chunk_size=16, dt_softplus=True, dt_limit=limit)
        assert_close(got, want, np.float64)
    clamped = mamba.ssd_scan(**args, dt_softplus=True, dt_limit=(0.1, 0.1))
    fixed = dict(args, dt=np.full_like(args["dt"], 0.1), dt_bias=None)
    assert_close(clamped, ref.ssd_scan_sequential(**fixed), np.float64)


def test_empty_and_degenerate_shapes(rng):
    args = ssd_inputs(rng, batch=2, length=0, heads=2, headdim=3, dstate=4, groups=1)
    y, state = mamba.ssd_scan(**args, return_final_states=True)
    assert y.shape == (2, 0, 2, 3)
    np.testing.assert_array_equal(state, args["initial_states"])
    y, state = mamba.ssd_scan(**dict(args, initial_states=None), return_final_states=True)
    np.testing.assert_array_equal(state, np.zeros((2, 2, 3, 4)))
    # dstate 0: no state, out = (D x) * silu(z)
    args = ssd_inputs(rng, batch=1, length=5, heads=2, headdim=3, dstate=0, groups=1)
    y = mamba.ssd_scan(**args)
    assert_close(y, ref.ssd_scan_sequential(**args), np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_count_does_not_change_a_bit(rng, dtype, threads):
    args = cast(
        ssd_inputs(rng, batch=1, length=150, heads=3, headdim=40, dstate=16, groups=3), dtype
    )
    results = []
    for n in (1, 2):
        threads(n)
        results.append(
            mamba.ssd_scan(**args, chunk_size=32, dt_softplus=True, return_final_states=True)
        )
        results.append(mamba.ssd_scan_sequential(**args, return_final_states=True))
    for a, b in zip(results[:2], results[2:]):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_bad_input_stays_in_its_channel_and_later_steps(rng, dtype, bad):
    """A NaN or inf in x reaches only its own (batch, head, channel), from its step on: the
    masked zeros of the intra-chunk product never multiply it (0 * inf would be NaN)."""
    args = cast(ssd_inputs(rng, batch=2, length=40, heads=4, headdim=8, dstate=16), dtype)
    args["x"][0, 21, 1, 2] = bad
    for scan in (lambda **a: mamba.ssd_scan(**a, chunk_size=16), mamba.ssd_scan_sequential):
        y, state = scan(**args, dt_softplus=True, return_final_states=True)
        hit = ~np.isfinite(y)
        assert hit[0, 21:, 1, 2].all() if np.isnan(bad) else hit[0, 21, 1, 2]
        hit[0, 21:, 1, 2] = False
        assert not hit.any()
        state_hit = ~np.isfinite(state)
        state_hit[0, 1, 2] = False
        assert not state_hit.any()


def test_float32_stays_accurate_over_long_sequences(rng):
    """L = 16384 against the NumPy reference on the same (float32-rounded) inputs, over the
    whole length: float64 to 1e-10, float32 within its tolerance (the chunk-local cumulative
    sums keep the decays accurate however long the sequence)."""
    args = cast(ssd_inputs(rng, batch=1, length=16384, heads=4, headdim=8, dstate=16), np.float32)
    args64 = cast(args, np.float64)
    want_y, want_state = ref.ssd_scan_sequential(
        **args64, dt_softplus=True, return_final_states=True
    )
    for scan in (mamba.ssd_scan, mamba.ssd_scan_sequential):
        y, state = scan(**args64, dt_softplus=True, return_final_states=True)
        assert_close(y, want_y, np.float64)
        assert_close(state, want_state, np.float64)
        y, state = scan(**args, dt_softplus=True, return_final_states=True)
        assert_close(y, want_y, np.float32)
        assert_close(state, want_state, np.float32)


def test_scalar_and_simd_paths_agree(rng, simd_path):
    args = cast(ssd_inputs(rng, length=80, headdim=33, dstate=20), np.float32)
    outs = []
    for path in SIMD_PATHS:
        simd_path(path)
        outs.append(mamba.ssd_scan(**args, chunk_size=32, dt_softplus=True))
    for other in outs[1:]:
        assert_close(outs[0], other.astype(np.float64), np.float32)


def test_non_contiguous_inputs(rng):
    args = ssd_inputs(rng, length=20)
    want = mamba.ssd_scan(**args, chunk_size=8)
    strided = dict(args)
    strided["x"] = np.asfortranarray(args["x"])
    strided["B"] = np.concatenate([args["B"], args["B"]], axis=3)[..., ::2]
    strided["B"][...] = args["B"]
    strided["dt"] = args["dt"].T.copy().T
    assert not strided["x"].flags.c_contiguous and not strided["B"].flags.c_contiguous
    np.testing.assert_array_equal(mamba.ssd_scan(**strided, chunk_size=8), want)


@given(
    batch=st.integers(1, 2),
    length=st.integers(0, 40),
    heads_per_group=st.integers(1, 3),
    groups=st.integers(1, 2),
    headdim=st.integers(1, 9),
    dstate=st.integers(1, 9),
    chunk_size=st.integers(1, 50),
    seed=st.integers(0, 2**32 - 1),
)
def test_hypothesis_shapes(
    batch, length, heads_per_group, groups, headdim, dstate, chunk_size, seed
):
    rng = np.random.default_rng(seed)
    args = ssd_inputs(rng, batch, length, heads_per_group * groups, headdim, dstate, groups)
    want_y, want_state = ref.ssd_scan_sequential(**args, dt_softplus=True, return_final_states=True)
    y, state = mamba.ssd_scan(
        **args, chunk_size=chunk_size, dt_softplus=True, return_final_states=True
    )
    assert_close(y, want_y, np.float64)
    assert_close(state, want_state, np.float64)


# --- bad input


def bad_call(**changes):
    args = ssd_inputs(np.random.default_rng(0), batch=2, length=6, heads=4, headdim=3, dstate=5)
    args.update(changes)
    chunk_size = args.pop("chunk_size", 4)
    dt_limit = args.pop("dt_limit", (0.0, float("inf")))
    return mamba.ssd_scan(**args, chunk_size=chunk_size, dt_limit=dt_limit)


@pytest.mark.parametrize(
    "changes, error, pattern",
    [
        (dict(x=np.zeros((2, 6, 4, 3), np.int64)), TypeError, r"x: expected dtype float32"),
        (dict(dt=np.zeros((2, 6, 4), np.float32)), TypeError, r"dt: expected dtype float64"),
        (dict(C=np.zeros((2, 6, 2, 5), np.float32)), TypeError, r"C: expected dtype float64"),
        (dict(x=np.zeros((2, 6, 12))), ValueError, r"x: expected \(batch, L, nheads, headdim\)"),
        (dict(dt=np.zeros((2, 6, 5))), ValueError, r"dt: expected shape .* = \(2, 6, 4\)"),
        (dict(A=np.zeros((4, 5))), ValueError, r"A: expected shape \(nheads,\) = \(4,\)"),
        (dict(B=np.zeros((2, 6, 3, 5))), ValueError, r"B: 3 groups must divide nheads = 4"),
        (dict(B=np.zeros((2, 7, 2, 5))), ValueError, r"B: expected shape"),
        (dict(C=np.zeros((2, 6, 2, 4))), ValueError, r"C: expected shape .* = \(2, 6, 2, 5\)"),
        (dict(D=np.zeros(3)), ValueError, r"D: expected shape \(nheads,\) = \(4,\)"),
        (dict(D=np.zeros((4, 2))), ValueError, r"D: expected shape \(nheads, headdim\)"),
        (dict(z=np.zeros((2, 6, 4, 2))), ValueError, r"z: expected shape"),
        (dict(dt_bias=np.zeros(2)), ValueError, r"dt_bias: expected shape"),
        (dict(initial_states=np.zeros((2, 4, 3, 4))), ValueError, r"initial_states: expected"),
        (dict(chunk_size=0), ValueError, r"chunk_size: expected an int >= 1, got 0"),
        (dict(chunk_size=2.5), TypeError, r"chunk_size: expected an int"),
        (dict(chunk_size=True), TypeError, r"chunk_size: expected an int"),
        (dict(dt_limit=(1.0, 0.5)), ValueError, r"dt_limit: expected min <= max"),
        (dict(dt_limit=(0.0, float("nan"))), ValueError, r"dt_limit: expected min <= max"),
        (dict(dt_limit=0.5), TypeError, r"dt_limit: expected a pair of numbers"),
        (dict(x="not an array"), TypeError, r"x: expected dtype float32 or float64"),
    ],
)
def test_bad_inputs_are_clear_errors(changes, error, pattern):
    with pytest.raises(error, match=pattern):
        bad_call(**changes)


def test_build_info_still_works():
    assert seqkern.build_info()["profile"] == "release"

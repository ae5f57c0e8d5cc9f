"""RWKV WKV kernels (wkv4, wkv5, wkv6, wkv7) against their NumPy references, plus the
properties a recurrent kernel must keep: state continuation, batch independence, thread and
SIMD-path independence, long-sequence stability and argument checking."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import SIMD_PATHS, TOL, assert_close, row_errors
from hypothesis import given
from hypothesis import strategies as st

from seqkern import rwkv
from seqkern.reference import rwkv as ref

DTYPES = [np.float32, np.float64]
LENGTHS = [0, 1, 2, 31, 64, 257]


def as64(*arrays):
    return tuple(None if a is None else np.asarray(a, np.float64) for a in arrays)


def cast(dtype, *arrays):
    return tuple(None if a is None else np.asarray(a, dtype) for a in arrays)


# ----------------------------------------------------------------------------- input makers


def wkv4_inputs(rng, batch, length, channels, state=False):
    """w = -exp(time_decay) from fast to slow decay, u = time_first, k and v ~ N(0, 1); the
    optional state is one reached by a real run (bb >= 1, finite pp)."""
    w = -np.exp(rng.uniform(-4.0, 2.0, channels))
    u = rng.uniform(-2.0, 2.0, channels)
    k = rng.standard_normal((batch, length, channels))
    v = rng.standard_normal((batch, length, channels))
    s = None
    if state:
        warm = rng.standard_normal((batch, 5, channels))
        _, s = ref.wkv4(w, u, warm, rng.standard_normal(warm.shape))
    return w, u, k, v, s


def bonus_inputs(rng, batch, length, heads, n, state=False):
    """r, k, v ~ N(0, 1); per-token log-decay w = -exp(x) with decays between 1e-4 and 0.98;
    u ~ N(0, 1); an optional random initial state."""
    shape = (batch, length, heads, n)
    r, k, v = (rng.standard_normal(shape) for _ in range(3))
    w = -np.exp(rng.uniform(-4.0, 2.2, shape))
    u = rng.standard_normal((heads, n))
    s = rng.standard_normal((batch, heads, n, n)) if state else None
    return r, k, v, w, u, s


def wkv7_inputs(rng, batch, length, heads, n, state=False):
    """RWKV-7's own parametrisation: decay exp(w) in (0.545, 1), a = -kk, b = kk * alpha with
    kk of unit norm per head and alpha in (0, 1)."""
    shape = (batch, length, heads, n)
    r, k, v, kk = (rng.standard_normal(shape) for _ in range(4))
    w = -np.exp(-0.5) / (1.0 + np.exp(-rng.standard_normal(shape)))
    kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
    alpha = rng.uniform(0.0, 1.0, shape)
    s = rng.standard_normal((batch, heads, n, n)) if state else None
    return r, w, k, v, -kk, kk * alpha, s


# ------------------------------------------------------------------------ kernel dispatchers
# Each entry: (make inputs, call seqkern, call the reference, shape key). The matrix kernels'
# "shape" is (B, T, H, N), wkv4's (B, T, C).


def _wkv5_inputs(rng, batch, length, heads, n, state=False):
    r, k, v, _, u, s = bonus_inputs(rng, batch, length, heads, n, state)
    return r, k, v, -np.exp(rng.uniform(-4.0, 2.2, (heads, n))), u, s


KERNELS = {
    "wkv4": (wkv4_inputs, rwkv.wkv4, ref.wkv4),
    "wkv5": (_wkv5_inputs, rwkv.wkv5, ref.wkv5),
    "wkv6": (bonus_inputs, rwkv.wkv6, ref.wkv6),
    "wkv7": (wkv7_inputs, rwkv.wkv7, ref.wkv7),
}


def make(name, rng, shape, dtype, state=False):
    inputs = KERNELS[name][0](rng, *shape, state=state)
    return cast(dtype, *inputs)


def run(name, args, state=None, **kwargs):
    """Calls kernel `name` with `args` (all inputs but the state) and `state`."""
    return KERNELS[name][1](*args, state, **kwargs)


def run_ref(name, args, state=None, **kwargs):
    return KERNELS[name][2](*as64(*args), None if state is None else as64(state)[0], **kwargs)


def assert_close_state(actual, expected, dtype):
    """assert_close for states that may hold wkv4's pp = -inf (the state of an empty run)."""
    infinite = np.isinf(expected)
    np.testing.assert_array_equal(actual[infinite], expected[infinite])
    assert_close(
        np.where(infinite, 0, actual).astype(dtype), np.where(infinite, 0, expected), dtype
    )


def shape_of(name, batch, length, heads, n):
    return (batch, length, heads * n) if name == "wkv4" else (batch, length, heads, n)


# ------------------------------------------------------------------------------ references


@pytest.mark.parametrize("name", ["wkv4", "wkv5", "wkv6", "wkv7"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("length", LENGTHS)
def test_matches_reference(name, dtype, length, rng, each_simd_path):
    # Several batch, head and head sizes per length: N = 1, odd, one lane block, more than one
    # tile (f32 tiles are 64 columns, f64 tiles 32), with and without an initial state.
    for batch, heads, n, with_state in [(1, 1, 1, False), (2, 3, 17, True), (1, 2, 80, True)]:
        shape = shape_of(name, batch, length, heads, n)
        *args, state = make(name, rng, shape, dtype, with_state)
        y, final = run(name, args, state)
        y_ref, final_ref = run_ref(name, args, state)
        assert_close(y, y_ref, dtype)
        assert_close_state(final, final_ref, dtype)


@pytest.mark.parametrize("name", ["wkv5", "wkv6", "wkv7"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_multiplies_r(name, dtype, rng):
    *args, state = make(name, rng, (2, 19, 2, 24), dtype, True)
    y, final = run(name, args, state, scale=0.125)
    y_ref, final_ref = run_ref(name, args, state, scale=0.125)
    assert_close(y, y_ref, dtype)
    assert_close(final, final_ref, dtype)
    y_one, final_one = run(name, args, state)
    assert_close(y, as64(y_one)[0] * 0.125, dtype)
    np.testing.assert_array_equal(final, final_one)  # scale only touches the output


@pytest.mark.parametrize("name", ["wkv4", "wkv5", "wkv6", "wkv7"])
def test_head_size_64_and_wide_heads(name, rng):
    # The model shape (N = 64, one full f32 tile) and N = 130 (three tiles, a 2-column tail).
    for n in (64, 130):
        *args, state = make(name, rng, shape_of(name, 1, 9, 2, n), np.float32, True)
        y, final = run(name, args, state)
        y_ref, final_ref = run_ref(name, args, state)
        assert_close(y, y_ref, np.float32)
        assert_close(final, final_ref, np.float32)


# ------------------------------------------------------------------------------------- wkv4


def _close64(actual, expected):
    # float64 through a few exps and one division per step: ~1e-15 relative per step.
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shift", [0.0, 100.0, 500.0])
def test_wkv4_stable_form_matches_explicit_sum(shift, rng, each_simd_path):
    w, u, k, v, _ = wkv4_inputs(rng, 2, 45, 37)
    explicit = ref.wkv4_explicit(w, u, k + shift, v)  # e^(k + 500) is fine in float64
    y64, _ = rwkv.wkv4(w, u, k + shift, v)
    _close64(y64, explicit)
    args32 = cast(np.float32, w, u, k + shift, v)
    y32, state32 = rwkv.wkv4(*args32)
    assert np.isfinite(y32).all() and np.isfinite(state32).all()
    # float32 holds k + shift, u + k and pp + w to ulp(|shift|), so each weight carries a
    # relative error of a few ulp(|shift|), and y, a weighted mean of v (|v| < 4 here), four
    # times that: 16 ulp(|shift| + 4) on top of float32's ~1e-6 for y itself.
    tol = 1e-5 + 16 * float(np.spacing(np.float32(shift + 4.0)))
    explicit32 = ref.wkv4_explicit(*as64(*args32))
    np.testing.assert_allclose(y32, explicit32, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_wkv4_shift_invariance(dtype, rng):
    w, u, k, v, _ = cast(dtype, *wkv4_inputs(rng, 1, 80, 19))
    y, state = rwkv.wkv4(w, u, k, v)
    for shift in (-30.0, 7.5, 100.0, 500.0):
        y_shifted, state_shifted = rwkv.wkv4(w, u, k + dtype(shift), v)
        # The shift moves pp by the same amount and cancels in every exponent difference,
        # up to the rounding of k + shift (|shift| eps relative to k).
        tol = 1e-10 if dtype == np.float64 else 2e-4
        np.testing.assert_allclose(y_shifted, y, rtol=tol, atol=tol)
        np.testing.assert_allclose(state_shifted[:, 2] - shift, state[:, 2], rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_wkv4_initial_pp_minus_infinity_or_huge(dtype, rng):
    w, u, k, v, _ = cast(dtype, *wkv4_inputs(rng, 2, 20, 11))
    y_none, state_none = rwkv.wkv4(w, u, k, v)
    for pp in (-np.inf, -1e38, -1e30):
        state = np.zeros((2, 3, 11), dtype)
        state[:, 2] = pp
        y, final = rwkv.wkv4(w, u, k, v, state)
        np.testing.assert_array_equal(y, y_none)
        np.testing.assert_array_equal(final, state_none)


def test_wkv4_one_step_by_hand():
    # From an empty state the first output is v itself, whatever u and k.
    w, u = np.array([-0.5, -2.0]), np.array([0.3, -1.0])
    k, v = np.array([[[1.0, -2.0]]]), np.array([[[3.0, 0.25]]])
    y, state = rwkv.wkv4(w, u, k, v)
    np.testing.assert_array_equal(y, v)
    # Then aa = v, bb = 1, pp = k (the max of -inf + w and k).
    np.testing.assert_array_equal(state, [[[3.0, 0.25], [1.0, 1.0], [1.0, -2.0]]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_wkv4_extreme_decay_runs_the_two_exp_form(dtype, rng, each_simd_path):
    # |u + w| beyond the one-exp form's bound (60 in float32, 600 in float64) sends a 64-channel
    # block to the plain two-exp form; 150 channels make three blocks, the middle one extreme.
    # Both forms must match the reference and carry state across calls bit for bit.
    w, u, k, v, state = wkv4_inputs(rng, 2, 40, 150, state=True)
    w[64:128] = -np.exp(rng.uniform(6.6, 7.0, 64))  # time_decay ~ 6.8: w ~ -900
    args = cast(dtype, w, u, k, v)
    state = cast(dtype, state)[0]
    y, final = rwkv.wkv4(*args, state)
    y_ref, final_ref = ref.wkv4(*as64(*args, state))
    assert_close(y, y_ref, dtype)
    assert_close_state(final, final_ref, dtype)
    y1, carried = rwkv.wkv4(*args[:2], args[2][:, :17], args[3][:, :17], state)
    y2, carried = rwkv.wkv4(*args[:2], args[2][:, 17:], args[3][:, 17:], carried)
    np.testing.assert_array_equal(np.concatenate([y1, y2], axis=1), y)
    np.testing.assert_array_equal(carried, final)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("row_bytes", [4096, 4000])
def test_wkv4_large_output_streams_the_same_bits(dtype, row_bytes, rng, each_simd_path):
    # y of 4 MiB or more is written with non-temporal stores (on AVX-512) wherever a block
    # starts on a cache line (every block when rows are a whole number of lines, some blocks
    # otherwise); the same sequence in two calls (each below 4 MiB) takes plain stores and
    # must give the same bits.
    length, channels = 560, row_bytes // np.dtype(dtype).itemsize
    w, u, k, v, _ = cast(dtype, *wkv4_inputs(rng, 2, length, channels))
    y, final = rwkv.wkv4(w, u, k, v)
    assert y.nbytes >= 4 << 20 and y.flags.c_contiguous and y.flags.writeable
    assert y.ctypes.data % 64 == 0  # the output starts on a cache line, for the streaming
    half = length // 2
    y1, carried = rwkv.wkv4(w, u, k[:, :half], v[:, :half])
    y2, carried = rwkv.wkv4(w, u, k[:, half:], v[:, half:], carried)
    np.testing.assert_array_equal(np.concatenate([y1, y2], axis=1), y)
    np.testing.assert_array_equal(carried, final)


# -------------------------------------------------------------------------- wkv5/6/7 by hand


@pytest.mark.parametrize("dtype", DTYPES)
def test_wkv6_one_step_by_hand(dtype, rng):
    # T = 1 from a zero state: S_1 = k^T v and y_1 = (r . (u k)) v.
    r, k, v, w, u, _ = cast(dtype, *bonus_inputs(rng, 2, 1, 3, 7))
    y, state = rwkv.wkv6(r, k, v, w, u)
    r64, k64, v64, u64 = as64(r, k, v, u)
    bonus = np.einsum("bhi,hi,bhi->bh", r64[:, 0], u64, k64[:, 0])
    assert_close(y[:, 0], bonus[..., None] * v64[:, 0], dtype)
    assert_close(state, k64[:, 0, :, :, None] * v64[:, 0, :, None, :], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_wkv5_is_wkv6_with_constant_decay(dtype, rng):
    r, k, v, w, u, s = cast(dtype, *bonus_inputs(rng, 2, 33, 3, 20, state=True))
    w5 = w[0, 0]
    y5, state5 = rwkv.wkv5(r, k, v, w5, u, s)
    y6, state6 = rwkv.wkv6(r, k, v, np.broadcast_to(w5, r.shape), u, s)
    np.testing.assert_array_equal(y5, y6)
    np.testing.assert_array_equal(state5, state6)


@pytest.mark.parametrize("n", [4, 16, 64])
def test_wkv7_delta_rule_writes_v_at_kk(n, rng):
    # Decay 1, a = -kk, b = kk and k = kk (unit): S' = (I - kk^T kk) S + kk^T v, so kk S' = v
    # whatever S was.
    batch, heads = 2, 3
    kk = rng.standard_normal((batch, 1, heads, n))
    kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
    v = rng.standard_normal((batch, 1, heads, n))
    state = rng.standard_normal((batch, heads, n, n))
    zeros = np.zeros_like(kk)
    y, new_state = rwkv.wkv7(kk, zeros, kk, v, -kk, kk, state)
    np.testing.assert_allclose(np.einsum("bhi,bhij->bhj", kk[:, 0], new_state), v[:, 0], atol=1e-12)
    np.testing.assert_allclose(y, v, atol=1e-12)  # r = kk reads the value just written


def test_wkv7_matches_rwkv_lm_orientation(rng):
    # RWKV-LM's CPU loop keeps S as (V, K): sa_i = sum_j a_j S_ij,
    # S_ij = S_ij d_j + v_i k_j + sa_i b_j, y_i = sum_j S_ij r_j. Ours is its transpose.
    r, w, k, v, a, b, state = wkv7_inputs(rng, 1, 12, 2, 8, state=True)
    S = state[0].swapaxes(-1, -2).copy()  # (H, V, K)
    y_lm = np.empty_like(r)
    for t in range(r.shape[1]):
        rt, dt, kt, vt, at, bt = (x[0, t] for x in (r, np.exp(w), k, v, a, b))
        sa = np.einsum("hij,hj->hi", S, at)
        S = S * dt[:, None, :] + vt[:, :, None] * kt[:, None, :] + sa[:, :, None] * bt[:, None, :]
        y_lm[0, t] = np.einsum("hij,hj->hi", S, rt)
    y, final = rwkv.wkv7(r, w, k, v, a, b, state)
    _close64(y, y_lm)
    _close64(final[0], S.swapaxes(-1, -2))


# ------------------------------------------------------------------------- state passing


def _split_points(rng, length):
    inner = np.sort(rng.integers(0, length + 1, size=3))
    return [0, *inner.tolist(), length]


@pytest.mark.parametrize("name", ["wkv4", "wkv5", "wkv6", "wkv7"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_state_continuation_is_bit_identical(name, dtype, rng):
    length = 50
    *args, state = make(name, rng, shape_of(name, 2, length, 2, 24), dtype, True)
    y_full, final_full = run(name, args, state)
    for _ in range(3):
        points = _split_points(rng, length)  # includes empty pieces at 0 and T
        pieces, carried = [], state
        for start, stop in zip(points[:-1], points[1:]):
            part = [a if a.ndim < 3 else a[:, start:stop] for a in args]
            y, carried = run(name, part, carried)
            pieces.append(y)
        np.testing.assert_array_equal(np.concatenate(pieces, axis=1), y_full)
        np.testing.assert_array_equal(carried, final_full)


@pytest.mark.parametrize("name", ["wkv4", "wkv5", "wkv6", "wkv7"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_sequence_returns_state(name, dtype, rng):
    *args, state = make(name, rng, shape_of(name, 2, 0, 3, 5), dtype, True)
    y, final = run(name, args, state)
    assert y.shape == args[0 if name != "wkv4" else 2].shape and y.dtype == dtype
    np.testing.assert_array_equal(final, state)
    _, initial = run(name, args)  # None: the empty state
    if name == "wkv4":
        np.testing.assert_array_equal(initial[:, :2], 0.0)
        assert np.all(initial[:, 2] == -np.inf)
    else:
        np.testing.assert_array_equal(initial, np.zeros_like(state))


@pytest.mark.parametrize("name", ["wkv4", "wkv5", "wkv6", "wkv7"])
def test_batch_rows_are_independent(name, rng):
    *args, state = make(name, rng, shape_of(name, 3, 21, 2, 12), np.float32, True)
    y, final = run(name, args, state)
    for b in range(3):
        row = [a[b : b + 1] if a.ndim >= 3 else a for a in args]
        y_b, final_b = run(name, row, state[b : b + 1])
        np.testing.assert_array_equal(y_b, y[b : b + 1])
        np.testing.assert_array_equal(final_b, final[b : b + 1])


@pytest.mark.parametrize("name", ["wkv4", "wkv5", "wkv6", "wkv7"])
def test_thread_count_does_not_change_bits(name, rng, threads):
    # Fewer tasks than threads (B = 1, H = 1) and more tasks than threads.
    for shape in (shape_of(name, 1, 40, 1, 16), shape_of(name, 2, 40, 5, 72)):
        *args, state = make(name, rng, shape, np.float32, True)
        results = []
        for count in (1, 2, 3):
            threads(count)
            results.append(run(name, args, state))
        for y, final in results[1:]:
            np.testing.assert_array_equal(y, results[0][0])
            np.testing.assert_array_equal(final, results[0][1])


@pytest.mark.parametrize("name", ["wkv4", "wkv5", "wkv6", "wkv7"])
def test_scalar_and_simd_paths_agree(name, rng, simd_path):
    *args, state = make(name, rng, shape_of(name, 2, 65, 2, 40), np.float32, True)
    simd_path("scalar")
    y_scalar, final_scalar = run(name, args, state)
    for path in SIMD_PATHS[1:]:
        simd_path(path)
        y_simd, final_simd = run(name, args, state)
        # Both are float32 runs of the same formulas; they differ by fused vs separate rounding,
        # each within TOL of the exact result.
        assert row_errors(y_simd, y_scalar) <= 2 * TOL[np.float32], path
        assert row_errors(final_simd, final_scalar) <= 2 * TOL[np.float32], path


def test_concurrent_calls_from_python_threads(rng):
    *args, state = make("wkv7", rng, (2, 64, 4, 32), np.float32, True)
    expected = run("wkv7", args, state)
    results = [None] * 4

    def work(i):
        results[i] = run("wkv7", args, state)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    for y, final in results:
        np.testing.assert_array_equal(y, expected[0])
        np.testing.assert_array_equal(final, expected[1])


# ------------------------------------------------------------------------- long sequences


def test_wkv7_long_sequence_stays_bounded_and_matches_the_reference(rng):
    # T = 16384 with RWKV-7's own parameter ranges; small H and N keep the test cheap.
    args64 = wkv7_inputs(rng, 1, 16384, 2, 16)[:-1]
    y_ref, state_ref = ref.wkv7(*args64)
    y64, state64 = rwkv.wkv7(*args64)
    _close64(y64, y_ref)
    _close64(state64, state_ref)
    y32, state32 = rwkv.wkv7(*cast(np.float32, *args64))
    assert np.isfinite(y32).all() and np.isfinite(state32).all()
    # |diag(d) + b^T a| < 1 keeps the state from growing: it stays at the scale of k^T v.
    assert np.abs(state64).max() < 100.0
    for got, want in ((y32, y_ref), (state32, state_ref)):
        relative = np.linalg.norm(got - want) / np.linalg.norm(want)
        assert relative < 1e-4, relative


def test_wkv6_strong_and_weak_decay(rng):
    # log-decays from -20 (d ~ 2e-9) to -1e-4 (d ~ 0.9999) in one head.
    r, k, v, _, u, s = bonus_inputs(rng, 1, 300, 2, 16, state=True)
    w = -np.exp(rng.uniform(np.log(1e-4), np.log(20.0), r.shape))
    y, final = rwkv.wkv6(*cast(np.float32, r, k, v, w, u, s))
    y_ref, final_ref = ref.wkv6(r, k, v, w, u, s)
    assert_close(y, y_ref, np.float32)
    assert_close(final, final_ref, np.float32)


# ------------------------------------------------------------------------- bad arguments


def _valid(name, dtype=np.float32):
    args = make(name, np.random.default_rng(0), shape_of(name, 2, 5, 3, 4), dtype, True)
    names = {
        "wkv4": ["w", "u", "k", "v", "state"],
        "wkv5": ["r", "k", "v", "w", "u", "state"],
        "wkv6": ["r", "k", "v", "w", "u", "state"],
        "wkv7": ["r", "w", "k", "v", "a", "b", "state"],
    }[name]
    return dict(zip(names, args))


def _call(name, kwargs, **extra):
    return getattr(rwkv, name)(**kwargs, **extra)


def _dims_owner(name):
    """The argument whose shape fixes the call's sizes and whose dtype fixes the dtype."""
    return "k" if name == "wkv4" else "r"


@pytest.mark.parametrize("name", ["wkv4", "wkv5", "wkv6", "wkv7"])
def test_wrong_shapes_name_the_argument(name):
    valid = _valid(name)
    for arg, array in valid.items():
        # One axis too many, one too few, and one size off (a mismatched H, N, C or T).
        wrong = [array[None], array[0]]
        if arg != _dims_owner(name):  # resizing the owner makes the *others* mismatch
            wrong.append(np.concatenate([array, array[..., :1]], axis=-1))
        for value in wrong:
            with pytest.raises(ValueError, match=rf"^{arg}: expected .*, got"):
                _call(name, {**valid, arg: value})


@pytest.mark.parametrize("name", ["wkv5", "wkv6", "wkv7"])
def test_mismatched_heads_between_arguments(name):
    valid = _valid(name)
    state = valid["state"]
    with pytest.raises(ValueError, match=r"state: expected shape \(B, H, K, V\) = \(2, 3, 4, 4\)"):
        _call(name, {**valid, "state": state[:, :2]})
    key = "u" if name != "wkv7" else "k"
    other = valid[key]
    wrong = other[:2] if other.ndim == 2 else other[:, :, :2]
    with pytest.raises(ValueError, match=rf"^{key}: expected shape"):
        _call(name, {**valid, key: wrong})


@pytest.mark.parametrize("name", ["wkv4", "wkv5", "wkv6", "wkv7"])
def test_wrong_dtypes_are_type_errors(name):
    valid = _valid(name)
    dtype_owner = _dims_owner(name)
    for arg, array in valid.items():
        mixed = {**valid, arg: array.astype(np.float64)}
        if arg == dtype_owner:  # then every other argument mismatches
            with pytest.raises(TypeError, match=r"expected dtype float64 \(the dtype of"):
                _call(name, mixed)
        else:
            message = rf"^{arg}: expected dtype float32 \(the dtype of {dtype_owner}\)"
            with pytest.raises(TypeError, match=message):
                _call(name, mixed)
    for bad in (np.int64, np.float16, np.complex64):
        with pytest.raises(TypeError, match=rf"^{dtype_owner}: expected dtype float32 or float64"):
            _call(name, {**valid, dtype_owner: valid[dtype_owner].astype(bad)})
    with pytest.raises(TypeError, match=rf"^{dtype_owner}: expected"):
        _call(name, {**valid, dtype_owner: "not an array"})


@pytest.mark.parametrize("name", ["wkv5", "wkv6", "wkv7"])
def test_bad_scale(name):
    valid = _valid(name)
    for scale, error in [(True, TypeError), ("1", TypeError), (None, TypeError)]:
        with pytest.raises(error, match="^scale: expected a real number"):
            _call(name, valid, scale=scale)
    for scale in (np.inf, np.nan):
        with pytest.raises(ValueError, match="^scale: expected a finite number"):
            _call(name, valid, scale=scale)
    _call(name, valid, scale=np.float32(0.5))  # NumPy scalars and ints are fine
    _call(name, valid, scale=2)


@pytest.mark.parametrize("name", ["wkv4", "wkv5", "wkv6", "wkv7"])
def test_non_contiguous_inputs_are_copied_and_inputs_untouched(name):
    valid = _valid(name)
    before = {k: v.copy() for k, v in valid.items()}
    y, final = _call(name, valid)
    strided = {}
    for arg, array in valid.items():
        doubled = np.repeat(array, 2, axis=-1)[..., ::2]  # a view with step 2 on the last axis
        assert not doubled.flags.c_contiguous
        strided[arg] = doubled
    y_strided, final_strided = _call(name, strided)
    np.testing.assert_array_equal(y_strided, y)
    np.testing.assert_array_equal(final_strided, final)
    for arg, array in valid.items():
        np.testing.assert_array_equal(array, before[arg])
    assert y.flags.c_contiguous and final.flags.c_contiguous


@pytest.mark.parametrize("name", ["wkv4", "wkv5", "wkv6", "wkv7"])
def test_zero_batch_and_lists(name):
    valid = _valid(name, np.float64)
    empty = {k: (v[:0] if v.ndim >= 3 else v) for k, v in valid.items()}
    y, final = _call(name, empty)
    assert y.shape[0] == 0 and final.shape[0] == 0
    as_lists = {k: v.tolist() for k, v in valid.items()}  # array-likes are accepted
    y_list, _ = _call(name, as_lists)
    np.testing.assert_array_equal(y_list, _call(name, valid)[0])


# ---------------------------------------------------------------------------- properties


@given(
    batch=st.integers(1, 2),
    length=st.integers(0, 12),
    heads=st.integers(1, 3),
    n=st.integers(1, 70),
    seed=st.integers(0, 2**32 - 1),
    name=st.sampled_from(["wkv5", "wkv6", "wkv7"]),
)
def test_matrix_kernels_match_reference_for_any_shape(batch, length, heads, n, seed, name):
    rng = np.random.default_rng(seed)
    *args, state = make(name, rng, (batch, length, heads, n), np.float64, True)
    y, final = run(name, args, state)
    y_ref, final_ref = run_ref(name, args, state)
    assert_close(y, y_ref, np.float64)
    assert_close(final, final_ref, np.float64)


@given(
    shift=st.floats(-200.0, 600.0),
    channels=st.integers(1, 70),
    seed=st.integers(0, 2**32 - 1),
)
def test_wkv4_any_shift_matches_explicit_sum(shift, channels, seed):
    rng = np.random.default_rng(seed)
    w, u, k, v, _ = wkv4_inputs(rng, 1, 12, channels)
    y, _ = rwkv.wkv4(w, u, k + shift, v)
    _close64(y, ref.wkv4_explicit(w, u, k + shift, v))

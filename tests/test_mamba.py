"""seqkern.mamba.selective_scan and selective_state_update against the NumPy reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import assert_close
from hypothesis import given
from hypothesis import strategies as st

import seqkern
from seqkern.mamba import selective_scan, selective_scan_fn, selective_state_update
from seqkern.reference import mamba as ref

DTYPES = [np.float32, np.float64]


def make_scan(
    rng, batch, dim, dstate, length, b_form="var", c_form="var", groups=1, dtype=np.float64
):
    """Random scan inputs with Mamba-like magnitudes: A < 0, delta' around 0.1-1."""

    def normal(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    def bc(form):
        if form == "fixed":
            return normal(dim, dstate)
        if form == "var":
            return normal(batch, dstate, length)
        return normal(batch, groups, dstate, length)

    return dict(
        u=normal(batch, dim, length),
        delta=normal(batch, dim, length, scale=0.5),
        A=-np.exp(normal(dim, dstate, scale=0.5)),
        B=bc(b_form),
        C=bc(c_form),
        D=normal(dim),
        z=normal(batch, dim, length),
        delta_bias=normal(dim, scale=0.5) - 1.0,
    )


def as_dtype(args, dtype):
    return {k: (v.astype(dtype) if isinstance(v, np.ndarray) else v) for k, v in args.items()}


def check_scan(args, dtype, **kw):
    """Runs the kernel in ``dtype`` and the reference in float64 and compares y and last state."""
    y, last = selective_scan(**as_dtype(args, dtype), return_last_state=True, **kw)
    y_ref, last_ref = ref.selective_scan(**args, return_last_state=True, **kw)
    assert_close(y, y_ref, dtype)
    assert_close(last, last_ref, dtype)
    return y, last


# --- the grid of the issue: every L, dstate, B/C form, optional argument on and off


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("length", [0, 1, 2, 7, 33, 257])
@pytest.mark.parametrize("dstate", [1, 4, 16, 64])
def test_scan_matches_reference_over_lengths_and_dstate(rng, dtype, length, dstate):
    args = make_scan(rng, batch=2, dim=21, dstate=dstate, length=length)
    check_scan(args, dtype, delta_softplus=True)


FORMS = ["fixed", "var", "grouped"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b_form,c_form", list(itertools.product(FORMS, FORMS)))
def test_scan_every_b_c_form(rng, dtype, b_form, c_form):
    # dim 39 with 3 groups of 13 channels: blocks must split at group boundaries.
    args = make_scan(rng, 2, 39, 8, 45, b_form, c_form, groups=3)
    check_scan(args, dtype, delta_softplus=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 2, 5, 40])
def test_scan_group_counts(rng, dtype, groups):
    args = make_scan(rng, 1, 40, 4, 19, "grouped", "grouped", groups=groups)
    check_scan(args, dtype, delta_softplus=True)


OPTIONAL = ["D", "z", "delta_bias"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("drop", [s for r in range(4) for s in itertools.combinations(OPTIONAL, r)])
def test_scan_optional_arguments(rng, dtype, softplus, drop):
    args = make_scan(rng, 2, 17, 16, 29)
    for name in drop:
        args[name] = None
    if not softplus:
        args["delta"] = np.abs(args["delta"])  # a raw delta is a positive step size
        if args["delta_bias"] is not None:
            args["delta_bias"] = np.abs(args["delta_bias"])
    check_scan(args, dtype, delta_softplus=softplus)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scan_return_forms_and_alias(rng, dtype):
    args = as_dtype(make_scan(rng, 1, 3, 2, 5), dtype)
    y = selective_scan(**args)
    assert isinstance(y, np.ndarray) and y.dtype == dtype
    y2, last = selective_scan_fn(**args, return_last_state=True)
    np.testing.assert_array_equal(y, y2)
    assert last.shape == (1, 3, 2) and last.dtype == dtype


def test_scan_positional_mamba_ssm_order(rng):
    a = make_scan(rng, 1, 5, 3, 6)
    positional = selective_scan(
        a["u"], a["delta"], a["A"], a["B"], a["C"], a["D"], a["z"], a["delta_bias"], True, True
    )
    keyword = selective_scan(**a, delta_softplus=True, return_last_state=True)
    np.testing.assert_array_equal(positional[0], keyword[0])
    np.testing.assert_array_equal(positional[1], keyword[1])


def test_scan_batch_one_and_large_dim(rng):
    args = make_scan(rng, 1, 67, 16, 9)
    check_scan(args, np.float32, delta_softplus=True)


@given(
    batch=st.integers(1, 3),
    dim=st.integers(1, 40),
    dstate=st.integers(1, 20),
    length=st.integers(0, 40),
    b_form=st.sampled_from(FORMS),
    c_form=st.sampled_from(FORMS),
    softplus=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_scan_property_random_shapes(batch, dim, dstate, length, b_form, c_form, softplus, seed):
    rng = np.random.default_rng(seed)
    groups = next(g for g in (3, 2, 1) if dim % g == 0)
    args = make_scan(rng, batch, dim, dstate, length, b_form, c_form, groups)
    check_scan(args, np.float64, delta_softplus=softplus)


# --- state continuation


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split", [0, 1, 31, 64, 65, 100])
def test_scan_in_two_calls_equals_one_call(rng, dtype, split):
    args = as_dtype(make_scan(rng, 2, 19, 16, 100, "var", "grouped", groups=19), dtype)
    y, last = selective_scan(**args, delta_softplus=True, return_last_state=True)
    first, second = dict(args), dict(args)
    for name in ("u", "delta", "z"):
        first[name], second[name] = args[name][..., :split], args[name][..., split:]
    for name in ("B", "C"):
        first[name], second[name] = args[name][..., :split], args[name][..., split:]
    y1, h1 = selective_scan(**first, delta_softplus=True, return_last_state=True)
    y2, h2 = selective_scan(**second, delta_softplus=True, return_last_state=True, initial_state=h1)
    # Time chunks restart at the split, but each step computes the same operations in the
    # same order, so the result is bit-identical.
    np.testing.assert_array_equal(np.concatenate([y1, y2], axis=-1), y)
    np.testing.assert_array_equal(h2, last)


@pytest.mark.parametrize("dtype", DTYPES)
def test_initial_state_matches_reference(rng, dtype):
    args = make_scan(rng, 2, 9, 4, 13)
    h0 = rng.standard_normal((2, 9, 4))
    kw = dict(delta_softplus=True, return_last_state=True)
    y, last = selective_scan(**as_dtype(args, dtype), **kw, initial_state=h0.astype(dtype))
    y_ref, last_ref = ref.selective_scan(**args, **kw, initial_state=h0)
    assert_close(y, y_ref, dtype)
    assert_close(last, last_ref, dtype)


def test_length_zero_returns_initial_state(rng):
    args = make_scan(rng, 2, 5, 3, 0)
    h0 = rng.standard_normal((2, 5, 3))
    y, last = selective_scan(**args, return_last_state=True, initial_state=h0)
    assert y.shape == (2, 5, 0)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(last, h0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_steps_equal_one_scan(rng, dtype):
    args = as_dtype(make_scan(rng, 2, 13, 8, 11), dtype)
    y, last = selective_scan(**args, delta_softplus=True, return_last_state=True)
    state = np.zeros((2, 13, 8), dtype)
    for t in range(11):
        y_t = selective_state_update(
            state,
            args["u"][..., t],
            args["delta"][..., t],
            args["A"],
            args["B"][..., t],
            args["C"][..., t],
            args["D"],
            args["z"][..., t],
            args["delta_bias"],
            True,
        )
        assert_close(y_t, y[..., t].astype(np.float64), dtype)
    assert_close(state, last.astype(np.float64), dtype)


# --- the decode step


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [None, 1, 3])
@pytest.mark.parametrize("with_optional", [False, True])
def test_state_update_mamba1_matches_reference(rng, dtype, groups, with_optional):
    batch, dim, dstate = 2, 21, 16
    bc_shape = (batch, dstate) if groups is None else (batch, groups, dstate)
    state = rng.standard_normal((batch, dim, dstate))
    kw = dict(
        x=rng.standard_normal((batch, dim)),
        dt=rng.standard_normal((batch, dim)),
        A=-np.exp(rng.standard_normal((dim, dstate))),
        B=rng.standard_normal(bc_shape),
        C=rng.standard_normal(bc_shape),
    )
    if with_optional:
        kw.update(
            D=rng.standard_normal(dim),
            z=rng.standard_normal((batch, dim)),
            dt_bias=rng.standard_normal(dim),
            dt_softplus=True,
        )
    else:
        kw["dt"] = np.abs(kw["dt"])
    state_k = state.astype(dtype)
    out = selective_state_update(state_k, **as_dtype(kw, dtype))
    state_ref = state.copy()
    out_ref = ref.selective_state_update(state_ref, **kw)
    assert_close(out, out_ref, dtype)
    assert_close(state_k, state_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("untied", [False, True])
def test_state_update_multihead_matches_reference(rng, dtype, untied):
    batch, heads, headdim, dstate, groups = 2, 6, 5, 16, 2
    state = rng.standard_normal((batch, heads, headdim, dstate))
    kw = dict(
        x=rng.standard_normal((batch, heads, headdim)),
        dt=rng.standard_normal((batch, heads, headdim) if untied else (batch, heads)),
        A=-np.exp(rng.standard_normal((heads, headdim, dstate) if untied else (heads,))),
        B=rng.standard_normal((batch, groups, dstate)),
        C=rng.standard_normal((batch, groups, dstate)),
        D=rng.standard_normal((heads, headdim) if untied else (heads,)),
        z=rng.standard_normal((batch, heads, headdim)),
        dt_bias=rng.standard_normal((heads, headdim) if untied else (heads,)),
        dt_softplus=True,
    )
    state_k = state.astype(dtype)
    out = selective_state_update(state_k, **as_dtype(kw, dtype))
    state_ref = state.copy()
    out_ref = ref.selective_state_update(state_ref, **kw)
    assert out.shape == (batch, heads, headdim)
    assert_close(out, out_ref, dtype)
    assert_close(state_k, state_ref, dtype)


def test_state_update_multihead_equals_scan_with_tied_parameters(rng):
    """Mamba-2's decode step is Mamba-1 with A, dt, D tied over the head dimension."""
    batch, heads, headdim, dstate, length = 1, 4, 3, 8, 6
    dim = heads * headdim
    x = rng.standard_normal((batch, length, heads, headdim))
    dt = rng.standard_normal((batch, length, heads))
    A = -np.exp(rng.standard_normal(heads))
    B = rng.standard_normal((batch, length, 1, dstate))
    C = rng.standard_normal((batch, length, 1, dstate))
    D = rng.standard_normal(heads)
    state = np.zeros((batch, heads, headdim, dstate))
    outs = [
        selective_state_update(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D, dt_softplus=True)
        for t in range(length)
    ]
    y = selective_scan(
        x.reshape(batch, length, dim).transpose(0, 2, 1),
        np.repeat(dt, headdim, axis=2).transpose(0, 2, 1),
        np.repeat(A, headdim)[:, None] * np.ones((1, dstate)),
        B[:, :, 0].transpose(0, 2, 1),
        C[:, :, 0].transpose(0, 2, 1),
        np.repeat(D, headdim),
        delta_softplus=True,
    )
    np.testing.assert_allclose(
        np.stack(outs, -1).reshape(batch, dim, length), y, rtol=1e-12, atol=1e-12
    )


# --- threads and SIMD paths


def test_results_identical_for_one_and_two_threads(rng, threads):
    # 3 * 50 * 16 * 100 updates: above PARALLEL_MIN_WORK (parallel.rs), so the pool splits it.
    args = as_dtype(make_scan(rng, 3, 50, 16, 100, "grouped", "fixed", groups=5), np.float32)
    threads(1)
    y1, h1 = selective_scan(**args, delta_softplus=True, return_last_state=True)
    threads(2)
    y2, h2 = selective_scan(**args, delta_softplus=True, return_last_state=True)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(h1, h2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("form", ["var", "grouped"])
def test_each_path_matches_reference(rng, dtype, form, each_simd_path):
    args = make_scan(rng, 2, 35, 16, 40, "var", form, groups=5)
    check_scan(args, dtype, delta_softplus=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim, dstate", [(9, 4), (67, 16), (40, 33)])
def test_each_path_decode(rng, dtype, dim, dstate, each_simd_path):
    state = rng.standard_normal((2, dim, dstate))
    args = (
        rng.standard_normal((2, dim)),
        np.abs(rng.standard_normal((2, dim))),
        -np.exp(rng.standard_normal((dim, dstate))),
        rng.standard_normal((2, dstate)),
        rng.standard_normal((2, dstate)),
        rng.standard_normal(dim),
        rng.standard_normal((2, dim)),
    )
    s1 = state.astype(dtype)
    out = selective_state_update(s1, *(a.astype(dtype) for a in args))
    s2 = state.copy()
    out_ref = ref.selective_state_update(s2, *args)
    assert_close(out, out_ref, dtype)
    assert_close(s1, s2, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("headdim, dstate", [(1, 16), (5, 33), (8, 128), (7, 7), (64, 20)])
def test_each_path_decode_multihead(rng, dtype, headdim, dstate, each_simd_path):
    """Mamba-2's form (one step size and decay per head): rows in blocks of four, sums over
    the state in sixteen lanes, leftovers of both."""
    batch, heads, groups = 2, 3, 3
    state = rng.standard_normal((batch, heads, headdim, dstate))
    kw = dict(
        x=rng.standard_normal((batch, heads, headdim)),
        dt=rng.standard_normal((batch, heads)),
        A=-np.exp(rng.standard_normal(heads)),
        B=rng.standard_normal((batch, groups, dstate)),
        C=rng.standard_normal((batch, groups, dstate)),
        D=rng.standard_normal(heads),
        z=rng.standard_normal((batch, heads, headdim)),
        dt_bias=rng.standard_normal(heads),
        dt_softplus=True,
    )
    state_k = state.astype(dtype)
    out = selective_state_update(state_k, **as_dtype(kw, dtype))
    state_ref = state.copy()
    out_ref = ref.selective_state_update(state_ref, **kw)
    assert_close(out, out_ref, dtype)
    assert_close(state_k, state_ref, dtype)


def test_multihead_decode_is_bitwise_equal_on_avx2_and_avx512(rng, simd_path):
    """The explicit AVX-512 rows and the AVX2 loop do the same operations in the same order."""
    if seqkern.build_info()["simd_available"] != "avx512":
        pytest.skip("needs AVX-512")
    heads, headdim, dstate = 4, 6, 40
    state = rng.standard_normal((1, heads, headdim, dstate)).astype(np.float32)
    args = [
        rng.standard_normal((1, heads, headdim)),
        rng.standard_normal((1, heads)),
        -np.exp(rng.standard_normal(heads)),
        rng.standard_normal((1, 1, dstate)),
        rng.standard_normal((1, 1, dstate)),
        rng.standard_normal(heads),
        rng.standard_normal((1, heads, headdim)),
    ]
    args = [a.astype(np.float32) for a in args]
    results = {}
    for path in ("avx2", "avx512"):
        simd_path(path)
        s = state.copy()
        results[path] = (selective_state_update(s, *args, dt_softplus=True), s)
    np.testing.assert_array_equal(results["avx2"][0], results["avx512"][0])
    np.testing.assert_array_equal(results["avx2"][1], results["avx512"][1])


def test_set_num_threads_and_build_info(threads):
    threads(1)
    assert seqkern.get_num_threads() == 1
    threads(2)
    assert seqkern.get_num_threads() == 2
    info = seqkern.build_info()
    assert info["profile"] == "release"
    assert info["simd"] in ("scalar", "avx2", "avx512")
    assert info["version"] == seqkern.__version__
    with pytest.raises(ValueError, match="n: expected"):
        seqkern.set_num_threads(-1)


# --- numerics at the edges


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", [20.0, 20.0001, 1e4, -100.0])
def test_softplus_edges(rng, dtype, value):
    args = make_scan(rng, 1, 4, 3, 5)
    args["delta"] = np.full_like(args["delta"], value)
    args["delta_bias"] = np.zeros(4)
    y, last = selective_scan(**as_dtype(args, dtype), delta_softplus=True, return_last_state=True)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(last))
    y_ref = ref.selective_scan(**args, delta_softplus=True)
    assert_close(y, y_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softplus_threshold_is_exact_at_20(dtype):
    """delta' = delta above 20 and log1p(exp(delta)) at or below, as torch computes it."""
    delta = np.array([[[20.0, 20.0001, 19.9]]], dtype)
    u = np.ones((1, 1, 3), dtype)
    zero_a = np.zeros((1, 1), dtype)
    ones_bc = np.ones((1, 1, 3), dtype)
    # With A = 0 and B = C = 1, y_t is the running sum of delta'_t.
    y = selective_scan(u, delta, zero_a, ones_bc, ones_bc, delta_softplus=True)
    expected = np.cumsum([np.log1p(np.exp(20.0)), 20.0001, np.log1p(np.exp(19.9))])
    np.testing.assert_allclose(y[0, 0], expected, rtol=1e-6 if dtype == np.float32 else 1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_stays_in_its_channel(rng, dtype):
    args = as_dtype(make_scan(rng, 2, 20, 4, 30), dtype)
    args["u"][1, 7, 3] = np.nan
    y, last = selective_scan(**args, delta_softplus=True, return_last_state=True)
    bad = np.zeros(y.shape, bool)
    bad[1, 7, 3:] = True
    assert np.all(np.isnan(y[bad]))
    assert np.all(np.isfinite(y[~bad]))
    assert np.all(np.isnan(last[1, 7]))
    last[1, 7] = 0
    assert np.all(np.isfinite(last))


def test_strong_decay_underflows_to_zero_state(rng):
    args = make_scan(rng, 1, 3, 4, 8)
    args["A"] = np.full((3, 4), -1e4)
    args["delta"] = np.full((1, 3, 8), 10.0)
    y, last = selective_scan(**args, delta_softplus=True, return_last_state=True)
    y_ref, last_ref = ref.selective_scan(**args, delta_softplus=True, return_last_state=True)
    assert_close(y, y_ref, np.float64)
    assert np.all(np.isfinite(last))


# --- strided and non-contiguous inputs


def test_strided_b_c_from_one_projection(rng):
    """B and C sliced out of one x_proj output, as a Mamba block does, work unchanged."""
    batch, dim, dstate, length, dt_rank = 2, 12, 16, 9, 4
    x_dbl = rng.standard_normal((batch, length, dt_rank + 2 * dstate)).astype(np.float32)
    B = x_dbl[:, :, dt_rank : dt_rank + dstate].transpose(0, 2, 1)
    C = x_dbl[:, :, dt_rank + dstate :].transpose(0, 2, 1)
    assert not B.flags.c_contiguous
    args = make_scan(rng, batch, dim, dstate, length, dtype=np.float32)
    args["B"], args["C"] = B, C
    u_t = np.asfortranarray(args["u"])
    args["u"] = u_t
    y = selective_scan(**args, delta_softplus=True)
    contiguous = {
        k: (np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v) for k, v in args.items()
    }
    np.testing.assert_array_equal(y, selective_scan(**contiguous, delta_softplus=True))

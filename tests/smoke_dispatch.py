"""Run-time SIMD dispatch smoke test, for an installed seqkern on a given (or emulated) CPU.

    python tests/smoke_dispatch.py --expect cpuinfo
    qemu-x86_64 -cpu Nehalem venv/bin/python tests/smoke_dispatch.py --expect scalar

Checks that ``build_info()`` reports the expected SIMD path, then runs every public function
of ``seqkern.mamba``, ``seqkern.rwkv``, ``seqkern.ternary`` and ``seqkern.attention`` on small
shapes (odd sizes, so that vector loops and their tails both run) against
``seqkern.reference``, once on each SIMD path the CPU offers. An instruction the CPU lacks
kills the process with SIGILL; a wrong answer fails an assertion. A public function that no
case below exercises fails the run too, so a new kernel cannot skip this check.

Not collected by pytest (no ``test_`` prefix): the suite covers the same functions in depth
on the build machine's CPU; this covers the dispatch on others, where pytest under an
emulator would take too long.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

import seqkern
from seqkern import _native, attention, mamba, reference, rwkv, ternary

ref_mamba, ref_rwkv, ref_ternary = reference.mamba, reference.rwkv, reference.ternary

FLOATS = (np.float32, np.float64)
PATHS = ("scalar", "avx2", "avx512")
"""SIMD paths from the lowest up; a CPU runs those up to ``build_info()["simd_available"]``."""


def close(actual, expected, dtype) -> None:
    """``actual`` against a float64 reference: rtol 1e-4 in float32 (a few eps per step over
    short sequences and dstate-long sums, plus the polynomial exp), 1e-10 in float64, and an
    absolute floor scaled to the output's magnitude for outputs near zero."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == np.dtype(dtype), (actual.dtype, dtype)
    scale = max(float(np.max(np.abs(expected))), 1.0) if expected.size else 1.0
    f32 = np.dtype(dtype) == np.float32
    rtol, atol = (1e-4, 1e-5 * scale) if f32 else (1e-10, 1e-12 * scale)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def cast(dtype, *arrays):
    return [None if a is None else np.ascontiguousarray(a, dtype=dtype) for a in arrays]


def as64(*arrays):
    return cast(np.float64, *arrays)


# ------------------------------------------------------------------------------------- mamba


def smoke_selective_scan(rng, dtype) -> None:
    batch, dim, dstate, length = 2, 37, 16, 19
    u, delta, z = (rng.standard_normal((batch, dim, length)) for _ in range(3))
    A = -np.exp(rng.standard_normal((dim, dstate)))
    D, delta_bias = rng.standard_normal(dim), np.full(dim, -1.0)
    variable = [rng.standard_normal((batch, dstate, length)) for _ in range(2)]
    grouped = [rng.standard_normal((batch, dim, dstate, length))[:, :1] for _ in range(2)]
    for B, C in (variable, grouped):
        args = cast(dtype, u, delta, A, B, C, D, z, delta_bias)
        out, last = mamba.selective_scan(*args, delta_softplus=True, return_last_state=True)
        out_ref, last_ref = ref_mamba.selective_scan(
            *as64(*args), delta_softplus=True, return_last_state=True
        )
        close(out, out_ref, dtype)
        close(last, last_ref, dtype)


def smoke_selective_state_update(rng, dtype) -> None:
    batch, dim, dstate = 2, 37, 16
    state = rng.standard_normal((batch, dim, dstate))
    x, dt, z = (rng.standard_normal((batch, dim)) for _ in range(3))
    A = -np.exp(rng.standard_normal((dim, dstate)))
    B, C = (rng.standard_normal((batch, dstate)) for _ in range(2))
    D, dt_bias = rng.standard_normal(dim), np.full(dim, -1.0)
    _state_update_matches(dtype, state, x, dt, A, B, C, D, z, dt_bias)
    # The multi-head (Mamba-2) form: state (batch, heads, headdim, dstate), 2 groups.
    heads, headdim = 4, 9
    state = rng.standard_normal((batch, heads, headdim, dstate))
    x, z = (rng.standard_normal((batch, heads, headdim)) for _ in range(2))
    dt = rng.standard_normal((batch, heads))
    A, D, dt_bias = -np.exp(rng.standard_normal(heads)), rng.standard_normal(heads), -np.ones(heads)
    B, C = (rng.standard_normal((batch, 2, dstate)) for _ in range(2))
    _state_update_matches(dtype, state, x, dt, A, B, C, D, z, dt_bias)


def _state_update_matches(dtype, state, *inputs) -> None:
    state, state_ref = cast(dtype, state)[0], state.astype(np.float64)
    args = cast(dtype, *inputs)
    out = mamba.selective_state_update(state, *args, dt_softplus=True)
    out_ref = ref_mamba.selective_state_update(state_ref, *as64(*args), dt_softplus=True)
    close(out, out_ref, dtype)
    close(state, state_ref, dtype)


def _ssd_inputs(rng, dtype):
    batch, length, heads, headdim, groups, dstate = 2, 21, 4, 9, 2, 16
    x, z = (rng.standard_normal((batch, length, heads, headdim)) for _ in range(2))
    dt = rng.standard_normal((batch, length, heads))
    A = -np.exp(rng.standard_normal(heads))
    B, C = (rng.standard_normal((batch, length, groups, dstate)) for _ in range(2))
    D, dt_bias = rng.standard_normal(heads), np.full(heads, -1.0)
    initial = rng.standard_normal((batch, heads, headdim, dstate))
    return cast(dtype, x, dt, A, B, C, D, z, dt_bias, initial)


def smoke_ssd_scan(rng, dtype) -> None:
    x, dt, A, B, C, D, z, dt_bias, initial = _ssd_inputs(rng, dtype)
    out_ref, final_ref = ref_mamba.ssd_scan_sequential(
        *as64(x, dt, A, B, C, D, z, dt_bias, initial), dt_softplus=True, return_final_states=True
    )
    chunked = mamba.ssd_scan(
        x, dt, A, B, C, 8, D, z, dt_bias, initial, dt_softplus=True, return_final_states=True
    )
    sequential = mamba.ssd_scan_sequential(
        x, dt, A, B, C, D, z, dt_bias, initial, dt_softplus=True, return_final_states=True
    )
    for out, final in (chunked, sequential):
        close(out, out_ref, dtype)
        close(final, final_ref, dtype)


def smoke_causal_conv1d(rng, dtype) -> None:
    batch, dim, length, width = 2, 37, 19, 4
    x = rng.standard_normal((batch, dim, length))
    weight, bias = rng.standard_normal((dim, width)), rng.standard_normal(dim)
    initial = rng.standard_normal((batch, dim, width - 1))
    args = cast(dtype, x, weight, bias)
    init = cast(dtype, initial)[0]
    out, final = mamba.causal_conv1d(*args, "silu", initial_states=init, return_final_states=True)
    out_ref, final_ref = ref_mamba.causal_conv1d(
        *as64(*args), "silu", initial_states=as64(init)[0], return_final_states=True
    )
    close(out, out_ref, dtype)
    close(final, final_ref, dtype)


def smoke_causal_conv1d_update(rng, dtype) -> None:
    batch, dim, width, state_len = 2, 37, 4, 5
    weight, bias = cast(dtype, rng.standard_normal((dim, width)), rng.standard_normal(dim))
    for x in (rng.standard_normal((batch, dim)), rng.standard_normal((batch, dim, 3))):
        conv_state = rng.standard_normal((batch, dim, state_len))
        state, state_ref = cast(dtype, conv_state)[0], conv_state.astype(np.float64)
        xs = cast(dtype, x)[0]
        out = mamba.causal_conv1d_update(xs, state, weight, bias, "silu")
        out_ref = ref_mamba.causal_conv1d_update(*as64(xs), state_ref, *as64(weight, bias), "silu")
        close(out, out_ref, dtype)
        close(state, state_ref, dtype)


# -------------------------------------------------------------------------------------- rwkv


def smoke_wkv4(rng, dtype) -> None:
    batch, length, channels = 2, 19, 37
    w = -np.exp(rng.uniform(-4.0, 2.0, channels))
    u = rng.uniform(-2.0, 2.0, channels)
    k, v = (rng.standard_normal((batch, length, channels)) for _ in range(2))
    args = cast(dtype, w, u, k, v)
    y, state = rwkv.wkv4(*args)
    y_ref, state_ref = ref_rwkv.wkv4(*as64(*args))
    close(y, y_ref, dtype)
    close(state, state_ref, dtype)
    # Continuing from the state equals the reference continued from its own.
    y2, _ = rwkv.wkv4(*args, state)
    y2_ref, _ = ref_rwkv.wkv4(*as64(*args), state_ref)
    close(y2, y2_ref, dtype)


def _bonus_inputs(rng, batch=2, length=11, heads=3, n=17):
    shape = (batch, length, heads, n)
    r, k, v = (rng.standard_normal(shape) for _ in range(3))
    w = -np.exp(rng.uniform(-4.0, 2.2, shape))
    u = rng.standard_normal((heads, n))
    state = rng.standard_normal((batch, heads, n, n))
    return r, k, v, w, u, state


def smoke_wkv5(rng, dtype) -> None:
    r, k, v, w, u, state = _bonus_inputs(rng)
    w = w[0, 0]  # one log-decay per (head, channel), the same at every step
    args = cast(dtype, r, k, v, w, u, state)
    _rwkv_matches(rwkv.wkv5, ref_rwkv.wkv5, args, dtype)


def smoke_wkv6(rng, dtype) -> None:
    args = cast(dtype, *_bonus_inputs(rng))
    _rwkv_matches(rwkv.wkv6, ref_rwkv.wkv6, args, dtype)


def smoke_wkv7(rng, dtype) -> None:
    shape = (2, 11, 3, 17)
    r, k, v, kk = (rng.standard_normal(shape) for _ in range(4))
    w = -np.exp(-0.5) / (1.0 + np.exp(-rng.standard_normal(shape)))
    kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
    alpha = rng.uniform(0.0, 1.0, shape)
    state = rng.standard_normal((2, 3, 17, 17))
    args = cast(dtype, r, w, k, v, -kk, kk * alpha, state)
    _rwkv_matches(rwkv.wkv7, ref_rwkv.wkv7, args, dtype)


def _rwkv_matches(fn, ref_fn, args, dtype) -> None:
    y, state = fn(*args, scale=0.5)
    y_ref, state_ref = ref_fn(*as64(*args), scale=0.5)
    close(y, y_ref, dtype)
    close(state, state_ref, dtype)


# ----------------------------------------------------------------------------------- ternary

# K spans more than one 64-byte block of packed weights plus a tail; N is not a multiple of the
# 4-row tile; M covers one and several activation rows.
TERNARY_SHAPES = ((1, 9, 333), (5, 6, 700))


def smoke_ternary(rng, dtype) -> None:
    for m, n, k in TERNARY_SHAPES:
        W = rng.standard_normal((n, k)).astype(dtype)
        x = (rng.standard_normal((m, k)) * 3).astype(dtype)
        bias = rng.standard_normal(n).astype(dtype)
        codes, gamma = ref_ternary.quantize_weights(W)
        q, scale = ternary.quantize_activations(x)
        q_ref, scale_ref = ref_ternary.quantize_activations(x)
        np.testing.assert_array_equal(q, q_ref)
        np.testing.assert_array_equal(scale, scale_ref)
        for format in ternary.FORMATS:
            w = ternary.quantize_weights(W, format=format)
            np.testing.assert_array_equal(w.codes(), codes)
            assert w.gamma == gamma, (w.gamma, gamma)
            exact = ref_ternary.ternary_matmul_int(q, codes)
            np.testing.assert_array_equal(ternary.ternary_matmul_int(q, w), exact)
            # float32 outputs round once from an exact integer times a scale: 1.2e-7 relative.
            rtol = 1.2e-7 if dtype == np.float32 else 1e-15
            for b in (None, bias):
                expected = ref_ternary.bitlinear(x, codes, gamma, b)
                np.testing.assert_allclose(ternary.bitlinear(x, w, b), expected, rtol=rtol)
            _weight_round_trips(w, codes, format)


def _weight_round_trips(w, codes, format) -> None:
    """TernaryWeight's constructors and file format give back the same codes."""
    again = ternary.TernaryWeight.from_codes(codes, w.gamma, format=format)
    np.testing.assert_array_equal(again.packed, w.packed)
    rows = (codes.shape[0] // 4) * 4
    if rows:
        # transformers' layout: row r of (N/4, K) holds code + 1 of rows r + i N/4 at bits 2i.
        shifted = (codes[:rows] + 1).astype(np.uint8).reshape(4, rows // 4, -1)
        packed = np.bitwise_or.reduce(shifted << (2 * np.arange(4, dtype=np.uint8))[:, None, None])
        hf = ternary.TernaryWeight.from_hf_packed(packed, 1.0 / w.gamma, format=format)
        np.testing.assert_array_equal(hf.codes(), codes[:rows])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.npz"
        w.save(path)
        loaded = ternary.TernaryWeight.load(path)
    np.testing.assert_array_equal(loaded.packed, w.packed)
    assert (loaded.shape, loaded.gamma, loaded.format) == (w.shape, w.gamma, w.format)


def smoke_int8(rng, dtype) -> None:
    for m, n, k in TERNARY_SHAPES:
        W = rng.standard_normal((n, k)).astype(dtype)
        x = rng.standard_normal((m, k)).astype(dtype)
        w = ternary.Int8Weight.from_float(W)
        codes, scales = ref_ternary.int8_quantize_rows(W)
        np.testing.assert_array_equal(w.codes, codes)
        np.testing.assert_array_equal(w.scales, scales)
        again = ternary.Int8Weight.from_codes(codes, scales)
        # int8 activations: exact integer sums, one float64 rescale: the reference's bits.
        expected = ref_ternary.int8_matmul(x, again.codes, again.scales)
        np.testing.assert_array_equal(ternary.int8_matmul(x, again), expected)
        expected = ref_ternary.int8_matmul(*as64(x), again.codes, again.scales, "float")
        close(ternary.int8_matmul(x, again, activations="float"), expected, dtype)


# --------------------------------------------------------------------------------- attention


def smoke_causal_attention(rng, dtype) -> None:
    q, k = (rng.standard_normal((2, 3, 19, 24)) for _ in range(2))
    v = rng.standard_normal((2, 3, 19, 17))
    args = cast(dtype, q, k, v)
    close(
        attention.causal_attention(*args), reference.attention.causal_attention(*as64(*args)), dtype
    )


# ------------------------------------------------------------------------------------ driver

CASES: dict[Callable, tuple] = {
    smoke_selective_scan: (mamba.selective_scan,),
    smoke_selective_state_update: (mamba.selective_state_update,),
    smoke_ssd_scan: (mamba.ssd_scan, mamba.ssd_scan_sequential),
    smoke_causal_conv1d: (mamba.causal_conv1d,),
    smoke_causal_conv1d_update: (mamba.causal_conv1d_update,),
    smoke_wkv4: (rwkv.wkv4,),
    smoke_wkv5: (rwkv.wkv5,),
    smoke_wkv6: (rwkv.wkv6,),
    smoke_wkv7: (rwkv.wkv7,),
    smoke_ternary: (
        ternary.quantize_weights,
        ternary.quantize_activations,
        ternary.ternary_matmul_int,
        ternary.bitlinear,
        ternary.TernaryWeight,
    ),
    smoke_int8: (ternary.Int8Weight, ternary.int8_matmul),
    smoke_causal_attention: (attention.causal_attention,),
}
"""Each smoke function and the public functions (or classes) it exercises."""


def path_from_cpuinfo() -> str:
    """The SIMD path this CPU should get, worked out from the kernel's /proc/cpuinfo flags
    rather than from seqkern's own detection: avx2 needs AVX2, FMA and BMI2, avx512 those and
    AVX-512 F/BW/DQ/VL."""
    flags: set[str] = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if not {"avx2", "fma", "bmi2"} <= flags:
        return "scalar"
    return "avx512" if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags else "avx2"


def uncovered() -> list[str]:
    """Public callables of the kernel modules that no case exercises (aliases count as their
    target)."""
    covered = {id(fn) for fns in CASES.values() for fn in fns}
    missing = []
    for module in (mamba, rwkv, ternary, attention):
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj) and id(obj) not in covered:
                missing.append(f"{module.__name__}.{name}")
    return missing


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--expect",
        choices=(*PATHS, "cpuinfo"),
        required=True,
        help="the SIMD path build_info() must report on this CPU ('cpuinfo': "
        "the one /proc/cpuinfo's flags call for; not under an emulator)",
    )
    args = parser.parse_args(argv)
    if args.expect == "cpuinfo":
        args.expect = path_from_cpuinfo()

    info = seqkern.build_info()
    print(f"seqkern {seqkern.__version__} from {seqkern.__file__}")
    print(f"build_info: {info}")
    print(f"cpu_features: {' '.join(seqkern.cpu_features())}")
    if info["simd_available"] != args.expect or info["simd"] != args.expect:
        print(
            f"FAIL: expected SIMD path {args.expect!r}, build_info() says "
            f"simd={info['simd']!r}, simd_available={info['simd_available']!r}"
        )
        return 1
    missing = uncovered()
    if missing:
        print(f"FAIL: public functions without a smoke case: {', '.join(missing)}")
        return 1

    paths = PATHS[: PATHS.index(args.expect) + 1]
    try:
        for path in paths:
            assert _native.set_simd_path(path) == path, path
            assert seqkern.build_info()["simd"] == path
            for case in CASES:
                for dtype in FLOATS:
                    case(np.random.default_rng(2024), dtype)
            print(f"  {path}: {len(CASES)} cases x {len(FLOATS)} dtypes match the references")
    finally:
        _native.set_simd_path("auto")
    covered = sum(len(fns) for fns in CASES.values())
    print(f"smoke OK: {covered} public functions on SIMD paths {', '.join(paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The run-time switches and guarantees of the README: SEQKERN_SIMD and SEQKERN_NUM_THREADS take
effect (and a bad value warns and falls back), the GIL is released while a kernel runs, results
do not depend on the thread count, and an internal error surfaces as RuntimeError."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import seqkern
from seqkern import _native, mamba, rwkv, ternary
from seqkern.attention import causal_attention


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter with the given environment variables set (and any
    SEQKERN_* variable of this process removed)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SEQKERN_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
    )


# --- SEQKERN_SIMD

# A float32 attention whose bits differ between the portable and the FMA paths: which path ran
# can be read off the result.
ATTENTION_BITS = """
    import hashlib, json, numpy as np, seqkern
    from seqkern import _native
    from seqkern.attention import causal_attention
    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, 2, 200, 40)).astype(np.float32) for _ in range(3))
    print(json.dumps({
        "simd": seqkern.build_info()["simd"],
        "requested": _native.get_simd_path(),
        "ternary": _native.ternary_kernel_path(),
        "bits": hashlib.sha256(causal_attention(q, k, v).tobytes()).hexdigest(),
    }))
"""


def attention_bits_in_process(path: str) -> str:
    import hashlib

    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal((1, 2, 200, 40)).astype(np.float32) for _ in range(3))
    before = _native.get_simd_path()
    try:
        _native.set_simd_path(path)
        return hashlib.sha256(causal_attention(q, k, v).tobytes()).hexdigest()
    finally:
        _native.set_simd_path(before)


def available_paths() -> list[str]:
    order = ["scalar", "avx2", "avx512"]
    best = seqkern.build_info()["simd_available"]
    return order[: order.index(best) + 1] if best in order else ["scalar"]


@pytest.mark.parametrize("path", ["scalar", "avx2", "avx512"])
def test_seqkern_simd_selects_the_path(path):
    if path not in available_paths():
        pytest.skip(f"this CPU has no {path} path")
    done = run_python(ATTENTION_BITS, SEQKERN_SIMD=path)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    info = json.loads(done.stdout)
    assert info["simd"] == path and info["requested"] == path
    # The result is the one of that path, set in this process.
    assert info["bits"] == attention_bits_in_process(path)
    expected_ternary = {"scalar": {"scalar"}, "avx2": {"avx2"}, "avx512": {"avx2", "avx512_vnni"}}
    assert info["ternary"] in expected_ternary[path]


def test_the_paths_give_different_bits_here():
    """Makes the test above meaningful: the portable and SIMD results differ in some bit."""
    paths = available_paths()
    if len(paths) < 2:
        pytest.skip("one path only")
    assert attention_bits_in_process("scalar") != attention_bits_in_process(paths[-1])


def test_seqkern_simd_unset_uses_the_best_path():
    done = run_python(ATTENTION_BITS)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["simd"] == seqkern.build_info()["simd_available"]
    assert info["requested"] == "auto"


@pytest.mark.parametrize("value", ["sse9", "", "avx-512"])
def test_bad_seqkern_simd_warns_and_uses_the_best_path(value):
    done = run_python(ATTENTION_BITS, SEQKERN_SIMD=value)
    assert done.returncode == 0, done.stderr
    assert "RuntimeWarning: SEQKERN_SIMD: expected one of" in done.stderr, done.stderr
    assert repr(value) in done.stderr
    assert json.loads(done.stdout)["simd"] == seqkern.build_info()["simd_available"]


# --- SEQKERN_NUM_THREADS

THREADS = """
    import json, os, numpy as np, seqkern
    from seqkern.mamba import selective_scan
    x = np.ones((1, 64, 4096), np.float32)
    selective_scan(x, x, -np.ones((64, 16), np.float32), x[:, :16], x[:, :16])
    tasks = os.listdir("/proc/self/task")
    names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in tasks]
    print(json.dumps({
        "threads": seqkern.get_num_threads(),
        "pool": sum(name.startswith("seqkern-") for name in names),
    }))
"""


@pytest.mark.parametrize("count", [1, 3, 5])
def test_seqkern_num_threads_sizes_the_pool(count):
    done = run_python(THREADS, SEQKERN_NUM_THREADS=str(count))
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    assert json.loads(done.stdout) == {"threads": count, "pool": count}


@pytest.mark.parametrize("value, warns", [("0", False), ("many", True), ("-2", True), ("", True)])
def test_seqkern_num_threads_fallback_is_all_cores(value, warns):
    done = run_python(THREADS, SEQKERN_NUM_THREADS=value)
    assert done.returncode == 0, done.stderr
    assert ("RuntimeWarning: SEQKERN_NUM_THREADS: expected an int >= 0" in done.stderr) == warns
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = json.loads(done.stdout)
    assert info["threads"] == info["pool"] == cores


# --- the GIL


def main_thread_progress(call) -> tuple[int, float, float]:
    """Runs ``call`` in a worker thread while this thread stamps its progress every millisecond;
    returns the stamps that fell inside the call, the longest gap between them (or the call's
    ends) and the call's duration."""
    span = {}

    def worker():
        span["start"] = time.perf_counter()
        call()
        span["end"] = time.perf_counter()

    thread = threading.Thread(target=worker)
    stamps, last = [], time.perf_counter()
    thread.start()
    while thread.is_alive():
        now = time.perf_counter()
        if now - last > 1e-3:
            stamps.append(now)
            last = now
    thread.join()
    start, end = span["start"], span["end"]
    inside = [t for t in stamps if start < t < end]
    return len(inside), float(np.diff([start, *inside, end]).max()), end - start


def _long(make, first: int, last: int):
    """``make(size)`` for the first size from ``first`` (doubling, or +1 for small sizes) whose
    call takes over 0.2 s, or ``last``."""
    size = first
    while True:
        call = make(size)
        begin = time.perf_counter()
        call()
        if time.perf_counter() - begin > 0.2 or size >= last:
            return call
        size = size * 2 if size > 64 else size + 1


def _released(inside: int, gap: float, duration: float) -> bool:
    # A held GIL leaves one gap of the whole call; Python's switch interval is 5 ms.
    return inside >= 10 and gap < 0.5 * duration


def test_gil_is_released_while_a_kernel_runs(threads):
    """A worker thread runs a long kernel; the main thread's Python loop keeps running during
    it. Were the GIL held, the loop would stall for the whole call."""
    threads(1)  # leave the other core to the main thread

    def attention(length):
        q = np.random.default_rng(0).standard_normal((1, 2, length, 64)).astype(np.float32)
        return lambda: _native.causal_attention_f32(q, q, q, 0.125)

    progress = main_thread_progress(_long(attention, 2048, 1 << 15))
    assert _released(*progress), progress


def test_gil_probe_sees_a_call_that_holds_the_gil():
    """The probe above can fail: a regular-expression match (which holds the GIL while it
    backtracks) stalls the main thread for its whole duration."""
    import re

    def backtrack(n):
        return lambda: re.match(r"(a+)+$", "a" * n + "b")

    progress = main_thread_progress(_long(backtrack, 18, 26))
    assert not _released(*progress), progress


# --- thread-count invariance, bitwise, for 1, 2 and 3 threads


def _wkv4_pool():
    rng = np.random.default_rng(1)
    # 1 x 300 x 1000 = 300k channel steps: above the 2^17 at which the kernel enters the pool;
    # the channel spans then depend on the thread count.
    k, v = (rng.standard_normal((1, 300, 1000)).astype(np.float32) for _ in range(2))
    w = -np.exp(rng.uniform(-6, 1, 1000)).astype(np.float32)
    u = rng.uniform(0, 1, 1000).astype(np.float32)
    return lambda: rwkv.wkv4(w, u, k, v)


def _state_update():
    rng = np.random.default_rng(2)
    b, h, p, n = 8, 32, 64, 16  # 262k state elements: on the pool
    state = rng.standard_normal((b, h, p, n)).astype(np.float32)
    x, z = (rng.standard_normal((b, h, p)).astype(np.float32) for _ in range(2))
    dt = rng.standard_normal((b, h)).astype(np.float32)
    A = -np.exp(rng.standard_normal(h)).astype(np.float32)
    B, C = (rng.standard_normal((b, 2, n)).astype(np.float32) for _ in range(2))

    def call():
        s = state.copy()
        y = mamba.selective_state_update(s, x, dt, A, B, C, None, z, dt_softplus=True)
        return y, s

    return call


def _bitlinear():
    rng = np.random.default_rng(3)
    w = ternary.quantize_weights(rng.standard_normal((700, 1000)).astype(np.float32))
    x = rng.standard_normal((37, 1000)).astype(np.float32)
    bias = rng.standard_normal(700).astype(np.float32)
    return lambda: (ternary.bitlinear(x, w, bias),)


def _quantize_weights(dtype):
    def make():
        rng = np.random.default_rng(4)
        W = rng.standard_normal((1537, 1001)).astype(dtype)  # many partial sums of |W|

        def call():
            weight = ternary.quantize_weights(W)
            return weight.packed, np.array(weight.gamma)

        return call

    return make


INVARIANCE = {
    "wkv4 on the pool": _wkv4_pool,
    "selective_state_update": _state_update,
    "bitlinear": _bitlinear,
    "quantize_weights float32": _quantize_weights(np.float32),
    "quantize_weights float64": _quantize_weights(np.float64),
}


@pytest.mark.parametrize("case", sorted(INVARIANCE))
def test_results_do_not_depend_on_the_thread_count(case, threads):
    call = INVARIANCE[case]()
    results = []
    for count in (1, 2, 3):
        threads(count)
        results.append([np.asarray(r) for r in call()])
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_array_equal(got, want)


# --- internal errors


def test_internal_error_is_a_runtime_error():
    _native._panic_in_kernel("no")  # the probe does nothing unless asked to
    with pytest.raises(RuntimeError, match="seqkern internal error: requested by"):
        _native._panic_in_kernel("panic")
    # The pool survives: the next calls work.
    _native._panic_in_kernel("no")
    q = np.ones((1, 1, 8, 4), np.float32)
    np.testing.assert_allclose(causal_attention(q, q, q), q)


# --- the VNNI ternary path


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def test_vnni_path_runs_where_the_cpu_has_it():
    """On the session's SIMD path (the best the CPU has unless SEQKERN_SIMD lowered it): the
    VNNI kernel wherever AVX-512 with VNNI and VBMI is available, else AVX2."""
    flags = _cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo")
    simd = seqkern.build_info()["simd"]
    vnni = {"avx512f", "avx512bw", "avx512_vnni", "avx512vbmi"} <= flags
    expected = {"avx512": "avx512_vnni" if vnni else "avx2", "avx2": "avx2", "scalar": "scalar"}
    assert _native.ternary_kernel_path() == expected[simd]
    if vnni and os.environ.get("SEQKERN_SIMD") is None:
        assert simd == "avx512"  # and so the VNNI kernel ran

"""Extra memory of every public kernel, measured as the peak RSS of one call in a subprocess:
the README's bound (output + state, nothing that grows with L beyond them) for the sequence
kernels, and the stated scratch of the ternary kernels."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

MiB = 2**20

PROBE = textwrap.dedent(
    """
    import numpy as np, sys
    {setup}

    def peak_and_current():
        fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return (int(fields["VmHWM"].split()[0]) * 1024, int(fields["VmRSS"].split()[0]) * 1024)

    call()  # warm up: thread pool, code pages
    _, before = peak_and_current()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak to the current RSS
    result = call()
    peak, _ = peak_and_current()
    print(peak - before, sum(np.asarray(r).nbytes for r in result), allowance)
    """
)

# Every case defines `call` (returning a tuple of the arrays it returns) and `allowance`: the
# bytes beyond the returned arrays the kernel may hold, with the reason beside it. The test
# adds SLACK for allocator rounding and thread-local buffers.
SLACK = 2 * MiB

CASES = {
    # dim 16, dstate 16, L 2^19: a (batch, dim, L, dstate) intermediate would be 512 MiB.
    "selective_scan": """
        from seqkern.mamba import selective_scan
        b, d, n, L = 1, 16, 16, 1 << 19
        u = np.ones((b, d, L), np.float32); A = -np.ones((d, n), np.float32)
        B = np.ones((b, n, L), np.float32)
        call = lambda: selective_scan(u, u, A, B, B, None, u, None, True, True)
        allowance = 0
    """,
    # A decode step on a 32 MiB state, updated in place: only y (the result) is new.
    "selective_state_update": """
        from seqkern.mamba import selective_state_update
        b, h, p, n = 64, 32, 64, 64
        state = np.ones((b, h, p, n), np.float32); x = np.ones((b, h, p), np.float32)
        dt = np.ones((b, h), np.float32); A = -np.ones(h, np.float32)
        B = np.ones((b, 1, n), np.float32)
        call = lambda: (selective_state_update(state, x, dt, A, B, B, None, x),)
        allowance = 0
    """,
    # L 2^17, 8 groups, dstate 64, chunks of 32: per-chunk terms kept for the whole sequence
    # would be 384 MiB (they were, before windows). One window of time and group terms is at
    # most 2^20 elements (4 MiB).
    "ssd_scan, 8 heads of 1 channel, 8 groups": """
        from seqkern.mamba import ssd_scan
        b, L, h, p, n, g = 1, 1 << 17, 8, 1, 64, 8
        x = np.ones((b, L, h, p), np.float32); dt = np.ones((b, L, h), np.float32)
        A = -np.ones(h, np.float32); B = np.ones((b, L, g, n), np.float32)
        call = lambda: ssd_scan(x, dt, A, B, B, z=x, return_final_states=True)
        allowance = 4 << 20
    """,
    # A mamba2-130m layer (24 heads x 64, dstate 128, one group) at L 2^14: the whole-sequence
    # terms would be 16 MiB; one window is 4 MiB.
    "ssd_scan, mamba2-130m layer": """
        from seqkern.mamba import ssd_scan
        b, L, h, p, n, g = 1, 1 << 14, 24, 64, 128, 1
        x = np.ones((b, L, h, p), np.float32); dt = np.ones((b, L, h), np.float32)
        A = -np.ones(h, np.float32); B = np.ones((b, L, g, n), np.float32)
        call = lambda: ssd_scan(x, dt, A, B, B, D=A, return_final_states=True)
        allowance = 4 << 20
    """,
    # Windows of 4096 steps: 4 time terms x 8 heads x 4096 steps (512 KiB).
    "ssd_scan_sequential": """
        from seqkern.mamba import ssd_scan_sequential
        b, L, h, p, n, g = 1, 1 << 17, 8, 1, 64, 8
        x = np.ones((b, L, h, p), np.float32); dt = np.ones((b, L, h), np.float32)
        A = -np.ones(h, np.float32); B = np.ones((b, L, g, n), np.float32)
        call = lambda: ssd_scan_sequential(x, dt, A, B, B, return_final_states=True)
        allowance = 4 * 8 * 4096 * 4
    """,
    "causal_conv1d": """
        from seqkern.mamba import causal_conv1d
        x = np.ones((1, 64, 1 << 18), np.float32); w = np.ones((64, 4), np.float32)
        call = lambda: causal_conv1d(x, w, w[:, 0], "silu", return_final_states=True)
        allowance = 0
    """,
    # The conv state (12 MiB) is updated in place.
    "causal_conv1d_update": """
        from seqkern.mamba import causal_conv1d_update
        x = np.ones((256, 4096), np.float32); state = np.ones((256, 4096, 3), np.float32)
        w = np.ones((4096, 4), np.float32)
        call = lambda: (causal_conv1d_update(x, state, w, None, "silu"),)
        allowance = 0
    """,
    "wkv4": """
        from seqkern.rwkv import wkv4
        k = np.ones((1, 1 << 17, 128), np.float32); w = -np.ones(128, np.float32)
        call = lambda: wkv4(w, -w, k, k)
        allowance = 0
    """,
    # T 2^17, H 2, N 64: all per-step states (T, H, N, N) would be 4 GiB.
    "wkv5": """
        from seqkern.rwkv import wkv5
        x = np.ones((1, 1 << 17, 2, 64), np.float32); w = -np.ones((2, 64), np.float32)
        call = lambda: wkv5(x, x, x, w, -w)
        allowance = 0
    """,
    "wkv6": """
        from seqkern.rwkv import wkv6
        x = np.ones((1, 1 << 17, 2, 64), np.float32); w = -x
        call = lambda: wkv6(x, x, x, w, np.ones((2, 64), np.float32))
        allowance = 0
    """,
    "wkv7": """
        from seqkern.rwkv import wkv7
        x = np.ones((1, 1 << 17, 2, 64), np.float32); w = -x
        call = lambda: wkv7(x, w, x, x, w, x)
        allowance = 0
    """,
    # L 16384, D 16: the (L, L) score matrix alone would be 1 GiB.
    "causal_attention": """
        from seqkern.attention import causal_attention
        q = np.ones((1, 1, 16384, 16), np.float32)
        call = lambda: (causal_attention(q, q, q),)
        allowance = 0
    """,
    # One int8 code per weight (16 MiB) before packing to 2 bits.
    "quantize_weights": """
        from seqkern.ternary import quantize_weights
        W = np.ones((4096, 4096), np.float32)
        call = lambda: (quantize_weights(W).packed,)
        allowance = W.size
    """,
    "quantize_activations": """
        from seqkern.ternary import quantize_activations
        x = np.ones((4096, 4096), np.float32)
        call = lambda: quantize_activations(x)
        allowance = 0
    """,
    # The activations in kernel order (one byte each, rows padded to whole 64-byte blocks) and
    # their row sums.
    "ternary_matmul_int": """
        from seqkern.ternary import quantize_weights, ternary_matmul_int
        w = quantize_weights(np.ones((2048, 2048), np.float32))
        q = np.ones((4096, 2048), np.int8)
        call = lambda: (ternary_matmul_int(q, w),)
        allowance = q.size + 4096 * (64 + 4)
    """,
    # The int8 activations in kernel order (rows padded as above), their scales and row sums,
    # and the int32 products.
    "bitlinear": """
        from seqkern.ternary import quantize_weights, bitlinear
        w = quantize_weights(np.ones((2048, 2048), np.float32))
        x = np.ones((4096, 2048), np.float32)
        call = lambda: (bitlinear(x, w),)
        allowance = 4096 * (2048 + 64 + 8) + 4 * 4096 * 2048
    """,
}


@pytest.mark.parametrize("kernel", sorted(CASES))
def test_extra_memory_is_bounded(kernel):
    code = PROBE.format(setup=textwrap.dedent(CASES[kernel]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    extra, result_bytes, allowance = map(int, done.stdout.split())
    assert extra <= result_bytes + allowance + SLACK, (extra, result_bytes, allowance)
